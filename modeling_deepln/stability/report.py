"""Tables and PNG plots of the stability tools (matplotlib, no display needed).

* :func:`plot_monitor_heatmaps`: the per-layer monitor's records as layer × step heatmaps, one panel per quantity.
* :func:`write_table`: the grid's rows as CSV and a Markdown table; :func:`markdown_table` the Markdown alone.
* :func:`plot_loss_vs_depth`: final held-out loss against depth, one line per scheme, the unigram loss dashed.
* :func:`plot_early_updates`: relative parameter update ``‖ΔW‖/‖W‖`` per layer over the first steps, one panel
  per scheme.
* :func:`plot_grid_heatmaps`: one monitor quantity as a layer × step heatmap per grid run, titled with its verdict.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["plot_monitor_heatmaps", "plot_grid_heatmaps", "markdown_table", "write_table", "plot_loss_vs_depth",
           "plot_early_updates"]

_LOG_SCALE = {"grad_norm", "relative_update", "stream_norm", "branch_ratio"}


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_monitor_heatmaps(records: Sequence[dict[str, Any]], sublayers: Sequence[Any], path: str | Path) -> Path:
    """One panel per quantity: rows are sublayers (layer 0 attn at the bottom), columns the monitored steps;
    norms and ratios on a log10 colour scale, the position cosine on [0, 1]. Returns the PNG's path."""
    import numpy as np

    plt = _pyplot()
    quantities = list(records[0]["values"])
    steps = [record["step"] for record in records]
    figure, axes = plt.subplots(1, len(quantities), figsize=(3.4 * len(quantities), 4.2), dpi=100, squeeze=False)
    for axis, quantity in zip(axes[0], quantities):
        grid = np.full((len(sublayers), len(records)), np.nan)  # [sublayer, step]; a grown model has more rows later
        for column, record in enumerate(records):
            values = record["values"][quantity]
            grid[: len(values), column] = values
        label = quantity
        if quantity in _LOG_SCALE:
            with np.errstate(divide="ignore", invalid="ignore"):
                grid = np.log10(np.where(grid > 0, grid, np.nan))
            label = f"log10 {quantity}"
        image = axis.imshow(grid, aspect="auto", origin="lower", interpolation="nearest", cmap="viridis",
                            vmin=0.0 if quantity == "position_cosine" else None,
                            vmax=1.0 if quantity == "position_cosine" else None)  # fmt: skip
        ticks = np.linspace(0, len(steps) - 1, min(len(steps), 5)).round().astype(int)
        axis.set_xticks(ticks, [str(steps[i]) for i in ticks])
        layers = max(1, len(sublayers) // 2)
        ytick_layers = sorted({0, layers // 2, layers - 1})
        axis.set_yticks([2 * layer for layer in ytick_layers], [str(layer) for layer in ytick_layers])
        axis.set_xlabel("step")
        axis.set_ylabel("layer (attn, ffn rows)")
        axis.set_title(label, fontsize=9)
        figure.colorbar(image, ax=axis, fraction=0.046)
    figure.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path)
    plt.close(figure)
    return path


def _format(value: Any) -> str:
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        return f"{value:.3g}" if abs(value) < 0.01 or abs(value) >= 1000 else f"{value:.3f}"
    return "" if value is None else str(value)


def markdown_table(rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> str:
    """A GitHub Markdown table of ``rows`` restricted to ``columns``."""
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(_format(row.get(c)) for c in columns) + " |" for row in rows]
    return "\n".join(lines)


def write_table(rows: Sequence[dict[str, Any]], columns: Sequence[str], stem: str | Path) -> tuple[Path, Path]:
    """Write ``<stem>.csv`` (all columns of ``columns``) and ``<stem>.md``; return both paths."""
    stem = Path(stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    csv_path, md_path = stem.with_suffix(".csv"), stem.with_suffix(".md")
    with open(csv_path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(columns), extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    md_path.write_text(markdown_table(rows, columns) + "\n")
    return csv_path, md_path


def read_table(csv_path: str | Path) -> list[dict[str, Any]]:
    """The rows of a ``stability.csv`` written by :func:`write_table`, numbers parsed back (``depth``, ``steps``
    and ``mode_step`` as ints, the measures as floats; an empty cell is ``None``)."""
    integers, texts = {"depth", "steps", "mode_step"}, {"family", "scheme", "block_lr", "mode"}
    rows = []
    with open(csv_path, newline="") as handle:
        for raw in csv.DictReader(handle):
            row: dict[str, Any] = {}
            for key, value in raw.items():
                if value == "" or key in texts:
                    row[key] = value if key in texts else None
                else:
                    row[key] = int(value) if key in integers else float(value)
            rows.append(row)
    return rows


def run_label(row: dict[str, Any]) -> str:
    """A row's scheme, with its blocks' learning-rate multiplier when it is not 1 (``pre_ln, blocks lr×depth``)."""
    block_lr = str(row.get("block_lr", "1"))
    return row["scheme"] if block_lr == "1" else f"{row['scheme']}, blocks lr×{block_lr}"


def plot_loss_vs_depth(rows: Sequence[dict[str, Any]], path: str | Path) -> Path:
    """Final held-out loss against depth: one panel per (family, lr, warmup), one line per scheme, the unigram
    loss dashed; diverged runs are drawn at the top of the panel as crosses."""
    plt = _pyplot()
    panels = sorted({(r["family"], r["lr"], r["warmup"]) for r in rows}, key=str)
    figure, axes = plt.subplots(1, len(panels), figsize=(5.2 * len(panels), 4.2), dpi=100, squeeze=False)
    for axis, (family, lr, warmup) in zip(axes[0], panels):
        panel = [r for r in rows if (r["family"], r["lr"], r["warmup"]) == (family, lr, warmup)]
        finite = [r["eval_loss"] for r in panel if math.isfinite(r["eval_loss"])]
        top = max(finite + [r["unigram_loss"] for r in panel]) + 0.5 if finite else 10.0
        for scheme in dict.fromkeys(run_label(r) for r in panel):
            points = sorted((r["depth"], r["eval_loss"]) for r in panel if run_label(r) == scheme)
            depths = [d for d, _ in points]
            losses = [loss if math.isfinite(loss) else top for _, loss in points]
            line, = axis.plot(depths, losses, "o-", label=scheme, markersize=4)
            bad = [(d, top) for d, loss in points if not math.isfinite(loss)]
            if bad:
                axis.plot(*zip(*bad), "x", color=line.get_color(), markersize=9)
        unigram = panel[0]["unigram_loss"]
        axis.axhline(unigram, linestyle="--", color="gray", linewidth=1, label=f"unigram ({unigram:.2f})")
        axis.set_xscale("log")
        depths = sorted({r["depth"] for r in panel})
        axis.set_xticks(depths, [str(d) for d in depths])
        axis.minorticks_off()
        axis.set_xlabel("layers")
        axis.set_ylabel("held-out loss (nats)")
        axis.set_title(f"{family.upper()}  lr {lr:g}  warmup {warmup:g}", fontsize=9)
        axis.grid(alpha=0.3)
        axis.legend(fontsize=7)
    figure.tight_layout()
    path = Path(path)
    figure.savefig(path)
    plt.close(figure)
    return path


MODE_COLORS = {"learning": "tab:green", "stalled": "tab:orange", "collapsed": "tab:blue", "diverged": "tab:red"}
"""Bar colour of each failure mode in :func:`plot_gap_by_scheme`."""


def plot_gap_by_scheme(rows: Sequence[dict[str, Any]], path: str | Path) -> Path:
    """Held-out loss minus the unigram loss per run at one depth: one panel per family, one bar per run (scheme and
    blocks' learning rate), coloured by its failure mode (:data:`MODE_COLORS`), the gap printed on the bar; a
    diverged run with no finite loss gets an empty bar named ``diverged``. Left of 0 means below the unigram loss."""
    plt = _pyplot()
    families = list(dict.fromkeys(r["family"] for r in rows))
    height = 0.9 + 0.32 * max(sum(r["family"] == f for r in rows) for f in families)
    figure, axes = plt.subplots(1, len(families), figsize=(6.2 * len(families), height), dpi=100, squeeze=False)
    for axis, family in zip(axes[0], families):
        panel = [r for r in rows if r["family"] == family]
        labels = [run_label(r) for r in panel]
        span = max([abs(r["gap"]) for r in panel if r["mode"] != "diverged" and math.isfinite(r["gap"])] + [0.05])
        gaps = [max(-1.5 * span, min(1.5 * span, r["gap"])) if math.isfinite(r["gap"]) else 0.0 for r in panel]
        axis.barh(range(len(panel)), gaps, color=[MODE_COLORS.get(r["mode"], "gray") for r in panel])
        for y, (row, gap) in enumerate(zip(panel, gaps)):
            text = f"{row['gap']:+.3f} {row['mode']}" if math.isfinite(row["gap"]) else row["mode"]
            axis.text(gap, y, f" {text} ", va="center", ha="left" if gap >= 0 else "right", fontsize=7)
        axis.set_yticks(range(len(panel)), labels, fontsize=8)
        axis.invert_yaxis()
        axis.axvline(0.0, color="black", linewidth=0.8)
        axis.set_xlim(-2.4 * span, 2.4 * span)
        depths = sorted({r["depth"] for r in panel})
        steps = sorted({r["steps"] for r in panel})
        axis.set_title(f"{family.upper()}, {'/'.join(map(str, depths))} layers, {'/'.join(map(str, steps))} steps",
                       fontsize=9)  # fmt: skip
        axis.set_xlabel("held-out − unigram loss (nats; long bars clipped)",
                        fontsize=8)  # fmt: skip
        axis.grid(axis="x", alpha=0.3)
    figure.tight_layout()
    path = Path(path)
    figure.savefig(path)
    plt.close(figure)
    return path


def plot_early_updates(runs: Sequence[dict[str, Any]], path: str | Path) -> Path:
    """Update size per layer over the first monitored steps: one panel per run (``label``, ``steps``,
    ``updates[step][layer]``), one line per step (light: early, dark: late), log scale."""
    plt = _pyplot()
    figure, axes = plt.subplots(1, len(runs), figsize=(3.4 * len(runs), 3.6), dpi=100, squeeze=False, sharey=True)
    for axis, run in zip(axes[0], runs):
        moved = [(step, u) for step, u in zip(run["steps"], run["updates"]) if any(v > 0 for v in u)]  # lr 0 at step 1
        count = max(1, len(moved))
        for i, (step, updates) in enumerate(moved):
            axis.plot(range(len(updates)), updates, color=plt.cm.viridis(i / count), linewidth=1,
                      label=f"step {step}" if i in (0, count - 1) else None)  # fmt: skip
        axis.set_yscale("log")
        axis.set_xlabel("layer")
        axis.set_title(run["label"], fontsize=8)
        axis.grid(alpha=0.3)
        axis.legend(fontsize=7)
    axes[0][0].set_ylabel("‖ΔW‖ / ‖W‖")
    figure.tight_layout()
    path = Path(path)
    figure.savefig(path)
    plt.close(figure)
    return path


def plot_grid_heatmaps(rows: Sequence[dict[str, Any]], quantity: str, path: str | Path) -> Path:
    """One monitor quantity as a layer × step heatmap per run (one panel per row of the grid, titled with its
    verdict): how each scheme's layers behave over training at a glance. Log10 colour scale for norms and ratios,
    [0, 1] for the position cosine; a run that recorded nothing is left blank."""
    import numpy as np

    plt = _pyplot()
    columns = min(4, len(rows))
    lines = math.ceil(len(rows) / columns)
    figure, axes = plt.subplots(lines, columns, figsize=(3.3 * columns, 3.0 * lines), dpi=100, squeeze=False)
    for axis, row in zip(axes.flat, rows):
        records, sublayers = row["_monitor"]["records"], row["_monitor"]["sublayers"]
        axis.set_title(f"{row['family']} {run_label(row)}\n{row['mode']} (loss {row['eval_loss']:.2f})", fontsize=8)
        if not records:
            axis.set_axis_off()
            continue
        grid = np.array([record["values"][quantity] for record in records], dtype=float).T  # [sublayer, step]
        cosine = quantity == "position_cosine"
        if not cosine:
            with np.errstate(divide="ignore", invalid="ignore"):
                grid = np.log10(np.where(grid > 0, grid, np.nan))
        image = axis.imshow(grid, aspect="auto", origin="lower", interpolation="nearest", cmap="viridis",
                            vmin=0.0 if cosine else None, vmax=1.0 if cosine else None)  # fmt: skip
        steps = [record["step"] for record in records]
        ticks = np.linspace(0, len(steps) - 1, min(len(steps), 4)).round().astype(int)
        axis.set_xticks(ticks, [str(steps[i]) for i in ticks], fontsize=7)
        layers = max(1, len(sublayers) // 2)
        axis.set_yticks([0, len(sublayers) - 1], ["0", str(layers - 1)], fontsize=7)
        axis.set_xlabel("step", fontsize=7)
        axis.set_ylabel("layer", fontsize=7)
        figure.colorbar(image, ax=axis, fraction=0.046)
    for axis in list(axes.flat)[len(rows):]:
        axis.set_axis_off()
    figure.suptitle(quantity if quantity == "position_cosine" else f"log10 {quantity}", fontsize=10)
    figure.tight_layout()
    path = Path(path)
    figure.savefig(path)
    plt.close(figure)
    return path
