"""Command line: a thin layer that parses arguments and calls the library."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .errors import InterpruneError


def cmd_methods(args: argparse.Namespace) -> None:
    from .resample import METHODS

    width = max(map(len, METHODS))
    for method in METHODS.values():
        print(f"{method.name:<{width}}  {method.description}")


def cmd_shrink(args: argparse.Namespace) -> None:
    from .resample import METHODS
    from .shrink import parse_overrides, save, shrink

    if args.method not in METHODS:
        raise InterpruneError(f"unknown method {args.method!r}; run 'interprune methods' to list them")
    out = Path(args.out)
    if out.exists() and not args.overwrite:
        raise InterpruneError(f"{out} already exists; choose another --out or pass --overwrite")
    model, report = shrink(args.source, parse_overrides(args.set), args.method, seed=args.seed)
    save(model, out, report=report, source=args.source, overwrite=args.overwrite)
    print(report.summary())
    print(f"wrote {out}/ (config.json, model.safetensors, interprune.json)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="interprune", description=__doc__.split("\n")[0] if __doc__ else None)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("methods", help="list the resampling methods")
    p.set_defaults(func=cmd_methods)

    p = sub.add_parser("shrink", help="resize a pretrained model and carry its weights over")
    p.add_argument("source", help="Hugging Face Hub id or local model folder")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="change a config field (JSON values), e.g. --set d_model=128; repeatable")
    p.add_argument("--method", default="select", help="resampling method (see 'interprune methods')")
    p.add_argument("--out", required=True, help="folder to write the model to")
    p.add_argument("--seed", type=int, default=0, help="seed for tensors that are freshly initialised")
    p.add_argument("--overwrite", action="store_true", help="replace OUT if it exists")
    p.set_defaults(func=cmd_shrink)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except InterpruneError as err:
        print(f"interprune: error: {err}", file=sys.stderr)
        return 2
    return 0
