"""WebDataset shards with DALI index files and a manifest."""

from dataops.shards.writer import ShardConfig, write_shards

__all__ = ["ShardConfig", "write_shards"]
