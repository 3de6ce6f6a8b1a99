"""The model card (``README.md``) of a deepln model folder or Hub repo, as a ``huggingface_hub.ModelCard``.

Metadata (validated by ``ModelCardData``, which parses the ``model-index`` into ``EvalResult``s):
``library_name: transformers``, ``pipeline_tag`` (from the saved head), tags ``custom_code``, ``deepln``, the model
type and ``residual-<scheme>``, ``license``, ``datasets`` (Hub ids), ``base_model`` for fine-tuned models,
``model-index`` with the evaluation results, and a ``deepln`` block (data description, training settings) from which
``deepln publish`` re-renders the card for the repo id. The body gives the shape and the parameter count, the
results table, the training settings and a usage snippet that runs as written (``trust_remote_code=True`` on
every ``from_pretrained``/``pipeline`` call: in transformers 5.x ``AutoTokenizer`` reads ``config.json``'s
``auto_map`` through ``AutoConfig`` before anything else, and without the flag it asks "[y/N]").

Where the results come from (``eval_results_from_folder``), later sources replacing equal (task, data set, metric)
entries: the ``model-index`` already in the folder's ``README.md`` (what ``deepln eval`` adds to the card), then
``eval_results.json`` (written by ``deepln pretrain``/``finetune``: ``eval_loss``, ``perplexity``, accuracy, F1...),
then ``deepln_eval_results.json`` if present: either lm-eval's ``simple_evaluate`` output (``{"results": {task:
{"acc,none": x, ...}}}``; each task is its own data set) or a flat ``{metric: value}`` mapping.

Only the model's own results go into the ``model-index`` (what the Hub shows as this model's scores). Reference
points measured beside them (:func:`is_baseline`: the same model before training, ``*_before``; a unigram model of
the training text, ``*unigram*``) go into the card's text and its ``deepln`` block, labelled as what they are.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

__all__ = [
    "DEFAULT_LICENSE",
    "EXTRA_EVAL_RESULTS",
    "task_of_architecture",
    "is_baseline",
    "baselines_from_metrics",
    "eval_results_from_metrics",
    "eval_results_from_folder",
    "usage_snippet",
    "render_model_card",
    "write_model_card",
    "card_for_repo",
]

DEFAULT_LICENSE = "apache-2.0"
EXTRA_EVAL_RESULTS = "deepln_eval_results.json"
_AUTO_CLASS = {
    "text-generation": "AutoModelForCausalLM",
    "fill-mask": "AutoModelForMaskedLM",
    "text-classification": "AutoModelForSequenceClassification",
    "feature-extraction": "AutoModel",
}
_NOT_QUALITY = ("runtime", "per_second", "preparation_time", "samples", "epoch", "stderr")


def task_of_architecture(architecture: str) -> str:
    """The pipeline tag of a saved head: ``...ForCausalLM`` -> ``text-generation`` and so on."""
    for suffix, task in (("ForCausalLM", "text-generation"), ("ForMaskedLM", "fill-mask"),
                         ("ForSequenceClassification", "text-classification")):  # fmt: skip
        if architecture.endswith(suffix):
            return task
    return "feature-extraction"


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(float(value))


def is_baseline(metric: str) -> bool:
    """A reference point, not a result of the model: ``*_before`` (the model before training) or a unigram model."""
    return metric.endswith("_before") or "unigram" in metric


_BASELINE_MEANING = {
    "perplexity_unigram": "a unigram model of the training text (token frequencies only), on the same targets",
    "loss_before": "this model at initialisation, before training",
    "perplexity_before": "this model at initialisation, before training",
}


def baselines_from_metrics(metrics: dict[str, Any]) -> dict[str, float]:
    """The finite reference points among ``metrics`` (:func:`is_baseline`), keyed without the ``eval_`` prefix."""
    return {key.removeprefix("eval_"): float(value) for key, value in metrics.items()
            if _finite(value) and is_baseline(key.removeprefix("eval_"))}  # fmt: skip


def eval_results_from_metrics(metrics: dict[str, Any], task: str, dataset_id: str | None, dataset_name: str) -> list:
    """``huggingface_hub.EvalResult`` entries for the model's finite quality metrics (runtimes, counts, stderr and
    the reference points of :func:`is_baseline` dropped)."""
    from huggingface_hub import EvalResult

    return [
        EvalResult(task_type=task, dataset_type=dataset_id or "custom", dataset_name=dataset_name,
                   metric_type=key.removeprefix("eval_"), metric_value=float(value))  # fmt: skip
        for key, value in metrics.items()
        if _finite(value) and not any(word in key for word in _NOT_QUALITY)
        and not is_baseline(key.removeprefix("eval_"))
    ]


def _lm_eval_results(payload: dict[str, Any], task: str) -> list:
    """lm-eval ``results`` (``{task: {"acc,none": x, "acc_stderr,none": s, "alias": ...}}``) as EvalResults."""
    from huggingface_hub import EvalResult

    out = []
    for name, scores in payload["results"].items():
        for key, value in scores.items():
            metric = key.split(",")[0]
            if _finite(value) and not any(word in metric for word in _NOT_QUALITY):
                out.append(EvalResult(task_type=task, dataset_type=name, dataset_name=name, metric_type=metric,
                                      metric_value=float(value), source_name="lm-evaluation-harness",
                                      source_url="https://github.com/EleutherAI/lm-evaluation-harness"))  # fmt: skip
    return out


def _key(result) -> tuple:
    return (result.task_type, result.dataset_type, result.dataset_name, result.metric_type)


def eval_results_from_folder(folder: Path, task: str, dataset_id: str | None, dataset_name: str) -> list:
    """The card's results: existing ``model-index``, ``eval_results.json``, ``deepln_eval_results.json`` (merged)."""
    from huggingface_hub import ModelCard

    merged: dict[tuple, Any] = {}
    if (folder / "README.md").is_file():  # cards of earlier deepln versions listed baselines as results
        for result in ModelCard.load(folder / "README.md").data.eval_results or []:
            if not is_baseline(result.metric_type):
                merged[_key(result)] = result
    if (folder / "eval_results.json").is_file():
        metrics = json.loads((folder / "eval_results.json").read_text())
        for result in eval_results_from_metrics(metrics, task, dataset_id, dataset_name):
            merged[_key(result)] = result
    if (folder / EXTRA_EVAL_RESULTS).is_file():
        payload = json.loads((folder / EXTRA_EVAL_RESULTS).read_text())
        if isinstance(payload.get("results"), dict):
            extra = _lm_eval_results(payload, task)
        else:
            extra = eval_results_from_metrics(payload, task, dataset_id, dataset_name)
        for result in extra:
            merged[_key(result)] = result
    return list(merged.values())


