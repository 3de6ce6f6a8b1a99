"""Input checks shared by ``pretrain`` and ``finetune``: each raises :class:`DeepLNInputError` with what to fix.

They run before any training step, so a wrong option costs seconds, not a run. The output folder's rules live in
``output_dir.py``, the model config from preset and options in ``model_config.py``. :func:`input_errors_as_deepln` turns
the errors of the data, corpus and tokenizer modules into :class:`DeepLNInputError` (the CLI prints those as
``deepln: error: ...`` and exits with status 2).
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any, Iterator

import torch

from ..presets import available_presets
from .args import PRECISIONS, DeepLNInputError

# Their old home: these moved to the modules named for what they hold.
from .model_config import build_config, config_overrides, model_family  # noqa: F401
from .output_dir import PREPARED_DIR, check_output_dir, clear_output_dir, holds_model, resume_checkpoint  # noqa: F401
from .trainer_setup import per_device, schedule_kwargs  # noqa: F401


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


def check_positive(**values: Any) -> None:
    for name, value in values.items():
        if value is not None and value <= 0:
            raise DeepLNInputError(f"--{name.replace('_', '-')} must be positive, got {value}.")


def check_probability(**values: Any) -> None:
    """Rates such as ``--mlm-probability`` must lie strictly between 0 and 1 (``None``: not used)."""
    for name, value in values.items():
        if value is not None and not 0.0 < value < 1.0:
            raise DeepLNInputError(f"--{name.replace('_', '-')} must be between 0 and 1 (exclusive), got {value}.")
