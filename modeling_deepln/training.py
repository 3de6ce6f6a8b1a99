"""Pre-training and fine-tuning deepln models with ``transformers.Trainer``.

Library side of ``deepln pretrain`` / ``deepln finetune`` (the command line lives in :mod:`modeling_deepln.cli`).
Everything here is plain functions and dataclasses, no argparse:

* :class:`PretrainArgs` + :func:`pretrain`: masked-LM pre-training for the BERT family
  (``DataCollatorForLanguageModeling``, 15 % masking) and causal-LM pre-training for the GPT family, chosen by the
  preset's ``model_type``. With no arguments it trains ``gpt-deep-small`` (48 layers, FoundationLayerNorm) on the
  embedded English Wikipedia corpus in a few minutes on a laptop CPU, evaluates held-out perplexity before and after,
  saves a standard model folder (safetensors, tokenizer, remote code, model card) and prints sampled continuations.
* :class:`FinetuneArgs` + :func:`finetune`: sentence(-pair) classification (GLUE QQP by default) with
  ``*ForSequenceClassification``; accuracy / precision / recall / F1.
* Recipes: ``configuration/recipes/<preset>.json`` hold each preset's training defaults (the paper's for the 1k-layer
  presets); explicitly given arguments override them (:func:`load_recipe`, :func:`resolve_pretrain_args`).
* Callbacks: :class:`TimeLimitCallback` (``max_minutes``: stop gracefully, then evaluate and save) and
  :class:`NonFiniteGuard` (stop, or skip the optimizer step, on a NaN/inf loss or gradient, naming the step and the
  first layer whose activations / gradients went non-finite).
* :func:`write_model_card`: README.md via ``huggingface_hub.ModelCard`` with the evaluation metrics.

Bad input (missing or empty data, wrong columns, a tokenizer larger than the vocabulary, an output folder holding
another model, an unknown preset, an unavailable precision) raises :class:`DeepLNInputError` before any training step.

Reliability: the tokenizer and the tokenized data are built deterministically and cached in
``<output_dir>/prepared/``, so ``resume=True`` after a crash (even SIGKILL) reuses them, restarts from the last
*complete* checkpoint and reproduces the uninterrupted loss curve (Trainer restores optimizer, scheduler, RNG and data
order).

Multi-process: ``batch_size`` is the global batch per micro-step; each of the ``N`` processes of
``accelerate launch --num_processes N`` gets ``batch_size / N`` examples, so one process and N processes train the
same model up to floating-point reduction order.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
import time
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import torch
from transformers import TrainerCallback

from .callbacks import (
    NAN_POLICIES,
    NonFiniteError,
    NonFiniteGuard,
    TimeLimitCallback,
    last_complete_checkpoint,
)
from .metrics import perplexity as _perplexity
from .metrics import unigram_perplexity
from .model_card import write_model_card
from .plots import plot_loss_curve
from .presets import PRESETS_DIR, available_presets, load_preset

__all__ = [
    "DeepLNInputError",
    "NonFiniteError",
    "PretrainArgs",
    "FinetuneArgs",
    "RECIPES_DIR",
    "load_recipe",
    "resolve_pretrain_args",
    "pretrain",
    "finetune",
    "TimeLimitCallback",
    "NonFiniteGuard",
    "write_model_card",
    "last_complete_checkpoint",
]

RECIPES_DIR = PRESETS_DIR / "recipes"
"""Folder of the training recipes ``<preset>.json`` (next to the preset configs)."""

PREPARED_DIR = "prepared"
"""Sub-folder of the output folder caching the tokenizer and tokenized data (reused by ``resume``)."""


class DeepLNInputError(ValueError):
    """Bad input found before training started (the CLI prints it as ``deepln: error: ...`` and exits with 2)."""


# --------------------------------------------------------------------------------------------------- arguments


@dataclass
class PretrainArgs:
    """Arguments of :func:`pretrain`. ``None`` means: take the preset's recipe value, else the built-in default."""

    preset: str = "gpt-deep-small"
    """Model preset name (``available_presets()``), a config JSON file or a model folder (its config, fresh weights)."""
    residual_norm: str | None = None
    """Override the residual-normalization scheme (``post_ln``, ``pre_ln``, ``deepnorm``, ``upscale_ln``, ...)."""
    num_layers: int | None = None
    """Override ``num_hidden_layers``."""
    hidden_size: int | None = None
    """Override ``hidden_size`` (``intermediate_size`` becomes 4x unless given)."""
    num_heads: int | None = None
    """Override ``num_attention_heads``."""
    intermediate_size: int | None = None
    """Override the FFN width."""
    vocab_size: int | None = None
    """Override the model's vocabulary size (also the size of a tokenizer trained on the corpus)."""
    data: str | list[str] | None = None
    """``None``: the embedded English Wikipedia corpus; local text/jsonl/json/csv/parquet file(s), glob or folder; or a
    Hub dataset name (``"Salesforce/wikitext:wikitext-103-raw-v1"``)."""
    text_column: str = "text"
    """Column holding the text."""
    validation_fraction: float = 0.05
    """Share of the training rows held out for evaluation when the data has no validation split."""
    tokenizer: str | None = None
    """Hub name or local folder; ``None`` (recipe permitting) trains one on the training text with ``tokenizers``."""
    seq_len: int | None = None
    """Tokens per training example (texts are concatenated and cut into blocks)."""
    batch_size: int | None = None
    """Global batch per micro-step, over all processes (each of N processes gets batch_size / N)."""
    eval_batch_size: int | None = None
    """Global evaluation batch (default: 2 x batch_size)."""
    grad_accum: int | None = None
    """Gradient-accumulation steps."""
    max_steps: int | None = None
    """Optimizer steps; ``None`` or ``<= 0``: ``num_epochs`` epochs."""
    num_epochs: float | None = None
    """Epochs when ``max_steps`` is not set."""
    max_minutes: float | None = None
    """Stop training gracefully after this many minutes (then evaluate and save as usual)."""
    lr: float | None = None
    """Peak learning rate."""
    lr_schedule: str | None = None
    """``linear``, ``cosine`` or ``constant`` (after warmup)."""
    warmup_ratio: float | None = None
    """Share of the steps spent in linear warmup."""
    min_lr: float | None = None
    """Final learning rate of the linear / cosine decay (``cosine_with_min_lr``; linear: polynomial power 1)."""
    weight_decay: float | None = None
    """AdamW weight decay."""
    optim: str | None = None
    """``adamw_torch`` or ``adam`` (AdamW with weight decay 0)."""
    precision: str | None = None
    """``fp32``, ``bf16`` or ``fp16`` (mixed precision; fp16 needs a GPU)."""
    gradient_checkpointing: bool | None = None
    """Recompute activations in the backward pass to save memory."""
    mlm_probability: float | None = None
    """Masking rate of the BERT family's masked-LM objective."""
    seed: int = 42
    """Seed of initialisation, data order and masking."""
    output_dir: str | None = None
    """Run folder; default ``runs/<preset>-<timestamp>``."""
    resume: bool | str = False
    """``True``: continue from the last complete checkpoint in ``output_dir``; or a checkpoint path."""
    overwrite: bool = False
    """Allow an ``output_dir`` that already holds a model (its checkpoints and cached data are removed)."""
    report_to: str | list[str] | None = None
    """Trainer integrations: default ``tensorboard`` (+ ``trackio`` when installed); ``"none"`` for none."""
    logging_steps: int | None = None
    """Log the training loss every this many steps."""
    eval_steps: int | None = None
    """Evaluate every this many steps (``0``: only before and after training)."""
    save_steps: int | None = None
    """Save a checkpoint every this many steps."""
    save_total_limit: int | None = 2
    """Checkpoints kept (older ones are deleted)."""
    max_train_samples: int | None = None
    """Use only the first N training blocks (quick runs)."""
    max_eval_samples: int | None = None
    """Use only the first N validation blocks."""
    nan_policy: str = "stop"
    """On a NaN/inf loss or gradient: ``stop`` (raise, keeping the last good checkpoint) or ``skip`` the step."""
    num_samples: int | None = None
    """Continuations (GPT) / fill-mask predictions (BERT) printed after training; 0 for none."""
    use_cpu: bool = False
    """Train on the CPU even when a GPU is available."""
    disable_tqdm: bool = False
    """Hide the progress bar."""


