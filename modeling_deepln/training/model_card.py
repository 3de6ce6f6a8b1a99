"""The model card (``README.md``) of a trained deepln model folder, via ``huggingface_hub.ModelCard``."""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

__all__ = ["write_model_card"]


def _eval_results(metrics: dict[str, Any], task: str, dataset_id: str | None, dataset_name: str) -> list:
    """``huggingface_hub.EvalResult`` entries (the card's ``model-index``) for the finite quality metrics."""
    from huggingface_hub import EvalResult

    task_type = {"text-generation": "text-generation", "fill-mask": "fill-mask"}.get(task, "text-classification")
    results = []
    for key, value in metrics.items():
        if not isinstance(value, (int, float)) or not math.isfinite(float(value)):
            continue
        metric = key.removeprefix("eval_")
        if any(word in metric for word in ("runtime", "per_second", "preparation_time", "samples", "epoch")):
            continue
        results.append(
            EvalResult(
                task_type=task_type,
                dataset_type=dataset_id or "custom",
                dataset_name=dataset_name,
                metric_type=metric,
                metric_value=float(value),
            )
        )
    return results


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
) -> Path:
    """Write ``README.md`` (a ``huggingface_hub.ModelCard``) with metadata, the metrics and a usage snippet.

    Args:
        task: ``"text-generation"``, ``"fill-mask"`` or ``"text-classification"`` (the card's pipeline tag).
        dataset_name: human-readable data description; ``dataset_id``: Hub dataset id, if any (card metadata).
        training: hyper-parameters to list.
    """
    from huggingface_hub import ModelCard, ModelCardData

    eval_results = _eval_results(metrics, task, dataset_id, dataset_name)
    card_data = ModelCardData(
        model_name=model_name,
        library_name="transformers",
        pipeline_tag=task,
        tags=["deepln", config.model_type, f"residual-{config.residual_norm}", "custom_code"],
        datasets=[dataset_id] if dataset_id else None,
        base_model=base_model,
        eval_results=eval_results or None,
    )
    layers = config.num_hidden_layers
    rows = "\n".join(
        f"| {k} | {v:.6g} |" if isinstance(v, float) else f"| {k} | {v} |"
        for k, v in metrics.items()
        if isinstance(v, (int, float))
    )
    hyper = "\n".join(f"- {k}: {v}" for k, v in (training or {}).items())
    auto = {
        "text-generation": "AutoModelForCausalLM",
        "fill-mask": "AutoModelForMaskedLM",
    }.get(task, "AutoModelForSequenceClassification")
    curve = "\n![Training and evaluation loss](loss.png)\n" if (Path(output_dir) / "loss.png").is_file() else ""
    content = f"""---
{card_data.to_yaml()}
---

# {model_name}

A {layers}-layer deepln {'BERT' if config.model_type == 'deepln_bert' else 'GPT'}-style model
(hidden size {config.hidden_size}, {config.num_attention_heads} heads, residual normalization
`{config.residual_norm}`), trained with `deepln` on {dataset_name}.

## Evaluation

| metric | value |
|---|---|
{rows}

## Training

{hyper or '-'}

## Usage

```python
from transformers import AutoTokenizer, {auto}

tokenizer = AutoTokenizer.from_pretrained("{model_name}")
model = {auto}.from_pretrained("{model_name}", trust_remote_code=True)
```

The model code is stored in this folder (`trust_remote_code=True`); with `pip install deepln` and
`import modeling_deepln` the classes are also registered locally.
{curve}"""
    path = Path(output_dir) / "README.md"
    ModelCard(content).save(path)
    return path
