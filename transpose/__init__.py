"""TransPose (Yang et al., ICCV 2021): keypoint localisation via Transformer, with its codec, evaluation
and attention explanations. Imports only torch, numpy, OpenCV, SciPy, pycocotools and matplotlib."""

from transpose.models import create_model, list_models, load_reference_checkpoint

__version__ = "0.1.0"
__all__ = ["__version__", "create_model", "list_models", "load_reference_checkpoint"]
