"""`transpose explain`: the attention dependency / affected areas of one person's predicted keypoints."""

from __future__ import annotations

import argparse
from pathlib import Path

from torch import nn

from cli.args import keypoint_set, parse_box
from cli.loading import load_model_arg
from transpose.crops import crop, read_image_rgb
from transpose.explain import explain_crop, plot_attention_areas
from transpose.explain_page import write_explanation_page
from transpose.geometry import box_to_center_scale
from transpose.inference import normalize
from transpose.keypoints import COCO
from transpose.models import ModelCard, create_model

DESCRIPTION = """Crop the box, predict its keypoints and show each keypoint's dependency (A[i,:]) or affected
(A[:,i]) area in every encoder layer: as a figure in the style of the paper's Fig. 6/7 (--out), and/or as one
self-contained HTML page (--html; no server or network needed) where a click on a keypoint or any location
shows its area, with a layer slider, a dependency/affected toggle and delta.

The model: a trained run (its model.json gives architecture, input size and keypoints), a registered version,
or weights trained elsewhere with --arch and --keypoints. Untrained maps explain nothing, so a randomly
initialised model needs --arch NAME --random-weights.

examples (from the repository root, after `bash scripts/repro.sh` has trained outputs/pretrain):
  transpose explain --model outputs/pretrain --image tests/data/realdata/coco/000000000785.jpg \\
      --box 280,44,218,346 --out fig.png --html page.html
  transpose explain --model models:/transpose-coco@champion --image tests/data/realdata/coco/000000000785.jpg \\
      --box 280,44,218,346 --html page.html --areas affected
  transpose explain --arch transpose_r_a4 --random-weights --image tests/data/realdata/coco/000000000785.jpg \\
      --box 280,44,218,346 --html page.html
  transpose explain --model tp_h_48_256x192_enc4_d96_h192_mh1.pth --arch transpose_h_a4 --keypoints coco \\
      --image tests/data/realdata/coco/000000000785.jpg --box 280,44,218,346 --out fig.png
"""


def add_parser(sub) -> None:
    p = sub.add_parser(
        "explain",
        help="attention-area figure or interactive HTML page for one person",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--model",
        help="trained model: a checkpoint file (best.pth), a run directory holding best.pth (its model.json gives "
        "the architecture and keypoints), or a registry URI models:/NAME@ALIAS or models:/NAME/VERSION (needs "
        "the pipeline extras: mlflow); weights without model.json take --arch and --keypoints",
    )
    p.add_argument("--arch", help="registered architecture (see `transpose models`) for weights without a card")
    p.add_argument("--keypoints", type=keypoint_set, help="with --arch: coco, mpii or a COCO-format keypoint file")
    p.add_argument("--image-size", type=int, nargs=2, metavar=("H", "W"), help="with --arch (default: the model's)")
    p.add_argument(
        "--random-weights",
        action="store_true",
        help="with --arch and no --model: explain a randomly initialised model (to try the command; its maps mean "
        "nothing)",
    )
    p.add_argument("--image", required=True, help="image file")
    p.add_argument("--box", required=True, type=parse_box, help="person box x,y,w,h in pixels")
    p.add_argument("--out", metavar="FIG.png", help="the Fig. 6/7-style figure to write")
    p.add_argument("--html", metavar="PAGE.html", help="the interactive page to write (one file, works offline)")
    p.add_argument("--threshold", type=float, help="delta; default 0.01 (R) / 0.00075 (H) as in the paper")
    p.add_argument("--areas", choices=("dependency", "affected"), default="dependency", help="what --out draws")
    p.set_defaults(func=run)


def load(args: argparse.Namespace) -> tuple[nn.Module, ModelCard, str]:
    """(model, card, a note for titles) for --model, or for --arch --random-weights."""
    if args.model:
        if args.random_weights:
            raise ValueError("--random-weights is for --arch without --model; drop one of them")
        image_size = tuple(args.image_size) if args.image_size else None
        model, card = load_model_arg(args.model, args.arch, args.keypoints, image_size)
        return model, card, ""
    if not (args.arch and args.random_weights):
        raise ValueError(
            "no trained weights: give --model (a run directory, a best.pth checkpoint or models:/NAME@ALIAS), "
            "or --arch NAME --random-weights to explain a randomly initialised model"
        )
    keypoints = args.keypoints or COCO
    size = {"image_size": tuple(args.image_size)} if args.image_size else {}
    model = create_model(args.arch, num_keypoints=keypoints.num_keypoints, **size).eval()
    return model, ModelCard(args.arch, model.image_size, keypoints), " (random weights)"


def run(args: argparse.Namespace) -> int:
    if not (args.out or args.html):
        raise ValueError("nothing to write: give --out FIG.png and/or --html PAGE.html")
    model, card, note = load(args)
    cfg = model.data_config
    h, w = cfg.image_size
    image = read_image_rgb(args.image)
    center, scale = box_to_center_scale(args.box, w / h)
    crop_rgb = crop(image, center, scale, cfg.image_size)
    if args.out:
        x = normalize(crop_rgb[None], cfg.mean, cfg.std)[0]
        areas, keypoints, scores = explain_crop(model, x, args.threshold)
        title = f"{card.model}: {args.areas} areas, delta={areas.threshold:g}{note}"
        out = plot_attention_areas(
            crop_rgb, keypoints, areas, card.keypoints, args.out, which=args.areas, scores=scores, title=title
        )
        print(f"figure written to {out}")
    if args.html:
        box = ",".join(f"{v:g}" for v in args.box)
        title = f"{card.model}{note}: attention areas of {Path(args.image).name}, box {box}"
        page = write_explanation_page(
            model, crop_rgb, card.keypoints, args.html, title=title, threshold=args.threshold, model_name=card.model
        )
        print(f"page written to {page} ({page.stat().st_size / 1e6:.1f} MB): open it in a browser")
    return 0