def usage_snippet(model_id: str, task: str) -> str:
    """Python that loads the model as users would, runnable as written (every call passes trust_remote_code)."""
    auto = _AUTO_CLASS.get(task, "AutoModel")
    head = f"""from transformers import AutoTokenizer, {auto}, pipeline

tokenizer = AutoTokenizer.from_pretrained("{model_id}", trust_remote_code=True)
model = {auto}.from_pretrained("{model_id}", trust_remote_code=True)
"""
    if task == "text-generation":
        return head + f"""
generate = pipeline("text-generation", model="{model_id}", trust_remote_code=True)
print(generate("The history of", max_new_tokens=20, do_sample=False)[0]["generated_text"])
"""
    if task == "fill-mask":
        return head + f"""
fill = pipeline("fill-mask", model="{model_id}", trust_remote_code=True)
print(fill(f"The capital of France is {{fill.tokenizer.mask_token}}.", top_k=3))
"""
    if task == "text-classification":
        return head + f"""
classify = pipeline("text-classification", model="{model_id}", trust_remote_code=True)
print(classify({{"text": "How do I learn Python?", "text_pair": "How can I learn Python?"}}))
"""
    return head + """
print(model(**tokenizer("Hello world", return_tensors="pt")).last_hidden_state.shape)
"""


