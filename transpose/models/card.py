"""Model cards: what a trained model is, so that no later stage has to be told again.

A training run writes `model.json` beside `best.pth`: the registered architecture and its keyword arguments,
the input size, the keypoint set its heatmaps stand for (names, flip pairs, skeleton, OKS sigmas), the dataset
kind that scores it (`transpose.evaluation.protocols`) and where it was trained. Evaluation, transfer,
promotion, prediction and explanation read the card of the run they consume (`load_trained`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from torch import nn

from transpose.keypoints import COCO, MPII, KeypointSet, KeypointSetError
from transpose.models.checkpoint import load_reference_checkpoint, read_state_dict
from transpose.models.registry import MODELS, create_model

CARD_NAME = "model.json"
CARD_FORMAT = 2
_LEGACY_KEYPOINTS = {"coco": COCO, "mpii": MPII}  # format-1 cards named only their dataset


@dataclass(frozen=True)
class ModelCard:
    """Architecture, input size, keypoint set and dataset kind of a trained model."""

    model: str
    image_size: tuple[int, int]  # (h, w)
    keypoints: KeypointSet
    dataset_kind: str = "coco"  # how its predictions are scored: coco (OKS AP) | mpii (PCKh)
    model_args: dict = field(default_factory=dict)
    training: dict = field(default_factory=dict)  # where it was trained (shards, manifests, init_from)

    @property
    def num_keypoints(self) -> int:
        return self.keypoints.num_keypoints

    def build(self) -> nn.Module:
        """A freshly initialised model of this card's architecture."""
        return create_model(
            self.model, num_keypoints=self.num_keypoints, image_size=tuple(self.image_size), **self.model_args
        )

    def to_dict(self) -> dict:
        return {
            "format": CARD_FORMAT,
            "model": self.model,
            "model_args": dict(self.model_args),
            "image_size": list(self.image_size),
            "num_keypoints": self.num_keypoints,
            "keypoints": self.keypoints.to_dict(),
            "dataset_kind": self.dataset_kind,
            "training": dict(self.training),
        }

    def write(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.with_name(path.name + ".partial").write_text(json.dumps(self.to_dict(), indent=1) + "\n")
        path.with_name(path.name + ".partial").replace(path)
        return path

    @classmethod
    def from_dict(cls, data: dict, where: str = "model card") -> ModelCard:
        try:
            if "keypoints" in data:
                keypoints = KeypointSet.from_dict(data["keypoints"], f"{where}: keypoints")
            else:  # format 1: {model, num_keypoints, image_size, model_args, dataset}
                keypoints = _LEGACY_KEYPOINTS[str(data.get("dataset") or "coco")]
                if keypoints.num_keypoints != int(data["num_keypoints"]):
                    raise KeyError("keypoints")
            card = cls(
                model=str(data["model"]),
                image_size=tuple(int(v) for v in data["image_size"]),
                keypoints=keypoints,
                dataset_kind=str(data.get("dataset_kind") or data.get("dataset") or "coco"),
                model_args=dict(data.get("model_args") or {}),
                training=dict(data.get("training") or {}),
            )
        except KeypointSetError:
            raise
        except (ValueError, KeyError, TypeError) as err:
            raise ValueError(
                f"{where}: not a model card ({err!r}); expected model, image_size, keypoints, dataset_kind"
            ) from None
        if card.model not in MODELS:
            raise ValueError(f"{where}: unknown model {card.model!r}; registered: {', '.join(sorted(MODELS))}")
        if len(card.image_size) != 2:
            raise ValueError(f"{where}: image_size must be [h, w], got {list(card.image_size)}")
        return card

    @classmethod
    def read(cls, path: str | Path) -> ModelCard:
        path = Path(path)
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            raise
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            raise ValueError(f"{path}: not a model card ({err})") from None
        if not isinstance(data, dict):
            raise ValueError(f"{path}: not a model card (a JSON object is expected)")
        return cls.from_dict(data, str(path))


def find_card(checkpoint: str | Path) -> Path | None:
    """`model.json` beside a checkpoint file (or inside a directory), if there is one."""
    checkpoint = Path(checkpoint)
    candidate = checkpoint / CARD_NAME if checkpoint.is_dir() else checkpoint.with_name(CARD_NAME)
    return candidate if candidate.is_file() else None


def checkpoint_path(run: str | Path) -> Path:
    """The weights of a run directory (its best.pth) or a checkpoint file itself."""
    run = Path(run)
    return run / "best.pth" if run.is_dir() else run


def read_card(run: str | Path) -> ModelCard:
    """The card of a run directory or of a checkpoint file (the model.json beside it)."""
    found = find_card(run)
    if found is None:
        raise FileNotFoundError(
            f"no {CARD_NAME} beside {checkpoint_path(run)}: train it with this project (the training stage writes "
            "one), or give the architecture and keypoints by hand"
        )
    return ModelCard.read(found)


def load_trained(run: str | Path, card: ModelCard | None = None) -> tuple[nn.Module, ModelCard]:
    """A trained model in eval mode and its card, from a run directory (best.pth) or a checkpoint file."""
    card = card or read_card(run)
    model = card.build()
    load_reference_checkpoint(model, checkpoint_path(run))
    return model.eval(), card


def load_model(checkpoint: str | Path, card: ModelCard | None = None) -> nn.Module:
    """The trained model of a run directory or checkpoint (its card beside it), in eval mode."""
    return load_trained(checkpoint, card)[0]


def card_for_weights(
    weights: str | Path,
    model: str,
    keypoints: KeypointSet,
    image_size: tuple[int, int] | None = None,
    dataset_kind: str = "coco",
) -> ModelCard:
    """A card for weights trained elsewhere (a reference checkpoint, no model.json): the architecture, keypoint
    set and input size are given; the head's size must match the keypoint set."""
    if model not in MODELS:
        raise ValueError(f"unknown model {model!r}; registered: {', '.join(sorted(MODELS))}")
    final = read_state_dict(weights).get("final_layer.weight")
    if final is None:
        raise ValueError(f"{weights} has no final_layer.weight: is it a TransPose checkpoint?")
    if int(final.shape[0]) != keypoints.num_keypoints:
        raise ValueError(
            f"{weights} predicts {int(final.shape[0])} heatmaps but the keypoint set {keypoints.name!r} has "
            f"{keypoints.num_keypoints} keypoints: give its own keypoint set"
        )
    if image_size is None:
        image_size = MODELS[model](num_keypoints=keypoints.num_keypoints).image_size
    return ModelCard(model, tuple(image_size), keypoints, dataset_kind)
