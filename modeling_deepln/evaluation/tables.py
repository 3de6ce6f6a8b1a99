"""The paper's result tables next to an evaluated model: Table 4 (GPT zero-shot, with Table 5's rows) and Table 3
(BERT QQP classifier), as Markdown text and as a PNG bar chart.

Scores are shown in percent like the paper (LAMBADA perplexity as a number); a dash means the paper does not report
that metric for that model.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Mapping

from .suite import GPT_SUITE, OFFLINE_TASKS, PAPER_BERT_QQP, PAPER_GPT_ROWS

__all__ = ["table4_scores", "format_table4", "format_table3", "plot_table4"]

_OFFLINE_TO_HARNESS = {offline: name for name, offline in OFFLINE_TASKS.items()}


def table4_scores(results: Mapping[str, Any]) -> dict[str, float]:
    """Table 4's rows from lm-eval's ``results`` dict (offline ``deepln_<task>`` count as ``<task>``), in percent.

    Returns ``{label: value}`` for the metrics that were evaluated, e.g. ``{"PIQA-Acc": 55.2, "LAMBADA-PPL": 8.4e5}``.
    """
    by_task = {_OFFLINE_TO_HARNESS.get(task, task): scores for task, scores in results.items()}
    table = {}
    for row in GPT_SUITE:
        value = by_task.get(row.task, {}).get(f"{row.metric},none")
        if isinstance(value, (int, float)):
            table[row.label] = 100.0 * float(value) if row.percent else float(value)
    return table


def _cell(value: float | None, percent: bool) -> str:
    if value is None:
        return "–"
    if not math.isfinite(value):
        return str(value)
    return f"{value:.2f}" if percent else f"{value:.3g}"


def format_table4(model_label: str, scores: Mapping[str, float]) -> str:
    """Markdown table: one row per Table 4 metric, the model beside the paper's GPT-1k and Table 5's models."""
    columns = [model_label, *PAPER_GPT_ROWS]
    lines = ["| task | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]
    for row in GPT_SUITE:
        cells = [_cell(scores.get(row.label), row.percent)]
        cells += [_cell(paper.get(row.label), row.percent) for paper in PAPER_GPT_ROWS.values()]
        lines.append(f"| {row.label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def format_table3(model_label: str, metrics: Mapping[str, float], dataset_label: str) -> str:
    """Markdown table in the paper's Table 3 layout: QQP precision / recall / F1 / accuracy (percent)."""
    keys = ("precision", "recall", "f1", "accuracy")
    header = "| model | task | precision | recall | f1-score | accuracy |\n|---|---|---|---|---|---|"
    ours = " | ".join(_cell(100.0 * metrics[k], True) for k in keys)
    paper = " | ".join(_cell(PAPER_BERT_QQP[k], True) for k in keys)
    return f"{header}\n| {model_label} | {dataset_label} | {ours} |\n| BERT-1k (paper) | QQP-test | {paper} |"


def plot_table4(model_label: str, scores: Mapping[str, float], path: str | Path) -> Path:
    """Grouped bar chart of the accuracy rows of Table 4 (model vs the paper's models) with chance levels; PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in GPT_SUITE if r.percent and (r.label in scores or any(r.label in p for p in PAPER_GPT_ROWS.values()))]
    models = {model_label: scores, **PAPER_GPT_ROWS}
    chance = {"Winogrande-Acc": 50.0, "Hellaswag-Acc": 25.0, "Hellaswag-AccNorm": 25.0, "PIQA-Acc": 50.0,
              "PIQA-AccNorm": 50.0, "QQP-Acc": 50.0}  # fmt: skip
    fig, ax = plt.subplots(figsize=(10, 4))
    width = 0.8 / len(models)
    for i, (name, values) in enumerate(models.items()):
        xs = [j + i * width for j in range(len(rows))]
        ax.bar(xs, [values.get(r.label, 0.0) for r in rows], width, label=name)
    for j, row in enumerate(rows):
        if row.label in chance:
            ax.hlines(chance[row.label], j - width / 2, j + 0.8 - width / 2, colors="k", linestyles="dotted")
    ax.set_xticks([j + 0.4 - width / 2 for j in range(len(rows))], [r.label for r in rows], rotation=20)
    ax.set_ylabel("score (%)  (dotted: chance)")
    ax.set_title("Zero-shot suite of the FoundationLayerNorm paper (Tables 4-5)")
    ax.legend(fontsize=7, ncol=3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return Path(path)
