"""The ``deepln`` command line: ``deepln pretrain ...``, ``deepln finetune ...``.

Also runs as ``python -m modeling_deepln.cli`` and under ``accelerate launch -m modeling_deepln.cli ...``.

Subcommands are a table (:data:`SUBCOMMANDS`) of ``name -> Subcommand(help, add_arguments, run)``: adding one
(eval, publish, ...) is one entry. ``add_arguments(parser)`` declares its options with ``default=argparse.SUPPRESS``
so that only options given on the command line reach ``run(namespace)``, and unset ones fall back to the library's
defaults (for ``pretrain``: the preset's recipe). ``run`` returns an exit code (or None for 0).

Bad input prints ``deepln: error: <message>`` and exits with status 2 (no traceback); a run stopped by a NaN/inf
loss prints ``deepln: error: <message>`` and exits with status 1.
"""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import dataclass
from typing import Callable, Sequence

__all__ = ["Subcommand", "SUBCOMMANDS", "build_parser", "main", "EXIT_BAD_INPUT", "EXIT_TRAINING_FAILED"]

EXIT_BAD_INPUT = 2
EXIT_TRAINING_FAILED = 1

S = argparse.SUPPRESS


@dataclass(frozen=True)
class Subcommand:
    """One ``deepln`` subcommand."""

    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int | None]


def _csv(value: str) -> list[str]:
    return [v.strip() for v in value.split(",") if v.strip()]


def _resume_value(value: str) -> bool | str:
    return True if value.lower() in ("true", "last", "1", "yes") else value


def _docs(cls_name: str) -> dict[str, str]:
    from . import training

    return training._field_docs(getattr(training, cls_name))


def _add(parser: argparse.ArgumentParser, docs: dict[str, str], flag: str, dest: str, **kwargs) -> None:
    kwargs.setdefault("default", S)
    help_text = kwargs.pop("help", None) or docs.get(dest, "")
    parser.add_argument(flag, dest=dest, help=help_text.replace("%", "%%"), **kwargs)


def _add_model_shape(parser: argparse.ArgumentParser, docs: dict[str, str]) -> None:
    _add(parser, docs, "--residual-norm", "residual_norm", metavar="SCHEME")
    _add(parser, docs, "--num-layers", "num_layers", type=int, metavar="N")
    _add(parser, docs, "--hidden-size", "hidden_size", type=int, metavar="N")
    _add(parser, docs, "--num-heads", "num_heads", type=int, metavar="N")
    _add(parser, docs, "--vocab-size", "vocab_size", type=int, metavar="N")


def _add_optimisation(parser: argparse.ArgumentParser, docs: dict[str, str]) -> None:
    _add(parser, docs, "--batch-size", "batch_size", type=int, metavar="N")
    _add(parser, docs, "--eval-batch-size", "eval_batch_size", type=int, metavar="N")
    _add(parser, docs, "--grad-accum", "grad_accum", type=int, metavar="N")
    _add(parser, docs, "--max-steps", "max_steps", type=int, metavar="N")
    _add(parser, docs, "--epochs", "num_epochs", type=float, metavar="N")
    _add(parser, docs, "--max-minutes", "max_minutes", type=float, metavar="MIN")
    _add(parser, docs, "--lr", "lr", type=float)
    _add(parser, docs, "--lr-schedule", "lr_schedule", choices=["linear", "cosine", "constant"])
    _add(parser, docs, "--warmup-ratio", "warmup_ratio", type=float, metavar="R")
    _add(parser, docs, "--min-lr", "min_lr", type=float)
    _add(parser, docs, "--weight-decay", "weight_decay", type=float)
    _add(parser, docs, "--optim", "optim", choices=["adamw_torch", "adam"])
    _add(parser, docs, "--precision", "precision", choices=["fp32", "bf16", "fp16"])
    _add(parser, docs, "--gradient-checkpointing", "gradient_checkpointing", action=argparse.BooleanOptionalAction)
    _add(parser, docs, "--seed", "seed", type=int)
    _add(parser, docs, "--output-dir", "output_dir", metavar="DIR")
    _add(
        parser,
        docs,
        "--resume",
        "resume",
        nargs="?",
        const=True,
        type=_resume_value,
        metavar="CHECKPOINT",
        help="Continue from the last complete checkpoint in --output-dir (or from CHECKPOINT).",
    )
    _add(parser, docs, "--overwrite", "overwrite", action="store_true")
    _add(
        parser,
        docs,
        "--report-to",
        "report_to",
        metavar="LIST",
        help="Comma-separated Trainer integrations (default: tensorboard, plus trackio when installed; 'none').",
    )
    _add(parser, docs, "--logging-steps", "logging_steps", type=int, metavar="N")
    _add(parser, docs, "--eval-steps", "eval_steps", type=int, metavar="N")
    _add(parser, docs, "--save-steps", "save_steps", type=int, metavar="N")
    _add(parser, docs, "--save-total-limit", "save_total_limit", type=int, metavar="N")
    _add(parser, docs, "--max-train-samples", "max_train_samples", type=int, metavar="N")
    _add(parser, docs, "--max-eval-samples", "max_eval_samples", type=int, metavar="N")
    _add(parser, docs, "--nan-policy", "nan_policy", choices=["stop", "skip"])
    _add(parser, docs, "--use-cpu", "use_cpu", action="store_true")
    _add(parser, docs, "--no-progress", "disable_tqdm", action="store_true", help="Hide the progress bar.")


