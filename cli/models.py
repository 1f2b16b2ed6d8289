"""`transpose models`: the registered model variants with their parameter counts."""

from __future__ import annotations

import argparse

from transpose.models import MODELS, create_model, list_models


def add_parser(sub) -> None:
    p = sub.add_parser(
        "models",
        help="list registered model variants",
        description="List model variants.\n\nexample:\n  transpose models 'transpose_h_*'",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("pattern", nargs="?", default="*", help="shell pattern, e.g. 'transpose_h_*'")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    print(f"{'name':28s} {'params':>12s} {'trainable':>12s}  description")
    for name in list_models(args.pattern):
        model = create_model(name)
        total = sum(p.numel() for p in model.parameters())
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        doc = (MODELS[name].__doc__ or "").strip().splitlines()[0]
        print(f"{name:28s} {total:12,d} {trainable:12,d}  {doc}")
    return 0
