"""Tiny configs of the model families the architecture matrix shrinks, halves, deepens and grows.

Each entry: config class, config fields, model class, the Auto class that must load the result, and the
overrides of three targets: half width, fewer layers, twice the width. All build offline in milliseconds.
"""

from __future__ import annotations

import transformers as T

BERTLIKE = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4)
TEXT = dict(vocab_size=100, max_position_embeddings=64, bos_token_id=1, eos_token_id=2, pad_token_id=0)
IMAGE = dict(image_size=32, patch_size=8)
DECODER = dict(**BERTLIKE, num_key_value_heads=2, vocab_size=100, max_position_embeddings=64)
WIDTH = ({"hidden_size": 16, "intermediate_size": 32}, {"num_hidden_layers": 1},
         {"hidden_size": 64, "intermediate_size": 128})
RESNET = dict(model_type="resnet", embedding_size=8, hidden_sizes=[8, 16, 16, 16], depths=[1, 1, 1, 1],
              layer_type="basic", out_features=["stage4"])
DETR = dict(use_pretrained_backbone=False, use_timm_backbone=False, backbone=None, backbone_config=RESNET,
            num_labels=3, d_model=32, encoder_ffn_dim=64, decoder_ffn_dim=64, encoder_layers=2, decoder_layers=2,
            encoder_attention_heads=4, decoder_attention_heads=4, num_queries=10)
DETR_WIDTH = ({"d_model": 16, "encoder_ffn_dim": 32, "decoder_ffn_dim": 32}, {"encoder_layers": 1, "decoder_layers": 1},
              {"d_model": 64, "encoder_ffn_dim": 128, "decoder_ffn_dim": 128})
AUTO, DETECT = T.AutoModel, T.AutoModelForObjectDetection


def sub(prefix: str, overrides: dict) -> dict:
    return {f"{prefix}.{k}": v for k, v in overrides.items()}