@dataclass
class FinetuneArgs:
    """Arguments of :func:`finetune` (sentence or sentence-pair classification; defaults: the paper's QQP recipe)."""

    model: str | None = None
    """A pretrained deepln folder (or Hub id) to fine-tune; or use ``preset`` to start from scratch."""
    preset: str | None = None
    """Preset to build a fresh model from when ``model`` is not given."""
    residual_norm: str | None = None
    """With ``preset``: override the residual-normalization scheme."""
    num_layers: int | None = None
    """With ``preset``: override ``num_hidden_layers``."""
    hidden_size: int | None = None
    """With ``preset``: override ``hidden_size``."""
    num_heads: int | None = None
    """With ``preset``: override ``num_attention_heads``."""
    vocab_size: int | None = None
    """With ``preset``: override the vocabulary size."""
    tokenizer: str | None = None
    """Tokenizer name/folder; default: the model folder's, or (``preset``) one trained on the task's training text."""
    data: str | None = None
    """``None`` with no files: GLUE QQP from the Hub (``nyu-mll/glue``, ``qqp``); a folder with ``train.*`` /
    ``validation.*``, a single training file, or a Hub name (``"nyu-mll/glue:mrpc"``)."""
    train_file: str | None = None
    """Local training file (csv/tsv/jsonl/json/parquet)."""
    validation_file: str | None = None
    """Local validation file."""
    text_columns: tuple[str, ...] = ("question1", "question2")
    """One (single sentence) or two (pair) text columns."""
    label_column: str = "label"
    """Column of the class labels."""
    num_labels: int | None = None
    """Number of classes (default: inferred from the training labels)."""
    max_seq_len: int = 128
    """Truncate examples to this many tokens."""
    num_epochs: float = 1.0
    """Training epochs (paper: 1)."""
    max_steps: int | None = None
    """Optimizer steps (overrides ``num_epochs``)."""
    max_minutes: float | None = None
    """Stop gracefully after this many minutes."""
    batch_size: int = 16
    """Global batch per micro-step (paper: 16)."""
    eval_batch_size: int | None = None
    """Global evaluation batch (default 2 x batch_size)."""
    grad_accum: int = 1
    """Gradient-accumulation steps."""
    lr: float = 1e-5
    """Peak learning rate (paper: 1e-5)."""
    lr_schedule: str = "linear"
    """``linear``, ``cosine`` or ``constant``."""
    warmup_ratio: float = 0.0
    """Share of steps in warmup."""
    min_lr: float | None = None
    """Final learning rate of the decay."""
    weight_decay: float = 0.01
    """AdamW weight decay."""
    optim: str = "adamw_torch"
    """``adamw_torch`` or ``adam``."""
    precision: str = "fp32"
    """``fp32``, ``bf16`` or ``fp16``."""
    gradient_checkpointing: bool = False
    """Recompute activations in backward."""
    seed: int = 42
    """Seed."""
    output_dir: str | None = None
    """Run folder; default ``runs/finetune-<model>-<timestamp>``."""
    resume: bool | str = False
    """Continue from the last complete checkpoint (``True``) or a checkpoint path."""
    overwrite: bool = False
    """Allow an ``output_dir`` that already holds a model."""
    report_to: str | list[str] | None = None
    """Trainer integrations (default tensorboard, + trackio when installed)."""
    logging_steps: int = 50
    """Log every this many steps."""
    eval_steps: int | None = None
    """Evaluate every this many steps (default: at the end of each epoch)."""
    save_steps: int = 500
    """Checkpoint every this many steps."""
    save_total_limit: int | None = 2
    """Checkpoints kept."""
    max_train_samples: int | None = None
    """Use only the first N training examples."""
    max_eval_samples: int | None = None
    """Use only the first N validation examples."""
    nan_policy: str = "stop"
    """``stop`` or ``skip`` on a NaN/inf loss or gradient."""
    use_cpu: bool = False
    """Train on the CPU even when a GPU is available."""
    disable_tqdm: bool = False
    """Hide the progress bar."""


_BUILTIN_PRETRAIN_DEFAULTS: dict[str, Any] = {
    "tokenizer": None,
    "vocab_size": None,
    "seq_len": 128,
    "batch_size": 16,
    "eval_batch_size": None,
    "grad_accum": 1,
    "max_steps": None,
    "num_epochs": 1.0,
    "max_minutes": None,
    "lr": 5e-4,
    "lr_schedule": "cosine",
    "warmup_ratio": 0.01,
    "min_lr": None,
    "weight_decay": 0.01,
    "optim": "adamw_torch",
    "precision": "fp32",
    "gradient_checkpointing": False,
    "mlm_probability": 0.15,
    "logging_steps": 10,
    "eval_steps": 0,
    "save_steps": 500,
    "num_samples": 3,
}
"""Defaults for presets without a recipe file (e.g. a config given as a path)."""

