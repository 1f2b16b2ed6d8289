"""`transpose evaluate coco|mpii`: score a results file as the reference does."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from cli.args import parse_floats
from transpose.evaluation import (
    MpiiFormatError,
    evaluate_coco,
    evaluate_mpii,
    format_coco_table,
    format_mpii_table,
    load_coco_ground_truth,
    load_coco_results,
    load_mpii_ground_truth,
)
from transpose.evaluation.json_input import read_json
from transpose.evaluation.mpii import check_predictions, read_mat

COCO_DESCRIPTION = """OKS AP (pycocotools) of a COCO results file against any COCO-format keypoint file.
Writes AP, AP50, AP75, APm, APl, AR (and AR50, AR75, ARm, ARl) to --out.

example:
  transpose evaluate coco --ann person_keypoints_val2017.json --results results.json --out metrics.json
"""

MPII_DESCRIPTION = """PCKh as the reference computes it. Predictions: 0-based [N, 16, 2] in the order of the
ground truth (.mat with 'preds', .npy, or JSON). Writes per-part PCKh@0.5, PCKh, PCKh_0.1 and PCKh_0.11 (the
reference's 'Mean@0.1') to --out.

example:
  transpose evaluate mpii --gt annot/gt_valid.mat --preds pred.mat --out metrics.json
"""


def add_parser(sub) -> None:
    ev = sub.add_parser("evaluate", help="COCO OKS AP or MPII PCKh", description="Evaluate predictions.")
    evsub = ev.add_subparsers(dest="dataset", metavar="DATASET", required=True)
    raw = argparse.RawDescriptionHelpFormatter
    p = evsub.add_parser(
        "coco", help="OKS AP of a COCO keypoint results file", description=COCO_DESCRIPTION, formatter_class=raw
    )
    p.add_argument("--ann", required=True, help="ground truth, COCO person_keypoints JSON")
    p.add_argument("--results", required=True, help="predictions, COCO results JSON list")
    p.add_argument("--sigmas", type=parse_floats, help="OKS sigmas (comma list or .json) for non-COCO keypoints")
    p.add_argument("--out", help="write the metrics as JSON here")
    p.add_argument(
        "--breakdown",
        metavar="PNG",
        help="also show where the OKS is lost (per-joint hit rates, left/right mirrored people, OKS by person "
        "size): a figure here and its numbers beside it as .json",
    )
    p.set_defaults(func=run_coco)
    p = evsub.add_parser(
        "mpii", help="PCKh@0.5 and @0.1 of MPII predictions", description=MPII_DESCRIPTION, formatter_class=raw
    )
    p.add_argument("--gt", required=True, help="annot/gt_valid.mat (pos_gt_src, jnt_missing, headboxes_src)")
    p.add_argument("--preds", required=True, help="predictions .mat/.npy/.json")
    p.add_argument("--out", help="write the metrics as JSON here")
    p.set_defaults(func=run_mpii)


def write_metrics(metrics: dict, out: str | None) -> None:
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(json.dumps(metrics, indent=2) + "\n")
        print(f"metrics written to {out}")


def run_coco(args: argparse.Namespace) -> int:
    gt = load_coco_ground_truth(args.ann, sigmas=args.sigmas)
    for note in gt.notes:
        print(f"note: {note}")
    results = load_coco_results(args.results, gt.keypoint_set.num_keypoints, category_id=gt.category_id)
    metrics, summary = evaluate_coco(gt, results, source=args.results)
    print(summary.rstrip())
    print(format_coco_table(metrics))
    write_metrics(metrics, args.out)
    if args.breakdown:
        from transpose.evaluation.breakdown import format_breakdown, keypoint_breakdown, plot_breakdown

        breakdown = keypoint_breakdown(gt, results)
        print(format_breakdown(breakdown))
        figure = plot_breakdown(breakdown, Path(args.breakdown))
        figure.with_suffix(".json").write_text(json.dumps(breakdown, indent=1) + "\n")
        print(f"breakdown: {figure} and {figure.with_suffix('.json')}")
    return 0


def load_mpii_predictions(path: str | Path) -> np.ndarray:
    """0-based [N, 16, 2] joints from a .mat ('preds'), .npy or JSON (lists, or {joints} entries) file; a file
    that cannot be read as one is an MpiiFormatError naming it."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"predictions file {p} does not exist")
    layout = "expected [N, 16, 2] joints (.mat with 'preds', .npy, or a JSON list of joints or {joints} entries)"
    if p.suffix == ".mat":
        mat = read_mat(p, "MPII predictions (pred.mat)")
        if "preds" not in mat:
            raise MpiiFormatError(f"{p} has no 'preds' array (the reference's pred.mat layout)")
        data = mat["preds"]
    elif p.suffix == ".npy":
        try:
            data = np.load(p, allow_pickle=False)
        except (OSError, ValueError, EOFError) as err:
            raise MpiiFormatError(f"{p} is not a readable .npy array ({err}); {layout}") from None
    else:
        data = read_json(p, "MPII predictions (JSON)", MpiiFormatError)
        if isinstance(data, list) and data and all(isinstance(entry, dict) for entry in data):
            if not all("joints" in entry for entry in data):
                raise MpiiFormatError(f"{p}: an entry has no 'joints'; {layout}")
            data = [entry["joints"] for entry in data]
    try:
        array = np.asarray(data, dtype=np.float64)
    except (TypeError, ValueError, OverflowError) as err:
        raise MpiiFormatError(f"{p}: not an array of numbers ({err}); {layout}") from None
    if array.ndim != 3 or array.shape[1:] not in ((16, 2), (16, 3)):
        raise MpiiFormatError(f"{p}: joints of shape {array.shape}; {layout}")
    return array[..., :2]


def run_mpii(args: argparse.Namespace) -> int:
    gt = load_mpii_ground_truth(args.gt)
    metrics = evaluate_mpii(check_predictions(load_mpii_predictions(args.preds), gt, source=args.preds), gt)
    print(format_mpii_table(metrics))
    print("Mean@0.1 is PCKh at 0.1; the reference labels its PCKh at 0.11 as 'Mean@0.1' (last column).")
    write_metrics(metrics, args.out)
    return 0
