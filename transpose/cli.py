"""The `transpose` command line. Every command is documented by `transpose COMMAND --help`."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

DESCRIPTION = """TransPose: keypoint localisation via Transformer (Yang et al., ICCV 2021).

commands:
  models     list the registered model variants with their parameter counts
  evaluate   COCO OKS AP of a results file, or MPII PCKh of predictions, as the reference computes them
  explain    attention figure (dependency / affected areas per keypoint and layer) for one person box
  predict    poses of the people in images (a file or a folder): COCO results JSON and skeleton drawings
  promote    register a trained model in MLflow and move the `champion` alias to it if it is better
"""


def _parse_box(text: str) -> list[float]:
    try:
        box = [float(v) for v in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"box must be x,y,w,h numbers, got {text!r}") from None
    if len(box) != 4 or box[2] <= 0 or box[3] <= 0:
        raise argparse.ArgumentTypeError(f"box must be x,y,w,h with w, h > 0, got {text!r}")
    return box


def _parse_floats(text: str) -> list[float]:
    if text.endswith(".json"):
        return [float(v) for v in json.loads(Path(text).read_text())]
    return [float(v) for v in text.split(",")]


def cmd_models(args: argparse.Namespace) -> int:
    from transpose.models import MODELS, create_model, list_models

    print(f"{'name':28s} {'params':>12s} {'trainable':>12s}  description")
    for name in list_models(args.pattern):
        model = create_model(name)
        total = sum(p.numel() for p in model.parameters())
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        doc = (MODELS[name].__doc__ or "").strip().splitlines()[0]
        print(f"{name:28s} {total:12,d} {trainable:12,d}  {doc}")
    return 0


def _write_metrics(metrics: dict, out: str | None) -> None:
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(json.dumps(metrics, indent=2) + "\n")
        print(f"metrics written to {out}")


def cmd_evaluate_coco(args: argparse.Namespace) -> int:
    from transpose.evaluation import evaluate_coco, format_coco_table, load_coco_ground_truth, load_coco_results

    gt = load_coco_ground_truth(args.ann, sigmas=args.sigmas)
    for note in gt.notes:
        print(f"note: {note}")
    results = load_coco_results(args.results, gt.keypoint_set.num_keypoints)
    metrics, summary = evaluate_coco(gt, results)
    print(summary.rstrip())
    print(format_coco_table(metrics))
    _write_metrics(metrics, args.out)
    if args.breakdown:
        from transpose.evaluation.breakdown import format_breakdown, keypoint_breakdown, plot_breakdown

        breakdown = keypoint_breakdown(gt, results)
        print(format_breakdown(breakdown))
        figure = plot_breakdown(breakdown, Path(args.breakdown))
        figure.with_suffix(".json").write_text(json.dumps(breakdown, indent=1) + "\n")
        print(f"breakdown: {figure} and {figure.with_suffix('.json')}")
    return 0


def _load_mpii_predictions(path: str):
    import numpy as np
    from scipy.io import loadmat

    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"predictions file {p} does not exist")
    if p.suffix == ".mat":
        mat = loadmat(str(p))
        if "preds" not in mat:
            raise ValueError(f"{p} has no 'preds' array (the reference's pred.mat layout)")
        return np.asarray(mat["preds"])[..., :2]
    if p.suffix == ".npy":
        return np.load(p)[..., :2]
    data = json.loads(p.read_text())
    if data and isinstance(data[0], dict):
        data = [entry["joints"] for entry in data]
    return np.asarray(data, dtype=np.float64)[..., :2]


def cmd_evaluate_mpii(args: argparse.Namespace) -> int:
    from transpose.evaluation import evaluate_mpii, format_mpii_table, load_mpii_ground_truth

    gt = load_mpii_ground_truth(args.gt)
    metrics = evaluate_mpii(_load_mpii_predictions(args.preds), gt)
    print(format_mpii_table(metrics))
    print("Mean@0.1 is PCKh at 0.1; the reference labels its PCKh at 0.11 as 'Mean@0.1' (last column).")
    _write_metrics(metrics, args.out)
    return 0


def cmd_explain(args: argparse.Namespace) -> int:
    import numpy as np

    from transpose.explain import explain_crop, plot_attention_areas
    from transpose.geometry import box_to_center_scale
    from transpose.inference import crop, keypoint_set_for, normalize, read_image_rgb
    from transpose.models import create_model

    model = create_model(
        args.model,
        num_keypoints=args.num_keypoints,
        image_size=args.image_size,
        pretrained=args.checkpoint,
    ).eval()
    cfg = model.data_config
    h, w = cfg.image_size
    image = read_image_rgb(args.image)
    center, scale = box_to_center_scale(args.box, w / h)
    crop_rgb = crop(image, center, scale, cfg.image_size)
    areas, coords_hm, scores = explain_crop(model, normalize(crop_rgb[None], cfg.mean, cfg.std)[0], args.threshold)
    hm_h, hm_w = cfg.heatmap_size
    ratio = (w - 1) / (hm_w - 1)  # heatmap -> crop, about the centres (unbiased convention)
    coords_crop = (coords_hm - [(hm_w - 1) / 2, (hm_h - 1) / 2]) * ratio + [(w - 1) / 2, (h - 1) / 2]
    kset = keypoint_set_for(cfg.num_keypoints)
    note = "" if args.checkpoint else " (random weights: pass --checkpoint for a trained model)"
    out = plot_attention_areas(
        crop_rgb,
        np.asarray(coords_crop),
        areas,
        kset,
        args.out,
        which=args.areas,
        scores=scores,
        title=f"{args.model}: {args.areas} areas, delta={areas.threshold:g}{note}",
    )
    print(f"figure written to {out}")
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from transpose.predict import run

    try:
        return run(args)
    except (ValueError, FileNotFoundError) as err:
        raise SystemExit(f"transpose predict: error: {err}") from None


PREDICT_DESCRIPTION = """Top-down pose estimation on images, with the reference's evaluation protocol: each person box
is cropped at the model's input aspect ratio with 1.25x padding, run with flip test, decoded with DARK,
rescored (box score x mean keypoint confidence above 0.2) and OKS-NMSed within its image. Crops are batched
across images.

