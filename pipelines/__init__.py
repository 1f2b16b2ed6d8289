"""Thin entry points, one per DVC stage (and for Ray Tune): each reads its own params.yaml section and calls
the library."""
