"""Build time of gpt-1k: deepln with the parallel normal init, deepln with transformers' serial
``initialize_weights`` (the previous path) and ``GPT2LMHeadModel`` of the same shape, interleaved in one process.

    python scripts/ab_build_init.py [--layers 1000] [--reps 2] [--threads 2]

Prints wall and process-CPU seconds per build (CPU seconds are the number to read on a shared machine).
"""

from __future__ import annotations

import argparse
import gc
import time

import torch
from transformers import PreTrainedModel

from modeling_deepln.bench.models import PEER, contestants_for
from modeling_deepln.model.layers_deepln import DeepLNPreTrainedModel
from modeling_deepln.presets import load_preset


def timed(label: str, build) -> None:
    gc.collect()
    wall, cpu = time.perf_counter(), time.process_time()
    model = build()
    print(f"{label}: {time.perf_counter() - wall:.2f} s wall, {time.process_time() - cpu:.2f} s cpu", flush=True)
    del model
    gc.collect()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layers", type=int, default=1000)
    parser.add_argument("--reps", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    contestants = contestants_for(load_preset("gpt-1k", num_hidden_layers=args.layers), torchscale=False)
    own = next(c for c in contestants if c.work != PEER)  # deepln in the preset's own scheme
    peer = next(c for c in contestants if c.work == PEER)
    parallel = DeepLNPreTrainedModel.initialize_weights
    try:
        for _ in range(args.reps):
            DeepLNPreTrainedModel.initialize_weights = parallel
            timed("deepln, parallel normal init", own.build)
            DeepLNPreTrainedModel.initialize_weights = PreTrainedModel.initialize_weights
            timed("deepln, serial init (before)", own.build)
            timed(peer.name, peer.build)
    finally:
        DeepLNPreTrainedModel.initialize_weights = parallel


if __name__ == "__main__":
    main()
