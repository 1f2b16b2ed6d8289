"""TransPose models: backbones, encoder, heads and the registry of named variants."""

from transpose.models.card import ModelCard, load_model
from transpose.models.checkpoint import (
    CheckpointMismatchError,
    load_pretrained_backbone,
    load_reference_checkpoint,
    read_state_dict,
)
from transpose.models.registry import MODELS, create_model, list_models
from transpose.models.transpose_net import DataConfig, TransPose, TransPoseH, TransPoseR

__all__ = [
    "MODELS",
    "CheckpointMismatchError",
    "DataConfig",
    "ModelCard",
    "TransPose",
    "TransPoseH",
    "TransPoseR",
    "create_model",
    "list_models",
    "load_model",
    "load_pretrained_backbone",
    "load_reference_checkpoint",
    "read_state_dict",
]