FAMILIES = {
    "bert": (T.BertConfig, dict(**BERTLIKE, **TEXT), T.BertModel, AUTO, WIDTH),
    "roberta": (T.RobertaConfig, dict(**BERTLIKE, **{**TEXT, "pad_token_id": 1, "bos_token_id": 0}), T.RobertaModel,
                AUTO, WIDTH),
    "distilbert": (T.DistilBertConfig, dict(dim=32, hidden_dim=64, n_layers=2, n_heads=4, vocab_size=100,
                                            max_position_embeddings=64, pad_token_id=0), T.DistilBertModel, AUTO,
                   ({"dim": 16, "hidden_dim": 32}, {"n_layers": 1}, {"dim": 64, "hidden_dim": 128})),
    "vit": (T.ViTConfig, dict(**BERTLIKE, **IMAGE), T.ViTModel, AUTO, WIDTH),
    "deit": (T.DeiTConfig, dict(**BERTLIKE, **IMAGE), T.DeiTModel, AUTO, WIDTH),
    "dinov2": (T.Dinov2Config, dict(**BERTLIKE, **IMAGE), T.Dinov2Model, AUTO, WIDTH),
    "swin": (T.SwinConfig, dict(embed_dim=16, depths=[2, 2], num_heads=[2, 4], image_size=32, patch_size=4,
                                window_size=4), T.SwinModel, AUTO,
             ({"embed_dim": 8}, {"depths": [1, 1]}, {"embed_dim": 32})),
    "convnext": (T.ConvNextConfig, dict(hidden_sizes=[8, 16], depths=[2, 1], num_stages=2, image_size=32),
                 T.ConvNextModel, AUTO, ({"hidden_sizes": [4, 8]}, {"depths": [1, 1]}, {"hidden_sizes": [16, 32]})),
    "resnet": (T.ResNetConfig, dict(embedding_size=8, hidden_sizes=[8, 16], depths=[2, 1], layer_type="basic"),
               T.ResNetModel, AUTO, ({"embedding_size": 4, "hidden_sizes": [4, 8]}, {"depths": [1, 1]},
                                     {"embedding_size": 16, "hidden_sizes": [16, 32]})),
    "clip": (T.CLIPConfig, dict(text_config=dict(**BERTLIKE, **{**TEXT, "max_position_embeddings": 16}),
                                vision_config=dict(**BERTLIKE, **IMAGE), projection_dim=16), T.CLIPModel, AUTO,
             tuple({**sub("text_config", w), **sub("vision_config", w)} for w in WIDTH)),
    "gpt2": (T.GPT2Config, dict(n_embd=32, n_layer=2, n_head=4, vocab_size=100, n_positions=64, bos_token_id=1,
                                eos_token_id=2), T.GPT2Model, AUTO, ({"n_embd": 16}, {"n_layer": 1}, {"n_embd": 64})),
    "llama": (T.LlamaConfig, DECODER, T.LlamaModel, AUTO, WIDTH),
    "qwen2": (T.Qwen2Config, DECODER, T.Qwen2Model, AUTO, WIDTH),
    "qwen3": (T.Qwen3Config, dict(**DECODER, head_dim=8), T.Qwen3Model, AUTO, WIDTH),
    "mistral": (T.MistralConfig, DECODER, T.MistralModel, AUTO, WIDTH),
    "t5": (T.T5Config, dict(d_model=32, d_ff=64, d_kv=8, num_layers=2, num_heads=4, vocab_size=100), T.T5Model, AUTO,
           ({"d_model": 16, "d_ff": 32, "d_kv": 4}, {"num_layers": 1}, {"d_model": 64, "d_ff": 128, "d_kv": 16})),
    "whisper": (T.WhisperConfig, dict(d_model=32, encoder_ffn_dim=64, decoder_ffn_dim=64, encoder_layers=2,
                                      decoder_layers=2, encoder_attention_heads=4, decoder_attention_heads=4,
                                      vocab_size=100, pad_token_id=0, bos_token_id=1, eos_token_id=2,
                                      decoder_start_token_id=1, num_mel_bins=8, max_source_positions=16,
                                      max_target_positions=16), T.WhisperModel, AUTO, DETR_WIDTH),
    "detr": (T.DetrConfig, DETR, T.DetrForObjectDetection, DETECT, DETR_WIDTH),
    "conditional_detr": (T.ConditionalDetrConfig, DETR, T.ConditionalDetrForObjectDetection, DETECT, DETR_WIDTH),
    "table_transformer": (T.TableTransformerConfig, DETR, T.TableTransformerForObjectDetection, DETECT, DETR_WIDTH),
    "deformable_detr": (T.DeformableDetrConfig, {**DETR, "d_model": 64, "num_feature_levels": 2, "encoder_n_points": 2,
                                                  "decoder_n_points": 2,
                                                  "decoder_layers": 3,  # transformers cannot build it with 1
                                                  "backbone_config": {**RESNET, "out_features": ["stage3", "stage4"]}},
                        T.DeformableDetrForObjectDetection, DETECT,
                        ({"d_model": 32, "encoder_ffn_dim": 32, "decoder_ffn_dim": 32},
                         {"encoder_layers": 1, "decoder_layers": 2}, {"d_model": 128})),
    "yolos": (T.YolosConfig, dict(**BERTLIKE, image_size=[32, 32], patch_size=8, num_detection_tokens=5, num_labels=3),
              T.YolosForObjectDetection, DETECT, WIDTH),
    "rt_detr": (T.RTDetrConfig, dict(
        backbone_config={**RESNET, "model_type": "rt_detr_resnet", "out_features": ["stage2", "stage3", "stage4"]},
        encoder_hidden_dim=16, encoder_in_channels=[16, 16, 16], d_model=32, encoder_ffn_dim=32, decoder_ffn_dim=64,
        encoder_layers=1, decoder_layers=2, encoder_attention_heads=4, decoder_attention_heads=4, num_queries=10,
        num_labels=3, decoder_in_channels=[16, 16, 16], num_feature_levels=3, decoder_n_points=2,
        use_pretrained_backbone=False), T.RTDetrForObjectDetection, DETECT,
        ({"d_model": 16, "decoder_ffn_dim": 32}, {"decoder_layers": 1}, {"d_model": 64, "decoder_ffn_dim": 128})),
}
