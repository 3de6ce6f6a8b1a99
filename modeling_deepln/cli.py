"""The ``deepln`` command line: ``deepln pretrain ...``, ``deepln finetune ...``, ...

Also runs as ``python -m modeling_deepln.cli`` and under ``accelerate launch -m modeling_deepln.cli ...``.

Each feature package contributes a ``SUBCOMMANDS`` table (see :mod:`modeling_deepln.commands`); adding a subcommand
is one entry there and, for a new package, one line in :data:`FEATURE_CLIS`.

Bad input prints ``deepln: error: <message>`` and exits with status 2 (no traceback); a run stopped by a NaN/inf
loss prints ``deepln: error: <message>`` and exits with status 1.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from typing import Sequence

from .commands import EXIT_BAD_INPUT, EXIT_TRAINING_FAILED, Subcommand

__all__ = ["Subcommand", "SUBCOMMANDS", "FEATURE_CLIS", "build_parser", "main", "EXIT_BAD_INPUT", "EXIT_TRAINING_FAILED"]

FEATURE_CLIS = (
    "modeling_deepln.training.cli",
    "modeling_deepln.evaluation.cli",
    "modeling_deepln.hub.cli",
    "modeling_deepln.growth.cli",
    "modeling_deepln.bench.cli",
    "modeling_deepln.stability.cli",
)
"""Modules whose ``SUBCOMMANDS`` tables make up ``deepln``, in ``--help`` order."""


def _collect_subcommands() -> dict[str, Subcommand]:
    table: dict[str, Subcommand] = {}
    for module_name in FEATURE_CLIS:
        for name, command in importlib.import_module(module_name).SUBCOMMANDS.items():
            if name in table:
                raise RuntimeError(f"deepln subcommand {name!r} is defined twice (again in {module_name}).")
            table[name] = command
    return table


SUBCOMMANDS: dict[str, Subcommand] = _collect_subcommands()
"""``deepln`` subcommands: name -> (help, add_arguments, run)."""


def build_parser() -> argparse.ArgumentParser:
    """The ``deepln`` argument parser with one sub-parser per :data:`SUBCOMMANDS` entry."""
    parser = argparse.ArgumentParser(
        prog="deepln",
        description="Train, evaluate and publish very deep BERT/GPT models (Post-LN, Pre-LN, DeepNorm, Upscale LN, "
        "FoundationLayerNorm, NormFormer).",
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
    from .errors import DeepLNInputError, NonFiniteError

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