_RECIPE_META_KEYS = ("objective", "description", "source")
_LR_SCHEDULES = ("linear", "cosine", "constant")
_OPTIMIZERS = ("adamw_torch", "adam")
_PRECISIONS = ("fp32", "bf16", "fp16")


def load_recipe(preset: str) -> dict[str, Any]:
    """The training recipe of a preset (``configuration/recipes/<preset>.json``), or ``{}`` when it has none.

    Keys are :class:`PretrainArgs` field names plus ``objective`` (``"mlm"``/``"clm"``, checked against the preset's
    family) and free-text ``description``/``source``; keys starting with ``_`` are comments.

    Raises:
        DeepLNInputError: the file is not valid JSON or has a key that is not a PretrainArgs field.
    """
    path = RECIPES_DIR / f"{Path(str(preset)).name}.json"
    if Path(str(preset)).suffix or not path.is_file():
        return {}
    try:
        recipe = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise DeepLNInputError(f"Recipe {path} is not valid JSON: {exc}") from exc
    names = {f.name for f in fields(PretrainArgs)}
    recipe = {k: v for k, v in recipe.items() if not k.startswith("_")}
    unknown = sorted(set(recipe) - names - set(_RECIPE_META_KEYS))
    if unknown:
        raise DeepLNInputError(f"Recipe {path} has unknown keys {unknown}; valid keys are PretrainArgs fields.")
    return recipe


def resolve_pretrain_args(args: PretrainArgs) -> tuple[PretrainArgs, dict[str, Any]]:
    """Fill every ``None`` field from the preset's recipe, then the built-in defaults.

    Returns ``(resolved_args, recipe)``; explicitly set fields always win.
    """
    recipe = load_recipe(args.preset)
    values = {}
    for f in fields(PretrainArgs):
        value = getattr(args, f.name)
        if value is None and f.name in recipe:
            value = recipe[f.name]
        if value is None and f.name in _BUILTIN_PRETRAIN_DEFAULTS:
            value = _BUILTIN_PRETRAIN_DEFAULTS[f.name]
        values[f.name] = value
    return PretrainArgs(**values), recipe


# --------------------------------------------------------------------------------------------------- helpers


def _holds_model(output_dir: Path) -> str | None:
    """What in ``output_dir`` shows it already holds a model (or None)."""
    if not output_dir.is_dir():
        return None
    if (output_dir / "config.json").is_file():
        return "config.json"
    checkpoints = sorted(p.name for p in output_dir.glob("checkpoint-*") if p.is_dir())
    if checkpoints:
        return checkpoints[-1]
    return None


def _check_output_dir(output_dir: Path, overwrite: bool, resume: bool | str) -> None:
    found = _holds_model(output_dir)
    if found and not overwrite and not resume:
        raise DeepLNInputError(
            f"Output directory {output_dir} already holds a model ({found}). Pass --overwrite to replace it, "
            "--resume to continue training it, or choose another --output-dir."
        )
    if output_dir.exists() and not output_dir.is_dir():
        raise DeepLNInputError(f"Output directory {output_dir} exists and is not a folder.")


def _clear_output_dir(output_dir: Path) -> None:
    """``overwrite``: remove the previous run's checkpoints, cache and results (other files are left alone)."""
    for path in output_dir.glob("checkpoint-*"):
        shutil.rmtree(path, ignore_errors=True)
    shutil.rmtree(output_dir / PREPARED_DIR, ignore_errors=True)
    for name in ("eval_results.json", "all_results.json", "train_results.json", "trainer_state.json"):
        (output_dir / name).unlink(missing_ok=True)


def _launched_distributed() -> bool:
    """Started by ``accelerate launch`` / ``torchrun`` with several processes."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1 or int(os.environ.get("LOCAL_RANK", "-1")) != -1


def _use_cpu(requested: bool) -> bool:
    """CPU training: asked for, or a multi-process launch on a machine without CUDA (then gloo on the CPU).

    Accelerate only selects its multi-CPU (gloo) mode when told to use the CPU; ``accelerate launch --multi_gpu``
    (or ``configuration/accelerate/cpu-2proc.yaml``) on a CPU-only machine starts the processes through torchrun
    and this makes them join one gloo process group.
    """
    return bool(requested) or (_launched_distributed() and not torch.cuda.is_available())


def _world(use_cpu: bool = False) -> tuple[int, int]:
    """(process index, number of processes), initialising accelerate's state (and the process group) if needed."""
    from accelerate import PartialState

    state = PartialState(cpu=_use_cpu(use_cpu))
    return state.process_index, state.num_processes


def _default_output_dir(prefix: str, use_cpu: bool) -> str:
    name = f"runs/{prefix}-{time.strftime('%Y%m%d-%H%M%S')}"
    _, world = _world(use_cpu)
    if world > 1:  # every process must use the same folder
        from accelerate.utils import broadcast_object_list

        name = broadcast_object_list([name], from_process=0)[0]
    return name


def _report_to(value: str | list[str] | None) -> list[str]:
    if value is None:
        import importlib.util

        targets = ["tensorboard"]
        if importlib.util.find_spec("trackio") is not None:
            targets.append("trackio")
        return targets
    items = value.split(",") if isinstance(value, str) else list(value)
    items = [v.strip() for v in items if v.strip()]
    if not items or items == ["none"]:
        return []
    return items


def _check_precision(precision: str, use_cpu: bool) -> None:
    if precision not in _PRECISIONS:
        raise DeepLNInputError(f"--precision must be one of {', '.join(_PRECISIONS)}, got {precision!r}.")
    gpu = torch.cuda.is_available() and not _use_cpu(use_cpu)
    if precision == "fp16" and not gpu:
        raise DeepLNInputError(
            "--precision fp16 needs a CUDA GPU (fp16 mixed precision with loss scaling is not supported on this "
            "device). Use --precision fp32 or bf16."
        )
    if precision == "bf16" and gpu and not torch.cuda.is_bf16_supported():
        raise DeepLNInputError(
            f"--precision bf16 is not supported by this GPU ({torch.cuda.get_device_name()}). Use fp16 or fp32."
        )


