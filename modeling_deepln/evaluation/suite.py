"""The seed paper's zero-shot suite: lm-eval task names, the metrics it reports, the paper's numbers, and the
offline task definitions shipped with deepln.

The FoundationLayerNorm paper (Shen 2022, arXiv 2204.04477, §6) evaluates GPT-1k zero-shot on QQP, LAMBADA,
WinoGrande, HellaSwag and PIQA (its Table 4) and compares with GPT-2 / GPT-Neo / GPT-J (its Table 5), and the
fine-tuned BERT-1k on QQP (its Table 3). The numbers below are copied from those tables; they are percentages except
LAMBADA perplexity.

Offline task definitions (``configuration/tasks/``): each is lm-eval 0.4.13's own YAML for the task, renamed
``deepln_<task>`` and pointed at a small local JSON Lines file in the data set's exact format. Their
``data_files`` are relative to that folder; :func:`offline_task_dir` copies the folder and makes the paths
absolute, so they load wherever the package is installed.
"""

from __future__ import annotations

import json
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

from ..presets import PRESETS_DIR

__all__ = [
    "SuiteMetric",
    "GPT_SUITE",
    "GPT_SUITE_TASKS",
    "OFFLINE_TASKS",
    "PAPER_GPT_ROWS",
    "PAPER_BERT_QQP",
    "TASKS_DIR",
    "offline_task_dir",
]

TASKS_DIR = PRESETS_DIR / "tasks"
"""The shipped offline task definitions (``configuration/tasks/`` in a checkout, inside the package when installed)."""


@dataclass(frozen=True)
class SuiteMetric:
    """One row of the paper's Table 4: ``label`` is read from lm-eval's ``results[task][metric + ",none"]``."""

    label: str
    task: str
    metric: str
    percent: bool = True


GPT_SUITE: tuple[SuiteMetric, ...] = (
    SuiteMetric("QQP-Acc", "qqp", "acc"),
    SuiteMetric("QQP-F1", "qqp", "f1"),
    SuiteMetric("LAMBADA-PPL", "lambada_openai", "perplexity", percent=False),
    SuiteMetric("LAMBADA-Acc", "lambada_openai", "acc"),
    SuiteMetric("Winogrande-Acc", "winogrande", "acc"),
    SuiteMetric("Hellaswag-Acc", "hellaswag", "acc"),
    SuiteMetric("Hellaswag-AccNorm", "hellaswag", "acc_norm"),
    SuiteMetric("PIQA-Acc", "piqa", "acc"),
    SuiteMetric("PIQA-AccNorm", "piqa", "acc_norm"),
)
"""Table 4's rows in its order (plus lm-eval's length-normalised accuracy where the harness reports it)."""

GPT_SUITE_TASKS: tuple[str, ...] = ("qqp", "lambada_openai", "winogrande", "hellaswag", "piqa")
"""lm-eval's names of the paper's GPT tasks (the default of ``deepln eval``)."""

OFFLINE_TASKS: dict[str, str] = {name: f"deepln_{name}" for name in GPT_SUITE_TASKS}
"""Harness task name -> the shipped offline definition of the same task."""

# The paper's Table 4 (GPT-1k) and Table 5 (the other rows; no QQP or LAMBADA perplexity reported there).
PAPER_GPT_ROWS: dict[str, dict[str, float]] = {
    "GPT-1k 815.5M (paper)": {
        "QQP-Acc": 46.93, "QQP-F1": 48.37, "LAMBADA-PPL": 8.37e5, "LAMBADA-Acc": 0.72,
        "Winogrande-Acc": 50.36, "Hellaswag-Acc": 25.54, "PIQA-Acc": 55.17,
    },
    "GPT-2 1.5B": {"LAMBADA-Acc": 51.21, "Winogrande-Acc": 59.4, "Hellaswag-AccNorm": 50.9, "PIQA-Acc": 70.8},
    "GPT-Neo 1.3B": {"LAMBADA-Acc": 57.2, "Winogrande-Acc": 55.0, "Hellaswag-AccNorm": 48.9, "PIQA-Acc": 71.1},
    "GPT-Neo 2.7B": {"LAMBADA-Acc": 62.2, "Winogrande-Acc": 56.5, "Hellaswag-AccNorm": 55.8, "PIQA-Acc": 73.0},
    "GPT-J 6B": {"LAMBADA-Acc": 69.7, "Winogrande-Acc": 65.3, "Hellaswag-AccNorm": 66.1, "PIQA-Acc": 76.5},
}  # fmt: skip
"""The paper's zero-shot numbers (percent; LAMBADA-PPL is a perplexity), Tables 4-5, each under the
lm-eval metric it is. Table 5's HellaSwag column for GPT-2 / GPT-Neo / GPT-J is lm-eval's length-normalised
``acc_norm`` (the evaluation table of the GPT-J release, which Table 5 reproduces), so those numbers sit in the
``Hellaswag-AccNorm`` row beside the evaluated model's ``acc_norm``; the paper's own GPT-1k
value (25.54, chance level either way) is reported as accuracy and stays in ``Hellaswag-Acc``."""

PAPER_BERT_QQP: dict[str, float] = {"precision": 72.0, "recall": 69.0, "f1": 70.0, "accuracy": 73.0}
"""The paper's Table 3: BERT-1k fine-tuned one epoch on QQP, scored on QQP test (percent)."""

_DATA_FILE_LINE = re.compile(r"^(\s+\w+:\s*)(data/\S+)\s*$", re.MULTILINE)


def offline_task_dir(destination: str | Path) -> Path:
    """Copy the shipped task definitions to ``destination`` with absolute ``data_files`` paths; return it.

    The YAMLs name their data as ``data/<task>.jsonl`` relative to their own folder, while ``datasets`` resolves
    relative paths against the working directory; the copy pins them to the installed files. The YAMLs are patched
    as text (``!function`` tags are lm-eval's own YAML extension and would not survive a plain YAML round trip).
    """
    destination = Path(destination)
    if destination.exists():
        shutil.rmtree(destination)
    shutil.copytree(TASKS_DIR, destination, ignore=shutil.ignore_patterns("__pycache__", "data"))
    data_dir = (TASKS_DIR / "data").resolve()
    for yaml_file in destination.glob("*.yaml"):
        text = yaml_file.read_text(encoding="utf-8")
        patched = _DATA_FILE_LINE.sub(
            lambda m: m.group(1) + json.dumps((data_dir / m.group(2).removeprefix("data/")).as_posix()), text
        )
        yaml_file.write_text(patched, encoding="utf-8")
    return destination
