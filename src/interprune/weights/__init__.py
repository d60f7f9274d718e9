"""Filling a target's weights from a source's: one tensor (``resample``), a whole state dict along the
dimension plan (``transfer``), and a model from a source and config overrides (``shrink``)."""
