"""Box-aware augmentation with torchvision transforms v2: the paper's flips and 0-20% zoom crops."""

from __future__ import annotations

from typing import Any

import torch
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

__all__ = ["ZoomCrop", "augmentation"]


class ZoomCrop(v2.Transform):
    """Zoom in by a random 0..``zoom`` (e.g. 20%): crop a window 1/(1+z) of the image at a random place
    and resize it back to the original size, as Roboflow's "zoom crop" does. Boxes follow the pixels."""

    def __init__(self, zoom: float = 0.2) -> None:
        super().__init__()
        self.zoom = zoom

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        height, width = v2.query_size(flat_inputs)
        scale = 1.0 + float(torch.rand(())) * self.zoom  # torch's RNG, like v2's own random transforms
        h, w = max(1, round(height / scale)), max(1, round(width / scale))
        top = int(torch.randint(0, height - h + 1, ()))
        left = int(torch.randint(0, width - w + 1, ()))
        return {"top": top, "left": left, "height": h, "width": w, "size": [height, width]}

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        return self._call_kernel(F.resized_crop, inpt, top=params["top"], left=params["left"],
                                 height=params["height"], width=params["width"], size=params["size"],
                                 antialias=True)


def augmentation(flip: float = 0.5, zoom: float = 0.2) -> v2.Transform:
    """Flip with probability ``flip``, zoom-crop up to ``zoom``, then clip boxes and drop empty ones."""
    steps: list[v2.Transform] = []
    if flip > 0:
        steps.append(v2.RandomHorizontalFlip(flip))
    if zoom > 0:
        steps.append(ZoomCrop(zoom))
    steps += [v2.ClampBoundingBoxes(), v2.SanitizeBoundingBoxes(min_size=3.0)]
    return v2.Compose(steps)
