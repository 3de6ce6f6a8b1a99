"""Plots of training runs, written as PNG files next to the numbers (matplotlib, no display needed)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any


def plot_loss_curve(
    log_history: Sequence[dict[str, Any]],
    path: str | Path,
    title: str,
    reference_losses: dict[str, float] | None = None,
) -> Path:
    """Training loss per logged step and evaluation loss per evaluation, from Trainer's ``state.log_history``.

    ``reference_losses`` draws horizontal lines (e.g. ``{"unigram model": 7.40}``) to read the curve against.
    Returns the PNG's path.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train = [(entry["step"], entry["loss"]) for entry in log_history if "loss" in entry and "step" in entry]
    evals = [(entry["step"], entry["eval_loss"]) for entry in log_history if "eval_loss" in entry and "step" in entry]
    figure, axis = plt.subplots(figsize=(7, 4), dpi=110)
    if train:
        axis.plot(*zip(*train), label="training loss", color="tab:blue", linewidth=1.5)
    if evals:
        axis.plot(*zip(*evals), "o-", label="evaluation loss", color="tab:orange", markersize=5)
    for (name, value), style in zip((reference_losses or {}).items(), ("--", ":", "-.")):
        if value is not None and math.isfinite(value):
            axis.axhline(value, linestyle=style, color="gray", linewidth=1, label=f"{name} ({value:.2f})")
    axis.set_xlabel("optimizer step")
    axis.set_ylabel("cross-entropy (nats)")
    axis.set_title(title, fontsize=10)
    axis.grid(alpha=0.3)
    axis.legend(fontsize=8)
    figure.tight_layout()
    path = Path(path)
    figure.savefig(path)
    plt.close(figure)
    return path
