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
