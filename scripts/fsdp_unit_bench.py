"""FSDP2 unit size on a very deep, narrow GPT: steps/s and collectives per step for k blocks per unit, against DDP.

Run with two processes (gloo on the CPU, or NCCL on GPUs):

    OMP_NUM_THREADS=1 torchrun --nproc_per_node 2 scripts/fsdp_unit_bench.py --layers 400 --hidden 32 --ks 1,10,50,400

Every contestant is the same model (same seed) trained on the same random tokens with AdamW; the contestants are
interleaved (one round = each of them for ``--steps`` steps, ``--rounds`` rounds) so that load from other work on the
machine hits all of them alike. FSDP2 is ``modeling_deepln.training.sharding.group_blocks`` (the plan
``deepln pretrain --fsdp-blocks-per-unit K`` applies) plus ``fully_shard`` of the root, as Accelerate does; DDP is
``torch.nn.parallel.DistributedDataParallel``. All-gathers and reduce-scatters are counted by wrapping
``torch.distributed.all_gather_single`` / ``reduce_scatter_single`` (what FSDP2 calls); DDP's reducer all-reduces
its gradients in 25 MB buckets from C++ (one bucket for these models), which this does not count. The main process
prints a Markdown table.
"""

from __future__ import annotations

import argparse
import collections
import os
import statistics
import time

import torch
import torch.distributed as dist

from modeling_deepln import DeepLNGPTConfig, DeepLNGPTForCausalLM
from modeling_deepln.training.sharding import group_blocks

CALLS: collections.Counter = collections.Counter()


def _counting(name: str):
    original = getattr(dist, name)

    def wrapper(*args, **kwargs):
        CALLS[name] += 1
        return original(*args, **kwargs)

    setattr(dist, name, wrapper)


def build(args) -> torch.nn.Module:
    torch.manual_seed(0)
    config = DeepLNGPTConfig(
        vocab_size=args.vocab, hidden_size=args.hidden, num_hidden_layers=args.layers, num_attention_heads=2,
        intermediate_size=4 * args.hidden, max_position_embeddings=args.seq, residual_norm="pre_ln",
        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, bos_token_id=0, eos_token_id=0,
    )  # fmt: skip
    return DeepLNGPTForCausalLM(config)


def wrap(model: torch.nn.Module, contestant: str) -> torch.nn.Module:
    if contestant == "ddp":
        return torch.nn.parallel.DistributedDataParallel(model)
    from torch.distributed.fsdp import fully_shard

    group_blocks(model, int(contestant), reshard_after_forward=True)
    fully_shard(model)
    return model


def run(model: torch.nn.Module, args, batches) -> tuple[float, dict[str, float], float]:
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    CALLS.clear()
    dist.barrier()
    start = time.perf_counter()
    for ids in batches:
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    dist.barrier()
    seconds = time.perf_counter() - start
    per_step = {name: CALLS[name] / len(batches) for name in ("all_gather_single", "reduce_scatter_single")}
    return len(batches) / seconds, per_step, float(loss.detach())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--layers", type=int, default=400)
    parser.add_argument("--hidden", type=int, default=32)
    parser.add_argument("--vocab", type=int, default=256)
    parser.add_argument("--seq", type=int, default=32)
    parser.add_argument("--batch", type=int, default=4, help="per process")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--ks", default="1,10,50,400", help="blocks per FSDP unit (comma-separated)")
    args = parser.parse_args()

    dist.init_process_group("gloo" if not torch.cuda.is_available() else "nccl")
    rank, world = dist.get_rank(), dist.get_world_size()
    for name in ("all_gather_single", "reduce_scatter_single"):
        _counting(name)
    generator = torch.Generator().manual_seed(1 + rank)
    batches = [torch.randint(0, args.vocab, (args.batch, args.seq), generator=generator) for _ in range(args.steps)]
    contestants = ["ddp", *args.ks.split(",")]
    rates: dict[str, list[float]] = {c: [] for c in contestants}
    calls: dict[str, dict[str, float]] = {}
    losses: dict[str, float] = {}
    for _ in range(args.rounds):
        for contestant in contestants:
            model = wrap(build(args), contestant)
            run(model, args, batches[:1])  # warm-up step (allocations, first all-gathers)
            rate, calls[contestant], losses[contestant] = run(model, args, batches)
            rates[contestant].append(rate)
            del model
    if rank == 0:
        block = sum(p.numel() for p in build(args).transformer.layers[0].parameters())
        print(f"\n{args.layers} layers, hidden {args.hidden}, {block:,} parameters per block; {world} processes, "
              f"batch {args.batch}/process x {args.seq} tokens; {os.environ.get('OMP_NUM_THREADS', '?')} thread(s) "
              f"each; median of {args.rounds} interleaved rounds of {args.steps} steps\n")  # fmt: skip
        print("| wrap | units | params/unit | steps/s | vs DDP | all-gathers/step | reduce-scatters/step |")
        print("|---|---:|---:|---:|---:|---:|---:|")
        ddp = statistics.median(rates["ddp"])
        for contestant in contestants:
            rate = statistics.median(rates[contestant])
            if contestant == "ddp":
                units, per_unit, label = "-", "-", "DDP (bucketed all-reduce)"
            else:
                k = int(contestant)
                units, per_unit, label = str(-(-args.layers // k)), f"{k * block / 1e6:.2f}M", f"FSDP2, k = {k}"
            c = calls[contestant]
            gathers, scatters = (f"{c['all_gather_single']:.0f}", f"{c['reduce_scatter_single']:.0f}")
            if contestant == "ddp":
                gathers = scatters = "-"
            print(f"| {label} | {units} | {per_unit} | {rate:.2f} | {rate / ddp:.2f} | {gathers} | {scatters} |")
        print(f"\nlast loss per contestant (same data and init): {losses}")
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