def _schedule_kwargs(schedule: str, min_lr: float | None, lr: float) -> tuple[str, dict[str, Any]]:
    """Trainer's ``lr_scheduler_type`` and ``lr_scheduler_kwargs`` for our schedule names."""
    if schedule not in _LR_SCHEDULES:
        raise DeepLNInputError(f"--lr-schedule must be one of {', '.join(_LR_SCHEDULES)}, got {schedule!r}.")
    if min_lr is not None and min_lr < 0:
        raise DeepLNInputError(f"--min-lr must be >= 0, got {min_lr}.")
    if min_lr is not None and min_lr > lr:
        raise DeepLNInputError(f"--min-lr ({min_lr}) is larger than --lr ({lr}).")
    if schedule == "constant":
        return "constant_with_warmup", {}
    if schedule == "cosine":
        if min_lr:
            return "cosine_with_min_lr", {"min_lr": float(min_lr)}
        return "cosine", {}
    if min_lr:  # linear decay to min_lr = polynomial decay with power 1
        return "polynomial", {"lr_end": float(min_lr), "power": 1.0}
    return "linear", {}


def _config_overrides(a: PretrainArgs | FinetuneArgs) -> dict[str, Any]:
    overrides: dict[str, Any] = {}
    if a.residual_norm is not None:
        overrides["residual_norm"] = a.residual_norm
    if a.num_layers is not None:
        overrides["num_hidden_layers"] = a.num_layers
    if a.hidden_size is not None:
        overrides["hidden_size"] = a.hidden_size
        overrides["intermediate_size"] = 4 * a.hidden_size
    if getattr(a, "intermediate_size", None) is not None:
        overrides["intermediate_size"] = a.intermediate_size
    if a.num_heads is not None:
        overrides["num_attention_heads"] = a.num_heads
    if a.vocab_size is not None:
        overrides["vocab_size"] = a.vocab_size
    for key, value in overrides.items():
        if isinstance(value, int) and value < 1:
            raise DeepLNInputError(f"{key} must be a positive integer, got {value}.")
    return overrides


def _build_config(preset: str, overrides: dict[str, Any]):
    try:
        return load_preset(preset, **overrides)
    except ValueError as exc:
        raise DeepLNInputError(str(exc)) from exc
    except TypeError as exc:
        raise DeepLNInputError(f"Bad model override for preset {preset!r}: {exc}") from exc


def _family(config) -> str:
    return "bert" if config.model_type == "deepln_bert" else "gpt"


def _input_errors() -> tuple[type[BaseException], ...]:
    from .data import DataError, DataFileNotFoundError

    errors: list[type[BaseException]] = [DataError, DataFileNotFoundError, ValueError]
    try:
        from .corpus import CorpusNotAvailableError

        errors.append(CorpusNotAvailableError)
    except ImportError:  # pragma: no cover
        pass
    try:
        from .tokenizer_training import TokenizerVocabMismatchError

        errors.append(TokenizerVocabMismatchError)
    except ImportError:  # pragma: no cover
        pass
    return tuple(errors)


def _as_input_error(exc: BaseException) -> DeepLNInputError:
    if isinstance(exc, DeepLNInputError):
        return exc
    return DeepLNInputError(str(exc))


def _fingerprint(values: dict[str, Any]) -> str:
    return json.dumps(values, sort_keys=True, default=str)


def _per_device(global_batch: int, world: int, name: str) -> int:
    if global_batch < 1:
        raise DeepLNInputError(f"{name} must be >= 1, got {global_batch}.")
    if global_batch % world:
        raise DeepLNInputError(
            f"{name}={global_batch} is the global batch and must be divisible by the number of processes ({world})."
        )
    return global_batch // world


def _check_positive(**values: Any) -> None:
    for name, value in values.items():
        if value is not None and value <= 0:
            raise DeepLNInputError(f"--{name.replace('_', '-')} must be positive, got {value}.")


