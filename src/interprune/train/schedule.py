"""Learning-rate schedules as one pure function of the step, for ``torch.optim.lr_scheduler.LambdaLR``.

The paper trains at a constant learning rate; practitioners usually warm up (AdamW's first steps on a
freshly re-created head are large) and decay towards the end. Kept pure so it is tested without a trainer.
"""

from __future__ import annotations

import math

DECAYS = ("constant", "cosine", "linear")


def lr_factor(step: int, total: int, *, warmup: int = 0, decay: str = "constant", end: float = 0.0) -> float:
    """The multiplier of the peak learning rate before optimiser step ``step`` (0-based) of ``total``.

    Linear warm-up from ``1/(warmup+1)`` to 1 over ``warmup`` steps, then ``decay`` from 1 towards ``end``,
    reached just after the last step so that every step still learns (``constant`` stays at 1).
    """
    if decay not in DECAYS:
        raise ValueError(f"unknown decay {decay!r}; use one of {', '.join(DECAYS)}")
    if step < warmup:
        return (step + 1) / (warmup + 1)
    if decay == "constant":
        return 1.0
    span = max(1, total - warmup)
    progress = min(1.0, (step - warmup) / span)
    shape = 0.5 * (1 + math.cos(math.pi * progress)) if decay == "cosine" else 1 - progress
    return end + (1 - end) * shape
