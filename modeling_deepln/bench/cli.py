"""``deepln bench``: deepln against transformers' GPT-2 / BERT of the same shapes, measured in one run.

    deepln bench [--device cpu|cuda] [--dtype float32|bfloat16] [--batch-size 8] [--seq-len 128]
                 [--layers 48] [--cases build,bert,gpt,gpt1k] [--compile] [--quick] [--output-dir bench]
"""

from __future__ import annotations

import argparse

import torch

from ..commands import Subcommand, csv_list
from .report import format_table, write_reports
from .run import CASES, BenchOptions, run_bench

__all__ = ["SUBCOMMANDS"]


def add_bench_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="cpu or cuda")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"],
                        help="float32, or autocast to bfloat16/float16 (fp32 master weights)")  # fmt: skip
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--layers", type=int, default=48, dest="slice_layers", help="depth of the GPT slice")
    parser.add_argument("--full-layers", type=int, default=None, help="depth of the 1k cases (default: 1,000)")
    parser.add_argument("--steps", type=int, default=3, help="timed steps per measurement (after one warm-up)")
    parser.add_argument("--new-tokens", type=int, default=32, help="greedy generation length")
    parser.add_argument("--cases", type=csv_list, default=["build", "bert", "gpt"],
                        help=f"comma-separated, from {', '.join(CASES)} (gpt1k: minutes on a CPU)")  # fmt: skip
    parser.add_argument("--no-seed-schemes", dest="seed_schemes", action="store_false",
                        help="only the equal-work schemes (pre_ln / post_ln), not foundation_ln / upscale_ln")  # fmt: skip
    parser.add_argument("--compile", action="store_true",
                        help="also torch.compile'd deepln and the compiled transformers peer (with compile time)")  # fmt: skip
    parser.add_argument("--profile", action="store_true",
                        help="print a training step's time per layer: matmul / attention / elementwise / optimizer")  # fmt: skip
    parser.add_argument("--quick", action="store_true", help="tiny shapes (seconds): checks the benchmark runs")
    parser.add_argument("--output-dir", default="bench", help="where bench.csv, bench.md and bench.png go")


def run_bench_command(ns: argparse.Namespace) -> int:
    from ..errors import DeepLNInputError

    if ns.device.startswith("cuda") and not torch.cuda.is_available():
        raise DeepLNInputError("--device cuda, but torch sees no CUDA device; use --device cpu.")
    options = vars(ns).copy()
    output_dir = options.pop("output_dir")
    try:
        bench_options = BenchOptions(**{**options, "cases": tuple(options["cases"])})
    except ValueError as error:
        raise DeepLNInputError(str(error)) from None
    rows, facts = run_bench(bench_options)
    print(format_table(rows))
    for path in write_reports(rows, facts, output_dir):
        print(f"wrote {path}")
    return 0


SUBCOMMANDS = {
    "bench": Subcommand(
        "Benchmark deepln against transformers' GPT-2/BERT of the same shapes (build, train, inference, generate).",
        add_bench_arguments,
        run_bench_command,
    )
}
