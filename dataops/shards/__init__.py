"""WebDataset shards with DALI index files and a manifest."""

from dataops.shards.writer import ShardConfig, stored_reach, write_shards

__all__ = ["ShardConfig", "stored_reach", "write_shards"]
