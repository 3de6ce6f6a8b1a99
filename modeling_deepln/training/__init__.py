"""Training tools around the model: ``deepln pretrain`` / ``deepln finetune`` over ``transformers.Trainer``.

- ``args.py``: ``PretrainArgs`` / ``FinetuneArgs`` and the preset recipes that fill them.
- ``checks.py``: input checks (each error says what to fix); ``output_dir.py``: the output-folder rules, resume.
- ``model_config.py``: the model config from the preset and the options given.
- ``trainer_setup.py``: processes, ``TrainingArguments`` (schedule, per-process batches), callbacks, TensorBoard.
- ``pretraining.py`` / ``finetuning.py``: the two jobs as short sequences of named steps.
- ``reporting.py``: loss plot, model card and samples of a finished run.
- ``data.py``, ``corpus.py``, ``tokenization.py``: data loading and packing, the embedded corpus, tokenizers.
- ``callbacks.py``: NaN/inf guard, time limit. ``metrics.py``, ``plots.py``, ``model_card.py``: results.
- ``cli.py``: the ``pretrain`` and ``finetune`` subcommands.
"""

from ..errors import DeepLNInputError, NonFiniteError
from .args import (
    RECIPES_DIR,
    FinetuneArgs,
    PretrainArgs,
    load_recipe,
    resolve_pretrain_args,
)
from .callbacks import NonFiniteGuard, TimeLimitCallback, last_complete_checkpoint
from .finetuning import finetune
from .model_card import write_model_card
from .pretraining import pretrain

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
