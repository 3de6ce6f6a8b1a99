"""What every ``deepln`` subcommand is made of: :class:`Subcommand` and the option helpers they share.

Each feature package has a ``cli.py`` with a ``SUBCOMMANDS`` table of ``name -> Subcommand(help, add_arguments,
run)``; :mod:`modeling_deepln.cli` joins the tables. ``add_arguments(parser)`` declares options with
``default=argparse.SUPPRESS`` (:func:`add_option`) so that only options given on the command line reach
``run(namespace)``; ``run`` returns an exit code (or None for 0).
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Callable

__all__ = [
    "Subcommand",
    "EXIT_BAD_INPUT",
    "EXIT_TRAINING_FAILED",
    "add_option",
    "csv_list",
    "resume_value",
    "namespace_values",
]

EXIT_BAD_INPUT = 2
EXIT_TRAINING_FAILED = 1


@dataclass(frozen=True)
class Subcommand:
    """One ``deepln`` subcommand."""

    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int | None]


def add_option(parser, docs: dict[str, str], flag: str, dest: str, **kwargs) -> None:
    """``parser.add_argument(flag, dest=dest)`` with ``default=SUPPRESS`` and help from ``docs[dest]`` unless given."""
    kwargs.setdefault("default", argparse.SUPPRESS)
    help_text = kwargs.pop("help", None) or docs.get(dest, "")
    parser.add_argument(flag, dest=dest, help=help_text.replace("%", "%%"), **kwargs)


def csv_list(value: str) -> list[str]:
    """``"a, b,c"`` -> ``["a", "b", "c"]``."""
    return [v.strip() for v in value.split(",") if v.strip()]


def resume_value(value: str) -> bool | str:
    """``--resume`` value: a checkpoint path, or ``True`` for "the last complete checkpoint"."""
    return True if value.lower() in ("true", "last", "1", "yes") else value


def namespace_values(ns: argparse.Namespace) -> dict:
    """The options given on the command line (argparse's own ``_``-prefixed entries dropped)."""
    return {k: v for k, v in vars(ns).items() if not k.startswith("_")}
