"""The data-aware recipe on a GPU (``--device cuda``) makes the model it makes on the CPU.

Skipped where no CUDA GPU is visible (CI has none); run on a GPU machine with ``pytest tests/test_device.py``.
TF32 is turned off so the GPU's float32 matches the CPU's closely enough to give the same choices.
"""

from __future__ import annotations

import pytest
import torch

from interprune import shrink

from .engine_cases import cases
from .families import FAMILIES

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU visible")


@pytest.fixture(autouse=True)
def exact_float32():
    matmul, conv = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = matmul, conv


def _outputs(model, inputs) -> list[torch.Tensor]:
    with torch.no_grad():
        found = model.eval()(**inputs)
    return [t for t in found.to_tuple() if isinstance(t, torch.Tensor) and t.is_floating_point()]


def _same_function(cpu, gpu, inputs, tolerance: float = 1e-3) -> None:
    """Outputs on ``inputs`` within ``tolerance`` (relative): the weights themselves may differ where an
    eigenvector basis is not unique (a DETR decoder's first self-attention reads zero queries, so its values
    have a degenerate covariance and LAPACK and cuSOLVER pick different bases of the same subspace)."""
    for a, b in zip(_outputs(cpu, inputs), _outputs(gpu, inputs), strict=True):
        assert float((a - b).norm() / a.norm().clamp_min(1e-12)) < tolerance


def _listed(report) -> dict:
    return {k: torch.as_tensor(v).tolist() for k, v in report.choices.items()}


@pytest.mark.parametrize("name", list(cases()))
def test_engine_cases_on_the_gpu_make_the_cpus_model(name):
    from interprune.weights.shrink import shrink as shrink_

    from .engine_cases import demo_pixels, text_ids

    source, overrides, options = cases()[name]
    inputs = demo_pixels() if name.startswith("demo") else text_ids()
    cpu, cpu_report = shrink_(source, overrides, calibration=inputs, device="cpu", calibration_batch=2, **options)
    gpu, gpu_report = shrink_(source, overrides, calibration=inputs, device="cuda", calibration_batch=2, **options)
    assert _listed(gpu_report) == _listed(cpu_report)
    assert gpu_report.preserved["compensated"] == cpu_report.preserved["compensated"]
    assert all(p.device.type == "cpu" for p in gpu.parameters())  # the result comes back to the CPU
    _same_function(cpu, gpu, inputs)


FUSED_AND_EXPERTS = ["phi3", "gpt_neox", "falcon", "bloom", "modernbert", "mixtral", "qwen2_moe", "bert"]


@pytest.mark.parametrize("family", FUSED_AND_EXPERTS)
def test_fused_and_expert_families_shrink_alike_on_gpu_and_cpu(family):
    config_cls, fields, model_cls, _, widths = FAMILIES[family]
    torch.manual_seed(0)
    model = model_cls(config_cls(**fields)).eval()
    ids = torch.randint(3, 100, (8, 12), generator=torch.Generator().manual_seed(2))
    inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    options = dict(method="calibrated", rotate=True, compensate=True, calibration=inputs, calibration_batch=4)
    cpu, cpu_report = shrink(model, widths[0], device="cpu", **options)
    gpu, gpu_report = shrink(model, widths[0], device="cuda", **options)
    assert _listed(gpu_report) == _listed(cpu_report)
    assert all(p.device.type == "cpu" for p in gpu.parameters())
    _same_function(cpu, gpu, inputs)