Writes to --out:
  results.json                   COCO keypoint results: [{image_id, category_id: 1, keypoints: [x, y, score] x K,
                                 score}]. MPII (16-keypoint) models use the same layout (category_id 1, 48 values).
  images.json                    the images read: [{id, file_name, width, height, people}]
  <stem>_pose.jpg                every image with the skeletons of its people drawn
  <stem>_person<i>_explain.png   with --explain: person #i's attention dependency areas per encoder layer

Image ids: from --annotations (images[].file_name -> id), else the COCO file name's number
(000000000785.jpg -> 785), else fresh numbers (see images.json). Unreadable images are skipped and listed.

example:
  transpose predict --model outputs/train/coco_r_tiny --images val2017/ \\
      --boxes COCO_val2017_detections_AP_H_56_person.json --out predictions/
  transpose predict --model models:/transpose-coco@champion --images photo.jpg --out out/ --explain
"""


def cmd_promote(args: argparse.Namespace) -> int:
    try:  # the pipeline stack, imported only here: the library itself never needs MLflow
        import mlflow  # noqa: F401

        from pipelines.promote import promote_command
    except ImportError as err:
        hint = "pip install '.[pipeline]'"
        raise ValueError(f"transpose promote needs MLflow and the pipelines package ({err}): {hint}") from None
    from mlflow.exceptions import MlflowException

    try:
        return promote_command(args)
    except MlflowException as err:
        raise ValueError(f"MLflow: {err.message}") from None


PROMOTE_DESCRIPTION = """MLflow model registry: register trained models with their gate metric, and move an alias
(default `champion`) to a version only when it beats the holder's gate metric (strictly greater) on the same
evaluation data (a fingerprint of the annotation file and the split's shard manifests). A holder scored on other
data is re-evaluated on the candidate's with --reevaluate (the evaluate stage's protocol); without it the
promotion is refused (exit 1). Every decision is kept as a registered-model tag promotion.NNNNNN-vV.