# ------------------------------------------------------------------------------------------------ pretrain


def add_pretrain_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``deepln pretrain`` (unset options take the preset's recipe values)."""
    docs = _docs("PretrainArgs")
    _add(parser, docs, "--preset", "preset", metavar="NAME")
    _add_model_shape(parser, docs)
    _add(parser, docs, "--intermediate-size", "intermediate_size", type=int, metavar="N")
    _add(parser, docs, "--data", "data", nargs="+", metavar="DATA")
    _add(parser, docs, "--text-column", "text_column", metavar="COL")
    _add(parser, docs, "--validation-fraction", "validation_fraction", type=float, metavar="F")
    _add(parser, docs, "--tokenizer", "tokenizer", metavar="NAME_OR_DIR")
    _add(parser, docs, "--seq-len", "seq_len", type=int, metavar="N")
    _add(parser, docs, "--mlm-probability", "mlm_probability", type=float, metavar="P")
    _add_optimisation(parser, docs)
    _add(parser, docs, "--num-samples", "num_samples", type=int, metavar="N")
    _add(parser, docs, "--no-samples", "num_samples", action="store_const", const=0, help="Print no samples.")


def run_pretrain(ns: argparse.Namespace) -> int | None:
    from .training import PretrainArgs, pretrain

    values = _namespace_values(ns)
    data = values.get("data")
    if isinstance(data, list) and len(data) == 1:
        values["data"] = data[0]
    pretrain(PretrainArgs(**values))
    return 0


# ------------------------------------------------------------------------------------------------ finetune


def add_finetune_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``deepln finetune`` (defaults: the paper's QQP recipe, 1 epoch, batch 16, lr 1e-5)."""
    docs = _docs("FinetuneArgs")
    source = parser.add_mutually_exclusive_group()
    _add(source, docs, "--model", "model", metavar="DIR")
    _add(source, docs, "--preset", "preset", metavar="NAME")
    _add_model_shape(parser, docs)
    _add(parser, docs, "--tokenizer", "tokenizer", metavar="NAME_OR_DIR")
    _add(parser, docs, "--data", "data", metavar="DATA")
    _add(parser, docs, "--train-file", "train_file", metavar="FILE")
    _add(parser, docs, "--validation-file", "validation_file", metavar="FILE")
    _add(
        parser,
        docs,
        "--text-columns",
        "text_columns",
        type=_csv,
        metavar="A[,B]",
        help="One or two comma-separated text columns (default question1,question2).",
    )
    _add(parser, docs, "--label-column", "label_column", metavar="COL")
    _add(parser, docs, "--num-labels", "num_labels", type=int, metavar="N")
    _add(parser, docs, "--max-seq-len", "max_seq_len", type=int, metavar="N")
    _add_optimisation(parser, docs)


def run_finetune(ns: argparse.Namespace) -> int | None:
    from .training import FinetuneArgs, finetune

    values = _namespace_values(ns)
    if "text_columns" in values:
        values["text_columns"] = tuple(values["text_columns"])
    finetune(FinetuneArgs(**values))
    return 0


# ------------------------------------------------------------------------------------------------ the table

SUBCOMMANDS: dict[str, Subcommand] = {
    "pretrain": Subcommand(
        "Pre-train a deepln model (MLM for BERT presets, CLM for GPT presets). With no options: a 48-layer "
        "FoundationLayerNorm GPT on the embedded English corpus in a few CPU minutes.",
        add_pretrain_arguments,
        run_pretrain,
    ),
    "finetune": Subcommand(
        "Fine-tune for sentence(-pair) classification (GLUE QQP format by default).",
        add_finetune_arguments,
        run_finetune,
    ),
}
"""``deepln`` subcommands: name -> (help, add_arguments, run)."""


def _namespace_values(ns: argparse.Namespace) -> dict:
    return {k: v for k, v in vars(ns).items() if not k.startswith("_")}


def build_parser() -> argparse.ArgumentParser:
    """The ``deepln`` argument parser with one sub-parser per :data:`SUBCOMMANDS` entry."""
    parser = argparse.ArgumentParser(
        prog="deepln",
        description="Train very deep BERT/GPT models (Post-LN, Pre-LN, DeepNorm, Upscale LN, FoundationLayerNorm).",
    )
    sub = parser.add_subparsers(dest="_command", metavar="COMMAND")
    sub.required = True
    for name, command in SUBCOMMANDS.items():
        p = sub.add_parser(name, help=command.help, description=command.help)
        command.add_arguments(p)
        p.set_defaults(_run=command.run)
    return parser


def _error(message: str, code: int) -> int:
    print(f"deepln: error: {message}", file=sys.stderr, flush=True)
    return code


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``deepln`` console script. Exits (``SystemExit``) with 2 on bad input, 1 on a failed run."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    parser = build_parser()
    ns = parser.parse_args(argv)  # argparse prints 'deepln: error: ...' and exits 2 itself
    run = ns._run
    del ns._run, ns._command
    from .training import DeepLNInputError, NonFiniteError

    try:
        code = run(ns) or 0
    except DeepLNInputError as exc:
        raise SystemExit(_error(str(exc), EXIT_BAD_INPUT)) from None
    except NonFiniteError as exc:
        raise SystemExit(_error(str(exc), EXIT_TRAINING_FAILED)) from None
    except KeyboardInterrupt:
        raise SystemExit(_error("interrupted; continue with --resume.", 130)) from None
    if code:
        raise SystemExit(code)
    return 0


if __name__ == "__main__":
    main()
