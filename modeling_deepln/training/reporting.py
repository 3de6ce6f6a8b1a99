"""What a finished run shows: the loss plot, the model card and samples through ``pipeline``."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from .model_card import write_model_card
from .plots import plot_loss_curve

__all__ = ["report_pretraining", "report_finetuning", "print_samples"]

_PROMPTS = ("The history of", "In mathematics,", "The city is", "He was born in", "The first")
_MASK_TEMPLATES = (
    "The capital of the country is {mask}.",
    "He was born in the {mask} of London.",
    "The war ended in {mask}.",
    "It is one of the largest {mask} in the world.",
    "She studied {mask} at the university.",
)


def _describe(data: str | list[str]) -> str:
    """The card's data description: a Hub name as given; local files by file name only (no local paths in cards)."""
    items = [data] if isinstance(data, str) else list(data)
    local = [Path(item).name for item in items if Path(item).exists()]
    if not local:
        return ", ".join(items)
    return "local files (" + ", ".join(local) + ")"


def report_pretraining(run: Any, metrics: dict[str, float], tokens: int) -> None:
    """``loss.png``, README.md (model card) and the perplexity line of a finished ``pretrain`` run."""
    a, config, output_dir = run.args, run.model.config, run.output_dir
    unigram = metrics.get("perplexity_unigram")
    plot_loss_curve(
        run.trainer.state.log_history,
        output_dir / "loss.png",
        title=f"{a.preset}: {config.num_hidden_layers} layers, {config.residual_norm}",
        reference_losses={
            "before training": metrics["eval_loss_before"],
            "unigram model": math.log(unigram) if unigram else None,
        },
    )
    dataset_desc = (
        "the embedded English Wikipedia corpus (gensim test data, CC BY-SA)" if a.data is None else _describe(a.data)
    )
    write_model_card(
        output_dir,
        model_name=output_dir.name,
        config=config,
        metrics=metrics,
        task="fill-mask" if run.family == "bert" else "text-generation",
        dataset_name=dataset_desc,
        dataset_id=a.data if isinstance(a.data, str) and not Path(a.data).exists() else None,
        training={
            "objective": f"masked LM ({a.mlm_probability:.0%} masking)" if run.family == "bert" else "causal LM",
            "steps": run.trainer.state.global_step,
            "sequence length": a.seq_len,
            "global batch": f"{a.batch_size} x {a.grad_accum}",
            "learning rate": f"{a.lr} ({a.lr_schedule}, warmup {a.warmup_ratio}, min lr {a.min_lr})",
            "weight decay": 0.0 if a.optim == "adam" else a.weight_decay,
            "optimizer": a.optim,
            "precision": a.precision,
            "seed": a.seed,
            "tokens": tokens,
        },
    )
    print(
        f"[deepln] perplexity {metrics['perplexity_before']:.2f} -> {metrics['perplexity']:.2f} "
        f"(eval_loss {metrics['eval_loss_before']:.4f} -> {metrics['eval_loss']:.4f})"
        + (f"; a unigram model of the training text scores {unigram:.2f}" if unigram else "")
        + (" on the maskable tokens" if unigram and run.family == "bert" else ""),
        flush=True,
    )
    print_benchmark_rows(run, metrics)


def load_benchmark_rows(preset: str) -> list[dict[str, Any]]:
    """The stored benchmark rows of a preset (``configuration/benchmarks/<preset>.json``), or ``[]``."""
    from ..presets import PRESETS_DIR

    path = PRESETS_DIR / "benchmarks" / f"{Path(str(preset)).name}.json"
    if Path(str(preset)).suffix or not path.is_file():
        return []
    return list(json.loads(path.read_text()).get("rows", []))


def print_benchmark_rows(run: Any, metrics: dict[str, float]) -> list[str]:
    """After a run with the preset's own scheme: how the schemes it does not use fared in the same budget, from the
    stored benchmark rows, each with the one flag that switches to it. Returns the printed lines."""
    a = run.args
    if a.residual_norm is not None or a.post_norm_form is not None or a.final_layer_norm is not None:
        return []
    lines = []
    for row in load_benchmark_rows(a.preset):
        unigram, loss = row.get("unigram_loss"), row.get("eval_loss")
        versus = f" against the unigram model's {unigram:.2f}" if unigram is not None else ""
        reached = f"reached held-out loss {loss:.2f}{versus} in" if loss is not None else "stopped after"
        lines.append(
            f"[deepln] stored benchmark: {row['label']} ({row['flag']}) {reached} {row['steps']} steps "
            f"({row['outcome']}); this run: {metrics['eval_loss']:.2f}. "
            f"Measured with `{row['command']}` ({row['machine']})."
        )
    for line in lines:
        print(line, flush=True)
    return lines


def report_finetuning(run: Any, metrics: dict[str, float]) -> None:
    """README.md (model card) and the metrics line of a finished ``finetune`` run."""
    a = run.args
    if a.train_file:
        dataset_desc, dataset_id = _describe(a.train_file), None
    elif a.data is None:
        dataset_desc, dataset_id = "GLUE QQP", "nyu-mll/glue"
    else:
        dataset_desc = _describe(a.data)
        dataset_id = a.data.split(":")[0] if not Path(a.data).exists() else None
    write_model_card(
        run.output_dir,
        model_name=run.output_dir.name,
        config=run.model.config,
        metrics=metrics,
        task="text-classification",
        dataset_name=dataset_desc,
        dataset_id=dataset_id,
        base_model=a.model if a.model and not Path(a.model).exists() else None,
        training={
            "epochs": a.num_epochs,
            "steps": run.trainer.state.global_step,
            "batch": f"{a.batch_size} x {a.grad_accum}",
            "learning rate": f"{a.lr} ({a.lr_schedule})",
            "max sequence length": a.max_seq_len,
            "seed": a.seed,
        },
    )
    summary = ", ".join(
        f"{k.removeprefix('eval_')} {metrics[k]:.4f}"
        for k in ("eval_accuracy", "eval_precision", "eval_recall", "eval_f1")
        if k in metrics
    )
    print(f"[deepln] {summary}. Model saved in {run.output_dir}", flush=True)


def print_samples(folder: Path, family: str, n: int, seed: int) -> list[str]:
    """Load the saved folder through ``pipeline`` (remote code) and print continuations / fill-mask predictions."""
    from transformers import pipeline, set_seed

    set_seed(seed)
    out: list[str] = []
    if family == "gpt":
        generator = pipeline("text-generation", model=str(folder), tokenizer=str(folder), trust_remote_code=True)
        print("[deepln] sampled continuations (pipeline('text-generation')):", flush=True)
        for prompt in _PROMPTS[:n]:
            text = generator(prompt, max_new_tokens=30, do_sample=True, top_k=40, temperature=0.8)[0][
                "generated_text"
            ]
            out.append(text)
            print(f"  > {text!r}", flush=True)
    else:
        filler = pipeline("fill-mask", model=str(folder), tokenizer=str(folder), trust_remote_code=True)
        mask = filler.tokenizer.mask_token
        print("[deepln] fill-mask predictions (pipeline('fill-mask')):", flush=True)
        for template in _MASK_TEMPLATES[:n]:
            text = template.format(mask=mask)
            preds = filler(text, top_k=3)
            line = f"{text}  ->  " + ", ".join(f"{p['token_str']!s} ({p['score']:.2f})" for p in preds)
            out.append(line)
            print(f"  > {line}", flush=True)
    return out
