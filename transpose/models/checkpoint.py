"""Loading TransPose checkpoints (reference or ours) and ImageNet backbone files, with errors that say what to fix.

Reference formats: `model_best.pth` / `final_state.pth` hold a bare state_dict; `checkpoint.pth` holds
{'state_dict' (keys prefixed `module.`), 'optimizer', 'epoch', 'perf', ...}. Our own training checkpoints
hold {'model': state_dict, ...}. Everything is read with `weights_only=True`.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
from torch import Tensor, nn

from transpose.models.position_encoding import resample_learnable, sine_position_embedding

_WRAPPER_KEYS = ("state_dict", "model", "module")


class CheckpointMismatchError(ValueError):
    """A checkpoint does not fit the model it is loaded into."""


def read_state_dict(path: str | Path) -> dict[str, Tensor]:
    """Read a checkpoint file into a flat {key: tensor} dict without `module.` prefixes."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # pickle errors, truncated files, foreign objects refused by weights_only
        raise CheckpointMismatchError(f"cannot read {path} as a PyTorch checkpoint: {err}") from err
    while isinstance(obj, dict) and not _is_state_dict(obj):
        wrapper = next((k for k in _WRAPPER_KEYS if isinstance(obj.get(k), dict)), None)
        if wrapper is None:
            raise CheckpointMismatchError(
                f"{path} holds a dict with keys {sorted(obj)[:8]} but no state_dict; expected a bare state_dict "
                f"or one under {_WRAPPER_KEYS}"
            )
        obj = obj[wrapper]
    if not isinstance(obj, dict) or not _is_state_dict(obj):
        raise CheckpointMismatchError(f"{path} does not hold a state_dict (found {type(obj).__name__})")
    return {(k[len("module.") :] if k.startswith("module.") else k): v for k, v in obj.items()}


def _is_state_dict(obj: dict) -> bool:
    return bool(obj) and all(isinstance(k, str) and isinstance(v, Tensor) for k, v in obj.items())


def _module_of(key: str) -> str:
    """A key's module up to its first numeric index: 'stage3.0.fuse...' -> 'stage3.0', 'conv2.weight' -> 'conv2'."""
    parts = key.split(".")
    for i, part in enumerate(parts[:-1]):
        if part.isdigit():
            return ".".join(parts[: i + 1])
    return parts[0] if len(parts) > 1 else key


def _listing(keys: list[str], limit: int = 12) -> str:
    """Keys themselves when few, else grouped by module with counts."""
    if len(keys) <= limit:
        return ", ".join(keys)
    groups: dict[str, int] = {}
    for key in keys:
        groups[_module_of(key)] = groups.get(_module_of(key), 0) + 1
    shown = [f"{name}.* ({n})" for name, n in list(groups.items())[: 2 * limit]]
    more = len(groups) - 2 * limit
    return ", ".join(shown) + (f", ... ({more} more modules)" if more > 0 else "")


def _infer_grid(length: int, grid: tuple[int, int]) -> tuple[int, int] | None:
    """The token grid with the model's aspect ratio that has `length` tokens, if there is one."""
    scale = math.sqrt(length / (grid[0] * grid[1]))
    h, w = round(grid[0] * scale), round(grid[1] * scale)
    return (h, w) if h * w == length else None


def adapt_position_embedding(state: dict[str, Tensor], model: nn.Module, source: str) -> None:
    """Make a checkpoint's pos_embedding fit the model's token grid (another input size): sine tables are
    remade, learnable ones bilinearly interpolated."""
    table, own = state.get("pos_embedding"), getattr(model, "pos_embedding", None)
    if table is None or own is None or table.shape == own.shape or table.shape[1:] != own.shape[1:]:
        return
    old_grid = _infer_grid(table.shape[0], model.token_grid)
    if old_grid is None:
        raise CheckpointMismatchError(
            f"{source}: pos_embedding has {table.shape[0]} tokens, which is no grid with the model's aspect "
            f"ratio {model.token_grid}; create the model with the checkpoint's image_size"
        )
    if model.pos_embedding_type == "sine":
        state["pos_embedding"] = sine_position_embedding(*model.token_grid, model.d_model)
    else:
        state["pos_embedding"] = resample_learnable(table, old_grid, model.token_grid)


def load_reference_checkpoint(model: nn.Module, path: str | Path) -> nn.Module:
    """Load a full TransPose checkpoint with strict key matching; raise a listing of what does not fit."""
    state = read_state_dict(path)
    own = model.state_dict()
    head = state.get("final_layer.weight")
    if head is not None and "final_layer.weight" in own and head.shape[0] != own["final_layer.weight"].shape[0]:
        raise CheckpointMismatchError(
            f"{path} predicts {head.shape[0]} keypoints but the model was built for "
            f"{own['final_layer.weight'].shape[0]}: create it with num_keypoints={head.shape[0]}, or load the "
            f"checkpoint first and call model.reset_head(K) to fine-tune for another keypoint set"
        )
    adapt_position_embedding(state, model, str(path))
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    wrong_shape = [
        f"{k} {tuple(state[k].shape)} != {tuple(v.shape)}"
        for k, v in own.items()
        if k in state and state[k].shape != v.shape
    ]
    if missing or unexpected or wrong_shape:
        lines = [f"{path} does not fit {type(model).__name__}:"]
        if missing:
            lines.append(f"  missing keys ({len(missing)}): {_listing(missing)}")
        if unexpected:
            lines.append(f"  unexpected keys ({len(unexpected)}): {_listing(unexpected)}")
        if wrong_shape:
            lines.append(
                f"  wrong shapes ({len(wrong_shape)}): {', '.join(wrong_shape[:6])}"
                + (" ..." if len(wrong_shape) > 6 else "")
            )
        lines.append("  check that the model name (and d_model/num_layers/width) matches the checkpoint")
        raise CheckpointMismatchError("\n".join(lines))
    model.load_state_dict(state, strict=True)
    return model


def load_pretrained_backbone(model: nn.Module, path: str | Path) -> dict[str, int]:
    """Load ImageNet weights into the backbone layers only (reference `init_weights(pretrained)`).

    Keys outside the backbone (fc.*, layer3.*, stage4.*, ...) are ignored. For TransPose-R the reference
    gives the final layer normal(0, 0.001) and leaves `reduce` and the deconv with PyTorch's default init.
    Returns {'loaded': n, 'ignored': m}.
    """
    state = read_state_dict(path)
    own = model.state_dict()
    prefixes = model.backbone_prefixes()
    chosen = {k: v for k, v in state.items() if k.startswith(prefixes) and k in own}
    if not chosen:
        raise CheckpointMismatchError(
            f"{path} has no key of the {type(model).__name__} backbone ({', '.join(p.rstrip('.') for p in prefixes)}); "
            "pass an ImageNet ResNet-50 (TransPose-R) or HRNet (TransPose-H) state_dict"
        )
    wrong = [f"{k} {tuple(v.shape)} != {tuple(own[k].shape)}" for k, v in chosen.items() if v.shape != own[k].shape]
    if wrong:
        raise CheckpointMismatchError(
            f"{path} does not fit the backbone of {type(model).__name__} (another width?): {', '.join(wrong[:6])}"
        )
    if getattr(model, "deconv_layers", False) is not False:  # TransPose-R
        for m in [model.reduce, *(model.deconv_layers or [])]:
            if hasattr(m, "reset_parameters"):
                m.reset_parameters()
    model.load_state_dict(chosen, strict=False)
    return {"loaded": len(chosen), "ignored": len(state) - len(chosen)}
