#!/usr/bin/env bash
# One-time set-up on a fresh machine: a virtual environment in .venv with interprune and its tools.
# Safe to run again; pip then only checks what is installed.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null || PY=python3
[ -x .venv/bin/python ] || "$PY" -m venv .venv
# (this workplace's pip prints a warning per missing local mirror folder: filter those out, keep errors)
.venv/bin/python -m pip install --quiet --disable-pip-version-check -e '.[dev,bench,ray,slurm]' 2> >(grep -v "is ignored" >&2)
.venv/bin/python -c "import interprune, torch, transformers, lightning" 
