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


KEEP_DENORMALS_ENV = "DEEPLN_KEEP_DENORMALS"
"""Set this environment variable to 1 to keep float subnormals in a ``deepln`` command (see :func:`flush_denormals`)."""


def flush_denormals() -> bool:
    """Make this process's CPU treat float subnormals (``|x| < 1.18e-38`` in float32) as zero (x86 FTZ/DAZ).

    A CPU computes on subnormals tens of times slower than on normal numbers, and a deep model produces them: the
    FoundationLayerNorm ``α·s + LN(s)`` stream reaches attention un-normalised, and softmax's exponentials of its
    wide scores underflow. The 1,000-layer ``bert-1k-cpu`` run in that form took 29 min 45 s with subnormals and
    20 min 36 s without (README, "Speed"). Values that small change no fp32 or bf16 training result. The
    setting is the CPU's; it changes nothing on a GPU. Returns whether the CPU supports it.

    The setting belongs to each thread, and torch's OpenMP worker threads copy it when they are created, by the
    first parallel operation: so this runs before any tensor work. Skipped when ``DEEPLN_KEEP_DENORMALS=1``.
    """
    if os.environ.get(KEEP_DENORMALS_ENV, "") not in ("", "0"):
        return False
    import torch

    return bool(torch.set_flush_denormal(True))


KEEP_MALLOC_ENV = "DEEPLN_KEEP_MALLOC"
"""Set this environment variable to 1 to keep glibc's memory-release defaults in a ``deepln`` command (see
:func:`keep_freed_memory`)."""

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters (malloc.h)


def keep_freed_memory() -> bool:
    """Let this process keep the memory it frees for its next allocations instead of giving it back to the kernel
    (glibc ``malloc``: blocks up to 1 GiB come from the heap, ``M_MMAP_THRESHOLD``, and the heap is never trimmed,
    ``M_TRIM_THRESHOLD = -1``).

    A training step allocates and frees the same tensors every step. By default glibc maps every block above 32 MiB
    (the ``[tokens, vocabulary]`` logits, their log-softmax and gradient: 206 MB each at 8 x 128 tokens and 50,257
    words) afresh and returns the heap's free top to the kernel, so each step page-faults that memory back in and
    the kernel zero-fills it: measured on 2 AMD EPYC cores, a 48-layer GPT step with the dense LM head took 3.2-3.7 s
    with 270-290K page faults, 2.4 s with this setting (40K), peak memory 3.04 → 3.49 GB; with ``deepln
    pretrain``'s fused LM head 3.10 → 2.65-2.72 s (190K → 23K faults), peak memory the same. The cost: the process
    keeps its peak memory until it exits. Returns whether it was set (glibc on Linux only; skipped when
    ``DEEPLN_KEEP_MALLOC=1``)."""
    if os.environ.get(KEEP_MALLOC_ENV, "") not in ("", "0"):
        return False
    import ctypes
    import platform

    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    return bool(libc.mallopt(_M_MMAP_THRESHOLD, 1 << 30)) and bool(libc.mallopt(_M_TRIM_THRESHOLD, -1))


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``deepln`` console script. Exits (``SystemExit``) with 2 on bad input, 1 on a failed run.

    Every command runs with float subnormals flushed to zero on the CPU (:func:`flush_denormals`) and keeps the
    memory it frees for its next steps (:func:`keep_freed_memory`)."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    flush_denormals()
    keep_freed_memory()
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
