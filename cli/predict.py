"""`transpose predict`: poses of the people in image files, as the reference evaluates them."""

from __future__ import annotations

import argparse

import numpy as np
import torch

from cli.args import keypoint_set, parse_box, pick_device
from cli.loading import load_model_arg
from transpose.crops import read_image_rgb
from transpose.predict import (
    WHOLE_IMAGE_NOTE,
    PredictInputError,
    PredictOptions,
    annotation_ids,
    assign_image_ids,
    image_inputs,
    list_images,
    load_detections,
    predict_images,
    summary,
    write_results,
)

DESCRIPTION = """Top-down pose estimation on images, with the reference's evaluation protocol: each person box
is cropped at the model's input aspect ratio with 1.25x padding, run with flip test, decoded with DARK,
rescored (box score x mean keypoint confidence above 0.2) and OKS-NMSed within its image. Crops are batched
across images. The model's card (model.json, or the registered version's) gives its architecture, input size
and keypoint set.

Writes to --out:
  results.json                   COCO keypoint results: [{image_id, category_id: 1, keypoints: [x, y, score] x K,
                                 score}], K = the model's keypoints
  images.json                    the images read: [{id, file_name, width, height, people}]
  <stem>_pose.jpg                every image with the skeletons of its people drawn
  <stem>_person<i>_explain.png   with --explain: person #i's attention dependency areas per encoder layer

Image ids: from --annotations (images[].file_name -> id), else the COCO file name's number
(000000000785.jpg -> 785), else fresh numbers (see images.json). Unreadable images (also truncated JPEG/PNG
files) are skipped and listed; when none can be read the command fails. The drawings show the people whose
rescored score reaches --min-person-score; results.json keeps everyone, as COCO evaluation needs.

examples:
  transpose predict --model outputs/pretrain --images data/synthetic/coco/images/val \\
      --boxes data/synthetic/coco/person_detection_results/synthetic_val_detections.json \\
      --annotations data/synthetic/coco/annotations/person_keypoints_val.json --out predictions/
  transpose predict --model models:/transpose-coco@champion --images photo.jpg --out out/ --explain
  transpose predict --model outputs/pretrain --images tests/data/realdata/coco/000000000785.jpg \
      --box 280,44,218,346 --out out/
"""


def add_parser(sub) -> None:
    p = sub.add_parser(
        "predict",
        help="poses of the people in images: COCO results JSON and drawings",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--model",
        required=True,
        help="trained model: a checkpoint file (best.pth), a run directory holding best.pth (its model.json gives "
        "the architecture and keypoints), or a registry URI models:/NAME@ALIAS or models:/NAME/VERSION (needs "
        "the pipeline extras: mlflow)",
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
        "--box",
        type=parse_box,
        metavar="X,Y,W,H",
        help="one person's box in pixels, for a single image (instead of --boxes); box score 1",
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
    p.add_argument("--arch", metavar="NAME", help="architecture of weights without model.json, e.g. transpose_r_a4")
    p.add_argument("--keypoints", type=keypoint_set, help="with --arch: coco, mpii or a COCO-format keypoint file")
    p.add_argument("--image-size", type=int, nargs=2, metavar=("H", "W"), help="with --arch (default: the variant's)")
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
    p.add_argument(
        "--min-person-score",
        type=float,
        default=0.2,
        metavar="S",
        help="draw (and explain) only people whose rescored score (box score x mean confident keypoint score, "
        "as in results.json) reaches S (0.2: duplicates of a person and boxes on no one score below it, a "
        "found person well above); results.json keeps everyone",
    )
    p.add_argument("--device", choices=("cpu", "cuda"), help="default: cuda when a GPU is visible, else cpu")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    try:
        return predict(args)
    except (ValueError, FileNotFoundError) as err:
        raise SystemExit(f"transpose predict: error: {err}") from None


def one_box(box: list[float], files: list, boxes_file: str | None):
    """--box as the detections of the single image: ([1, 4] boxes, [1] scores); it must overlap the image."""
    if boxes_file:
        raise PredictInputError("give either --box (one person) or --boxes (a detections file), not both")
    if len(files) != 1:
        raise PredictInputError(f"--box is for one image, but --images holds {len(files)}: point it at one file")
    height, width = read_image_rgb(files[0]).shape[:2]
    x, y, w, h = box
    if x >= width or y >= height or x + w <= 0 or y + h <= 0:
        raise PredictInputError(
            f"--box {x:g},{y:g},{w:g},{h:g} lies outside {files[0].name} ({width}x{height}); give x,y,w,h in its pixels"
        )
    return np.asarray([box], np.float64), np.ones(1)


def predict(args: argparse.Namespace) -> int:
    options = PredictOptions(
        batch_size=args.batch_size,
        flip=not args.no_flip,
        draw_threshold=args.draw_threshold,
        explain=args.explain,
        min_person_score=args.min_person_score,
    )
    files = list_images(args.images)
    ids = assign_image_ids(files, annotation_ids(args.annotations) if args.annotations else None)
    if args.box is not None:
        detections = {ids[0]: one_box(args.box, files, args.boxes)}
    else:
        detections = load_detections(args.boxes, args.min_box_score) if args.boxes else None
    if detections is not None and not set(ids) & set(detections):
        raise PredictInputError(
            f"--boxes {args.boxes}: none of its image ids match the {len(files)} image(s) in {args.images}; "
            "ids come from COCO file names (000000000785.jpg -> 785) or from --annotations images[].file_name"
        )
    if detections is None:
        print(WHOLE_IMAGE_NOTE)
    device = pick_device(args.device)
    image_size = tuple(args.image_size) if args.image_size else None
    model, card = load_model_arg(args.model, args.arch, args.keypoints, image_size)
    model = model.to(device).eval()
    h, w = card.image_size
    print(f"{card.model} at {h}x{w}, {card.num_keypoints} keypoints ({card.keypoints.name})")
    sources = image_inputs(files, ids, detections)
    with torch.inference_mode():
        report = predict_images(model, card.keypoints, sources, args.out, options)
    print(summary(report, write_results(report, args.out), detections is not None))
    return 0