The store: --tracking-uri, else $MLFLOW_TRACKING_URI, else (with --run-info) the run's own, else mlruns/mlflow.db.
Concurrent promotions are serialised by a file lock beside the store, or $TRANSPOSE_PROMOTE_LOCK (a path on a
shared filesystem) for a remote tracking server. Load a promoted model with models:/NAME@champion.

examples:
  transpose promote --run-info outputs/pretrain/mlflow_run.json --metrics metrics/coco.json --name transpose-coco
  transpose promote --name transpose-coco --version 3 [--metric AP] [--alias champion]
  transpose promote --history transpose-coco

With --run-info, --entry/--metric/--dataset/--split/--shards/--annotations default to params.yaml's
promote.models.NAME (the DVC stage `promote` does the same for every model listed there).
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="transpose", description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("models", help="list registered model variants", description="List model variants.")
    p.add_argument("pattern", nargs="?", default="*", help="shell pattern, e.g. 'transpose_h_*'")
    p.set_defaults(func=cmd_models)

    ev = sub.add_parser("evaluate", help="COCO OKS AP or MPII PCKh", description="Evaluate predictions.")
    evsub = ev.add_subparsers(dest="dataset", metavar="DATASET", required=True)
    p = evsub.add_parser(
        "coco",
        help="OKS AP of a COCO keypoint results file",
        description="OKS AP (pycocotools) of a COCO results file against any COCO-format keypoint file. "
        "Writes AP, AP50, AP75, APm, APl, AR (and AR50, AR75, ARm, ARl) to --out.",
    )
    p.add_argument("--ann", required=True, help="ground truth, COCO person_keypoints JSON")
    p.add_argument("--results", required=True, help="predictions, COCO results JSON list")
    p.add_argument("--sigmas", type=_parse_floats, help="OKS sigmas (comma list or .json) for non-COCO keypoints")
    p.add_argument("--out", help="write the metrics as JSON here")
    p.add_argument(
        "--breakdown",
        metavar="PNG",
        help="also show where the OKS is lost (per-joint hit rates, left/right mirrored people, OKS by person "
        "size): a figure here and its numbers beside it as .json",
    )
    p.set_defaults(func=cmd_evaluate_coco)
    p = evsub.add_parser(
        "mpii",
        help="PCKh@0.5 and @0.1 of MPII predictions",
        description="PCKh as the reference computes it. Predictions: 0-based [N, 16, 2] in the order of the "
        "ground truth (.mat with 'preds', .npy, or JSON). Writes per-part PCKh@0.5, PCKh, PCKh_0.1 and "
        "PCKh_0.11 (the reference's 'Mean@0.1') to --out.",
    )
    p.add_argument("--gt", required=True, help="annot/gt_valid.mat (pos_gt_src, jnt_missing, headboxes_src)")
    p.add_argument("--preds", required=True, help="predictions .mat/.npy/.json")
    p.add_argument("--out", help="write the metrics as JSON here")
    p.set_defaults(func=cmd_evaluate_mpii)

    p = sub.add_parser(
        "explain",
        help="attention-area figure for one person",
        description="Crop the box, predict its keypoints and draw each keypoint's dependency (A[i,:]) or "
        "affected (A[:,i]) area in every encoder layer, in the style of the paper's Fig. 6/7.",
    )
    p.add_argument("--model", required=True, help="registered model name (see `transpose models`)")
    p.add_argument("--checkpoint", help="trained weights (reference or ours); without it the weights are random")
    p.add_argument("--image", required=True, help="image file")
    p.add_argument("--box", required=True, type=_parse_box, help="person box x,y,w,h in pixels")
    p.add_argument("--out", required=True, help="PNG to write")
    p.add_argument("--num-keypoints", type=int, default=17, help="17 (COCO) or 16 (MPII)")
    p.add_argument("--image-size", type=int, nargs=2, metavar=("H", "W"), help="input size (default: model's)")
    p.add_argument("--threshold", type=float, help="delta; default 0.01 (R) / 0.00075 (H) as in the paper")
    p.add_argument("--areas", choices=("dependency", "affected"), default="dependency")
    p.set_defaults(func=cmd_explain)
    p = sub.add_parser(
        "predict",
        help="poses of the people in images: COCO results JSON and drawings",
        description=PREDICT_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--model",
        required=True,
        help="trained model: a checkpoint file (best.pth), a run directory holding best.pth (the architecture is "
        "read from model.json beside it), or a registry URI models:/NAME@ALIAS or models:/NAME/VERSION "
        "(needs the pipeline extras: mlflow)",
    )
    p.add_argument(
        "--images", required=True, metavar="PATH", help="one image, or a directory: every .jpg/.jpeg/.png in it, sorted"
    )
    p.add_argument(
        "--boxes",
        metavar="JSON",
        help="person detections, COCO results JSON [{image_id, category_id, bbox: [x, y, w, h], score}]; only "
        "category 1 is used. Without it each image is ONE person whose box is the whole image",
    )
    p.add_argument(
        "--annotations", metavar="JSON", help="COCO JSON whose images[].file_name -> id maps files to --boxes image ids"
    )
    p.add_argument("--out", required=True, metavar="DIR", help="output directory (created if missing)")
    p.add_argument(
        "--explain",
        action="store_true",
        help="also write each person's attention dependency areas (paper Fig. 6/7); about a second per person, "
        "so limit the people with --min-box-score",
    )
    p.add_argument(
        "--batch-size", type=int, default=32, metavar="N", help="person crops per forward pass, across images (32)"
    )
    p.add_argument("--no-flip", action="store_true", help="skip the flip test (2x faster, slightly less accurate)")
    p.add_argument(
        "--arch",
        metavar="NAME",
        help="architecture for a checkpoint without model.json, e.g. transpose_r_a4 (see `transpose models`)",
    )
    p.add_argument(
        "--image-size", type=int, nargs=2, metavar=("H", "W"), help="input size with --arch (default: the variant's)"
    )
    p.add_argument(
        "--min-box-score",
        type=float,
        metavar="S",
        default=0.0,
        help="drop detector boxes scoring below this (default 0: keep all, as the reference; rescoring ranks them)",
    )
    p.add_argument(
        "--draw-threshold",
        type=float,
        default=0.2,
        metavar="S",
        help="hide drawn keypoints with a lower confidence (0.2)",
    )
    p.add_argument("--device", choices=("cpu", "cuda"), help="default: cuda when a GPU is visible, else cpu")
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser(
        "promote",
        help="register a model / move the champion alias / show promotion history",
        description=PROMOTE_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--name", help="registered model, e.g. transpose-coco or transpose-mpii")
    p.add_argument("--version", help="the version to promote (a number)")
    p.add_argument("--history", metavar="NAME", help="print every promotion decision of NAME as a table")
    p.add_argument("--run-info", help="a training stage's mlflow_run.json: register its model, then promote it")
    p.add_argument("--metrics", help="with --run-info: the evaluation stage's metrics file, e.g. metrics/coco.json")
    p.add_argument("--entry", help="the run's name inside --metrics, e.g. pretrain (default: its only run)")
    p.add_argument("--metric", help="gate metric (default: the version's own, AP for COCO, PCKh for MPII)")
    p.add_argument("--alias", default="champion", help="the alias to move (default: champion)")
    p.add_argument("--dataset", choices=("coco", "mpii"), help="with --run-info: the evaluation data's dataset")
    p.add_argument("--split", help="with --run-info: the evaluated split, e.g. val_det or valid")
    p.add_argument("--shards", help="with --run-info: the shards folder holding SPLIT-manifest.json")
    p.add_argument("--annotations", help="with --run-info: the split's annotation file")
    p.add_argument("--reevaluate", action="store_true", help="re-score a holder evaluated on other data")
    p.add_argument("--tracking-uri", help="MLflow store (default: $MLFLOW_TRACKING_URI or mlruns/mlflow.db)")
    p.add_argument("--params", type=Path, default=Path("params.yaml"), help="defaults for --run-info")
    p.set_defaults(func=cmd_promote)
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
