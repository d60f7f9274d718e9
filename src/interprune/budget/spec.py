"""What a budget says: a limit on parameters, FLOPs or latency, relative to the source or absolute.

Parsed and checked before any work, so a typo is one line, not a search that ends in nonsense.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ..errors import InterpruneError

__all__ = ["Budget", "parse_budget", "KINDS", "format_value"]

KINDS = {"params": "parameters", "flops": "FLOPs per input", "latency": "latency per input at batch 1"}
_SUFFIX = {"": 1.0, "k": 1e3, "m": 1e6, "g": 1e9, "t": 1e12}
_TIME = {"ms": 1.0, "s": 1e3, "us": 1e-3}


@dataclass(frozen=True)
class Budget:
    """``value`` is a fraction of the source's cost when ``relative``, else parameters, FLOPs or milliseconds."""

    kind: str
    value: float
    relative: bool
    text: str

    def limit(self, source_cost: float) -> float:
        """The budget in the kind's own unit, given the source's cost."""
        return self.value * source_cost if self.relative else self.value


def parse_budget(text: str) -> Budget:
    """``params=0.5`` (a fraction), ``params=20M``, ``flops=30G``, ``latency=15ms``, ``latency=0.5``."""
    kind, sep, raw = text.partition("=")
    kind, raw = kind.strip().lower(), raw.strip().lower()
    if not sep or not raw:
        raise InterpruneError(f"--budget {text!r} is not kind=value; write e.g. --budget latency=0.5 or params=20M")
    if kind not in KINDS:
        raise InterpruneError(f"unknown budget kind {kind!r} in --budget {text}; use one of {', '.join(KINDS)}")
    unit = r"(ms|us|s)?" if kind == "latency" else r"([kmgt])?"
    match = re.fullmatch(r"([0-9]*\.?[0-9]+(?:e-?[0-9]+)?)\s*" + unit, raw)
    if match is None:
        example = "0.5 or 15ms" if kind == "latency" else "0.5 or 20M"
        raise InterpruneError(f"bad value {raw!r} in --budget {text}; write a fraction of the source or an "
                              f"absolute value, e.g. {kind}={example}")
    number, suffix = float(match.group(1)), match.group(2)
    if number <= 0:
        raise InterpruneError(f"--budget {text}: the value must be positive")
    relative = suffix is None and number <= 1  # a plain fraction; a plain count above 1 is absolute
    if suffix is None and not relative and kind == "latency":
        raise InterpruneError(f"--budget {text}: a plain number is a fraction of the source's latency (at most 1); "
                              f"give a unit for an absolute value, e.g. latency=15ms")
    value = number if relative else number * (_TIME[suffix or "ms"] if kind == "latency" else _SUFFIX[suffix or ""])
    return Budget(kind, value, relative, f"{kind}={raw}")


def format_value(kind: str, value: float) -> str:
    """A cost in the unit people read: 25.3M parameters, 57.2 GFLOPs, 812 ms."""
    if kind == "latency":
        return f"{value:.1f} ms"
    if kind == "flops":
        return f"{value / 1e9:.2f} GFLOPs"
    return f"{value / 1e6:.2f}M"