def _shape_line(config: Any, parameters: int | None) -> str:
    family = "BERT" if config.model_type == "deepln_bert" else "GPT"
    count = f"; {parameters:,} parameters (as stored in safetensors)" if parameters else ""
    return (f"A {config.num_hidden_layers}-layer deepln {family}-style Transformer: hidden size {config.hidden_size}, "
            f"{config.num_attention_heads} attention heads, FFN {config.intermediate_size}, "
            f"{config.max_position_embeddings} positions, vocabulary {config.vocab_size}, residual normalization "
            f"`{config.residual_norm}`{count}.")  # fmt: skip


def _results_table(results: list) -> str:
    if not results:
        return "No evaluation results."
    rows = [f"| {r.dataset_name} | {r.metric_type} | {r.metric_value:.6g} |" for r in results]
    return "| data | metric | value |\n|---|---|---|\n" + "\n".join(rows)


def _baselines_table(baselines: dict[str, float]) -> str:
    if not baselines:
        return ""
    rows = [f"| {name} | {value:.6g} | {_BASELINE_MEANING.get(name, 'a reference point')} |"
            for name, value in baselines.items()]  # fmt: skip
    return ("\nReference points measured on the same held-out data (not results of this model, so not in the "
            "model-index):\n\n| metric | value | what it measures |\n|---|---|---|\n" + "\n".join(rows) + "\n")


def render_model_card(
    *,
    model_id: str,
    config: Any,
    eval_results: list,
    task: str,
    dataset_name: str,
    dataset_id: str | None = None,
    training: dict[str, Any] | None = None,
    base_model: str | None = None,
    license: str | None = DEFAULT_LICENSE,
    parameters: int | None = None,
    loss_plot: bool = False,
    extra_sections: str = "",
    baselines: dict[str, float] | None = None,
):
    """The card as a ``ModelCard``; ``model_id`` is the folder name at training time and the repo id on the Hub.
    ``baselines`` (reference points, :func:`is_baseline`) are shown in the text, never in the model-index."""
    from huggingface_hub import ModelCard, ModelCardData

    card_data = ModelCardData(
        model_name=model_id,
        library_name="transformers",
        pipeline_tag=task,
        license=license,
        tags=["custom_code", "deepln", config.model_type, f"residual-{config.residual_norm}"],
        datasets=[dataset_id] if dataset_id else None,
        base_model=base_model,
        eval_results=eval_results or None,
        deepln={"dataset_name": dataset_name, "training": dict(training or {}), "parameters": parameters,
                "baselines": dict(baselines or {})},
    )
    hyper = "\n".join(f"- {k}: {v}" for k, v in (training or {}).items()) or "-"
    curve = "\n![Training and evaluation loss](loss.png)\n" if loss_plot else ""
    content = f"""---
{card_data.to_yaml()}
---

# {model_id}

{_shape_line(config, parameters)} Trained with `deepln` on {dataset_name}.

## Evaluation

{_results_table(eval_results)}
{_baselines_table(baselines or {})}{extra_sections}
## Training

{hyper}
{curve}
## Usage

The model code ships in this repository (`trust_remote_code=True`; deepln need not be installed):

```python
{usage_snippet(model_id, task).strip()}
```
"""
    return ModelCard(content)


def count_parameters(folder: Path) -> int | None:
    """Parameters stored in the folder's safetensors (None when there are none or they are unreadable)."""
    from .checks import PublishError, check_weights

    try:
        return check_weights(folder)[1]
    except PublishError:
        return None


