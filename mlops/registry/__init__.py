"""The MLflow model registry: register trained models with their gate metrics, promote the better one.

Modules: `records` (what a version and a decision are), `versions` (reading and registering), `promotion`
(deciding, recording, repairing), `locking` (the promotion lock), `loading` (a version back as its module).

Registering (`register`) makes a new version of a registered model (e.g. `transpose-coco`) from a stage's logged
model URI, with version tags:

    gate.metric        the gate metric's name (COCO `AP`, MPII `PCKh`)
    metric.<NAME>      every metric of the model on the gate split (metric.AP = 0.7193, ...)
    data.dataset, data.split, data.annotations, data.shards
    data.fingerprint   sha256 over the annotation file and the split's shard manifest(s): "the same data"
    run_id             the training run holding best.pth and model.json
    model_card         model.json's content (enough to rebuild the architecture)
    eval.<FP16>.<NAME> the model's metrics re-evaluated on other data (FP16: that data's fingerprint[:16])

Promoting (`promote`) moves an alias (default `champion`) to a candidate version only when its gate metric is
strictly greater than the holder's on the same data. When the holder was evaluated on other data it is
re-evaluated on the candidate's data through the `evaluate` callable; without one the promotion is refused.
Every decision, moved or not, is kept as a registered-model tag `promotion.NNNNNN-vV` (NNNNNN: its number, V:
the candidate version; JSON: time, candidate, holder, both figures, metric, fingerprint, moved, reason), since
MLflow keeps no history of alias moves (mlflow/mlflow#2169); `history(name)` reads them back in order. Being
tags, they live in the tracking store itself and work the same with a remote tracking server.

Concurrency: read holder, compare, set alias and record run under an exclusive fcntl lock. Its file is
`TRANSPOSE_PROMOTE_LOCK` when set, else beside the store (`<db>.promote.lock` for `sqlite:///<db>`,
`<dir>/promote.lock` for a file store). After setting, the champion is checked against the best version the
recorded decisions moved the alias to on the same data since the data last changed, and put back if worse.

Limitation, remote tracking servers (http[s]://, databricks): MLflow has no compare-and-set for aliases, so
the lock protects only promoters that share its file. Set TRANSPOSE_PROMOTE_LOCK to a path on a filesystem
every promoter mounts (with working fcntl locks, e.g. NFSv4); otherwise the lock falls back to a file in the
machine's temp folder, which serialises promotions on one machine only. Promoters on different machines
without a shared lock can then interleave: the after-set check puts an alias left on a worse model back as
soon as either promoter's record is visible to the other, but a window remains where `@champion` resolves to
the worse model, and two decisions can share a number (the `-vV` suffix keeps both records unless both
promote the same version).
"""

from mlops.registry.loading import download_checkpoint, load_registered_model
from mlops.registry.locking import LOCK_ENV, file_lock, lock_path
from mlops.registry.promotion import format_history, history, promote
from mlops.registry.records import (
    CARD,
    CHECKPOINT,
    DEFAULT_ALIAS,
    Decision,
    EvalData,
    Evaluate,
    RegistryError,
    VersionRecord,
)
from mlops.registry.versions import champion, get_version, register, resolve, run_card

__all__ = [
    "CARD",
    "CHECKPOINT",
    "DEFAULT_ALIAS",
    "LOCK_ENV",
    "Decision",
    "EvalData",
    "Evaluate",
    "RegistryError",
    "VersionRecord",
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
    "resolve",
    "run_card",
]
