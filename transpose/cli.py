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
