"""`transpose promote`: register a trained model in MLflow, move the `champion` alias, show the history."""

from __future__ import annotations

import argparse
import os
import sys

DESCRIPTION = """MLflow model registry: register trained models with their gate metric, and move an alias
(default `champion`) to a version only when it beats the holder's gate metric (strictly greater) on the same
evaluation data (a fingerprint of the ground truth and the split's shard manifest). A holder scored on other
data is re-evaluated on the candidate's with --reevaluate (the evaluation stage's protocol); without it the
promotion is refused (exit 1). Every decision is kept as a registered-model tag promotion.NNNNNN-vV.

The store: --tracking-uri, else $MLFLOW_TRACKING_URI, else (with --run) the run's own, else mlruns/mlflow.db.
Concurrent promotions, on one machine or on many sharing a tracking server, take turns through tickets kept in
the registry (registered-model tags transpose.ticket.*); a promotion that waited --wait seconds for its turn
gives up with exit 3, naming the holder and until when its lease runs ($TRANSPOSE_PROMOTE_LEASE, 60 s, renewed
while it works). Load a promoted model with models:/NAME@champion.

examples:
  transpose promote --run outputs/pretrain --evaluation outputs/evaluate_coco/pretrain_evaluation.json \\
      --name transpose-coco
  transpose promote --name transpose-coco --version 3 [--metric AP] [--alias champion]
  transpose promote --history transpose-coco

The DVC stage `promote` does the first for every model listed in params.yaml's promote.models.
"""


def add_parser(sub) -> None:
    p = sub.add_parser(
        "promote",
        help="register a model / move the champion alias / show promotion history",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--name", help="registered model, e.g. transpose-coco or transpose-mpii")
    p.add_argument("--version", help="the version to promote (a number)")
    p.add_argument("--history", metavar="NAME", help="print every promotion decision of NAME as a table")
    p.add_argument("--run", help="a training run's out_dir (with mlflow_run.json): register its model, promote it")
    p.add_argument("--evaluation", help="with --run: the evaluation stage's RUN_evaluation.json of that run")
    p.add_argument("--metric", help="with --version: the gate metric (default: the version's own)")
    p.add_argument("--alias", default="champion", help="the alias to move (default: champion)")
    p.add_argument("--reevaluate", action="store_true", help="re-score a holder evaluated on other data")
    p.add_argument("--tracking-uri", help="MLflow store (default: $MLFLOW_TRACKING_URI or mlruns/mlflow.db)")
    p.add_argument(
        "--wait",
        type=float,
        metavar="SECONDS",
        help="longest wait for the promotion turn (default: 300, or $TRANSPOSE_PROMOTE_WAIT); then exit 3",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    try:  # the pipeline stack, imported only here
        import mlflow
        from mlflow.exceptions import MlflowException

        from mlops.registry import PromotionBusy, format_history, history, promote
        from mlops.tracking import tracking_uri
        from pipelines.promote import ModelEntry, evaluate_on_data, register_and_promote
    except ImportError as err:
        raise ValueError(
            f"transpose promote needs MLflow and the pipeline extras ({err}): pip install '.[pipeline]'"
        ) from None
    if args.wait is not None and args.wait <= 0:
        raise ValueError(f"--wait {args.wait}: must be a positive number of seconds")
    try:
        if args.history:
            mlflow.set_tracking_uri(args.tracking_uri or tracking_uri())
            decisions = history(args.history)
            print(format_history(decisions) if decisions else f"no promotion decisions recorded for {args.history}")
            return 0
        if not args.name or not (args.version or args.run):
            raise ValueError(
                "give --name NAME with --version N, or with --run DIR --evaluation FILE; or --history NAME"
            )
        evaluate = evaluate_on_data if args.reevaluate else None
        if args.run:
            if not args.evaluation:
                raise ValueError("--run needs --evaluation: the evaluation stage's RUN_evaluation.json of that run")
            entry = ModelEntry(run=args.run, evaluation=args.evaluation)
            report = register_and_promote(args.name, entry, args.alias, evaluate, args.tracking_uri, args.wait)
            if "skipped" in report:
                raise FileNotFoundError(report["skipped"])
            return 1 if report["reason"].startswith("refused") else 0
        mlflow.set_tracking_uri(args.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or tracking_uri())
        decision = promote(
            args.name, args.version, metric=args.metric, alias=args.alias, evaluate=evaluate, wait=args.wait
        )
        verb = "moved" if decision.moved else "kept"
        print(f"{args.name} v{decision.candidate}: {verb} {args.alias} ({decision.reason})")
        return 1 if decision.refused else 0
    except PromotionBusy as err:
        print(f"error: {err}", file=sys.stderr)
        return 3
    except MlflowException as err:
        raise ValueError(f"MLflow: {err.message}") from None
