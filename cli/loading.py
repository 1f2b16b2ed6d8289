"""The trained model a command is pointed at: a run directory or checkpoint (its model card beside it), a
registered version `models:/NAME@ALIAS` or `models:/NAME/VERSION`, or weights trained elsewhere with the
architecture and keypoint set given by hand."""

from __future__ import annotations

from pathlib import Path

from torch import nn

from transpose.keypoints import KeypointSet
from transpose.models import ModelCard, card_for_weights, checkpoint_path, find_card, load_trained

REGISTRY_PREFIX = "models:/"


def load_model_arg(
    spec: str,
    arch: str | None = None,
    keypoints: KeypointSet | None = None,
    image_size: tuple[int, int] | None = None,
) -> tuple[nn.Module, ModelCard]:
    """(model in eval mode, its card) for `--model SPEC` (with `--arch`/`--keypoints`/`--image-size` for weights
    without a card)."""
    by_hand = arch is not None or keypoints is not None or image_size is not None
    if spec.startswith(REGISTRY_PREFIX):
        if by_hand:
            raise ValueError(f"--arch/--keypoints/--image-size are for checkpoints without a card; {spec} has one")
        return _load_registered(spec)
    path = Path(spec)
    if not path.exists():
        raise ValueError(
            f"--model {path} does not exist: give a best.pth checkpoint, a run directory holding best.pth, "
            "or a registry URI models:/NAME@ALIAS"
        )
    weights = checkpoint_path(path)
    if not weights.is_file():
        raise ValueError(f"--model {path} is a directory without best.pth: point at the checkpoint file")
    if not by_hand:
        if find_card(path) is None:
            raise ValueError(
                f"--model {path}: no model.json beside {weights}; for weights trained elsewhere give the "
                "architecture and keypoints: --arch NAME --keypoints coco|mpii|FILE.json [--image-size H W]"
            )
        return load_trained(path)
    if arch is None or keypoints is None:
        raise ValueError("weights without a model card need both --arch NAME and --keypoints coco|mpii|FILE.json")
    return load_trained(weights, card_for_weights(weights, arch, keypoints, image_size))


def _load_registered(uri: str) -> tuple[nn.Module, ModelCard]:
    """A registered version from the project's store ($MLFLOW_TRACKING_URI, else mlruns/mlflow.db, as promote)."""
    try:
        from mlops.registry import load_registered_model
    except ImportError as err:
        raise ValueError(
            f"--model {uri}: registry URIs need the pipeline extras (mlflow): pip install -e '.[pipeline]', "
            f"or pass a best.pth checkpoint instead ({err})"
        ) from err
    import mlflow

    from mlops.tracking import tracking_uri

    mlflow.set_tracking_uri(tracking_uri())  # MLflow's own default is ./mlflow.db, where promote never registers
    return load_registered_model(uri)