def _training_arguments(
    a: PretrainArgs | FinetuneArgs, *, output_dir: str, world: int, extra: dict[str, Any] | None = None
):
    """``TrainingArguments`` from the resolved arguments (batch sizes are global, divided over ``world``)."""
    from transformers import TrainingArguments

    eval_batch_size = a.eval_batch_size or 2 * a.batch_size

    schedule, schedule_kwargs = _schedule_kwargs(a.lr_schedule, a.min_lr, a.lr)
    if a.optim not in _OPTIMIZERS:
        raise DeepLNInputError(f"--optim must be one of {', '.join(_OPTIMIZERS)}, got {a.optim!r}.")
    weight_decay = 0.0 if a.optim == "adam" else float(a.weight_decay)
    if a.warmup_ratio is not None and not 0 <= a.warmup_ratio < 1:
        raise DeepLNInputError(f"--warmup-ratio must be in [0, 1), got {a.warmup_ratio}.")
    if a.nan_policy not in NAN_POLICIES:
        raise DeepLNInputError(f"--nan-policy must be one of {', '.join(NAN_POLICIES)}, got {a.nan_policy!r}.")
    kwargs: dict[str, Any] = dict(
        output_dir=output_dir,
        per_device_train_batch_size=_per_device(a.batch_size, world, "batch_size"),
        per_device_eval_batch_size=max(1, eval_batch_size // world),
        gradient_accumulation_steps=a.grad_accum,
        learning_rate=a.lr,
        lr_scheduler_type=schedule,
        lr_scheduler_kwargs=schedule_kwargs,
        warmup_steps=float(a.warmup_ratio or 0.0),
        weight_decay=weight_decay,
        optim="adamw_torch",
        max_steps=a.max_steps if a.max_steps and a.max_steps > 0 else -1,
        num_train_epochs=a.num_epochs,
        logging_steps=a.logging_steps,
        logging_first_step=True,
        eval_strategy="steps" if a.eval_steps else "no",
        eval_steps=a.eval_steps or None,
        save_strategy="steps",
        save_steps=a.save_steps,
        save_total_limit=a.save_total_limit,
        seed=a.seed,
        data_seed=a.seed,
        bf16=a.precision == "bf16",
        fp16=a.precision == "fp16",
        report_to=_report_to(a.report_to),
        disable_tqdm=a.disable_tqdm,
        use_cpu=_use_cpu(a.use_cpu),
        dataloader_num_workers=0,
        dataloader_pin_memory=torch.cuda.is_available() and not _use_cpu(a.use_cpu),
    )
    if a.gradient_checkpointing:
        # transformers >= 5.24 names it activation_checkpointing (the old name warns); 5.17 only has the old one.
        names = {f.name for f in dataclasses.fields(TrainingArguments)}
        key = "activation_checkpointing" if "activation_checkpointing" in names else "gradient_checkpointing"
        kwargs[key] = True
    kwargs.update(extra or {})
    return TrainingArguments(**kwargs)


def _nan_guard(a: PretrainArgs | FinetuneArgs, output_dir: str) -> NonFiniteGuard:
    return NonFiniteGuard(policy=a.nan_policy, check_gradients=a.precision != "fp16", output_dir=output_dir)


def _resume_checkpoint(resume: bool | str, output_dir: Path, is_main: bool) -> str | None:
    if not resume:
        return None
    if isinstance(resume, str) and resume.lower() not in ("true", "1", "yes", "last"):
        path = Path(resume)
        if not (path / "trainer_state.json").is_file():
            raise DeepLNInputError(f"--resume {resume}: not a checkpoint folder (no trainer_state.json).")
        return str(path)
    checkpoint = last_complete_checkpoint(output_dir)
    if checkpoint is None and is_main:
        print(f"[deepln] --resume: no complete checkpoint in {output_dir}; starting from scratch.", flush=True)
    return checkpoint


def _param_count(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# --------------------------------------------------------------------------------------------------- pretrain


def _prepare_lm_data(a: PretrainArgs, config, output_dir: Path, training_args, is_main: bool):
    """Tokenizer + tokenized blocks, built once (main process first) and cached in ``output_dir/prepared``."""
    from datasets import DatasetDict, load_from_disk
    from transformers import AutoTokenizer

    from .data import load_text_data, tokenize_and_group
    from .tokenizer_training import load_or_train_tokenizer

    family = _family(config)
    prepared = output_dir / PREPARED_DIR
    tok_dir, data_dir, fp_file = prepared / "tokenizer", prepared / "lm_data", prepared / "fingerprint.json"
    fingerprint = _fingerprint(
        {
            "data": a.data,
            "text_column": a.text_column,
            "validation_fraction": a.validation_fraction,
            "tokenizer": a.tokenizer,
            "vocab_size": config.vocab_size,
            "seq_len": a.seq_len,
            "family": family,
            "seed": a.seed,
        }
    )

    def cached() -> bool:
        return fp_file.is_file() and fp_file.read_text() == fingerprint and tok_dir.is_dir() and data_dir.is_dir()

    with training_args.main_process_first(desc="preparing tokenizer and data"):
        if cached():
            tokenizer = AutoTokenizer.from_pretrained(str(tok_dir))
            lm_data = load_from_disk(str(data_dir))
            if is_main:
                print(f"[deepln] reusing the tokenizer and tokenized data cached in {prepared}", flush=True)
        else:
            raw = load_text_data(
                a.data, text_column=a.text_column, validation_fraction=a.validation_fraction, seed=a.seed
            )
            texts = raw["train"][a.text_column] if not a.tokenizer else None
            tokenizer = load_or_train_tokenizer(
                a.tokenizer,
                family,
                texts,
                vocab_size=config.vocab_size,
                output_dir=None,
                model_max_length=config.max_position_embeddings,
            )
            from .tokenizer_training import check_tokenizer_fits

            check_tokenizer_fits(tokenizer, config.vocab_size)
            lm_data = tokenize_and_group(
                DatasetDict({"train": raw["train"], "validation": raw["validation"]}),
                tokenizer,
                block_size=a.seq_len,
                text_column=a.text_column,
                family=family,
            )
            if is_main:
                shutil.rmtree(prepared, ignore_errors=True)
                prepared.mkdir(parents=True, exist_ok=True)
                tokenizer.save_pretrained(str(tok_dir))
                lm_data.save_to_disk(str(data_dir))
                fp_file.write_text(fingerprint)
    return tokenizer, lm_data


def pretrain(args: PretrainArgs | None = None) -> dict[str, Any]:
    """Pre-train a deepln model (MLM for BERT presets, CLM for GPT presets) with ``transformers.Trainer``.

    Steps: resolve the recipe; check the input (preset, output folder, precision, data, tokenizer size); build or
    reuse the cached tokenizer and tokenized data; evaluate the fresh model; train (resuming if asked); evaluate
    again; save the model folder with tokenizer, ``eval_results.json`` (keys ``eval_loss``, ``perplexity``,
    ``eval_loss_before``, ``perplexity_before``), ``train_results.json``, ``trainer_state.json`` and README.md; print
    samples.

    Returns:
        A dict with ``output_dir``, the evaluation metrics (as in eval_results.json), ``train_metrics``,
        ``tokens_per_second``, ``train_seconds``, ``wall_seconds``, ``global_step``, ``samples`` (list of strings).

    Raises:
        DeepLNInputError: bad input, before training starts.
        NonFiniteError: the loss/gradients went NaN/inf with ``nan_policy="stop"``.
    """
    wall_start = time.monotonic()
    a, recipe = resolve_pretrain_args(args or PretrainArgs())
    errors = _input_errors()
    try:
        if a.preset not in available_presets() and not Path(a.preset).exists():
            raise DeepLNInputError(
                f"Unknown preset {a.preset!r}. Available presets: {', '.join(available_presets())}; or pass a "
                "config JSON file or a model folder."
            )
        config = _build_config(a.preset, _config_overrides(a))
        family = _family(config)
        objective = recipe.get("objective")
        if objective and objective != ("mlm" if family == "bert" else "clm"):
            raise DeepLNInputError(f"Recipe of {a.preset!r} says objective {objective!r} but the model is {family}.")
        _check_positive(seq_len=a.seq_len, grad_accum=a.grad_accum, lr=a.lr, max_minutes=a.max_minutes)
        _check_precision(a.precision, a.use_cpu)
        if a.seq_len > config.max_position_embeddings:
            config.max_position_embeddings = a.seq_len
        process_index, world = _world(a.use_cpu)
        is_main = process_index == 0
        output_dir = Path(a.output_dir or _default_output_dir(Path(str(a.preset)).stem, a.use_cpu))
        _check_output_dir(output_dir, a.overwrite, a.resume)
        if a.overwrite and not a.resume and is_main and output_dir.is_dir():
            _clear_output_dir(output_dir)
        training_args = _training_arguments(a, output_dir=str(output_dir), world=world)
        # checks the tokenizer against the vocabulary when it builds it; a cached one passed that check
        tokenizer, lm_data = _prepare_lm_data(a, config, output_dir, training_args, is_main)
        resume_from = _resume_checkpoint(a.resume, output_dir, is_main)
    except errors as exc:
        raise _as_input_error(exc) from exc

    train_ds, eval_ds = lm_data["train"], lm_data["validation"]
    if a.max_train_samples:
        train_ds = train_ds.select(range(min(a.max_train_samples, len(train_ds))))
    if a.max_eval_samples:
        eval_ds = eval_ds.select(range(min(a.max_eval_samples, len(eval_ds))))

    from transformers import (
        AutoModelForCausalLM,
        AutoModelForMaskedLM,
        DataCollatorForLanguageModeling,
        Trainer,
        set_seed,
    )

    # Special tokens into the config (and hence generation_config) before the model is built.
    if tokenizer.pad_token_id is not None:
        config.pad_token_id = tokenizer.pad_token_id
    if family == "gpt":
        if tokenizer.eos_token_id is not None:
            config.eos_token_id = tokenizer.eos_token_id
        config.bos_token_id = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else config.eos_token_id
    else:
        config.bos_token_id = tokenizer.cls_token_id
        config.eos_token_id = tokenizer.sep_token_id

    set_seed(a.seed)
    auto_class = AutoModelForMaskedLM if family == "bert" else AutoModelForCausalLM
    model = auto_class.from_config(config)
    if family == "bert":
        collator = DataCollatorForLanguageModeling(tokenizer, mlm=True, mlm_probability=a.mlm_probability)
    else:
        # Not DataCollatorForLanguageModeling(mlm=False): GPT tokenizers pad with eos, and that collator would drop
        # every eos (the document separator) from the loss. Blocks are full length, so nothing needs padding.
        collator = _causal_lm_collator
    guard = _nan_guard(a, str(output_dir)).attach(model)
    callbacks: list[TrainerCallback] = [guard]
    time_limit = TimeLimitCallback(a.max_minutes) if a.max_minutes else None
    if time_limit:
        callbacks.append(time_limit)
    trainer = Trainer(
        model=model,
        args=training_args,
        train_dataset=train_ds,
        eval_dataset=eval_ds,
        data_collator=collator,
        processing_class=tokenizer,
        callbacks=callbacks,
    )
    _pin_tensorboard_dir(trainer, output_dir)
    if is_main:
        print(
            f"[deepln] {a.preset}: {family.upper()} {'masked' if family == 'bert' else 'causal'}-LM, "
            f"{config.num_hidden_layers} layers, hidden {config.hidden_size}, residual_norm={config.residual_norm}, "
            f"{_param_count(model) / 1e6:.2f}M parameters; {len(train_ds)} training / {len(eval_ds)} validation "
            f"blocks of {a.seq_len} tokens; global batch {a.batch_size} x {a.grad_accum} accumulation over "
            f"{world} process(es); output {output_dir}",
            flush=True,
        )

    # ---- evaluation before training (cached so that a resumed run reports the fresh model's numbers)
    before_file = output_dir / PREPARED_DIR / "eval_before.json"
    before: dict[str, float] | None = None
    if resume_from and before_file.is_file():
        before = json.loads(before_file.read_text())
    if before is None:
        metrics0 = trainer.evaluate()
        _undo_eval_prepare(model)
        before = {"eval_loss_before": metrics0["eval_loss"], "perplexity_before": _perplexity(metrics0["eval_loss"])}
        if is_main:
            before_file.parent.mkdir(parents=True, exist_ok=True)
            before_file.write_text(json.dumps(before))
    if is_main:
        print(
            f"[deepln] before training: eval_loss {before['eval_loss_before']:.4f}, "
            f"perplexity {before['perplexity_before']:.2f}",
            flush=True,
        )

    # ---- training
    start_step = 0
    if resume_from:
        start_step = json.loads((Path(resume_from) / "trainer_state.json").read_text()).get("global_step", 0)
        if is_main:
            print(f"[deepln] resuming from {resume_from} (step {start_step})", flush=True)
    train_start = time.monotonic()
    train_output = trainer.train(resume_from_checkpoint=resume_from)
    train_seconds = time.monotonic() - train_start
    guard.detach()
    steps_done = trainer.state.global_step - start_step
    tokens = steps_done * a.batch_size * a.grad_accum * a.seq_len
    tokens_per_second = tokens / train_seconds if train_seconds > 0 else float("nan")

    # ---- evaluation after training, saving
    metrics = trainer.evaluate()
    metrics["perplexity"] = _perplexity(metrics["eval_loss"])
    metrics.update(before)
    if family == "gpt":  # what a model that learned only the token frequencies scores on the same text
        metrics["perplexity_unigram"] = unigram_perplexity(
            train_ds.with_format("numpy")["input_ids"], eval_ds.with_format("numpy")["input_ids"], config.vocab_size
        )
    metrics["eval_samples"] = len(eval_ds)
    train_metrics = dict(train_output.metrics)
    train_metrics.update(
        {"train_samples": len(train_ds), "train_tokens": tokens, "train_tokens_per_second": tokens_per_second}
    )
    trainer.save_model(str(output_dir))
    trainer.log_metrics("eval", metrics)
    trainer.save_metrics("train", train_metrics)
    trainer.save_metrics("eval", metrics)
    trainer.save_state()

    samples: list[str] = []
    if is_main:
        unigram_ppl = metrics.get("perplexity_unigram")
        plot_loss_curve(
            trainer.state.log_history,
            output_dir / "loss.png",
            title=f"{a.preset}: {config.num_hidden_layers} layers, {config.residual_norm}",
            reference_losses={
                "before training": before["eval_loss_before"],
                "unigram model": math.log(unigram_ppl) if unigram_ppl else None,
            },
        )
        dataset_desc = (
            "the embedded English Wikipedia corpus (gensim test data, CC BY-SA)" if a.data is None else str(a.data)
        )
        dataset_id = a.data if isinstance(a.data, str) and not Path(a.data).exists() else None
        training_info = {
            "objective": "masked LM (15% masking)" if family == "bert" else "causal LM",
            "steps": trainer.state.global_step,
            "sequence length": a.seq_len,
            "global batch": f"{a.batch_size} x {a.grad_accum}",
            "learning rate": f"{a.lr} ({a.lr_schedule}, warmup {a.warmup_ratio}, min lr {a.min_lr})",
            "weight decay": 0.0 if a.optim == "adam" else a.weight_decay,
            "optimizer": a.optim,
            "precision": a.precision,
            "seed": a.seed,
            "tokens": tokens,
        }
        write_model_card(
            output_dir,
            model_name=output_dir.name,
            config=model.config,
            metrics=metrics,
            task="fill-mask" if family == "bert" else "text-generation",
            dataset_name=dataset_desc,
            dataset_id=dataset_id,
            training=training_info,
        )
        unigram = metrics.get("perplexity_unigram")
        print(
            f"[deepln] perplexity {before['perplexity_before']:.2f} -> {metrics['perplexity']:.2f} "
            f"(eval_loss {before['eval_loss_before']:.4f} -> {metrics['eval_loss']:.4f})"
            + (f"; a unigram model of the training text scores {unigram:.2f}" if unigram else ""),
            flush=True,
        )
        if a.num_samples:
            samples = _print_samples(output_dir, family, a.num_samples, a.seed)
    wall_seconds = time.monotonic() - wall_start
    if is_main:
        print(
            f"[deepln] trained {steps_done} steps, {tokens:,} tokens in {train_seconds:.1f} s: "
            f"{tokens_per_second:,.0f} tokens/s; wall time {wall_seconds:.1f} s. Model saved in {output_dir}",
            flush=True,
        )
    return {
        "output_dir": str(output_dir),
        **metrics,
        "train_metrics": train_metrics,
        "global_step": trainer.state.global_step,
        "tokens_per_second": tokens_per_second,
        "train_seconds": train_seconds,
        "wall_seconds": wall_seconds,
        "samples": samples,
        "skipped_steps": list(guard.skipped_steps),
        "stopped_by_time_limit": bool(time_limit and time_limit.stopped_at_step is not None),
    }


def _pin_tensorboard_dir(trainer, output_dir: Path) -> None:
    """Give the TensorBoard callback its folder up front.

    It only picks ``<output_dir>/runs/<date>`` in ``on_train_begin``; the evaluation before training logs first,
    and the writer it creates then would land in ``./runs`` of the working directory.
    """
    for callback in trainer.callback_handler.callbacks:
        if type(callback).__name__ == "TensorBoardCallback" and getattr(callback, "logging_dir", None) is None:
            from transformers.integrations.integration_utils import default_logdir

            callback.logging_dir = os.path.join(str(output_dir), default_logdir())


def _causal_lm_collator(features: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
    """Stack fixed-length blocks; ``labels`` = ``input_ids`` (the model shifts them)."""
    from transformers import default_data_collator

    batch = default_data_collator(features)
    batch["labels"] = batch["input_ids"].clone()
    return batch


def _undo_eval_prepare(model: torch.nn.Module) -> None:
    """Let ``trainer.train()`` wrap a model that ``trainer.evaluate()`` already prepared.

    ``Trainer.evaluate`` calls ``accelerator.prepare_model(model, evaluation_mode=True)``, which marks the model as
    prepared; ``train()`` then skips the DDP wrapping, so in a multi-process run each process would train on its own
    gradients without synchronisation. Clearing the mark (and the autocast forward wrapper) restores the wrap.
    """
    if getattr(model, "_is_accelerate_prepared", False):
        model._is_accelerate_prepared = False
        original = model.__dict__.pop("_original_forward", None)
        if original is not None:  # mixed precision: accelerate replaced forward by an autocast wrapper
            if getattr(original, "__self__", None) is model:
                model.__dict__.pop("forward", None)  # back to the class's forward
            else:
                model.forward = original


_PROMPTS = ("The history of", "In mathematics,", "The city is", "He was born in", "The first")
_MASK_TEMPLATES = (
    "The capital of the country is {mask}.",
    "He was born in the {mask} of London.",
    "The war ended in {mask}.",
    "It is one of the largest {mask} in the world.",
    "She studied {mask} at the university.",
)


def _print_samples(folder: Path, family: str, n: int, seed: int) -> list[str]:
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


# --------------------------------------------------------------------------------------------------- finetune


def _load_pair_data(a: FinetuneArgs):
    from .data import load_pair_task

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


def finetune(args: FinetuneArgs) -> dict[str, Any]:
    """Fine-tune a deepln model for sentence(-pair) classification (GLUE QQP format by default).

    Loads ``args.model`` (a pretrained deepln folder) with ``AutoModelForSequenceClassification`` or builds
    ``args.preset`` from scratch, tokenizes with the model's tokenizer, trains with ``Trainer`` and reports
    ``eval_accuracy``, ``eval_precision``, ``eval_recall``, ``eval_f1`` (``metrics.classification_metrics``) in
    ``eval_results.json`` and the model card.

    Returns:
        ``output_dir``, the evaluation metrics, ``train_metrics``, ``global_step``, ``wall_seconds``.

    Raises:
        DeepLNInputError: bad input, before training starts. NonFiniteError: NaN/inf with ``nan_policy="stop"``.
    """
    wall_start = time.monotonic()
    errors = _input_errors()
    from transformers import AutoConfig, AutoModelForSequenceClassification, DataCollatorWithPadding

    from .data import tokenize_pairs
    from .metrics import classification_metrics
    from .tokenizer_training import check_tokenizer_fits, load_or_train_tokenizer

    try:
        if bool(args.model) == bool(args.preset):
            raise DeepLNInputError("Pass exactly one of --model (a pretrained deepln folder) or --preset.")
        if args.preset and args.preset not in available_presets() and not Path(args.preset).exists():
            raise DeepLNInputError(
                f"Unknown preset {args.preset!r}. Available presets: {', '.join(available_presets())}."
            )
        if args.model and (Path(args.model).exists() and not (Path(args.model) / "config.json").is_file()):
            raise DeepLNInputError(f"--model {args.model}: no config.json there; is it a model folder?")
        if not 1 <= len(args.text_columns) <= 2:
            raise DeepLNInputError(f"--text-columns needs one or two columns, got {list(args.text_columns)}.")
        _check_positive(max_seq_len=args.max_seq_len, lr=args.lr, num_epochs=args.num_epochs, grad_accum=args.grad_accum)
        _check_precision(args.precision, args.use_cpu)
        process_index, world = _world(args.use_cpu)
        is_main = process_index == 0
        name = Path(str(args.model or args.preset)).name
        output_dir = Path(args.output_dir or _default_output_dir(f"finetune-{name}", args.use_cpu))
        _check_output_dir(output_dir, args.overwrite, args.resume)
        if args.overwrite and not args.resume and is_main and output_dir.is_dir():
            _clear_output_dir(output_dir)
        raw = _load_pair_data(args)
        labels = raw["train"][args.label_column]
        feature = raw["train"].features[args.label_column]
        n_found = getattr(feature, "num_classes", None) or (int(max(labels)) + 1)
        num_labels = args.num_labels or n_found
        if max(labels) >= num_labels or min(labels) < 0:
            raise DeepLNInputError(
                f"Labels in {args.label_column!r} range over {min(labels)}..{max(labels)} but num_labels={num_labels}."
            )
        if args.model:
            config = AutoConfig.from_pretrained(args.model, num_labels=num_labels)
            if config.model_type not in ("deepln_bert", "deepln_gpt"):
                raise DeepLNInputError(f"--model {args.model} is a {config.model_type!r} model, not a deepln model.")
        else:
            config = _build_config(args.preset, {**_config_overrides(args), "num_labels": num_labels})
        family = _family(config)
        if config.max_position_embeddings < args.max_seq_len:
            if args.model:
                raise DeepLNInputError(
                    f"--max-seq-len {args.max_seq_len} exceeds the model's max_position_embeddings "
                    f"({config.max_position_embeddings})."
                )
            config.max_position_embeddings = args.max_seq_len
        tok_source = args.tokenizer or args.model
        texts = None
        if not tok_source:
            texts = [t for col in args.text_columns for t in raw["train"][col]]
        tok_cache = output_dir / PREPARED_DIR / "tokenizer"
        if not tok_source and tok_cache.is_dir() and args.resume:
            tok_source = str(tok_cache)
        tokenizer = load_or_train_tokenizer(
            tok_source, family, texts, vocab_size=config.vocab_size, model_max_length=config.max_position_embeddings
        )
        if not tok_source and is_main:
            tokenizer.save_pretrained(str(tok_cache))
        check_tokenizer_fits(tokenizer, config.vocab_size)
        if tokenizer.pad_token is None and tokenizer.eos_token is not None:
            tokenizer.pad_token = tokenizer.eos_token
        encoded = tokenize_pairs(raw, tokenizer, args.text_columns, args.label_column, args.max_seq_len)
        training_args = _training_arguments(
            args,
            output_dir=str(output_dir),
            world=world,
            extra={} if args.eval_steps else {"eval_strategy": "epoch"},
        )
        resume_from = _resume_checkpoint(args.resume, output_dir, is_main)
    except errors as exc:
        raise _as_input_error(exc) from exc

    from transformers import Trainer, set_seed

    if config.pad_token_id is None and tokenizer.pad_token_id is not None:
        config.pad_token_id = tokenizer.pad_token_id
    set_seed(args.seed)
    if args.model:
        model = AutoModelForSequenceClassification.from_pretrained(args.model, config=config)
    else:
        model = AutoModelForSequenceClassification.from_config(config)
    train_ds, eval_ds = encoded["train"], encoded["validation"]
    if args.max_train_samples:
        train_ds = train_ds.select(range(min(args.max_train_samples, len(train_ds))))
    if args.max_eval_samples:
        eval_ds = eval_ds.select(range(min(args.max_eval_samples, len(eval_ds))))
    guard = _nan_guard(args, str(output_dir)).attach(model)
    callbacks: list[TrainerCallback] = [guard]
    if args.max_minutes:
        callbacks.append(TimeLimitCallback(args.max_minutes))
    trainer = Trainer(
        model=model,
        args=training_args,
        train_dataset=train_ds,
        eval_dataset=eval_ds,
        data_collator=DataCollatorWithPadding(tokenizer),
        processing_class=tokenizer,
        compute_metrics=classification_metrics,
        callbacks=callbacks,
    )
    if is_main:
        print(
            f"[deepln] fine-tuning {args.model or args.preset} ({config.num_hidden_layers} layers) on "
            f"{len(train_ds)} training / {len(eval_ds)} validation examples, {num_labels} labels; output {output_dir}",
            flush=True,
        )
    train_output = trainer.train(resume_from_checkpoint=resume_from)
    guard.detach()
    metrics = trainer.evaluate()
    metrics["eval_samples"] = len(eval_ds)
    trainer.save_model(str(output_dir))
    trainer.log_metrics("eval", metrics)
    trainer.save_metrics("train", dict(train_output.metrics))
    trainer.save_metrics("eval", metrics)
    trainer.save_state()
    if is_main:
        if args.train_file:
            dataset_desc, dataset_id = f"local files ({args.train_file})", None
        elif args.data is None:
            dataset_desc, dataset_id = "GLUE QQP", "nyu-mll/glue"
        else:
            dataset_desc = str(args.data)
            dataset_id = args.data.split(":")[0] if not Path(args.data).exists() else None
        write_model_card(
            output_dir,
            model_name=output_dir.name,
            config=model.config,
            metrics=metrics,
            task="text-classification",
            dataset_name=dataset_desc,
            dataset_id=dataset_id,
            base_model=args.model if args.model and not Path(args.model).exists() else None,
            training={
                "epochs": args.num_epochs,
                "steps": trainer.state.global_step,
                "batch": f"{args.batch_size} x {args.grad_accum}",
                "learning rate": f"{args.lr} ({args.lr_schedule})",
                "max sequence length": args.max_seq_len,
                "seed": args.seed,
            },
        )
        summary = ", ".join(
            f"{k.removeprefix('eval_')} {metrics[k]:.4f}"
            for k in ("eval_accuracy", "eval_precision", "eval_recall", "eval_f1")
            if k in metrics
        )
        print(f"[deepln] {summary}. Model saved in {output_dir}", flush=True)
    return {
        "output_dir": str(output_dir),
        **metrics,
        "train_metrics": dict(train_output.metrics),
        "global_step": trainer.state.global_step,
        "wall_seconds": time.monotonic() - wall_start,
        "skipped_steps": list(guard.skipped_steps),
    }


def _field_docs(cls: type) -> dict[str, str]:
    """Attribute docstrings of a dataclass (used by the CLI for ``--help``)."""
    import ast
    import inspect

    try:
        tree = ast.parse(inspect.getsource(cls))
    except (OSError, TypeError):  # pragma: no cover
        return {}
    docs: dict[str, str] = {}
    body = tree.body[0].body  # type: ignore[attr-defined]
    for node, nxt in zip(body, body[1:]):
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            if isinstance(nxt, ast.Expr) and isinstance(getattr(nxt, "value", None), ast.Constant):
                docs[node.target.id] = " ".join(str(nxt.value.value).split())
    return docs
