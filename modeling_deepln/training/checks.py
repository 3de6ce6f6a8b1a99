"""Input checks shared by ``pretrain`` and ``finetune``: each raises :class:`DeepLNInputError` with what to fix.

They run before any training step, so a wrong option costs seconds, not a run. :func:`input_errors_as_deepln` turns
the errors of the data, corpus and tokenizer modules into :class:`DeepLNInputError` (the CLI prints those as
``deepln: error: ...`` and exits with status 2).
"""

from __future__ import annotations

import contextlib
import shutil
from pathlib import Path
from typing import Any, Iterator

import torch

from ..presets import available_presets, load_preset
from .args import LR_SCHEDULES, PRECISIONS, DeepLNInputError, FinetuneArgs, PretrainArgs
from .callbacks import last_complete_checkpoint

PREPARED_DIR = "prepared"
"""Sub-folder of the output folder caching the tokenizer and tokenized data (reused by ``resume``)."""


@contextlib.contextmanager
def input_errors_as_deepln() -> Iterator[None]:
    """Re-raise the data/corpus/tokenizer modules' input errors (and ``ValueError``) as :class:`DeepLNInputError`."""
    from .corpus import CorpusNotAvailableError
    from .data import DataError, DataFileNotFoundError
    from .tokenization import TokenizerVocabMismatchError

    try:
        yield
    except DeepLNInputError:
        raise
    except (DataError, DataFileNotFoundError, CorpusNotAvailableError, TokenizerVocabMismatchError, ValueError) as exc:
        raise DeepLNInputError(str(exc)) from exc


def check_preset(preset: str) -> None:
    if preset not in available_presets() and not Path(preset).exists():
        raise DeepLNInputError(
            f"Unknown preset {preset!r}. Available presets: {', '.join(available_presets())}; or pass a "
            "config JSON file or a model folder."
        )


def holds_model(output_dir: Path) -> str | None:
    """What in ``output_dir`` shows it already holds a model (or None)."""
    if not output_dir.is_dir():
        return None
    if (output_dir / "config.json").is_file():
        return "config.json"
    checkpoints = sorted(p.name for p in output_dir.glob("checkpoint-*") if p.is_dir())
    if checkpoints:
        return checkpoints[-1]
    return None


def check_output_dir(output_dir: Path, overwrite: bool, resume: bool | str) -> None:
    found = holds_model(output_dir)
    if found and not overwrite and not resume:
        raise DeepLNInputError(
            f"Output directory {output_dir} already holds a model ({found}). Pass --overwrite to replace it, "
            "--resume to continue training it, or choose another --output-dir."
        )
    if output_dir.exists() and not output_dir.is_dir():
        raise DeepLNInputError(f"Output directory {output_dir} exists and is not a folder.")


def clear_output_dir(output_dir: Path) -> None:
    """``overwrite``: remove the previous run's checkpoints, cache and results (other files are left alone)."""
    for path in output_dir.glob("checkpoint-*"):
        shutil.rmtree(path, ignore_errors=True)
    shutil.rmtree(output_dir / PREPARED_DIR, ignore_errors=True)
    for name in ("eval_results.json", "all_results.json", "train_results.json", "trainer_state.json"):
        (output_dir / name).unlink(missing_ok=True)



def check_precision(precision: str, use_cpu: bool) -> None:
    if precision not in PRECISIONS:
        raise DeepLNInputError(f"--precision must be one of {', '.join(PRECISIONS)}, got {precision!r}.")
    gpu = torch.cuda.is_available() and not use_cpu
    if precision == "fp16" and not gpu:
        raise DeepLNInputError(
            "--precision fp16 needs a CUDA GPU (fp16 mixed precision with loss scaling is not supported on this "
            "device). Use --precision fp32 or bf16."
        )
    if precision == "bf16" and gpu and not torch.cuda.is_bf16_supported():
        raise DeepLNInputError(
            f"--precision bf16 is not supported by this GPU ({torch.cuda.get_device_name()}). Use fp16 or fp32."
        )



def schedule_kwargs(schedule: str, min_lr: float | None, lr: float) -> tuple[str, dict[str, Any]]:
    """Trainer's ``lr_scheduler_type`` and ``lr_scheduler_kwargs`` for our schedule names."""
    if schedule not in LR_SCHEDULES:
        raise DeepLNInputError(f"--lr-schedule must be one of {', '.join(LR_SCHEDULES)}, got {schedule!r}.")
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


def config_overrides(a: PretrainArgs | FinetuneArgs) -> dict[str, Any]:
    """Model-config fields given on the command line, for :func:`build_config`.

    Changing the scheme (``--residual-norm``) without ``--post-norm-form`` resets the form to the new scheme's
    default (``post_norm_form=None``), so a preset that names a Post-LN form can still be switched to ``pre_ln``.
    """
    overrides: dict[str, Any] = {}
    if a.residual_norm is not None:
        overrides["residual_norm"] = a.residual_norm
        overrides["post_norm_form"] = None
    if getattr(a, "post_norm_form", None) is not None:
        overrides["post_norm_form"] = a.post_norm_form
    if getattr(a, "final_layer_norm", None) is not None:
        overrides["final_layer_norm"] = a.final_layer_norm
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
        if isinstance(value, int) and not isinstance(value, bool) and value < 1:
            raise DeepLNInputError(f"{key} must be a positive integer, got {value}.")
    return overrides


def build_config(preset: str, overrides: dict[str, Any]):
    try:
        return load_preset(preset, **overrides)
    except ValueError as exc:
        raise DeepLNInputError(str(exc)) from exc
    except TypeError as exc:
        raise DeepLNInputError(f"Bad model override for preset {preset!r}: {exc}") from exc



def model_family(config) -> str:
    """``"bert"`` or ``"gpt"``."""
    return "bert" if config.model_type == "deepln_bert" else "gpt"


def per_device(global_batch: int, world: int, name: str) -> int:
    if global_batch < 1:
        raise DeepLNInputError(f"{name} must be >= 1, got {global_batch}.")
    if global_batch % world:
        raise DeepLNInputError(
            f"{name}={global_batch} is the global batch and must be divisible by the number of processes ({world})."
        )
    return global_batch // world


def check_positive(**values: Any) -> None:
    for name, value in values.items():
        if value is not None and value <= 0:
            raise DeepLNInputError(f"--{name.replace('_', '-')} must be positive, got {value}.")


def check_probability(**values: Any) -> None:
    """Rates such as ``--mlm-probability`` must lie strictly between 0 and 1 (``None``: not used)."""
    for name, value in values.items():
        if value is not None and not 0.0 < value < 1.0:
            raise DeepLNInputError(f"--{name.replace('_', '-')} must be between 0 and 1 (exclusive), got {value}.")


def resume_checkpoint(resume: bool | str, output_dir: Path, is_main: bool) -> str | None:
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

