"""Interleaved A/B of one training step (forward, backward, AdamW step) at deepln pretrain's shapes: deepln before
this round's switches (separate QKV projections, foreach AdamW) vs after (fused QKV, fused AdamW), and transformers'
peer of the same shape with torch's fused AdamW (transformers' own default optimizer).

The contestants alternate step by step, so a shared machine's changing load hits all of them alike; read the ratios
of the medians.

    python scripts/ab_fast_paths.py [--family bert] [--layers 48] [--reps 5] [--threads 2]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from transformers import BertForMaskedLM, GPT2LMHeadModel

from modeling_deepln import DeepLNBertForMaskedLM, DeepLNGPTForCausalLM, load_preset
from modeling_deepln.bench.models import peer_config


def contestants(family: str, layers: int) -> dict:
    if family == "bert":
        config = load_preset("bert-1k", num_hidden_layers=layers, residual_norm="post_ln", sparse_mlm_loss=True)
        deepln_class, peer_class = DeepLNBertForMaskedLM, BertForMaskedLM
    else:
        config = load_preset(
            "gpt-1k", num_hidden_layers=layers, residual_norm="pre_ln", hidden_size=64, num_attention_heads=2,
            intermediate_size=256, fused_lm_loss=True,
        )  # fmt: skip
        deepln_class, peer_class = DeepLNGPTForCausalLM, GPT2LMHeadModel
    torch.manual_seed(0)
    before = deepln_class(type(config).from_dict({**config.to_dict(), "fuse_qkv": False})).train()
    after = deepln_class(config).train()
    peer = peer_class(peer_config(config)).train()
    return {
        "deepln before (3 QKV matmuls, foreach AdamW)": (before, torch.optim.AdamW(before.parameters(), foreach=True)),
        "deepln after (fused QKV, fused AdamW)": (after, torch.optim.AdamW(after.parameters(), fused=True)),
        f"{peer_class.__name__} (fused AdamW)": (peer, torch.optim.AdamW(peer.parameters(), fused=True)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--family", choices=["bert", "gpt"], default="bert")
    parser.add_argument("--layers", type=int, default=48)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    models = contestants(args.family, args.layers)
    ids = torch.randint(5, 1000, (args.batch_size, args.seq_len))
    labels = ids.clone()
    if args.family == "bert":
        labels[torch.rand(ids.shape) > 0.15] = -100

    def step(model, optimizer):
        model(input_ids=ids, labels=labels).loss.backward()
        optimizer.step()
        optimizer.zero_grad()

    times: dict[str, list[float]] = {name: [] for name in models}
    for pair in models.values():  # warm-up
        step(*pair)
    for rep in range(args.reps):
        for name, pair in models.items():
            start = time.perf_counter()
            step(*pair)
            times[name].append(time.perf_counter() - start)
        print(rep, {name[:16]: round(t[-1], 3) for name, t in times.items()}, flush=True)
    tokens = args.batch_size * args.seq_len
    first = statistics.median(next(iter(times.values())))
    for name, t in times.items():
        median = statistics.median(t)
        print(f"{name:<48} {median:7.3f} s/step {tokens / median:8.0f} tok/s  vs before {first / median:.2f}x")


if __name__ == "__main__":
    main()
