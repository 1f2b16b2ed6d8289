"""Small, fast draws from a numpy Generator (rng.choice costs ~20 us a call; these cost ~1 us)."""

from __future__ import annotations

from collections.abc import Sequence


def pick(rng, options: Sequence, p: Sequence[float] | None = None):
    """One of `options`, uniformly or with weights `p` (need not sum to 1)."""
    if p is None:
        return options[min(len(options) - 1, int(rng.random() * len(options)))]
    u = rng.random() * float(sum(p))
    acc = 0.0
    for option, weight in zip(options, p):
        acc += weight
        if u < acc:
            return option
    return options[-1]
