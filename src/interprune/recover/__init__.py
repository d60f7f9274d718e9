"""``interprune recover``: distil a shrunk model from its source on unlabelled inputs (see ``run.py``)."""

from .settings import RecoverSettings

__all__ = ["RecoverSettings", "recover"]


def recover(*args, **kwargs):  # imported lazily: Lightning is slow to import and the CLI parses first
    from .run import recover as run

    return run(*args, **kwargs)
