"""Build (construct + init) time and peak memory of the seed presets against transformers' own GPT-2 / BERT.

Kept for old commands; the benchmark is ``deepln bench`` (this is ``deepln bench --cases build``):

    python scripts/bench_build.py [--full-layers N] [--output-dir bench]
"""

from __future__ import annotations

import sys

from modeling_deepln.cli import main

if __name__ == "__main__":
    main(["bench", "--cases", "build", *sys.argv[1:]])
