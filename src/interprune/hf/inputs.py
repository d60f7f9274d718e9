"""The smallest inputs a model takes, and one run of a freshly built target on them.

Some impossible targets build fine and fail only at their first forward pass; running the target once
on a dummy input before any weight is read turns that into a one-line error naming the keys to change.
Text models also get the segment ids their tokenizer produces (``segment_ids``), so measured and exported models
take what they are fed in use.
"""

from __future__ import annotations

import inspect
import os
from typing import Any

import torch
from transformers import PretrainedConfig, PreTrainedModel

from ..errors import InterpruneError, first_line
from .models import model_class
from .processors import tokenizer_inputs

__all__ = ["dummy_inputs", "check_target", "segment_ids"]


def dummy_inputs(model: PreTrainedModel) -> dict[str, torch.Tensor]:
    """The smallest input each modality of ``model`` takes: 4 tokens, a small image, a short spectrogram."""
    config = model.config
    params = inspect.signature(model.forward).parameters
    vision = getattr(config, "vision_config", None) or config
    text = getattr(config, "text_config", None) or config
    inputs: dict[str, torch.Tensor] = {}
    if "input_ids" in params:
        vocab = getattr(text, "vocab_size", None) or 2
        inputs["input_ids"] = torch.tensor([[1, 2, 3, 1]]).clamp(max=vocab - 1)
    if "pixel_values" in params:
        size = getattr(vision, "image_size", None) or 128  # detectors: deep enough for a 1/32 feature map
        height, width = (size, size) if isinstance(size, int) else tuple(size)[:2]
        channels = getattr(vision, "num_channels", 3)
        inputs["pixel_values"] = torch.zeros(1, channels, height, width)
    if "input_values" in params:  # raw audio (Wav2Vec2): 0.1 s at 16 kHz, a few frames after its strided convs
        inputs["input_values"] = torch.zeros(1, 1600)
    if "input_features" in params:
        frames = 2 * getattr(config, "max_source_positions", 1500)
        inputs["input_features"] = torch.zeros(1, getattr(config, "num_mel_bins", 80), frames)
    if "decoder_input_ids" in params and getattr(config, "is_encoder_decoder", False):
        start = getattr(config, "decoder_start_token_id", None) or 0
        inputs["decoder_input_ids"] = torch.tensor([[start]])
    return inputs


def segment_ids(config: PretrainedConfig, source: str | os.PathLike, ids: torch.Tensor) -> torch.Tensor | None:
    """``token_type_ids`` for ``ids`` when the model is fed them in use: the tokenizer beside it produces them
    (BERT's does) and its forward takes them; else None. The second half of each sequence is segment 1 (a
    sentence pair) where the model has two segment types, so a check on these inputs covers segment 1's
    embedding too, not only the zeros a single sentence gets."""
    if "token_type_ids" not in (tokenizer_inputs(source) or ()):
        return None
    try:
        forward = model_class(config).forward
    except InterpruneError:
        return None
    if "token_type_ids" not in inspect.signature(forward).parameters:
        return None
    types = getattr(getattr(config, "text_config", None) or config, "type_vocab_size", None)
    segments = torch.zeros_like(ids)
    segments[:, ids.shape[1] // 2:] = 1 if isinstance(types, int) and types > 1 else 0
    return segments


@torch.no_grad()
def check_target(model: PreTrainedModel, overrides: dict[str, Any]) -> None:
    """Run the freshly built target once on a dummy input, so a target that cannot run is refused now."""
    inputs = dummy_inputs(model)
    if not inputs:
        return
    try:
        model(**{k: v.to(model.dtype) if v.is_floating_point() else v for k, v in inputs.items()})
    except Exception as err:
        keys = ", ".join(overrides) or "the config"
        raise InterpruneError(f"the target model fails on a dummy input ({first_line(err)}); change {keys}") from None
