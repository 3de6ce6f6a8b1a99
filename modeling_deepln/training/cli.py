"""The ``pretrain`` and ``finetune`` subcommands of ``deepln`` (options map one-to-one onto PretrainArgs/FinetuneArgs).

Options are declared with ``default=argparse.SUPPRESS`` so that only options given on the command line reach the
arguments, and unset ones fall back to the library's defaults (for ``pretrain``: the preset's recipe).

Why not ``transformers.HfArgumentParser``: it cannot build a parser for these dataclasses (``data: str | list[str]``
and ``resume: bool | str`` are unions it rejects), it would fill every unset option with the field default (the
recipe could no longer tell "not given" from "given"), and it reads help from ``field(metadata=...)`` where these
fields keep theirs as attribute docstrings; the flags that are not field names (``--epochs``, ``--no-progress``,
``--no-samples``, ``--no-gradient-checkpointing``) would need aliases on top.
"""

from __future__ import annotations

import argparse

from ..commands import Subcommand, add_option, csv_list, namespace_values, resume_value
from .args import OPTIMIZERS, FinetuneArgs, PretrainArgs, field_docs

__all__ = ["SUBCOMMANDS", "add_model_shape_arguments", "add_optimisation_arguments"]


def add_model_shape_arguments(parser: argparse.ArgumentParser, docs: dict[str, str]) -> None:
    add_option(parser, docs, "--residual-norm", "residual_norm", metavar="SCHEME")
    add_option(parser, docs, "--post-norm-form", "post_norm_form", choices=["ln", "alpha_plus_ln"])
    add_option(parser, docs, "--final-layer-norm", "final_layer_norm", action=argparse.BooleanOptionalAction)
    add_option(parser, docs, "--final-hidden-scale", "final_hidden_scale", type=float, metavar="C")
    add_option(parser, docs, "--num-layers", "num_layers", type=int, metavar="N")
    add_option(parser, docs, "--hidden-size", "hidden_size", type=int, metavar="N")
    add_option(parser, docs, "--num-heads", "num_heads", type=int, metavar="N")
    add_option(parser, docs, "--vocab-size", "vocab_size", type=int, metavar="N")


def add_optimisation_arguments(parser: argparse.ArgumentParser, docs: dict[str, str]) -> None:
    add_option(parser, docs, "--batch-size", "batch_size", type=int, metavar="N")
    add_option(parser, docs, "--eval-batch-size", "eval_batch_size", type=int, metavar="N")
    add_option(parser, docs, "--grad-accum", "grad_accum", type=int, metavar="N")
    add_option(parser, docs, "--max-steps", "max_steps", type=int, metavar="N")
    add_option(parser, docs, "--epochs", "num_epochs", type=float, metavar="N")
    add_option(parser, docs, "--max-minutes", "max_minutes", type=float, metavar="MIN")
    add_option(parser, docs, "--lr", "lr", type=float)
    add_option(parser, docs, "--lr-schedule", "lr_schedule", choices=["linear", "cosine", "constant"])
    add_option(parser, docs, "--warmup-ratio", "warmup_ratio", type=float, metavar="R")
    add_option(parser, docs, "--min-lr", "min_lr", type=float)
    add_option(parser, docs, "--weight-decay", "weight_decay", type=float)
    add_option(parser, docs, "--optim", "optim", choices=list(OPTIMIZERS))
    add_option(parser, docs, "--precision", "precision", choices=["fp32", "bf16", "fp16"])
    add_option(parser, docs, "--gradient-checkpointing", "gradient_checkpointing", action=argparse.BooleanOptionalAction)
    add_option(parser, docs, "--compile", "compile", action="store_true")
    add_option(parser, docs, "--seed", "seed", type=int)
    add_option(parser, docs, "--output-dir", "output_dir", metavar="DIR")
    add_option(
        parser,
        docs,
        "--resume",
        "resume",
        nargs="?",
        const=True,
        type=resume_value,
        metavar="CHECKPOINT",
        help="Continue from the last complete checkpoint in --output-dir (or from CHECKPOINT).",
    )
    add_option(parser, docs, "--overwrite", "overwrite", action="store_true")
    add_option(
        parser,
        docs,
        "--report-to",
        "report_to",
        metavar="LIST",
        help="Comma-separated Trainer integrations (default: tensorboard, plus trackio when installed; 'none').",
    )
    add_option(parser, docs, "--logging-steps", "logging_steps", type=int, metavar="N")
    add_option(parser, docs, "--eval-steps", "eval_steps", type=int, metavar="N")
    add_option(parser, docs, "--save-steps", "save_steps", type=int, metavar="N")
    add_option(parser, docs, "--save-total-limit", "save_total_limit", type=int, metavar="N")
    add_option(parser, docs, "--max-train-samples", "max_train_samples", type=int, metavar="N")
    add_option(parser, docs, "--max-eval-samples", "max_eval_samples", type=int, metavar="N")
    add_option(parser, docs, "--nan-policy", "nan_policy", choices=["stop", "skip"])
    add_option(parser, docs, "--use-cpu", "use_cpu", action="store_true")
    add_option(parser, docs, "--no-progress", "disable_tqdm", action="store_true", help="Hide the progress bar.")
    add_option(parser, docs, "--monitor-every", "monitor_every", type=int, metavar="K")
    add_option(parser, docs, "--fsdp-blocks-per-unit", "fsdp_blocks_per_unit", type=int, metavar="K")


