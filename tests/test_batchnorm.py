import torch

from interprune.train import batchnorm

from .conftest import tiny_detr


def test_thaw_then_freeze_keeps_outputs_and_writes_learned_values_back(detr, images):
    with torch.no_grad():
        before = detr(pixel_values=images).logits
    count = batchnorm.thaw(detr)
    assert count > 10 and any(isinstance(m, torch.nn.BatchNorm2d) for m in detr.modules())
    with torch.no_grad():
        assert torch.allclose(detr(pixel_values=images).logits, before, atol=1e-3)  # eval mode: same function
        detr.train()
        detr(pixel_values=images)  # a training-mode pass updates the running statistics
        detr.eval()
    live = next(m for m in detr.modules() if isinstance(m, torch.nn.BatchNorm2d))
    mean = live.running_mean.clone()
    assert batchnorm.freeze(detr) == count
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in detr.modules())
    keys = set(tiny_detr().state_dict())
    assert set(detr.state_dict()) == keys  # a stock model again: same tensors, no extra counters
    assert any(torch.equal(v, mean) for k, v in detr.state_dict().items() if k.endswith("running_mean"))
