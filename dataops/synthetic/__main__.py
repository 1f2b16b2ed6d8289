"""Command line: generate the synthetic dataset and/or its contact sheet.

python -m dataops.synthetic --out data/synthetic --seed 22                       # the embedded default
python -m dataops.synthetic --out /tmp/syn --coco-train 50 --coco-val 10 --mpii-train 0 --mpii-valid 0
python -m dataops.synthetic --contact-sheet docs/figures/synthetic_contact_sheet.png   # the sheet only
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time

from dataops.synthetic.config import SyntheticConfig
from dataops.synthetic.contact_sheet import contact_sheet
from dataops.synthetic.writer import generate

DEFAULTS = SyntheticConfig()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m dataops.synthetic",
        description=(
            "Render synthetic photographs of articulated people (several per image, occluding each other and "
            "cut by the frame) and write them in the official COCO keypoint and MPII layouts, plus a fake "
            "person-detector results file for COCO val. The same seed and parameters give byte-identical "
            "JPEGs and JSON, whatever --workers is."
        ),
        epilog=(
            "Writes under OUT: coco/images/{train,val}/*.jpg, coco/annotations/person_keypoints_{train,val}.json, "
            "coco/person_detection_results/synthetic_val_detections.json, mpii/images/*.jpg, "
            "mpii/annot/{train,valid}.json, mpii/annot/gt_valid.mat and synthetic_summary.json. "
            "COCO area = the visible mask's pixel count (segment area, as COCO), not the box area."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--out", help="output folder (None: write only --contact-sheet)")
    parser.add_argument("--seed", type=int, default=DEFAULTS.seed, help="dataset seed")
    parser.add_argument("--coco-train", type=int, default=DEFAULTS.coco_train, help="COCO train images")
    parser.add_argument("--coco-val", type=int, default=DEFAULTS.coco_val, help="COCO val images")
    parser.add_argument("--mpii-train", type=int, default=DEFAULTS.mpii_train, help="MPII train images")
    parser.add_argument("--mpii-valid", type=int, default=DEFAULTS.mpii_valid, help="MPII valid images")
    parser.add_argument("--width", type=int, default=DEFAULTS.image_size[0], help="image width")
    parser.add_argument("--height", type=int, default=DEFAULTS.image_size[1], help="image height")
    parser.add_argument(
        "--people", type=int, nargs=2, metavar=("MIN", "MAX"), default=DEFAULTS.people_per_image,
        help="people per image (uniform, inclusive)",
    )  # fmt: skip
    parser.add_argument(
        "--person-height", type=float, nargs=2, metavar=("MIN", "MAX"), default=DEFAULTS.person_height,
        help="nominal standing height of a person in pixels (log-uniform, tilted toward tall)",
    )  # fmt: skip
    parser.add_argument("--jpeg-quality", type=int, default=DEFAULTS.jpeg_quality, help="JPEG quality")
    parser.add_argument("--workers", type=int, default=None, help="rendering processes (None: the CPU count)")
    parser.add_argument("--contact-sheet", metavar="PNG", help="also write a grid of labelled COCO val samples")
    parser.add_argument("--contact-sheet-images", type=int, default=12, help="images on the contact sheet")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser


def config_from_args(args: argparse.Namespace) -> SyntheticConfig:
    return dataclasses.replace(
        DEFAULTS,
        seed=args.seed,
        coco_train=args.coco_train,
        coco_val=args.coco_val,
        mpii_train=args.mpii_train,
        mpii_valid=args.mpii_valid,
        image_size=(args.width, args.height),
        people_per_image=tuple(args.people),
        person_height=tuple(args.person_height),
        jpeg_quality=args.jpeg_quality,
    )


def format_summary(summary: dict) -> str:
    lines = []
    for split, s in summary["splits"].items():
        if split.startswith("coco"):
            k = s["keypoints"]
            lines.append(
                f"{split}: {s['images']} images, {s['instances']} instances "
                f"({s['instances_with_keypoints']} with keypoints); keypoints v=2 {k['v2']}, v=1 {k['v1']}, "
                f"v=0 {k['v0']} (visible/labelled {s['visible_fraction_of_labelled']:.2f})"
            )
            lines.append(f"  person height px {s['person_height_px']}; poses {s['poses']}; facing {s['facing']}")
            if "detections" in s:
                d = s["detections"]
                lines.append(
                    f"  detections: {d['boxes']} boxes, {d['true_positives']} on a person (IoU >= 0.5), "
                    f"{d['false_positives']} false positives, {d['missed']} people missed"
                )
        else:
            lines.append(
                f"{split}: {s['images']} images, {s['entries']} annotated people, "
                f"labelled joints {s['labelled_joint_fraction']:.2f}"
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.out is None and args.contact_sheet is None:
        parser.error("nothing to do: give --out and/or --contact-sheet")
    try:
        config = config_from_args(args)
    except ValueError as err:
        parser.error(str(err))
    if args.out is not None:
        start = time.perf_counter()
        summary = generate(config, args.out, workers=args.workers, progress=not args.no_progress)
        seconds = time.perf_counter() - start
        total = sum(s["images"] for s in summary["splits"].values())
        print(f"wrote {total} images to {args.out} in {seconds:.1f} s ({total / max(seconds, 1e-9):.0f} images/s)")
        print(format_summary(summary))
    if args.contact_sheet is not None:
        contact_sheet(config, args.contact_sheet, num_images=args.contact_sheet_images)
        print(f"wrote the contact sheet {args.contact_sheet}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
