"""Interleaved A/B of one GPT-shape forward+backward: transformers' GPT2LMHeadModel vs deepln pre_ln (fused LM
head + cross-entropy, as in training) vs deepln with the plain head (logits, then ForCausalLMLoss).

The contestants alternate step by step, so a shared machine's changing load hits all of them alike; the medians'
ratios are what to read.

    python scripts/ab_train_step.py [--layers 12] [--batch-size 2] [--seq-len 128] [--reps 4]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from transformers import GPT2LMHeadModel
from transformers.loss.loss_utils import ForCausalLMLoss

from modeling_deepln import DeepLNGPTForCausalLM, load_preset
from modeling_deepln.bench.models import peer_config


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layers", type=int, default=12)
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--reps", type=int, default=4)
    args = parser.parse_args()
    config = load_preset("gpt-1k", num_hidden_layers=args.layers, residual_norm="pre_ln")
    torch.manual_seed(0)
    deepln = DeepLNGPTForCausalLM(config).train()
    deepln.fused_lm_loss = True  # opt-in fast path (deepln pretrain turns it on)
    peer = GPT2LMHeadModel(peer_config(config)).train()
    ids = torch.randint(0, config.vocab_size, (args.batch_size, args.seq_len))
    steps = {
        "GPT2LMHeadModel": lambda: peer(input_ids=ids, labels=ids).loss.backward(),
        "deepln fused head+CE": lambda: deepln(input_ids=ids, labels=ids).loss.backward(),
        "deepln plain head+CE": lambda: ForCausalLMLoss(
            deepln(input_ids=ids, use_cache=False).logits, ids, config.vocab_size
        ).backward(),
    }
    times: dict[str, list[float]] = {name: [] for name in steps}
    for step in steps.values():  # warm-up
        step()
    for rep in range(args.reps):
        for name, step in steps.items():
            start = time.perf_counter()
            step()
            times[name].append(time.perf_counter() - start)
        print(rep, {name: round(t[-1], 2) for name, t in times.items()}, flush=True)
    peer_median = statistics.median(times["GPT2LMHeadModel"])
    for name, t in times.items():
        print(f"{name:<24} median {statistics.median(t):7.2f} s   vs GPT2LMHeadModel {peer_median / statistics.median(t):.2f}x")


if __name__ == "__main__":
    main()
