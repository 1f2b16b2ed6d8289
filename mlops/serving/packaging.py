"""Logging a trained run as one MLflow model with two flavours.

    python_function   `PoseServingModel`: base64 images (+ boxes) in, keypoints in image pixels out; what
                      `mlflow models serve` and `mlflow.pyfunc.load_model` run
    pytorch           the TransPose nn.Module itself (pickled with its code): `mlflow.pytorch.load_model`
                      gives a real module with `.eval()` that runs at any input size

The model carries its code (the packages of the serving model's import closure: `transpose` and `mlops`), its
weights and model card as artifacts, a signature and an input example (a real request), the card in its
metadata, and requirements that install where it is served: the library's own dependencies (pyproject) pinned
to the versions that trained it, and torch as the very build that trained it (a `+cpu` build from PyTorch's
CPU index instead of PyPI's multi-GB CUDA default).
"""

from __future__ import annotations

import base64
import importlib.metadata
import json
import re
import shutil
import tempfile
from pathlib import Path

import cv2
import numpy as np

from mlops.fingerprints import REPO, code_files
from mlops.serving.model import CARD, WEIGHTS, PoseServingModel

DISTRIBUTION = "transpose-pipeline"
TORCH_INDEX = "https://download.pytorch.org/whl/{label}"


def log_serving_model(run_dir: str | Path, name: str = "model", run_id: str | None = None):
    """Log the run's best.pth and model.json as the two-flavour model to `run_id` (default: the active run);
    returns MLflow's ModelInfo."""
    from mlflow.models import Model

    run_dir = Path(run_dir)
    weights, card = run_dir / "best.pth", run_dir / "model.json"
    for path in (weights, card):
        if not path.is_file():
            raise FileNotFoundError(f"{path}: the run has no {path.name} to log as a model")
    card_data = json.loads(card.read_text())
    return Model.log(
        artifact_path=None,
        name=name,
        run_id=run_id,
        flavor=_TwoFlavours,
        weights=weights,
        card=card,
        metadata={"model_card": card_data},
        signature=serving_signature(),
        input_example=request_example(card_data["image_size"]),
    )


class _TwoFlavours:
    """The 'flavour module' Model.log calls: saves the pyfunc model, then adds the pytorch flavour to it."""

    __name__ = "transpose"

    @staticmethod
    def save_model(path, mlflow_model, weights, card, signature=None, input_example=None, metadata=None):
        import mlflow.pyfunc
        import mlflow.pytorch
        import torch

        from transpose.models import load_trained

        with tempfile.TemporaryDirectory() as tmp:
            code = bundle_code(Path(tmp) / "code")
            mlflow.pyfunc.save_model(
                path,
                python_model=PoseServingModel(),
                artifacts={WEIGHTS: str(weights), CARD: str(card)},
                code_paths=code,
                signature=signature,
                input_example=input_example,
                pip_requirements=serving_requirements(),
                metadata=metadata,
                mlflow_model=mlflow_model,
            )
            module = load_trained(weights)[0]
            torch_dir = Path(tmp) / "torch"
            mlflow.pytorch.save_model(module, torch_dir, serialization_format="pickle", code_paths=code)
            shutil.copytree(torch_dir / "data", Path(path) / "torch")
        mlflow_model.add_flavor("pytorch", model_data="torch", pytorch_version=str(torch.__version__), code="code")
        mlflow_model.save(Path(path) / "MLmodel")


def bundle_code(dst: Path) -> list[str]:
    """Copy the project packages the serving model imports (its import closure: `transpose` and `mlops`) into
    dst, each one whole: MLflow puts the bundle first on sys.path, so a partial package would hide the rest of
    the installed one from later imports (and from child processes, which inherit sys.path)."""
    packages = sorted({path.relative_to(REPO).parts[0] for path in code_files(["mlops.serving.model"])})
    for package in packages:
        shutil.copytree(REPO / package, dst / package, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    return [str(dst / package) for package in packages]


def serving_signature():
    """Rows of {image: base64 JPEG/PNG, boxes?: [[x, y, w, h]], box_scores?: [s]}; param flip (default true)."""
    from mlflow.models import ModelSignature
    from mlflow.types.schema import AnyType, ColSpec, ParamSchema, ParamSpec, Schema

    inputs = Schema(
        [
            ColSpec("string", "image"),
            ColSpec(AnyType(), "boxes", required=False),
            ColSpec(AnyType(), "box_scores", required=False),
        ]
    )
    return ModelSignature(inputs=inputs, params=ParamSchema([ParamSpec("flip", "boolean", True)]))


def request_example(image_size_hw) -> list[dict]:
    """A valid request: one small grey image with one person box (the signature's input example)."""
    h, w = (int(v) for v in image_size_hw)
    image = np.full((2 * h, 2 * w, 3), 127, np.uint8)
    cv2.rectangle(image, (w // 2, h // 4), (w + w // 2, h + h // 2), (200, 160, 120), -1)
    ok, jpeg = cv2.imencode(".jpg", image)
    assert ok
    box = [float(w // 2), float(h // 4), float(w), float(h + h // 4)]
    return [{"image": base64.b64encode(jpeg.tobytes()).decode(), "boxes": [box], "box_scores": [1.0]}]


def serving_requirements() -> list[str]:
    """pip requirements of the served model: torch as built here, the library's dependencies and MLflow pinned."""
    lines = torch_requirement()
    for requirement in importlib.metadata.requires(DISTRIBUTION) or []:
        if "extra ==" in requirement:
            continue
        name = re.split(r"[<>=!~;\[ ]", requirement, maxsplit=1)[0]
        if name != "torch":
            lines.append(f"{name}=={importlib.metadata.version(name)}")
    for name in ("mlflow", "cloudpickle", "pandas"):
        lines.append(f"{name}=={importlib.metadata.version(name)}")
    return lines


def torch_requirement(version: str | None = None) -> list[str]:
    """torch pinned with its local label (2.13.0+cpu) and the PyTorch index that serves that build; a build
    without a label is PyPI's own."""
    import torch

    version = str(version or torch.__version__)
    public, _, label = version.partition("+")
    if not label:
        return [f"torch=={public}"]
    return [f"--extra-index-url {TORCH_INDEX.format(label=label)}", f"torch=={public}+{label}"]
