"""Learning curves of training runs: the loss per epoch beside the validation gate metric (AP, PCKh)."""

from __future__ import annotations

from pathlib import Path

from transpose.figures import pyplot, save_figure


def plot_training_curves(histories: dict[str, list[dict]], gate: str, out: str | Path, title: str = "") -> Path:
    """One line per run: training loss (log scale) by epoch, and `val/{gate}` at the validated epochs."""
    plt = pyplot()
    fig, (ax_loss, ax_gate) = plt.subplots(1, 2, figsize=(10, 3.6))
    for name, history in histories.items():
        epochs = [r["epoch"] for r in history]
        ax_loss.plot(epochs, [r["train/loss_epoch"] for r in history], label=name)
        scored = [(r["epoch"], r[f"val/{gate}"]) for r in history if f"val/{gate}" in r]
        if scored:
            ax_gate.plot(*zip(*scored), marker="o", label=name)
    ax_loss.set(xlabel="epoch", ylabel="training loss", yscale="log", title="loss")
    ax_gate.set(xlabel="epoch", ylabel=gate, title=f"validation {gate} (flip + DARK)")
    for ax in (ax_loss, ax_gate):
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend()
    if title:
        fig.suptitle(title, fontsize=10)
    return save_figure(fig, out)
