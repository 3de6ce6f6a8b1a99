"""The ``grow-bench`` subcommand of ``deepln`` (``deepln pretrain --grow`` lives with the pretrain options)."""

from __future__ import annotations

import argparse
from dataclasses import fields

from ..commands import Subcommand, add_option, namespace_values
from ..training.args import field_docs

__all__ = ["SUBCOMMANDS"]


def add_grow_bench_arguments(parser: argparse.ArgumentParser) -> None:
    from .bench import GrowBenchArgs

    docs = field_docs(GrowBenchArgs)
    for f in fields(GrowBenchArgs):
        kind = {"int": int, "float": float}.get(str(f.type).split(" ")[0], str)
        add_option(parser, docs, "--" + f.name.replace("_", "-"), f.name, type=kind, metavar=f.name.upper())


def run_grow_bench(ns: argparse.Namespace) -> int | None:
    from .bench import GrowBenchArgs, grow_bench

    grow_bench(GrowBenchArgs(**namespace_values(ns)))
    return 0


SUBCOMMANDS: dict[str, Subcommand] = {
    "grow-bench": Subcommand(
        "CPU time to masked-LM losses below the unigram level with CompoundGrow vs the full model from the start "
        "(embedded corpus, bert-deep-small's recipe, same heads), beside the paper's speedups; prints a table and "
        "writes grow_bench.png.",
        add_grow_bench_arguments,
        run_grow_bench,
    ),
}
