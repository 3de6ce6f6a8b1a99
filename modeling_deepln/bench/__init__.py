"""``deepln bench``: speed and memory of deepln against transformers' own GPT-2 / BERT, in one run."""

from .run import BenchOptions, Row, run_bench

__all__ = ["BenchOptions", "Row", "run_bench"]
