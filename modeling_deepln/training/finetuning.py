"""``deepln finetune``: sentence(-pair) classification (GLUE QQP format by default) with ``Trainer``.

:func:`finetune` is a short sequence of named steps, each a function a test can call on its own:

1. :func:`plan_finetune` checks the arguments and prepares the output folder;
2. :func:`prepare_pair_data` loads the task data, checks the labels and builds the config;
3. :func:`prepare_classifier_tokenizer` loads (or trains) the tokenizer and tokenizes the examples;
4. :func:`build_classifier` loads the pretrained model (or builds the preset) with a classification head;
5. :func:`build_classifier_trainer`, then ``train`` and ``evaluate`` (:func:`train_and_evaluate`);
6. :func:`save_classifier` saves the folder, results and model card.

Metrics: ``eval_accuracy``, ``eval_precision``, ``eval_recall``, ``eval_f1`` (:func:`.metrics.classification_metrics`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .args import DeepLNInputError, FinetuneArgs
from .callbacks import NonFiniteGuard
from .checks import check_positive, check_precision, check_preset, input_errors_as_deepln
from .model_config import build_config, config_overrides, model_family
from .output_dir import PREPARED_DIR, check_output_dir, clear_output_dir, resume_checkpoint
from .reporting import report_finetuning
from .sharding import prepare_fsdp, save_model
from .trainer_setup import (
    default_output_dir,
    find_callback,
    process_world,
    resolve_use_cpu,
    run_callbacks,
    training_arguments,
)

__all__ = [
    "FinetuneRun",
    "finetune",
    "plan_finetune",
    "prepare_pair_data",
    "prepare_classifier_tokenizer",
    "build_classifier",
    "build_classifier_trainer",
    "train_and_evaluate",
    "save_classifier",
]


@dataclass
class FinetuneRun:
    """The state one :func:`finetune` call passes from step to step."""

    args: FinetuneArgs
    output_dir: Path
    is_main: bool
    world: int
    raw: Any = None
    num_labels: int = 0
    config: Any = None
    family: str = ""
    tokenizer: Any = None
    encoded: Any = None
    training_args: Any = None
    resume_from: str | None = None
    model: Any = None
    trainer: Any = None


def finetune(args: FinetuneArgs) -> dict[str, Any]:
    """Fine-tune a deepln model for sentence(-pair) classification.

    Loads ``args.model`` (a pretrained deepln folder or Hub id) with ``AutoModelForSequenceClassification`` or builds
    ``args.preset`` from scratch, tokenizes with the model's tokenizer, trains with ``Trainer`` and reports accuracy,
    precision, recall and F1 in ``eval_results.json`` and the model card.

    Returns:
        ``output_dir``, the evaluation metrics, ``train_metrics``, ``global_step``, ``wall_seconds``, ``skipped_steps``.

    Raises:
        DeepLNInputError: bad input, before training starts. NonFiniteError: NaN/inf with ``nan_policy="stop"``.
    """
    wall_start = time.monotonic()
    run = plan_finetune(args)
    with input_errors_as_deepln():
        prepare_pair_data(run)
        prepare_classifier_tokenizer(run)
    build_classifier(run)
    build_classifier_trainer(run)
    train_metrics, metrics = train_and_evaluate(run)
    save_classifier(run, train_metrics, metrics)
    guard = find_callback(run.trainer, NonFiniteGuard)
    return {
        "output_dir": str(run.output_dir),
        **metrics,
        "train_metrics": train_metrics,
        "global_step": run.trainer.state.global_step,
        "wall_seconds": time.monotonic() - wall_start,
        "skipped_steps": list(guard.skipped_steps) if guard else [],
    }


def plan_finetune(args: FinetuneArgs) -> FinetuneRun:
    """Step 1: check the arguments that need no data; prepare the output folder. Raises DeepLNInputError."""
    with input_errors_as_deepln():
        if bool(args.model) == bool(args.preset):
            raise DeepLNInputError("Pass exactly one of --model (a pretrained deepln folder) or --preset.")
        if args.preset:
            check_preset(args.preset)
        if args.model and (Path(args.model).exists() and not (Path(args.model) / "config.json").is_file()):
            raise DeepLNInputError(f"--model {args.model}: no config.json there; is it a model folder?")
        if not 1 <= len(args.text_columns) <= 2:
            raise DeepLNInputError(f"--text-columns needs one or two columns, got {list(args.text_columns)}.")
        check_positive(max_seq_len=args.max_seq_len, lr=args.lr, num_epochs=args.num_epochs, grad_accum=args.grad_accum)
        check_positive(monitor_every=args.monitor_every)
        check_precision(args.precision, resolve_use_cpu(args.use_cpu))
        process_index, world = process_world(args.use_cpu)
        is_main = process_index == 0
        name = Path(str(args.model or args.preset)).name
        output_dir = Path(args.output_dir or default_output_dir(f"finetune-{name}", args.use_cpu))
        check_output_dir(output_dir, args.overwrite, args.resume)
        if args.overwrite and not args.resume and is_main and output_dir.is_dir():
            clear_output_dir(output_dir)
    return FinetuneRun(args, output_dir, is_main, world)


def _load_pair_data(a: FinetuneArgs):
    from .pair_tasks import load_pair_task

    if a.train_file or a.validation_file:
        if a.data:
            raise DeepLNInputError("Give either --data or --train-file/--validation-file, not both.")
        if not a.train_file:
            raise DeepLNInputError("--validation-file needs --train-file.")
        spec: Any = {"train": a.train_file}
        if a.validation_file:
            spec["validation"] = a.validation_file
    else:
        spec = a.data
    return load_pair_task(spec, text_columns=tuple(a.text_columns), label_column=a.label_column, seed=a.seed)


def prepare_pair_data(run: FinetuneRun) -> None:
    """Step 2: load the task, check its labels against ``num_labels``, build the model config."""
    from transformers import AutoConfig

    a = run.args
    run.raw = _load_pair_data(a)
    labels = run.raw["train"][a.label_column]
    feature = run.raw["train"].features[a.label_column]
    n_found = getattr(feature, "num_classes", None) or (int(max(labels)) + 1)
    run.num_labels = a.num_labels or n_found
    if max(labels) >= run.num_labels or min(labels) < 0:
        raise DeepLNInputError(
            f"Labels in {a.label_column!r} range over {min(labels)}..{max(labels)} but num_labels={run.num_labels}."
        )
    if a.model:
        config = AutoConfig.from_pretrained(a.model, num_labels=run.num_labels)
        if config.model_type not in ("deepln_bert", "deepln_gpt"):
            raise DeepLNInputError(f"--model {a.model} is a {config.model_type!r} model, not a deepln model.")
    else:
        config = build_config(a.preset, {**config_overrides(a), "num_labels": run.num_labels})
    if config.max_position_embeddings < a.max_seq_len:
        if a.model:
            raise DeepLNInputError(
                f"--max-seq-len {a.max_seq_len} exceeds the model's max_position_embeddings "
                f"({config.max_position_embeddings})."
            )
        config.max_position_embeddings = a.max_seq_len
    run.config, run.family = config, model_family(config)


def prepare_classifier_tokenizer(run: FinetuneRun) -> None:
    """Step 3: the model's tokenizer (or one trained on the task's text), checked against the vocabulary; encode."""
    from .pair_tasks import tokenize_pairs
    from .tokenization import check_tokenizer_fits, load_or_train_tokenizer

    a = run.args
    source = a.tokenizer or a.model
    texts = None if source else [t for col in a.text_columns for t in run.raw["train"][col]]
    cache = run.output_dir / PREPARED_DIR / "tokenizer"
    if not source and cache.is_dir() and a.resume:
        source = str(cache)
    tokenizer = load_or_train_tokenizer(
        source, run.family, texts, vocab_size=run.config.vocab_size, model_max_length=run.config.max_position_embeddings
    )
    if not source and run.is_main:
        tokenizer.save_pretrained(str(cache))
    check_tokenizer_fits(tokenizer, run.config.vocab_size)
    if tokenizer.pad_token is None and tokenizer.eos_token is not None:
        tokenizer.pad_token = tokenizer.eos_token
    run.tokenizer = tokenizer
    run.encoded = tokenize_pairs(run.raw, tokenizer, a.text_columns, a.label_column, a.max_seq_len)
    run.training_args = training_arguments(
        a, output_dir=str(run.output_dir), world=run.world, extra={} if a.eval_steps else {"eval_strategy": "epoch"}
    )
    run.resume_from = resume_checkpoint(a.resume, run.output_dir, run.is_main)


def build_classifier(run: FinetuneRun):
    """Step 4: ``AutoModelForSequenceClassification`` from the pretrained folder, or fresh from the preset."""
    from transformers import AutoModelForSequenceClassification, set_seed

    if run.config.pad_token_id is None and run.tokenizer.pad_token_id is not None:
        run.config.pad_token_id = run.tokenizer.pad_token_id
    set_seed(run.args.seed)
    if run.args.model:
        run.model = AutoModelForSequenceClassification.from_pretrained(run.args.model, config=run.config)
    else:
        run.model = AutoModelForSequenceClassification.from_config(run.config)
    return run.model


def _monitor_callbacks(a: FinetuneArgs) -> list:
    """The per-layer monitor (``--monitor-every K``, :mod:`modeling_deepln.stability`), only when asked for."""
    if not a.monitor_every:
        return []
    from ..stability.monitor import monitor_callbacks

    return monitor_callbacks(a)


def build_classifier_trainer(run: FinetuneRun):
    """Step 5a: the ``Trainer`` with padding collator, classification metrics and deepln's callbacks."""
    from transformers import DataCollatorWithPadding, Trainer

    from .metrics import classification_metrics

    a = run.args
    train_ds, eval_ds = run.encoded["train"], run.encoded["validation"]
    if a.max_train_samples:
        train_ds = train_ds.select(range(min(a.max_train_samples, len(train_ds))))
    if a.max_eval_samples:
        eval_ds = eval_ds.select(range(min(a.max_eval_samples, len(eval_ds))))
    run.trainer = Trainer(
        model=run.model,
        args=run.training_args,
        train_dataset=train_ds,
        eval_dataset=eval_ds,
        data_collator=DataCollatorWithPadding(run.tokenizer),
        processing_class=run.tokenizer,
        compute_metrics=classification_metrics,
        callbacks=run_callbacks(a, str(run.output_dir), run.model) + _monitor_callbacks(a),
    )
    if run.is_main:
        print(
            f"[deepln] fine-tuning {a.model or a.preset} ({run.config.num_hidden_layers} layers) on "
            f"{len(train_ds)} training / {len(eval_ds)} validation examples, {run.num_labels} labels; "
            f"output {run.output_dir}",
            flush=True,
        )
    return run.trainer


def train_and_evaluate(run: FinetuneRun) -> tuple[dict[str, float], dict[str, float]]:
    """Step 5b: train (resuming if asked), then evaluate; returns ``(train_metrics, eval_metrics)``."""
    prepare_fsdp(run.trainer, run.model, run.args.fsdp_blocks_per_unit, run.is_main)
    output = run.trainer.train(resume_from_checkpoint=run.resume_from)
    guard = find_callback(run.trainer, NonFiniteGuard)
    if guard:
        guard.detach()
    metrics = run.trainer.evaluate()
    metrics["eval_samples"] = len(run.trainer.eval_dataset)
    return dict(output.metrics), metrics


def save_classifier(run: FinetuneRun, train_metrics: dict[str, float], metrics: dict[str, float]) -> None:
    """Step 6: save model, tokenizer, metrics and state; write the model card."""
    trainer = run.trainer
    save_model(trainer, str(run.output_dir))
    trainer.log_metrics("eval", metrics)
    trainer.save_metrics("train", train_metrics)
    trainer.save_metrics("eval", metrics)
    trainer.save_state()
    if run.is_main:
        report_finetuning(run, metrics)
