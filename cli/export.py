"""`transpose export`: a trained model as ONNX, verified against PyTorch before the file is kept."""

from __future__ import annotations

import argparse
import importlib.util

from cli.args import keypoint_set
from cli.loading import load_model_arg

DESCRIPTION = """Export a trained model to ONNX with a dynamic batch axis: input `image` [N, 3, h, w] (normalised
crops), output `heatmaps` [N, K, H, W] and, with --attention, `attention_0..` [N, L, L] per encoder layer. The
model card (keypoint set, input size, mean/std, heatmap stride) is in the file's metadata. The file is checked
with onnxruntime against PyTorch on fresh random inputs (max |diff| <= 1e-4 of max |output|) and kept only if
it passes; `transpose.export.onnx_runtime.OnnxPoseModel` then gives keypoints in image pixels without torch.

examples:
  transpose export --model outputs/pretrain --out outputs/pretrain/model.onnx
  transpose export --model models:/transpose-coco@champion --out champion.onnx --attention
  transpose export --model tp_r_256x192_enc4_d256_h1024_mh8.pth --arch transpose_r_a4 --keypoints coco \\
      --out transpose_r_a4.onnx
"""


def add_parser(sub) -> None:
    p = sub.add_parser(
        "export",
        help="ONNX export, verified against PyTorch",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--model", required=True, help="run directory, best.pth, models:/NAME@ALIAS, or weights with --arch")
    p.add_argument("--arch", help="registered architecture (see `transpose models`) for weights without a card")
    p.add_argument("--keypoints", type=keypoint_set, help="with --arch: coco, mpii or a COCO-format keypoint file")
    p.add_argument("--image-size", type=int, nargs=2, metavar=("H", "W"), help="with --arch (default: the model's)")
    p.add_argument("--out", required=True, help="the .onnx file to write")
    p.add_argument("--attention", action="store_true", help="also output each encoder layer's attention maps")
    p.add_argument("--tolerance", type=float, default=1e-4, help="max |onnx - torch| / max |torch| (default 1e-4)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    missing = [name for name in ("onnx", "onnxscript", "onnxruntime") if importlib.util.find_spec(name) is None]
    if missing:
        raise ValueError(f"ONNX export needs {', '.join(missing)}: pip install -e '.[export]'")
    from transpose.export.onnx import export_onnx

    image_size = tuple(args.image_size) if args.image_size else None
    model, card = load_model_arg(args.model, args.arch, args.keypoints, image_size)
    report = export_onnx(model, card, args.out, attention=args.attention, tolerance=args.tolerance)
    print(
        f"wrote {report.path} ({card.model}, {card.image_size[0]}x{card.image_size[1]}, {card.num_keypoints} "
        f"keypoints; outputs {', '.join(report.outputs)}) in {report.seconds:.0f} s; onnxruntime matches PyTorch "
        f"to {report.worst_relative_diff:.1e} of the max output at batch {', '.join(map(str, report.batch_sizes))}"
    )
    return 0
