"""Loading a registered version back as the TransPose module it was trained as."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

from torch import nn

from mlops.registry.records import CARD, CHECKPOINT, RegistryError, VersionRecord
from mlops.registry.versions import download, resolve
from transpose.models import ModelCard, load_trained


def download_checkpoint(record: VersionRecord, dst: Path) -> Path:
    """The version's training run's best.pth (and model.json beside it, from the run or the card tag)."""
    weights = download(record.run_id, CHECKPOINT, dst) if record.run_id else None
    if weights is None or not weights.is_file():
        raise RegistryError(
            f"{record.uri}: run {record.run_id or '(none)'} has no {CHECKPOINT} artifact "
            "(train with MLflow on: the train stage logs it)"
        )
    card = weights.with_name(CARD)
    if not card.is_file() and download(record.run_id, CARD, dst) is None and record.card is not None:
        card.write_text(json.dumps(record.card))
    return weights


def load_registered_model(uri: str) -> tuple[nn.Module, ModelCard]:
    """The TransPose nn.Module (eval mode) of `models:/NAME@ALIAS` or `models:/NAME/VERSION` and its model card,
    rebuilt from its run's best.pth and model.json (not the torch.export graph `mlflow.pytorch.load_model` gives)."""
    record = resolve(uri)
    with tempfile.TemporaryDirectory() as tmp:
        weights = download_checkpoint(record, Path(tmp))
        if not weights.with_name(CARD).is_file():
            raise RegistryError(f"{uri}: no {CARD} in run {record.run_id} and no model_card tag on the version")
        return load_trained(weights)