def write_model_card(
    output_dir: str | os.PathLike,
    *,
    model_name: str,
    config,
    metrics: dict[str, Any],
    task: str,
    dataset_name: str,
    dataset_id: str | None = None,
    training: dict[str, Any] | None = None,
    base_model: str | None = None,
    license: str | None = DEFAULT_LICENSE,
) -> Path:
    """Write ``README.md`` of a freshly trained folder (metrics from the run; see :func:`render_model_card`).

    Args:
        task: ``"text-generation"``, ``"fill-mask"`` or ``"text-classification"`` (the card's pipeline tag).
        dataset_name: human-readable data description; ``dataset_id``: Hub dataset id, if any (card metadata).
        training: hyper-parameters to list.
    """
    folder = Path(output_dir)
    card = render_model_card(
        model_id=model_name, config=config, task=task, dataset_name=dataset_name, dataset_id=dataset_id,
        eval_results=eval_results_from_metrics(metrics, task, dataset_id, dataset_name), training=training,
        base_model=base_model, license=license, parameters=count_parameters(folder),
        loss_plot=(folder / "loss.png").is_file(), baselines=baselines_from_metrics(metrics),
    )  # fmt: skip
    path = folder / "README.md"
    card.save(path)
    return path


def _section_items(text: str, title: str) -> dict[str, str]:
    """``- key: value`` lines of a card's ``## title`` section (cards written before the ``deepln`` metadata)."""
    for part in text.split("\n## ")[1:]:
        heading, _, body = part.partition("\n")
        if heading.strip() == title:
            pairs = [line[2:].split(": ", 1) for line in body.splitlines() if line.startswith("- ") and ": " in line]
            return dict(pairs)
    return {}


def _extra_sections(text: str) -> str:
    """``## `` sections of an existing card that this module does not write (kept when re-rendering)."""
    ours = {"Evaluation", "Training", "Usage"}
    body = text.split("\n---\n", 1)[-1] if text.startswith("---") else text
    parts = body.split("\n## ")[1:]
    kept = [p for p in parts if p.split("\n", 1)[0].strip() not in ours]
    return "".join(f"\n## {p.rstrip()}\n" for p in kept)


def _folder_baselines(folder: Path, old) -> dict[str, float]:
    """Reference points of a folder whose card predates the ``baselines`` entry: from ``eval_results.json`` and from
    the model-index where earlier deepln versions put them."""
    found = {r.metric_type: float(r.metric_value) for r in (old.data.eval_results or []) if is_baseline(r.metric_type)
             } if old else {}  # fmt: skip
    if (folder / "eval_results.json").is_file():
        found.update(baselines_from_metrics(json.loads((folder / "eval_results.json").read_text())))
    return found


def card_for_repo(folder: Path, repo_id: str, config: Any, *, parameters: int | None, license: str | None = None,
                  base_model: str | None = None):  # fmt: skip
    """The folder's card re-rendered for ``repo_id``: snippet with the repo id, results from every source, metadata
    (data description, training settings, license, base model) kept from the folder's card unless overridden."""
    from huggingface_hub import ModelCard

    old = ModelCard.load(folder / "README.md") if (folder / "README.md").is_file() else None
    data = old.data.to_dict() if old else {}
    info = data.get("deepln") or {}
    task = data.get("pipeline_tag") or task_of_architecture((config.architectures or ["Model"])[0])
    dataset_id = (data.get("datasets") or [None])[0]
    earlier = [r.dataset_name for r in (old.data.eval_results or [])] if old else []  # cards written before the
    dataset_name = info.get("dataset_name") or (earlier or [dataset_id or "unspecified data"])[0]  # deepln block
    training = info.get("training") or (_section_items(old.content, "Training") if old else {})
    return render_model_card(  # baselines: the card's own, else those an earlier card listed as results
        baselines=info.get("baselines") or _folder_baselines(folder, old),
        model_id=repo_id, config=config, task=task, dataset_name=dataset_name, dataset_id=dataset_id,
        eval_results=eval_results_from_folder(folder, task, dataset_id, dataset_name), training=training,
        base_model=base_model or data.get("base_model"), license=license or data.get("license") or DEFAULT_LICENSE,
        parameters=parameters, loss_plot=(folder / "loss.png").is_file(),
        extra_sections=_extra_sections(old.content) if old else "",
    )  # fmt: skip
