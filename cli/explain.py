"""`transpose explain`: the attention dependency / affected areas of one person's predicted keypoints."""

from __future__ import annotations

import argparse

from cli.args import keypoint_set, parse_box
from cli.loading import load_model_arg
from transpose.crops import crop, read_image_rgb
from transpose.explain import explain_crop, plot_attention_areas
from transpose.geometry import box_to_center_scale
from transpose.inference import normalize
from transpose.keypoints import COCO
from transpose.models import ModelCard, create_model

DESCRIPTION = """Crop the box, predict its keypoints and draw each keypoint's dependency (A[i,:]) or affected
(A[:,i]) area in every encoder layer, in the style of the paper's Fig. 6/7.

The model: a trained run (its model.json gives architecture, input size and keypoints), a registered version,
or weights trained elsewhere with --arch and --keypoints; --arch alone draws a randomly initialised model.

examples:
  transpose explain --model outputs/pretrain --image photo.jpg --box 280,44,218,346 --out fig.png
  transpose explain --model tp_h_48_256x192_enc4_d96_h192_mh1.pth --arch transpose_h_a4 --keypoints coco \\
      --image photo.jpg --box 280,44,218,346 --out fig.png --areas affected
"""


def add_parser(sub) -> None:
    p = sub.add_parser(
        "explain",
        help="attention-area figure for one person",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--model", help="run directory, best.pth, models:/NAME@ALIAS, or weights with --arch")
    p.add_argument("--arch", help="registered architecture (see `transpose models`) for weights without a card")
    p.add_argument("--keypoints", type=keypoint_set, help="with --arch: coco, mpii or a COCO-format keypoint file")
    p.add_argument("--image-size", type=int, nargs=2, metavar=("H", "W"), help="with --arch (default: the model's)")
    p.add_argument("--image", required=True, help="image file")
    p.add_argument("--box", required=True, type=parse_box, help="person box x,y,w,h in pixels")
    p.add_argument("--out", required=True, help="PNG to write")
    p.add_argument("--threshold", type=float, help="delta; default 0.01 (R) / 0.00075 (H) as in the paper")
    p.add_argument("--areas", choices=("dependency", "affected"), default="dependency")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.model:
        image_size = tuple(args.image_size) if args.image_size else None
        model, card = load_model_arg(args.model, args.arch, args.keypoints, image_size)
        note = ""
    elif args.arch:
        keypoints = args.keypoints or COCO
        size = {"image_size": tuple(args.image_size)} if args.image_size else {}
        model = create_model(args.arch, num_keypoints=keypoints.num_keypoints, **size).eval()
        card = ModelCard(args.arch, model.image_size, keypoints)
        note = " (random weights: pass --model for a trained one)"
    else:
        raise ValueError("give --model (a trained run, checkpoint or models:/ URI), or --arch for random weights")
    cfg = model.data_config
    h, w = cfg.image_size
    image = read_image_rgb(args.image)
    center, scale = box_to_center_scale(args.box, w / h)
    crop_rgb = crop(image, center, scale, cfg.image_size)
    areas, keypoints, scores = explain_crop(model, normalize(crop_rgb[None], cfg.mean, cfg.std)[0], args.threshold)
    out = plot_attention_areas(
        crop_rgb,
        keypoints,
        areas,
        card.keypoints,
        args.out,
        which=args.areas,
        scores=scores,
        title=f"{card.model}: {args.areas} areas, delta={areas.threshold:g}{note}",
    )
    print(f"figure written to {out}")
    return 0
