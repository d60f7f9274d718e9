"""Detection data: COCO/Roboflow reading, augmentation, batches, synthetic datasets, pictures."""

from .coco import CocoSplit, DetectionData, open_dataset
from .loader import Collator, DetectionDataset, make_loaders

__all__ = ["CocoSplit", "Collator", "DetectionData", "DetectionDataset", "make_loaders", "open_dataset"]
