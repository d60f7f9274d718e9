"""Hugging Face equivalents of timm backbones, so that their stage widths and depths can be planned.

A detector whose ``backbone_config`` is a timm backbone (the demo's ResNet-10-T) only names the timm model:
no config field sets its widths or depths, so a shrink cannot change them. A timm ResNet is, stage for
stage, a Hugging Face ``ResNetConfig`` (basic or bottleneck blocks, the same widths and depths), which a
config can change and stock ``from_pretrained`` loads. The stages' convolutions and norms carry over by
name (:data:`TIMM_TO_HF`). What the Hugging Face ResNet cannot express (timm's deep 3-layer stem, its
average-pool shortcuts) is refit by least squares in forward order on calibration data, every convolution
against the timm layer it replaces (``compensate``: a k x k layer is a linear map of its input patches), so
the converted model computes close to what the source computes.
"""

from __future__ import annotations

import copy
import re
from typing import Any

import torch
from torch import nn
from transformers import PretrainedConfig, ResNetConfig

__all__ = ["timm_resnet", "hf_equivalent", "convert", "TIMM_TO_HF"]

# timm ResNet tensor names -> Hugging Face ResNet names (inside the backbone; stage i+1 -> stages.i)
TIMM_TO_HF = (
    (r"^layer(\d+)\.(\d+)\.conv(\d)\.", lambda m: f"encoder.stages.{int(m[1]) - 1}.layers.{m[2]}.layer.{int(m[3]) - 1}.convolution."),
    (r"^layer(\d+)\.(\d+)\.bn(\d)\.", lambda m: f"encoder.stages.{int(m[1]) - 1}.layers.{m[2]}.layer.{int(m[3]) - 1}.normalization."),
    (r"^bn1\.", lambda m: "embedder.embedder.normalization."),
)


def _backbone(model: nn.Module) -> tuple[str, nn.Module] | None:
    return next(((n, m) for n, m in model.named_modules() if n.endswith("backbone.model")), None)


def timm_resnet(config: PretrainedConfig) -> nn.Module | None:
    """The timm ResNet a detector's ``backbone_config`` builds (shapes only), or None for anything else."""
    sub = getattr(config, "backbone_config", None)
    if getattr(sub, "model_type", None) != "timm_backbone" or not sub.backbone:
        return None
    import timm

    with torch.device("meta"):
        net = timm.create_model(sub.backbone, pretrained=False, features_only=True, out_indices=sub.out_indices)
    return net if hasattr(net, "layer1") and hasattr(net, "conv1") else None


def hf_equivalent(config: PretrainedConfig) -> PretrainedConfig | None:
    """``config`` with its timm ResNet backbone as a Hugging Face ``ResNetConfig`` (same widths, depths and
    outputs; the stages the detector never reads are left out), or None when there is nothing to convert."""
    net = timm_resnet(config)
    if net is None:
        return None
    stages = [getattr(net, f"layer{i}") for i in range(1, 5) if hasattr(net, f"layer{i}")]
    bottleneck = hasattr(stages[0][0], "conv3")
    last = "conv3" if bottleneck else "conv2"
    resnet = ResNetConfig(embedding_size=int(net.bn1.num_features), num_channels=config.backbone_config.num_channels,
                          hidden_sizes=[int(getattr(s[-1], last).out_channels) for s in stages],
                          depths=[len(s) for s in stages], layer_type="bottleneck" if bottleneck else "basic",
                          downsample_in_bottleneck=False, out_indices=list(config.backbone_config.out_indices))
    out = copy.deepcopy(config)
    out.backbone_config = resnet
    return out


def _hf_name(name: str, avg_down: bool) -> str | None:
    for pattern, make in TIMM_TO_HF:
        found = re.match(pattern, name)
        if found:
            return make(found) + name[found.end():]
    found = re.match(r"^layer(\d+)\.(\d+)\.downsample\.(\d)\.", name)
    if found:
        conv, norm = (1, 2) if avg_down else (0, 1)
        part = {conv: "convolution", norm: "normalization"}.get(int(found[3]))
        return f"encoder.stages.{int(found[1]) - 1}.layers.{found[2]}.shortcut.{part}." + name[found.end():] if part else None
    return None


def _source_module(hf: str, avg_down: bool) -> str | None:
    """The timm module whose output a Hugging Face convolution must reproduce."""
    if hf == "embedder.embedder.convolution":
        return "conv1"  # the whole (deep) stem, before its norm
    found = re.match(r"^encoder\.stages\.(\d+)\.layers\.(\d+)\.(layer\.(\d+)|shortcut)\.convolution$", hf)
    if not found:
        return None
    block = f"layer{int(found[1]) + 1}.{found[2]}"
    return f"{block}.conv{int(found[4]) + 1}" if found[4] else f"{block}.downsample.{1 if avg_down else 0}"


@torch.no_grad()
def convert(source: nn.Module, inputs: dict[str, Any], config: PretrainedConfig, *,
            refit: bool = True) -> tuple[nn.Module, dict]:
    """``source`` (a detector with a timm ResNet) as the same detector with its Hugging Face ResNet
    (``config`` from :func:`hf_equivalent`): tensors copied by name, then every backbone convolution refit
    in forward order on ``inputs`` to the output of the timm layer it stands for. Returns the model and
    what was done (tensors copied, layers refit; ``refit=False``: copies only, to measure what the refit adds)."""
    from .preserve.compensate import compensate
    from .hf.models import build_model

    target = build_model(config)
    (s_prefix, s_net), (t_prefix, _) = _backbone(source), _backbone(target)
    avg_down = isinstance(getattr(s_net, "layer2")[0].downsample[0], nn.AvgPool2d) if getattr(
        s_net, "layer2")[0].downsample is not None else False
    src, tgt = source.state_dict(), target.state_dict()
    copied = 0
    for name, value in src.items():
        inner = name[len(s_prefix) + 1:] if name.startswith(s_prefix + ".") else None
        mapped = f"{t_prefix}.{_hf_name(inner, avg_down)}" if inner is not None and _hf_name(inner, avg_down) else (
            name if inner is None else None)
        if mapped in tgt and tgt[mapped].shape == value.shape:
            tgt[mapped].copy_(value)
            copied += 1
    layers = {f"{t_prefix}.{n}": f"{s_prefix}.{_source_module(n, avg_down)}"
              for n, m in _backbone(target)[1].named_modules() if isinstance(m, nn.Conv2d) and _source_module(n, avg_down)}
    done = compensate(source, target, inputs, lambda name: None, source_name=lambda n: layers.get(n, n),
                      layers=list(layers) if refit else [], ridge=1e-3)
    return target, {"backbone": config.backbone_config.to_dict(), "copied": copied, "refit": done.layers,
                    "skipped": done.skipped}
