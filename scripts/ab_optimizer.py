"""One AdamW step over bert-1k's weight tensors, four ways: torch's CPU default (the per-tensor loop), ``foreach``,
``fused`` (what ``Trainer`` and ``deepln pretrain`` run) and ``fused`` over one flat buffer; plus what a flat
buffer would cost if the weights and gradients were not already views into it (gather with ``torch.cat``, copy
back). The implementations alternate round by round, so a shared machine's changing load hits all of them alike.

    python scripts/ab_optimizer.py [--layers 1000] [--hidden 64] [--rounds 5]
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Callable

import torch

from modeling_deepln import DeepLNBertForMaskedLM, load_preset


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layers", type=int, default=1000)
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    config = load_preset("bert-1k", num_hidden_layers=args.layers, hidden_size=args.hidden)
    params = [p for p in DeepLNBertForMaskedLM(config).parameters()]
    for p in params:
        p.grad = torch.randn_like(p)
    count = sum(p.numel() for p in params)
    flat = torch.zeros(count, requires_grad=True)
    flat.grad = torch.randn(count)
    print(f"{len(params):,} tensors, {count / 1e6:.1f}M values, {torch.get_num_threads()} threads")

    def gather() -> None:
        torch.cat([p.grad.reshape(-1) for p in params])

    flat_views = list(torch.split(flat.detach(), [p.numel() for p in params]))

    def copy_back() -> None:
        torch._foreach_copy_([p.detach().view(-1) for p in params], flat_views)

    steps: dict[str, Callable[[], object]] = {
        "per-tensor loop (torch's CPU default)": torch.optim.AdamW(params, lr=1e-5, foreach=False).step,
        "foreach": torch.optim.AdamW(params, lr=1e-5, foreach=True).step,
        "fused (Trainer's default)": torch.optim.AdamW(params, lr=1e-5, fused=True).step,
        "fused, one flat buffer": torch.optim.AdamW([flat], lr=1e-5, fused=True).step,
        "gather gradients into a flat buffer": gather,
        "copy a flat buffer back into the weights": copy_back,
    }
    for step in steps.values():  # create the optimizer states
        step()
    times: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(args.rounds):
        for name, step in steps.items():
            start = time.perf_counter()
            step()
            times[name].append(time.perf_counter() - start)
    for name, values in times.items():
        print(f"{name:45s} {statistics.median(values) * 1e3:8.1f} ms")


if __name__ == "__main__":
    main()
