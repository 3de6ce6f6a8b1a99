"""``deepln bench`` output: the printed table, ``bench.csv``, ``bench.md`` and ``bench.png`` (ratios to the peer)."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

from .run import Row

__all__ = ["format_table", "write_reports"]

COLUMNS = ("case", "metric", "contestant", "work", "value", "unit", "ratio", "vs (named peer)", "of matmul peak",
           "of memory bandwidth")
TEXT_COLUMNS = 4  # left-aligned; the rest right-aligned


def _cells(row: Row) -> list[str]:
    value = f"{row.value:,.3g}" if row.value < 100 else f"{row.value:,.0f}"
    ratio = f"{row.ratio:.2f}x" if row.ratio is not None else ""
    of_peak = f"{100 * row.of_peak:.1f} %" if row.of_peak is not None else ""
    of_bandwidth = f"{100 * row.of_bandwidth:.0f} %" if row.of_bandwidth is not None else ""
    return [row.case, row.metric, row.contestant, row.work, value, row.unit, ratio, row.peer or "", of_peak,
            of_bandwidth]


def format_table(rows: list[Row]) -> str:
    """A fixed-width text table of the rows (one line per measurement)."""
    table = [list(COLUMNS)] + [_cells(r) for r in rows]
    widths = [max(len(line[i]) for line in table) for i in range(len(COLUMNS))]
    def align(i: int, cell: str) -> str:
        return cell.ljust(widths[i]) if i < TEXT_COLUMNS else cell.rjust(widths[i])

    lines = ["  ".join(align(i, cell) for i, cell in enumerate(line)) for line in table]
    lines.insert(1, "-" * len(lines[0]))
    return "\n".join(lines)


def markdown_table(rows: list[Row], facts: dict[str, Any]) -> str:
    """The rows as a Markdown table, headed by the machine and versions."""
    bandwidth = facts.get("memory_bandwidth_gbs")
    head = (f"Machine: {facts['device']}, {facts['cpus']} CPUs, {facts['threads']} torch threads; torch "
            f"{facts['torch']}, transformers {facts['transformers']}, {facts['dtype']}; measured matmul peak "
            f"{facts['matmul_peak_gflops']:,.1f} GFLOP/s"
            + (f", copy bandwidth {bandwidth:,.1f} GB/s" if bandwidth else "") + ".\n\n")  # fmt: skip
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(_cells(r)) + " |" for r in rows]
    return head + "\n".join(lines) + "\n"


def plot_ratios(rows: list[Row], path: Path) -> Path | None:
    """Horizontal bars of each row's ratio to its named peer (1 = as fast as the peer)."""
    rated = [r for r in rows if r.ratio is not None]
    if not rated:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [f"{r.case} | {r.metric} | {r.contestant} ({r.work}) vs {r.peer}" for r in rated]
    fig, ax = plt.subplots(figsize=(13, 0.3 * len(rated) + 1.4))
    ratios = [r.ratio for r in rated]
    colors = ["tab:green" if ratio >= 1 else "tab:red" for ratio in ratios]
    ax.barh(range(len(rated)), ratios, color=colors)
    ax.set_xscale("log")  # 0.8x and 14x on one readable axis
    ax.axvline(1.0, color="black", linewidth=0.8)
    for i, ratio in enumerate(ratios):
        ax.text(ratio, i, f" {ratio:.2f}x", va="center", fontsize=7)
    ax.set_xlim(min(0.5, min(ratios) / 1.5), max(2.0, max(ratios) * 2.5))
    ax.set_yticks(range(len(rated)), labels, fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel("times better than the named peer, same run (log scale)")
    fig.tight_layout()
    fig.savefig(path, dpi=120, bbox_inches="tight")  # the long row labels stay whole
    plt.close(fig)
    return path


def write_reports(rows: list[Row], facts: dict[str, Any], output_dir: str | Path) -> list[Path]:
    """Write ``bench.csv``, ``bench.md`` and ``bench.png`` into ``output_dir``; return the paths written."""
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "bench.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["case", "metric", "contestant", "work", "value", "unit", "ratio", "peer",
                         "fraction_of_matmul_peak", "fraction_of_memory_bandwidth"])  # fmt: skip
        for r in rows:
            writer.writerow([r.case, r.metric, r.contestant, r.work, r.value, r.unit, r.ratio, r.peer, r.of_peak,
                             r.of_bandwidth])  # fmt: skip
    (out / "bench.md").write_text(markdown_table(rows, facts))
    written = [out / "bench.csv", out / "bench.md"]
    png = plot_ratios(rows, out / "bench.png")
    return written + ([png] if png else [])
