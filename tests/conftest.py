"""Tiny models built from configs: the tests never download anything."""

from __future__ import annotations

import pytest
import torch
from transformers import DetrConfig, DetrForObjectDetection

TINY_DETR = dict(
    backbone="mobilenetv3_small_050", use_pretrained_backbone=False, num_labels=3, d_model=32,
    encoder_ffn_dim=64, decoder_ffn_dim=64, encoder_layers=2, decoder_layers=2,
    encoder_attention_heads=4, decoder_attention_heads=4, num_queries=10,
)


def tiny_detr(**overrides) -> DetrForObjectDetection:
    torch.manual_seed(0)
    return DetrForObjectDetection(DetrConfig(**{**TINY_DETR, **overrides})).eval()


def tiny_bert(**overrides):
    """A tiny BERT (hidden 32, FFN 64, 3 layers, 4 heads): the text-model counterpart of ``tiny_detr``."""
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    config = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4, vocab_size=50,
                  max_position_embeddings=16)
    return BertModel(BertConfig(**{**config, **overrides})).eval()


@pytest.fixture
def detr() -> DetrForObjectDetection:
    """A tiny DETR whose buffers (frozen batch-norm statistics) are not the defaults."""
    model = tiny_detr()
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, buf in model.named_buffers():
            if name.endswith("running_mean"):
                buf.copy_(torch.randn(buf.shape, generator=gen) * 0.5)
            elif name.endswith("running_var"):
                buf.copy_(torch.rand(buf.shape, generator=gen) + 0.5)
    return model


@pytest.fixture
def detr_dir(detr, tmp_path):
    path = tmp_path / "source"
    detr.save_pretrained(path)
    return path


@pytest.fixture
def images() -> torch.Tensor:
    return torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(2))


@pytest.fixture(scope="session")
def rocks_dir(tmp_path_factory):
    """A small synthetic rocks dataset (64 px) shared by the training tests."""
    from interprune.data.rocks import NAMES, draw_rocks
    from interprune.data.synthetic import write_dataset

    return write_dataset(tmp_path_factory.mktemp("data") / "rocks", draw_rocks, NAMES, "rocks",
                         train=6, valid=3, copies=1, size=64, seed=0)


@pytest.fixture(scope="session")
def detector_dir(tmp_path_factory):
    """A tiny DETR folder with a 64 px image processor, as 'interprune shrink' would write one."""
    from transformers import DetrImageProcessor

    path = tmp_path_factory.mktemp("models") / "tiny-detr"
    tiny_detr().save_pretrained(path)
    DetrImageProcessor(size={"shortest_edge": 64, "longest_edge": 96}).save_pretrained(path)
    return path
