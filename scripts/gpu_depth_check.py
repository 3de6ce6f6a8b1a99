"""Confirm the 1,000-layer CPU findings at full width on one GPU (README, "1,000 layers", "On a GPU").

Trains the ``gpt-1k`` and ``bert-1k`` presets, full width, with their default recipes (``--recipe paper`` for the
paper's) in bf16 for ``--steps`` optimizer steps through ``deepln pretrain`` itself, on the embedded corpus with a
trained tokenizer (no Hub: ``--vocab-size`` 8,192), and appends one JSON row per model to ``--results``: the held-out
loss before and after training against the unigram model's (GPT: every next token; BERT: the masked tokens), the
perplexity ratio, steps, tokens/s and wall time. The schedule runs over ``--steps`` (never a wall-clock limit); the
``--max-minutes`` of each run is only a safety net. Never needed by the tests (they dry-run it on the CPU with
``--num-layers 2 --steps 2 --use-cpu``).

Measured on one H200 (2026-12): a 1,000-layer step takes 2.5-3.3 s (host-bound), so the default 2.2-minute cap
stops each preset after roughly 50-60 of its 300 steps (about 5 minutes for both); the full 300 steps of both would
take an estimated 25 minutes (``--max-minutes 15``; not run).

    python scripts/gpu_depth_check.py                       # both presets, default recipes, 300 steps each
    python scripts/gpu_depth_check.py --recipe paper        # the paper's recipes
    python scripts/gpu_depth_check.py --presets bert-1k --residual-norm foundation_ln   # bert-1k-cpu's scheme at width
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--presets", nargs="+", default=["gpt-1k", "bert-1k"])
    parser.add_argument("--recipe", default=None, help="a named recipe of the presets (e.g. paper); default theirs")
    parser.add_argument("--residual-norm", default=None, help="replace the presets' scheme (default theirs)")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--vocab-size", type=int, default=8192)
    parser.add_argument("--num-layers", type=int, default=None, help="override the depth (tests: 2)")
    parser.add_argument("--logging-steps", type=int, default=10, help="training loss every N steps (trainer_state.json)")
    parser.add_argument("--eval-steps", type=int, default=0, help="held-out loss every N steps (0: before and after)")
    parser.add_argument("--precision", default="bf16", choices=["bf16", "fp32"])
    parser.add_argument("--max-minutes", type=float, default=2.2, help="safety net per preset, not the schedule")
    parser.add_argument("--use-cpu", action="store_true")
    parser.add_argument("--output-root", default="runs/gpu-depth-check")
    parser.add_argument("--results", default="runs/gpu-depth-check/results.jsonl")
    return parser.parse_args(argv)


def check_preset(preset: str, a: argparse.Namespace) -> dict:
    """Train one preset with ``pretrain`` and return its row (loss against the unigram reference)."""
    from modeling_deepln.training import PretrainArgs, pretrain

    args = PretrainArgs(
        preset=preset,
        recipe=a.recipe,
        residual_norm=a.residual_norm,
        num_layers=a.num_layers,
        vocab_size=a.vocab_size,
        tokenizer="",  # train one on the embedded corpus (the paper's recipes name a Hub tokenizer)
        seq_len=a.seq_len,
        batch_size=a.batch_size,
        max_steps=a.steps,
        max_minutes=a.max_minutes,
        precision=a.precision,
        gradient_checkpointing=False,
        eval_steps=a.eval_steps,
        logging_steps=a.logging_steps,
        save_steps=10**9,
        max_eval_samples=128,
        num_samples=1,
        report_to="none",
        use_cpu=a.use_cpu,
        disable_tqdm=True,
        overwrite=True,
        output_dir=str(Path(a.output_root) / f"{preset}-{a.recipe or 'default'}-{a.residual_norm or 'own'}"),
    )
    result = pretrain(args)
    loss, unigram = result["eval_loss"], math.log(result["perplexity_unigram"])
    return {
        "preset": preset,
        "recipe": a.recipe or "default",
        "residual_norm": a.residual_norm or "the preset's",
        "num_layers": a.num_layers,
        "precision": a.precision,
        "steps": result["global_step"],
        "stopped_by_time_limit": result["stopped_by_time_limit"],
        "eval_loss_before": result["eval_loss_before"],
        "eval_loss": loss,
        "unigram_loss": unigram,
        "nats_below_unigram": unigram - loss,
        "perplexity_ratio": math.exp(loss - unigram),
        "tokens_per_second": result["tokens_per_second"],
        "wall_seconds": result["wall_seconds"],
    }


def main(argv: list[str] | None = None) -> list[dict]:
    a = parse_args(argv)
    Path(a.results).parent.mkdir(parents=True, exist_ok=True)
    rows = []
    for preset in a.presets:
        start = time.monotonic()
        row = check_preset(preset, a)
        rows.append(row)
        with open(a.results, "a") as f:
            f.write(json.dumps(row) + "\n")
        print(
            f"[gpu-depth-check] {preset} ({row['recipe']} recipe): held-out loss {row['eval_loss']:.3f} "
            f"vs unigram {row['unigram_loss']:.3f} ({row['perplexity_ratio']:.2f}x the unigram perplexity) "
            f"after {row['steps']} steps, {time.monotonic() - start:.0f} s",
            flush=True,
        )
    return rows


if __name__ == "__main__":
    main()
