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
            **block_lr_note(a.block_lr_scale, config.num_hidden_layers),
            "precision": a.precision,
            "seed": a.seed,
            "tokens": tokens,
            **run.card_notes,
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


def block_lr_note(block_lr_scale: float | str | None, num_layers: int) -> dict[str, str]:
    """The card's line for a ``--block-lr-scale`` other than 1 (none for 1)."""
    from .depth_lr import block_lr_multiplier

    multiplier = block_lr_multiplier(block_lr_scale, num_layers)
    if multiplier == 1.0:
        return {}
    return {"residual blocks' learning rate": f"lr x {multiplier:.4g} (block_lr_scale={block_lr_scale})"}


def load_benchmarks(preset: str) -> dict[str, Any]:
    """The stored benchmark of a preset (``configuration/benchmarks/<preset>.json``: ``settings`` and ``rows``)."""
    from ..presets import PRESETS_DIR

    path = PRESETS_DIR / "benchmarks" / f"{Path(str(preset)).name}.json"
    if Path(str(preset)).suffix or not path.is_file():
        return {}
    return json.loads(path.read_text())


def load_benchmark_rows(preset: str) -> list[dict[str, Any]]:
    """The stored benchmark rows of a preset, or ``[]``."""
    return list(load_benchmarks(preset).get("rows", []))


_SHAPE = {"num_layers": "num_hidden_layers", "hidden_size": "hidden_size", "num_heads": "num_attention_heads",
          "intermediate_size": "intermediate_size", "vocab_size": "vocab_size"}  # fmt: skip


def settings_that_differ(run: Any, settings: dict[str, Any]) -> list[str]:
    """``"name stored (this run: value)"`` for each stored setting the run does not share (model shape from the
    run's config, every other setting from its resolved arguments)."""
    from .args import resolve_pretrain_args
    from .model_config import build_config, config_overrides

    a, _ = resolve_pretrain_args(run.args)
    config = getattr(run, "config", None) or build_config(a.preset, config_overrides(a))
    differ = []
    for name, stored in settings.items():
        value = getattr(config, _SHAPE[name]) if name in _SHAPE else getattr(a, name)
        if value != stored:
            differ.append(f"--{name.replace('_', '-')} {_shown(name, stored)} (this run: {_shown(name, value)})")
    return differ


def _shown(name: str, value: Any) -> Any:
    return "the embedded corpus" if name == "data" and value is None else value


def print_benchmark_rows(run: Any, metrics: dict[str, float]) -> list[str]:
    """After a run with the preset's own scheme: how the schemes it does not use fared in the same budget, from the
    stored benchmark rows, each with the one flag that switches to it. Printed only when the run's settings are the
    stored rows' (data, model shape, vocabulary, steps, batch, ...); otherwise one line says what differs. Returns
    the printed lines."""
    a = run.args
    if any(getattr(a, field, None) is not None for field in ("residual_norm", "post_norm_form", "final_layer_norm",
                                                             "final_hidden_scale")):  # fmt: skip
        return []
    stored = load_benchmarks(a.preset)
    if not stored.get("rows"):
        return []
    differ = settings_that_differ(run, stored.get("settings", {}))
    if differ:
        lines = [f"[deepln] the stored benchmark rows of {a.preset} (how its other schemes fare) are not shown: they "
                 f"were measured with other settings: {'; '.join(differ)}."]  # fmt: skip
    else:
        lines = [_benchmark_line(row, metrics) for row in stored["rows"]]
    for line in lines:
        print(line, flush=True)
    return lines


def _benchmark_line(row: dict[str, Any], metrics: dict[str, float]) -> str:
    unigram, loss = row.get("unigram_loss"), row.get("eval_loss")
    versus = f" against the unigram model's {unigram:.2f}" if unigram is not None else ""
    reached = f"reached held-out loss {loss:.2f}{versus} in" if loss is not None else "stopped after"
    return (f"[deepln] stored benchmark: {row['label']} ({row['flag']}) {reached} {row['steps']} steps "
            f"({row['outcome']}); this run: {metrics['eval_loss']:.2f}. "
            f"Measured with `{row['command']}` ({row['machine']}).")  # fmt: skip


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
