"""Is the exported model the same function? ONNX Runtime's outputs against PyTorch's, with stated tolerances.

Float32 export: every output must satisfy ``|onnx - torch| <= ATOL + RTOL * |torch|`` elementwise (numpy's
``allclose`` rule); the largest absolute difference of each output is reported either way. Dynamic int8
quantization changes the numbers by design, so its check is on what the model is for: a detector's confident
detections (PyTorch score >= ``SCORE``) must keep their class and their box within ``BOX_TOL`` of the image
side; any other model's main output must point the same way (cosine similarity >= ``COSINE`` per example).
Pure functions on arrays: running the models is the caller's business.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

__all__ = ["ATOL", "RTOL", "SCORE", "BOX_TOL", "COSINE", "CheckResult", "compare", "compare_detections",
           "compare_direction"]

ATOL, RTOL = 1e-4, 1e-3
SCORE, BOX_TOL, COSINE = 0.3, 0.02, 0.99  # 0.3: the demo detector's true detections score 0.3-0.6


@dataclass
class CheckResult:
    """One comparison: on which inputs, the largest difference per output, and the first output that failed."""

    label: str                       # which inputs, e.g. "dummy inputs (batch 2, image 3x64x64)"
    rule: str                        # the tolerance, in words
    largest: dict[str, float] = field(default_factory=dict)  # output -> largest absolute difference (or 1 - cosine)
    failed: str | None = None        # the first output that differs beyond the rule
    detail: str = ""

    @property
    def passed(self) -> bool:
        return self.failed is None

    def summary(self) -> str:
        worst = ", ".join(f"{name} {value:.2g}" for name, value in self.largest.items())
        verdict = "passed" if self.passed else f"FAILED on output {self.failed!r}"
        return f"check {verdict}: {self.label}; {self.rule}; largest differences: {worst}" + (
            f"; {self.detail}" if self.detail else "")


def compare(label: str, reference: dict[str, np.ndarray], got: dict[str, np.ndarray], atol: float = ATOL,
            rtol: float = RTOL) -> CheckResult:
    """Elementwise comparison of every output, in the reference's order."""
    result = CheckResult(label, f"|onnx - torch| <= {atol:g} + {rtol:g}|torch|")
    for name, want in reference.items():
        have = got[name]
        if have.shape != want.shape:
            result.largest[name] = float("inf")
            result.failed = result.failed or name
            result.detail = result.detail or f"{name} has shape {list(have.shape)}, PyTorch's {list(want.shape)}"
            continue
        diff = np.abs(have.astype(np.float64) - want.astype(np.float64))
        result.largest[name] = float(diff.max()) if diff.size else 0.0
        if not np.all(diff <= atol + rtol * np.abs(want)) and result.failed is None:
            result.failed = name
    return result


def scores(logits: np.ndarray, num_labels: int) -> tuple[np.ndarray, np.ndarray]:
    """Best class and its score per query: softmax with a last "no object" class (DETR, YOLOS), else sigmoid."""
    if logits.shape[-1] == num_labels + 1:
        exp = np.exp(logits - logits.max(-1, keepdims=True))
        prob = (exp / exp.sum(-1, keepdims=True))[..., :-1]
    else:
        prob = 1 / (1 + np.exp(-logits))
    return prob.argmax(-1), prob.max(-1)


def compare_detections(label: str, reference: dict[str, np.ndarray], got: dict[str, np.ndarray],
                       num_labels: int) -> CheckResult:
    """Confident PyTorch detections must keep their class and box (normalised centre and size) in ``got``."""
    result = CheckResult(label, f"detections scoring >= {SCORE} in PyTorch keep their class and their box within "
                                f"{BOX_TOL} of the image side")
    want_class, want_score = scores(reference["logits"], num_labels)
    have_class, _ = scores(got["logits"], num_labels)
    confident = want_score >= SCORE
    box_diff = np.abs(got["pred_boxes"] - reference["pred_boxes"]).max(-1)
    result.largest = {"pred_boxes": float(box_diff[confident].max()) if confident.any() else 0.0,
                      "classes changed": float((have_class != want_class)[confident].sum())}
    if (have_class != want_class)[confident].any():
        result.failed = "logits"
    elif (box_diff[confident] > BOX_TOL).any():
        result.failed = "pred_boxes"
    result.detail = f"{int(confident.sum())} confident detections"
    return result


def compare_direction(label: str, name: str, reference: np.ndarray, got: np.ndarray) -> CheckResult:
    """Per example, the cosine similarity of the flattened output must be at least ``COSINE``."""
    want = reference.reshape(len(reference), -1).astype(np.float64)
    have = got.reshape(len(got), -1).astype(np.float64)
    cosine = (want * have).sum(1) / np.maximum(np.linalg.norm(want, axis=1) * np.linalg.norm(have, axis=1), 1e-30)
    result = CheckResult(label, f"{name} keeps its direction: cosine similarity >= {COSINE} per example",
                         {name: float(1 - cosine.min())})
    if cosine.min() < COSINE:
        result.failed = name
    result.detail = f"lowest cosine similarity {cosine.min():.4f}"
    return result
