"""The MLflow model registry: register trained models with their gate metrics, promote the better one.

Modules: `records` (what a version and a decision are), `versions` (reading and registering), `promotion`
(deciding, recording, repairing), `locking` (the promotion turn and lock), `loading` (a version back as its module).

Registering (`register`) makes a new version of a registered model (e.g. `transpose-coco`) from a stage's logged
model URI, with version tags:

    gate.metric        the gate metric's name (COCO `AP`, MPII `PCKh`)
    metric.<NAME>      every metric of the model on the gate split (metric.AP = 0.7193, ...)
    data.dataset, data.split, data.annotations, data.shards
    data.fingerprint   sha256 over the annotation file and the split's shard manifest(s): "the same data"
    run_id             the training run holding best.pth and model.json
    model_card         model.json's content (enough to rebuild the architecture)
    eval.<FP16>.<NAME> the model's metrics re-evaluated on other data (FP16: that data's fingerprint[:16])
    onnx.uri, onnx.sha256, onnx.worst_relative_diff
                       the verified ONNX export the promote stage attached (logged to the training run)

and a description saying what the model is, what it was trained on and its metrics on what data.

Promoting (`promote`) moves an alias (default `champion`) to a candidate version only when its gate metric is
strictly greater than the holder's on the same data. When the holder was evaluated on other data it is
re-evaluated on the candidate's data through the `evaluate` callable; without one the promotion is refused.
Every decision, moved or not, is kept as a registered-model tag `promotion.NNNNNN-vV` (NNNNNN: its number, V:
the candidate version; JSON: time, candidate, holder, both figures, metric, fingerprint, moved, reason), since
MLflow keeps no history of alias moves (mlflow/mlflow#2169); `history(name)` reads them back in order. Being
tags, they live in the tracking store itself and work the same with a remote tracking server.

Concurrency: promoters of one registered model take turns through the registry itself (`locking`): each
writes a ticket tag `transpose.ticket.<uuid>` (owner, number, expiry), draws a number above every live ticket,
and proceeds when no live ticket is ahead of it (Lamport's bakery: MLflow has no compare-and-set, but single
tags are read and written atomically). So promoters on different machines, sharing only a tracking server,
never decide against a stale holder and never share a decision number; the number is taken within the turn,
written, and read back. A held turn renews its lease (TRANSPOSE_PROMOTE_LEASE, 60 s) so a crashed promoter
blocks the others for at most that long; a promoter that waited TRANSPOSE_PROMOTE_WAIT (300 s) gets a
`PromotionBusy` naming the holder and its expiry. On one machine promoters first queue on an fcntl lock
(`TRANSPOSE_PROMOTE_LOCK`, else beside a local store, else in the temp folder): a fast path, not needed for
correctness. After setting, the champion is still checked against the best version the recorded decisions
moved the alias to on the same data, and put back if worse (writers that bypass the turn). Errors of the
store (MLflow, database, HTTP) surface as a `RegistryError` naming the model and alias and what to do.
"""

from mlops.registry.loading import download_checkpoint, load_registered_model
from mlops.registry.locking import (
    LEASE_ENV,
    LOCK_ENV,
    TICKET_PREFIX,
    WAIT_ENV,
    Ticket,
    file_lock,
    lock_path,
    registry_turn,
    tickets,
)
from mlops.registry.promotion import format_history, history, promote
from mlops.registry.records import (
    CARD,
    CHECKPOINT,
    DEFAULT_ALIAS,
    Decision,
    EvalData,
    Evaluate,
    PromotionBusy,
    RegistryError,
    VersionRecord,
)
from mlops.registry.versions import attach_file, champion, get_version, register, resolve, run_card

__all__ = [
    "CARD",
    "CHECKPOINT",
    "DEFAULT_ALIAS",
    "LEASE_ENV",
    "LOCK_ENV",
    "TICKET_PREFIX",
    "WAIT_ENV",
    "Decision",
    "EvalData",
    "Evaluate",
    "PromotionBusy",
    "RegistryError",
    "Ticket",
    "VersionRecord",
    "attach_file",
    "champion",
    "download_checkpoint",
    "file_lock",
    "format_history",
    "get_version",
    "history",
    "load_registered_model",
    "lock_path",
    "promote",
    "register",
    "registry_turn",
    "resolve",
    "run_card",
    "tickets",
]
