"""Model cards: the few facts needed to rebuild a trained model from a bare state_dict checkpoint.

A training run writes `model.json` next to `best.pth`; `load_model` reads both back, so inference and the model
registry never have to be told which architecture a checkpoint holds.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from transpose.models.checkpoint import load_reference_checkpoint
from transpose.models.registry import MODELS, create_model

CARD_NAME = "model.json"


@dataclass(frozen=True)
class ModelCard:
    """Registered variant name, keypoint count, input size and any extra model keyword arguments."""

    model: str
    num_keypoints: int
    image_size: tuple[int, int]
    model_args: dict = field(default_factory=dict)
    dataset: str = ""  # coco | mpii | "" (informational)

    def build(self):
        """A freshly initialised model of this card's architecture."""
        return create_model(
            self.model, num_keypoints=self.num_keypoints, image_size=tuple(self.image_size), **self.model_args
        )

    def write(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(asdict(self), indent=1) + "\n")
        return path

    @classmethod
    def read(cls, path: str | Path) -> ModelCard:
        path = Path(path)
        try:
            data = json.loads(path.read_text())
            card = cls(
                model=data["model"],
                num_keypoints=int(data["num_keypoints"]),
                image_size=tuple(int(v) for v in data["image_size"]),
                model_args=dict(data.get("model_args") or {}),
                dataset=str(data.get("dataset", "")),
            )
        except FileNotFoundError:
            raise
        except (ValueError, KeyError, TypeError) as err:
            raise ValueError(
                f"{path}: not a model card ({err}); expected keys model, num_keypoints, image_size"
            ) from err
        if card.model not in MODELS:
            raise ValueError(f"{path}: unknown model {card.model!r}; registered: {', '.join(sorted(MODELS))}")
        return card


def find_card(checkpoint: str | Path) -> Path | None:
    """`model.json` beside a checkpoint file (or inside a directory), if there is one."""
    checkpoint = Path(checkpoint)
    candidate = checkpoint / CARD_NAME if checkpoint.is_dir() else checkpoint.with_name(CARD_NAME)
    return candidate if candidate.is_file() else None


def load_model(checkpoint: str | Path, card: ModelCard | str | Path | None = None):
    """Build the model a checkpoint was trained as and load its weights (eval mode).

    `checkpoint` is a .pth file or a run directory holding best.pth; `card` defaults to the model.json beside it.
    """
    checkpoint = Path(checkpoint)
    weights = checkpoint / "best.pth" if checkpoint.is_dir() else checkpoint
    if card is None:
        found = find_card(checkpoint)
        if found is None:
            raise FileNotFoundError(
                f"no {CARD_NAME} beside {weights}: give the architecture "
                "(e.g. --arch transpose_r_a4 --image-size 256 192)"
            )
        card = found
    if not isinstance(card, ModelCard):
        card = ModelCard.read(card)
    model = card.build()
    load_reference_checkpoint(model, weights)
    return model.eval()
