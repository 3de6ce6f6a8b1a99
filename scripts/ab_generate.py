"""Greedy ``generate`` at batch 1, deepln ``pre_ln`` (with and without ``transposed_decode_weights``) against
``GPT2LMHeadModel`` of the same shape, interleaved in one process: the side-by-side number behind the README's
generation rows on a machine whose speed drifts between runs.

    python scripts/ab_generate.py [--layers 48] [--new-tokens 32] [--reps 7] [--threads 2]

Each rep runs every contestant once (16-token prompt, ``min_new_tokens = max_new_tokens``, as ``deepln bench``);
prints each rep's tokens/s, then the median of each contestant and its ratio to GPT-2's median, and checks that
the deepln variants generate the same tokens.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch

from modeling_deepln.bench.models import EQUAL_WORK, PEER, contestants_for
from modeling_deepln.presets import load_preset


def generate_tokens_per_second(model, prompt: torch.Tensor, new_tokens: int) -> tuple[float, torch.Tensor]:
    start = time.perf_counter()
    with torch.inference_mode():
        ids = model.generate(
            prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=new_tokens, min_new_tokens=new_tokens,
            do_sample=False, pad_token_id=model.config.eos_token_id,
        )  # fmt: skip
    return new_tokens / (time.perf_counter() - start), ids


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layers", type=int, default=48)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--reps", type=int, default=7)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    config = load_preset("gpt-1k", num_hidden_layers=args.layers)
    contestants = contestants_for(config, seed_scheme=False, torchscale=False)
    deepln = next(c for c in contestants if c.work == EQUAL_WORK)
    peer = next(c for c in contestants if c.work == PEER)
    names = [f"{deepln.name} + transposed copies", f"{deepln.name} plain", peer.name]
    torch.manual_seed(0)
    models = {names[0]: deepln.build().eval()}
    # a copy with its own config: switching the transposed copies off frees them
    models[names[1]] = copy.deepcopy(models[names[0]])
    models[names[1]].config.transposed_decode_weights = False
    torch.manual_seed(0)
    models[names[2]] = peer.build().eval()

    def run(name: str) -> tuple[float, torch.Tensor]:
        return generate_tokens_per_second(models[name], prompt, args.new_tokens)

    prompt = torch.randint(0, config.vocab_size, (1, 16), generator=torch.Generator().manual_seed(1))
    for name in names:
        run(name)  # warm-up
    speeds: dict[str, list[float]] = {name: [] for name in names}
    tokens = {}
    for rep in range(args.reps):
        for name in names:
            speed, tokens[name] = run(name)
            speeds[name].append(speed)
        print(f"rep {rep}: " + "; ".join(f"{name} {speeds[name][-1]:.1f} tok/s" for name in names), flush=True)
    same = torch.equal(tokens[names[0]], tokens[names[1]])
    peer_median = statistics.median(speeds[peer.name])
    print(f"\n{args.layers} layers, batch 1, {args.new_tokens} new tokens, {args.threads} threads, median of {args.reps}:")
    for name in names:
        median = statistics.median(speeds[name])
        print(f"  {name:45s} {median:6.1f} tok/s  {median / peer_median:.2f}x {peer.name}")
    print(f"  deepln's two paths generate the same tokens: {same}")


if __name__ == "__main__":
    main()
