"""Interleaved A/B of one training step (forward + backward + fused AdamW) of a 1,000-layer CPU preset in two
residual schemes: what a scheme costs per step, everything else (shape, head, recipe batch 32 x 64) equal.

The models are built once; the schemes alternate step by step, so a shared machine's changing load hits both alike.
The medians and their ratio are what to read. Float subnormals are flushed to zero as in every ``deepln`` command;
``DEEPLN_KEEP_DENORMALS=1`` keeps them (what the flush is worth).

    python scripts/ab_scheme_step.py --family bert [--layers 200] [--schemes pre_ln,foundation_ln] [--reps 6]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from transformers import AutoModelForCausalLM, AutoModelForMaskedLM

from modeling_deepln import load_preset
from modeling_deepln.cli import flush_denormals


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--family", choices=("gpt", "bert"), default="gpt")
    parser.add_argument("--layers", type=int, default=200)
    parser.add_argument("--schemes", default="pre_ln,foundation_ln")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--seq-len", type=int, default=64)
    parser.add_argument("--reps", type=int, default=6)
    args = parser.parse_args()
    flushed = flush_denormals()  # before the first tensor operation starts torch's threads
    preset, auto = ("gpt-1k-cpu", AutoModelForCausalLM) if args.family == "gpt" else ("bert-1k-cpu", AutoModelForMaskedLM)
    torch.manual_seed(0)
    ids = torch.randint(5, 8000, (args.batch_size, args.seq_len))
    labels = ids.clone()
    if args.family == "bert":  # the recipe's 60 % masking: the MLM head runs on the masked positions only
        labels[torch.rand(ids.shape) >= 0.6] = -100
    contestants = {}
    for scheme in args.schemes.split(","):
        model = auto.from_config(load_preset(preset, residual_norm=scheme, num_hidden_layers=args.layers)).train()
        contestants[scheme] = (model, torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True))
    times: dict[str, list[float]] = {name: [] for name in contestants}
    for rep in range(args.reps + 1):
        for name, (model, optimizer) in contestants.items():
            start = time.perf_counter()
            model(input_ids=ids, labels=labels).loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            if rep:  # the first round warms up
                times[name].append(time.perf_counter() - start)
    first = next(iter(times))
    print(f"{args.family}, {args.layers} layers, {args.batch_size} x {args.seq_len}, torch threads {torch.get_num_threads()}, "
          f"subnormals {'flushed' if flushed else 'kept'}")
    print("| scheme | median step (s) | ratio |\n|---|---|---|")
    for name, values in times.items():
        ratio = statistics.median(values) / statistics.median(times[first])
        print(f"| {name} | {statistics.median(values):.3f} | {ratio:.2f} |")


if __name__ == "__main__":
    main()