# ------------------------------------------------------------------------------------------------ pretrain


def add_pretrain_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``deepln pretrain`` (unset options take the preset's recipe values)."""
    docs = field_docs(PretrainArgs)
    add_option(parser, docs, "--preset", "preset", metavar="NAME")
    add_option(parser, docs, "--recipe", "recipe", metavar="NAME")
    add_model_shape_arguments(parser, docs)
    add_option(parser, docs, "--adam-beta2", "adam_beta2", type=float, metavar="B2")
    add_option(parser, docs, "--block-lr-scale", "block_lr_scale", metavar="M|depth")
    add_option(parser, docs, "--intermediate-size", "intermediate_size", type=int, metavar="N")
    add_option(parser, docs, "--data", "data", nargs="+", metavar="DATA")
    add_option(parser, docs, "--text-column", "text_column", metavar="COL")
    add_option(parser, docs, "--validation-fraction", "validation_fraction", type=float, metavar="F")
    add_option(parser, docs, "--streaming", "streaming", action="store_true")
    add_option(parser, docs, "--tokenizer", "tokenizer", metavar="NAME_OR_DIR")
    add_option(parser, docs, "--seq-len", "seq_len", type=int, metavar="N")
    add_option(parser, docs, "--mlm-probability", "mlm_probability", type=float, metavar="P")
    add_option(parser, docs, "--eval-mlm-probability", "eval_mlm_probability", type=float, metavar="P")
    add_optimisation_arguments(parser, docs)
    add_option(parser, docs, "--grow", "grow", metavar="SCHEDULE")
    parser.add_argument(
        "--grow-lr", dest="grow_lr", choices=("restart", "continue"), default=None,
        help="With --grow: restart the learning-rate schedule at each stage, as the CompoundGrow authors do "
        "(restart, the default), or run one schedule through all stages (continue).",
    )  # fmt: skip
    add_option(parser, docs, "--num-samples", "num_samples", type=int, metavar="N")
    add_option(parser, docs, "--no-samples", "num_samples", action="store_const", const=0, help="Print no samples.")


def run_pretrain(ns: argparse.Namespace) -> int | None:
    from .pretraining import pretrain

    values = namespace_values(ns)
    data = values.get("data")
    if isinstance(data, list) and len(data) == 1:
        values["data"] = data[0]
    extensions = []
    if values.get("grow"):  # CompoundGrow joins the run as an extension (modeling_deepln.growth)
        from ..growth import GrowthExtension

        extensions.append(GrowthExtension(restart_lr_schedule=values.pop("grow_lr", None) != "continue"))
    values.pop("grow_lr", None)
    pretrain(PretrainArgs(**values), extensions)
    return 0


# ------------------------------------------------------------------------------------------------ finetune


def add_finetune_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``deepln finetune`` (defaults: the paper's QQP recipe, 1 epoch, batch 16, lr 1e-5)."""
    docs = field_docs(FinetuneArgs)
    source = parser.add_mutually_exclusive_group()
    add_option(source, docs, "--model", "model", metavar="DIR")
    add_option(source, docs, "--preset", "preset", metavar="NAME")
    add_model_shape_arguments(parser, docs)
    add_option(parser, docs, "--tokenizer", "tokenizer", metavar="NAME_OR_DIR")
    add_option(parser, docs, "--data", "data", metavar="DATA")
    add_option(parser, docs, "--train-file", "train_file", metavar="FILE")
    add_option(parser, docs, "--validation-file", "validation_file", metavar="FILE")
    add_option(
        parser,
        docs,
        "--text-columns",
        "text_columns",
        type=csv_list,
        metavar="A[,B]",
        help="One or two comma-separated text columns (default question1,question2).",
    )
    add_option(parser, docs, "--label-column", "label_column", metavar="COL")
    add_option(parser, docs, "--num-labels", "num_labels", type=int, metavar="N")
    add_option(parser, docs, "--max-seq-len", "max_seq_len", type=int, metavar="N")
    add_optimisation_arguments(parser, docs)


def run_finetune(ns: argparse.Namespace) -> int | None:
    from .finetuning import finetune

    values = namespace_values(ns)
    if "text_columns" in values:
        values["text_columns"] = tuple(values["text_columns"])
    finetune(FinetuneArgs(**values))
    return 0


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
"""Training subcommands: name -> (help, add_arguments, run)."""
