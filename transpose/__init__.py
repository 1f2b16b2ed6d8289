"""TransPose (Yang et al., ICCV 2021): keypoint localisation via Transformer, with its codec, evaluation
and attention explanations. Imports only torch, numpy, OpenCV, SciPy, pycocotools and matplotlib; the model
names below load torch on first use, so that `transpose.export.onnx_runtime` runs without it."""

from __future__ import annotations

__version__ = "0.1.0"
__all__ = ["__version__", "create_model", "list_models", "load_reference_checkpoint"]


def __getattr__(name: str):
    if name in ("create_model", "list_models", "load_reference_checkpoint"):
        import transpose.models

        return getattr(transpose.models, name)
    raise AttributeError(f"module 'transpose' has no attribute {name!r}")
