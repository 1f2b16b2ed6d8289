"""The `transpose` command: the parser of every command, and the dispatch with clear errors."""

from __future__ import annotations

import argparse
import sys

from cli import evaluate, explain, export, models, predict, promote

DESCRIPTION = """TransPose: keypoint localisation via Transformer (Yang et al., ICCV 2021).

commands:
  models     list the registered model variants with their parameter counts
  evaluate   COCO OKS AP of a results file, or MPII PCKh of predictions, as the reference computes them
  explain    attention figure (dependency / affected areas per keypoint and layer) for one person box
  export     ONNX export of a trained model, verified against PyTorch (metadata: its card)
  predict    poses of the people in images (a file or a folder): COCO results JSON and skeleton drawings
  promote    register a trained model in MLflow and move the `champion` alias to it if it is better

`transpose COMMAND --help` documents each, with examples.
"""
COMMANDS = (models, evaluate, explain, export, predict, promote)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="transpose", description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for command in COMMANDS:
        command.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
