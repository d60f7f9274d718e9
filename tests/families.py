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

# The families of issue 15: fused projections, experts, state-space, more vision and audio layouts.
HGNET = dict(model_type="hgnet_v2", stem_channels=[3, 8, 8], stage_in_channels=[8, 16, 32, 64], stage_mid_channels=[8, 8, 16, 16], stage_out_channels=[16, 32, 64, 64], stage_num_blocks=[1, 1, 1, 1], stage_downsample=[False, True, True, True], stage_light_block=[False, False, True, True], stage_kernel_size=[3, 3, 5, 5], stage_numb_of_layers=[1, 1, 1, 1], out_features=["stage2", "stage3", "stage4"], hidden_sizes=[16, 32, 64, 64])
DFINE = dict(backbone_config=HGNET, encoder_in_channels=[32, 64, 64], encoder_hidden_dim=32, d_model=32, encoder_ffn_dim=32, decoder_ffn_dim=64, decoder_layers=3, decoder_in_channels=[32, 32, 32], encoder_attention_heads=2, decoder_attention_heads=4, num_queries=10, num_labels=3, decoder_n_points=2, num_denoising=0, use_pretrained_backbone=False, lqe_hidden_dim=8)
LM = dict(vocab_size=100, max_position_embeddings=64, bos_token_id=1, eos_token_id=2, pad_token_id=0)
GEMMA = dict(**DECODER, head_dim=8, sliding_window=16, rms_norm_eps=1e-6)
MOE_WIDTH = ({"hidden_size": 16}, {"num_hidden_layers": 1}, {"hidden_size": 64})
NEW_FAMILIES = {
    "gemma2": (T.Gemma2Config, GEMMA, T.Gemma2Model, AUTO, ({"hidden_size": 16, "intermediate_size": 32, "head_dim": 4}, {"num_hidden_layers": 1}, {"hidden_size": 64, "intermediate_size": 128})),
    "gemma3_text": (T.Gemma3TextConfig, GEMMA, T.Gemma3TextModel, AUTO, ({"hidden_size": 16, "intermediate_size": 32, "head_dim": 4}, {"num_hidden_layers": 1}, {"hidden_size": 64, "intermediate_size": 128})),
    "phi3": (T.Phi3Config, dict(**DECODER, rms_norm_eps=1e-5, pad_token_id=0, bos_token_id=1, eos_token_id=2), T.Phi3Model, AUTO, WIDTH),
    "mixtral": (T.MixtralConfig, dict(**DECODER, num_local_experts=4, num_experts_per_tok=2), T.MixtralModel, AUTO, WIDTH),
    "qwen2_moe": (T.Qwen2MoeConfig, dict(**DECODER, moe_intermediate_size=16, shared_expert_intermediate_size=48, num_experts=4, num_experts_per_tok=2), T.Qwen2MoeModel, AUTO,
                  ({"hidden_size": 16, "moe_intermediate_size": 8, "shared_expert_intermediate_size": 24}, {"num_hidden_layers": 1}, {"hidden_size": 64, "moe_intermediate_size": 32, "shared_expert_intermediate_size": 96})),
    "opt": (T.OPTConfig, dict(hidden_size=32, ffn_dim=64, num_hidden_layers=2, num_attention_heads=4, word_embed_proj_dim=32, **LM), T.OPTModel, AUTO,
            ({"hidden_size": 16, "ffn_dim": 32, "word_embed_proj_dim": 16}, {"num_hidden_layers": 1}, {"hidden_size": 64, "ffn_dim": 128, "word_embed_proj_dim": 64})),
    "gpt_neox": (T.GPTNeoXConfig, dict(**BERTLIKE, **LM), T.GPTNeoXModel, AUTO, WIDTH),
    "falcon": (T.FalconConfig, dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, **LM), T.FalconModel, AUTO, ({"hidden_size": 16}, {"num_hidden_layers": 1}, {"hidden_size": 64})),
    "bloom": (T.BloomConfig, dict(hidden_size=32, n_layer=2, n_head=4, **LM), T.BloomModel, AUTO, ({"hidden_size": 16}, {"n_layer": 1}, {"hidden_size": 64})),
    "mamba": (T.MambaConfig, dict(hidden_size=32, state_size=4, num_hidden_layers=2, expand=2, conv_kernel=4, vocab_size=100), T.MambaModel, AUTO, ({"hidden_size": 16}, {"num_hidden_layers": 1}, {"hidden_size": 64})),
    "modernbert": (T.ModernBertConfig, dict(**BERTLIKE, **LM, cls_token_id=1, sep_token_id=2, global_attn_every_n_layers=2, local_attention=16), T.ModernBertModel, AUTO, WIDTH),
    "electra": (T.ElectraConfig, dict(**BERTLIKE, embedding_size=16, **LM), T.ElectraModel, AUTO, ({"hidden_size": 16, "intermediate_size": 32, "embedding_size": 8}, {"num_hidden_layers": 1}, {"hidden_size": 64, "intermediate_size": 128, "embedding_size": 32})),
    "siglip": (T.SiglipConfig, dict(text_config=dict(**BERTLIKE, **{**LM, "max_position_embeddings": 16}), vision_config=dict(**BERTLIKE, **IMAGE)), T.SiglipModel, AUTO,
               tuple({**sub("text_config", w), **sub("vision_config", w)} for w in WIDTH)),
    "beit": (T.BeitConfig, dict(**BERTLIKE, **IMAGE, use_relative_position_bias=True), T.BeitModel, AUTO, WIDTH),
    "swinv2": (T.Swinv2Config, dict(embed_dim=16, depths=[2, 2], num_heads=[2, 4], image_size=32, patch_size=4, window_size=4), T.Swinv2Model, AUTO, ({"embed_dim": 8}, {"depths": [1, 1]}, {"embed_dim": 32})),
    "convnextv2": (T.ConvNextV2Config, dict(hidden_sizes=[8, 16], depths=[2, 1], num_stages=2, image_size=32), T.ConvNextV2Model, AUTO, ({"hidden_sizes": [4, 8]}, {"depths": [1, 1]}, {"hidden_sizes": [16, 32]})),
    "segformer": (T.SegformerConfig, dict(num_encoder_blocks=2, depths=[1, 1], sr_ratios=[2, 1], hidden_sizes=[16, 32], patch_sizes=[7, 3], strides=[4, 2], num_attention_heads=[1, 2], mlp_ratios=[2, 2], decoder_hidden_size=32, image_size=32), T.SegformerModel, AUTO,
                  ({"hidden_sizes": [8, 16]}, {"depths": [1, 1], "num_encoder_blocks": 1}, {"hidden_sizes": [32, 64]})),
    "mobilevit": (T.MobileViTConfig, dict(image_size=32, patch_size=2, hidden_sizes=[16, 24, 32], neck_hidden_sizes=[8, 8, 16, 16, 24, 32, 48], num_attention_heads=2, expand_ratio=2.0), T.MobileViTModel, AUTO,
                  ({"hidden_sizes": [8, 12, 16]}, {"mlp_ratio": 1.0}, {"hidden_sizes": [32, 48, 64]})),
    "dpt": (T.DPTConfig, dict(**BERTLIKE, image_size=32, patch_size=8, neck_hidden_sizes=[8, 8, 16, 16], fusion_hidden_size=16, backbone_out_indices=[0, 1, 1, 1], reassemble_factors=[4, 2, 1, 0.5]), T.DPTModel, AUTO, WIDTH),
    "dab_detr": (T.DabDetrConfig, dict(use_pretrained_backbone=False, backbone="resnet18", use_timm_backbone=False, backbone_config=RESNET, num_labels=3, hidden_size=32, encoder_ffn_dim=64, decoder_ffn_dim=64, encoder_layers=2, decoder_layers=2, encoder_attention_heads=4, decoder_attention_heads=4, num_queries=10), T.DabDetrForObjectDetection, DETECT,
                 ({"hidden_size": 16, "encoder_ffn_dim": 32, "decoder_ffn_dim": 32}, {"encoder_layers": 1, "decoder_layers": 1}, {"hidden_size": 64, "encoder_ffn_dim": 128, "decoder_ffn_dim": 128})),
    "wav2vec2": (T.Wav2Vec2Config, dict(**BERTLIKE, conv_dim=[16, 16], conv_stride=[5, 2], conv_kernel=[10, 3], num_feat_extract_layers=2, num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=4, vocab_size=20), T.Wav2Vec2Model, AUTO, WIDTH),
    "d_fine": (T.DFineConfig, DFINE, T.DFineForObjectDetection, DETECT,
               ({"d_model": 16, "encoder_hidden_dim": 16, "encoder_ffn_dim": 16, "decoder_ffn_dim": 32,
                 "decoder_in_channels": [16, 16, 16]}, {"decoder_layers": 2},
                {"d_model": 64, "encoder_hidden_dim": 64, "encoder_ffn_dim": 64, "decoder_ffn_dim": 128,
                 "decoder_in_channels": [64, 64, 64]})),
}
FAMILIES.update(NEW_FAMILIES)
