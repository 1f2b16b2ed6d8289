"""WebDataset shards with DALI index files and a manifest that carries the split's facts (kind, keypoints)."""

from dataops.shards.manifest import ManifestError, ShardManifest, read_manifest, stored_reach
from dataops.shards.verify import ShardError, verify_shards
from dataops.shards.writer import ShardConfig, ShardPlan, plan_shards, write_shards

__all__ = [
    "ManifestError",
    "ShardConfig",
    "ShardError",
    "ShardManifest",
    "ShardPlan",
    "plan_shards",
    "read_manifest",
    "stored_reach",
    "verify_shards",
    "write_shards",
]
