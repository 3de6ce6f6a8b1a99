"""Training tokens/s of ``deepln pretrain`` in 1 process vs 2 processes (DDP, FSDP2) with equal total threads.

    python scripts/distributed_throughput.py --rounds 2 --steps 20 [--threads 2] [-- extra deepln options]

One process runs with ``--threads`` torch threads; the two-process runs (``accelerate launch`` with
``configuration/accelerate/cpu-2proc.yaml`` and ``cpu-2proc-fsdp2.yaml``) with ``threads / 2`` each, so every
contestant has the same cores. The contestants alternate (1 process, DDP, FSDP2, 1 process, ...) so that load from
other work on the machine hits them alike. The number is deepln's own ``tokens/s`` line (training steps only, from
``trainer.train``'s start to its end: the data preparation, evaluation and saving are outside it). Prints a Markdown
table with the median of the rounds.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CONFIGS = {"DDP": "cpu-2proc.yaml", "FSDP2": "cpu-2proc-fsdp2.yaml"}


def command(contestant: str, argv: list[str], port: int) -> list[str]:
    deepln = ["-m", "modeling_deepln.cli", *argv]
    if contestant == "1 process":
        return [sys.executable, *deepln]
    accelerate = Path(sys.executable).with_name("accelerate")
    config = REPO / "configuration" / "accelerate" / CONFIGS[contestant]
    return [str(accelerate), "launch", "--config_file", str(config), "--main_process_port", str(port), *deepln]


def tokens_per_second(cmd: list[str], threads: int) -> float:
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads), HF_HUB_OFFLINE="1",
               HF_DATASETS_OFFLINE="1", TRANSFORMERS_OFFLINE="1", TOKENIZERS_PARALLELISM="false")  # fmt: skip
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)
    result = subprocess.run(cmd, env=env, capture_output=True, text=True)
    found = re.search(r"tokens in [\d.]+ s: ([\d,]+) tokens/s", result.stdout)
    if result.returncode != 0 or not found:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{result.stdout[-2000:]}\n{result.stderr[-4000:]}")
    return float(found.group(1).replace(",", ""))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--threads", type=int, default=2, help="total torch threads of every contestant")
    parser.add_argument("extra", nargs="*", help="more deepln pretrain options (after --)")
    args = parser.parse_args()

    rates: dict[str, list[float]] = {name: [] for name in ("1 process", *CONFIGS)}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            for i, contestant in enumerate(rates):
                argv = ["pretrain", "--max-steps", str(args.steps), "--eval-steps", "0", "--save-steps", "100000",
                        "--max-eval-samples", "16", "--no-samples", "--report-to", "none", "--no-progress",
                        "--output-dir", str(Path(tmp) / f"{i}"), "--overwrite", *args.extra]  # fmt: skip
                threads = args.threads if contestant == "1 process" else max(1, args.threads // 2)
                rate = tokens_per_second(command(contestant, argv, 29600 + 10 * r + i), threads)
                rates[contestant].append(rate)
                print(f"round {r + 1}: {contestant}: {rate:,.0f} tokens/s", flush=True)
    one = statistics.median(rates["1 process"])
    print(f"\n| run | threads | tokens/s (median of {args.rounds}) | vs 1 process |\n|---|---|---:|---:|")
    for contestant, values in rates.items():
        threads = f"{args.threads}" if contestant == "1 process" else f"2 x {max(1, args.threads // 2)}"
        rate = statistics.median(values)
        print(f"| {contestant} | {threads} | {rate:,.0f} | {rate / one:.2f} |")


if __name__ == "__main__":
    main()
