"""Evaluation results in a model card's ``model-index`` (``huggingface_hub.ModelCard`` / ``EvalResult``).

``deepln eval`` adds what it measured to the ``README.md`` card of the evaluated folder. Only the metadata is
changed: the card's text (written by the training run or ``deepln publish``) is kept as it is, and an entry for the
same task, data set, split and metric replaces the older one instead of duplicating it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from .suite import GPT_SUITE, OFFLINE_TASKS

__all__ = ["add_eval_results_to_card", "lm_eval_card_results", "HUB_DATASETS"]

HARNESS_URL = "https://github.com/EleutherAI/lm-evaluation-harness"

HUB_DATASETS: dict[str, tuple[str, str | None, str, str]] = {
    "lambada_openai": ("EleutherAI/lambada_openai", "default", "LAMBADA (OpenAI)", "test"),
    "winogrande": ("allenai/winogrande", "winogrande_xl", "WinoGrande", "validation"),
    "hellaswag": ("Rowan/hellaswag", None, "HellaSwag", "validation"),
    "piqa": ("baber/piqa", None, "PIQA", "validation"),
    "qqp": ("nyu-mll/glue", "qqp", "GLUE QQP", "validation"),
}
"""lm-eval task -> (Hub data set, config, display name, split) as in the harness's own task YAMLs."""


def lm_eval_card_results(results: Mapping[str, Any], n_samples: Mapping[str, Any] | None = None) -> list:
    """``EvalResult`` entries for the paper's suite from lm-eval's ``results`` (fractions, as the harness reports).

    Offline ``deepln_<task>`` runs are recorded as what they are: a local sample (``dataset_type`` ``deepln-offline-
    <task>``, its size in the name), never as the Hub data set.
    """
    from huggingface_hub import EvalResult

    offline_names = {offline: name for name, offline in OFFLINE_TASKS.items()}
    entries = []
    for task, scores in results.items():
        name = offline_names.get(task, task)
        if name not in HUB_DATASETS:
            continue
        dataset_id, config, display, split = HUB_DATASETS[name]
        if task in offline_names:
            count = (n_samples or {}).get(task, {}).get("effective", "?")
            dataset_id, config = f"deepln-offline-{name}", None  # not a Hub data set: a local JSON Lines sample
            display = f"{display} (deepln offline sample, {count} examples)"
        for row in (r for r in GPT_SUITE if r.task == name):
            value = scores.get(f"{row.metric},none")
            if isinstance(value, (int, float)):
                entries.append(
                    EvalResult(
                        task_type="text-generation", task_name=f"zero-shot {name}", dataset_type=dataset_id,
                        dataset_name=display, dataset_config=config, dataset_split=split, metric_type=row.metric,
                        metric_value=float(value), metric_name=row.label, source_name="lm-evaluation-harness", source_url=HARNESS_URL,
                    )
                )  # fmt: skip
    return entries


def _as_eval_results(results: Iterable[Any]) -> list:
    from huggingface_hub import EvalResult

    return [r if isinstance(r, EvalResult) else EvalResult(**dict(r)) for r in results]


def _same_entry(a, b) -> bool:
    fields = ("task_type", "dataset_type", "dataset_name", "dataset_config", "dataset_split", "metric_type")
    return all(getattr(a, f) == getattr(b, f) for f in fields)


def add_eval_results_to_card(folder: str | Path, results: Sequence[Any]) -> Path | None:
    """Add ``results`` (``huggingface_hub.EvalResult`` objects or dicts of their fields) to the ``model-index`` of
    ``folder/README.md``; return the card's path, or ``None`` when the folder has no card.

    Entries with the same task type, data set, config, split and metric as a new one are replaced.
    """
    from huggingface_hub import ModelCard

    path = Path(folder) / "README.md"
    if not path.is_file():
        return None
    new = _as_eval_results(results)
    card = ModelCard.load(path)
    kept = [old for old in (card.data.eval_results or []) if not any(_same_entry(old, n) for n in new)]
    card.data.eval_results = kept + new
    if not card.data.model_name:
        card.data.model_name = Path(folder).resolve().name
    card.save(path)
    return path
