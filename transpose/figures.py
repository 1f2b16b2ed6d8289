"""Figures without a display: pyplot on the Agg backend, and one way to write a figure to a file."""

from __future__ import annotations

from pathlib import Path


def pyplot():
    """matplotlib.pyplot on the non-interactive Agg backend (imported on first use: plotting is optional)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, out_path: str | Path, dpi: int = 110) -> Path:
    """Lay `fig` out tightly, write it to `out_path` (creating the folder) and free it."""
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(out_path, dpi=dpi)
    pyplot().close(fig)
    return out_path
