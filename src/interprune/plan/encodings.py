"""Parameter-free encodings that fix which channels a cut may keep: sine position embeddings (DETR
family, RT-DETR) on the residual stream and rotary frequencies inside each head."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .rules import RULES

__all__ = ["sine_alignment", "rotary_alignment"]


def sine_alignment(model: nn.Module, source: int, target: int) -> Tensor | None:
    """Source channels that keep a parameter-free 2-D sine position embedding unchanged on the kept channels.

    DETR family (``num_position_features`` = d/2): ``[y-part, x-part]``, channel 2k = sin(p / T^(2k/(d/2))),
    2k+1 = cos of the same. RT-DETR (``embed_dim`` = d): four blocks ``[sin_h, cos_h, sin_w, cos_w]`` of d/4
    channels, channel k at frequency T^(-k/(d/4)). For each target frequency we keep the source channel(s)
    with the nearest frequency: exact at d' = d/2 (DETR: source channels 4j, 4j+1 in each half).
    """
    for module in model.modules():
        if not type(module).__name__.endswith(RULES.sine_suffix) or source % 4 or target % 4:
            continue
        layout, width = next(((k, getattr(module, f)) for k, f in RULES.sine_layouts.items()
                              if isinstance(getattr(module, f, None), int)), (None, None))
        if layout == "pairs" and 2 * width == source:
            pairs = [min(round(j * source / target), source // 4 - 1) for j in range(target // 4)]
            half = [c for k in pairs for c in (2 * k, 2 * k + 1)]
            return torch.tensor(half + [source // 2 + c for c in half], dtype=torch.long)
        if layout == "blocks" and width == source:
            block_s, block_t = source // 4, target // 4
            picks = [min(round(j * block_s / block_t), block_s - 1) for j in range(block_t)]
            return torch.tensor([b * block_s + k for b in range(4) for k in picks], dtype=torch.long)
    return None


def rotary_alignment(model: nn.Module, source: int, target: int) -> Tensor | None:
    """Head channels that keep rotary frequencies: channel i and i + d/2 rotate at base^(-2i/d)."""
    # Llama's ``inv_freq``; Gemma3 and ModernBERT keep one per layer type (``full_attention_inv_freq``)
    freqs = next((b for m in model.modules() for n, b in m.named_buffers(recurse=False)
                  if n.endswith("inv_freq") and not n.endswith("original_inv_freq")), None)
    if freqs is None or freqs.numel() * 2 != source or source % 2 or target % 2:
        return None
    pairs = [min(round(j * source / target), source // 2 - 1) for j in range(target // 2)]
    return torch.tensor(pairs + [source // 2 + k for k in pairs], dtype=torch.long)
