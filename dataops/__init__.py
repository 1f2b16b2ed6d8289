"""Data operations: the synthetic dataset, and the data pipeline around it."""
