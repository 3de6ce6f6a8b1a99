"""One greedy decode step at batch 1 (the KV-cache forward of one token), deepln ``pre_ln`` against
``GPT2LMHeadModel`` of the same shape, interleaved in one process.

    python scripts/ab_decode_step.py [--layers 48] [--steps 8] [--reps 3] [--threads 1]

After a 16-token prefill, times ``--steps`` single-token forwards with the dynamic cache; prints milliseconds per
step, wall and process CPU (the number to read on a shared machine), for each rep.
"""

from __future__ import annotations

import argparse
import time

import torch

from modeling_deepln.bench.models import EQUAL_WORK, PEER, contestants_for
from modeling_deepln.presets import load_preset


def decode_step_seconds(model, prompt: torch.Tensor, steps: int) -> tuple[float, float]:
    with torch.inference_mode():
        out = model(prompt, use_cache=True)
        cache = getattr(out, "cache", None) or out.past_key_values
        token = out.logits[:, -1:].argmax(-1)
        wall, cpu = time.perf_counter(), time.process_time()
        for _ in range(steps):
            out = model(token, past_key_values=cache, use_cache=True)
            token = out.logits[:, -1:].argmax(-1)
        return (time.perf_counter() - wall) / steps, (time.process_time() - cpu) / steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layers", type=int, default=48)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    config = load_preset("gpt-1k", num_hidden_layers=args.layers)
    contestants = contestants_for(config, seed_scheme=False, torchscale=False)
    models = {}
    for contestant in (c for c in contestants if c.work in (EQUAL_WORK, PEER)):
        torch.manual_seed(0)
        models[contestant.name] = contestant.build().eval()
    prompt = torch.randint(0, config.vocab_size, (1, 16), generator=torch.Generator().manual_seed(1))
    for model in models.values():
        decode_step_seconds(model, prompt, 2)  # warm-up
    for rep in range(args.reps):
        times = {name: decode_step_seconds(model, prompt, args.steps) for name, model in models.items()}
        print(f"rep {rep}: " + "; ".join(f"{name} {1e3 * w:.1f} ms wall, {1e3 * c:.1f} ms cpu"
                                         for name, (w, c) in times.items()), flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
