"""Greedy ``generate`` (batch 1 unless ``--batch-size``), deepln ``pre_ln`` (with and without ``threaded_matvec``)
against ``GPT2LMHeadModel`` of the same shape, interleaved in one process: the side-by-side number behind the
README's generation rows on a machine whose speed drifts between runs.

    python scripts/ab_generate.py [--layers 48] [--new-tokens 32] [--reps 7] [--threads 2] [--batch-size 1]

Each rep runs every contestant once, with ``deepln bench``'s generation step and interleaving (16-token prompts,
``min_new_tokens = max_new_tokens``, after a warm-up round); prints the median of each contestant, its ratio to
GPT-2's median, and whether the deepln variants generate the same tokens.
"""

from __future__ import annotations

import argparse
import copy

import torch

from modeling_deepln.bench.measure import generation_step, interleaved_median_seconds
from modeling_deepln.bench.models import EQUAL_WORK, PEER, contestants_for
from modeling_deepln.presets import load_preset


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layers", type=int, default=48)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--reps", type=int, default=7)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=1, help="sequences generated side by side")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    config = load_preset("gpt-1k", num_hidden_layers=args.layers)
    contestants = contestants_for(config, seed_scheme=False, torchscale=False)
    deepln = next(c for c in contestants if c.work == EQUAL_WORK)
    peer = next(c for c in contestants if c.work == PEER)
    names = [f"{deepln.name} threaded_matvec", f"{deepln.name} F.linear", peer.name]
    torch.manual_seed(0)
    models = {names[0]: deepln.build().eval()}
    models[names[1]] = copy.deepcopy(models[names[0]])  # a copy with its own config
    models[names[1]].config.threaded_matvec = False
    torch.manual_seed(0)
    models[names[2]] = peer.build().eval()

    prompt = torch.randint(0, config.vocab_size, (args.batch_size, 16), generator=torch.Generator().manual_seed(1))
    cpu = torch.device("cpu")
    steps, outputs = {}, {}
    for name in names:  # deepln bench's own generation step: min_new_tokens = max_new_tokens, inference mode
        steps[name], outputs[name] = generation_step(models[name], prompt, args.new_tokens, cpu, torch.float32)
    seconds = interleaved_median_seconds(steps, cpu, rounds=args.reps)
    speeds = {name: args.batch_size * args.new_tokens / seconds[name] for name in names}
    setting = f"{args.layers} layers, batch {args.batch_size}, {args.new_tokens} new tokens, {args.threads} threads"
    print(f"{setting}, median of {args.reps}:")
    for name in names:
        print(f"  {name:45s} {speeds[name]:6.1f} tok/s  {speeds[name] / speeds[peer.name]:.2f}x {peer.name}")
    same = torch.equal(outputs[names[0]][0], outputs[names[1]][0])
    print(f"  deepln's two paths generate the same tokens: {same}")

if __name__ == "__main__":
    main()
