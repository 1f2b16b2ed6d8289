"""TransPose models: backbones, encoder, heads and the registry of named variants."""

from transpose.models.card import (
    CARD_NAME,
    ModelCard,
    card_for_weights,
    checkpoint_path,
    find_card,
    load_model,
    load_trained,
    read_card,
)
from transpose.models.checkpoint import (
    CheckpointMismatchError,
    load_pretrained_backbone,
    load_reference_checkpoint,
    read_state_dict,
)
from transpose.models.dropout import MASK_SOURCES, set_dropout_masks
from transpose.models.registry import MODELS, create_model, list_models
from transpose.models.transformer import ATTENTION_KINDS, set_attention
from transpose.models.transpose_net import DataConfig, TransPose, TransPoseH, TransPoseR

__all__ = [
    "ATTENTION_KINDS",
    "CARD_NAME",
    "MASK_SOURCES",
    "MODELS",
    "CheckpointMismatchError",
    "DataConfig",
    "ModelCard",
    "TransPose",
    "TransPoseH",
    "TransPoseR",
    "card_for_weights",
    "checkpoint_path",
    "create_model",
    "find_card",
    "list_models",
    "load_model",
    "load_pretrained_backbone",
    "load_reference_checkpoint",
    "load_trained",
    "read_card",
    "read_state_dict",
    "set_attention",
    "set_dropout_masks",
]
