"""The GPU table in one run of at most ~5 minutes on an H100/H200: deepln vs transformers' own
``GPT2LMHeadModel`` / ``BertForMaskedLM`` of the same shapes, bf16 autocast, fused AdamW, SDPA, deepln compiled
regionally (``torch.compile(model)`` compiles one block for all 1,000 layers), static-cache generation.

    python scripts/gpu_bench.py                       # on the GPU (writes gpu_bench/gpu_bench.{md,csv,png})
    python scripts/gpu_bench.py --tiny                # any machine: tiny shapes, CPU, fp32, checks it runs

Every deepln row names its peer and its work (equal work: dense LM head; or with the fused LM head shortcut).
Rows: gpt-1k train 2x1024 (the fraction of the bf16 matmul peak at sequence 1,024); gpt-1k train with activation
checkpointing 16x1024; bert-1k train 32x512; gpt-1k inference 8x1024; greedy generation at batch 1 (peer: dynamic
cache; deepln: static cache, compiled by ``generate`` itself at the ``--gen-layers`` slice, plus eager at full
depth); build time. Rows that would start after ``--budget-s`` are skipped and listed.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass

import torch

from modeling_deepln.bench.measure import (
    forward_flops_per_token,
    generation_tokens_per_second,
    inference_seconds,
    matmul_peak_flops,
    timed_build,
    train_step_seconds,
)
from modeling_deepln.bench.models import EQUAL_WORK, PEER, SHORTCUTS, contestants_for
from modeling_deepln.bench.report import format_table, write_reports
from modeling_deepln.bench.run import Row, add_ratios
from modeling_deepln.presets import load_preset


@dataclass
class Setting:
    device: str
    dtype: torch.dtype
    layers: int | None  # None: the presets' 1,000
    gen_layers: int
    scale: int  # divides batch and sequence sizes (1 on the GPU)
    compile_backend: str
    vocab: int | None
    new_tokens: int


def config_for(preset: str, setting: Setting, layers: int | None = None):
    overrides = {"num_hidden_layers": layers or setting.layers} if (layers or setting.layers) else {}
    if setting.vocab:
        overrides.update(vocab_size=setting.vocab, bos_token_id=0, eos_token_id=0)
    return load_preset(preset, **overrides)


def batch_for(config, batch: int, seq: int, device: str) -> dict[str, torch.Tensor]:
    ids = torch.randint(0, config.vocab_size, (batch, seq), device=device)
    if config.model_type == "deepln_gpt":
        return {"input_ids": ids, "labels": ids}
    labels = torch.where(torch.rand(ids.shape, device=device) < 0.15, ids, torch.full_like(ids, -100))
    return {"input_ids": ids, "labels": labels}


def pair(config, setting: Setting, works=(EQUAL_WORK,)):
    """Yield (name, work, peer name, model): the transformers peer (eager), then deepln compiled regionally for each
    of ``works`` (equal work, with the head shortcut), whose ratios are against that peer. One model at a time."""
    found = contestants_for(config, seed_scheme=False, torchscale=False)
    peer = next(c for c in found if c.work == PEER)
    yield peer.name, PEER, None, peer.build().to(setting.device)
    for deepln in (c for c in found if c.work in works):
        model = torch.compile(deepln.build().to(setting.device), backend=setting.compile_backend)
        yield deepln.name + " compiled", deepln.work, peer.name, model


def train_rows(case, preset, batch, seq, setting, peak, checkpointing=False, works=(EQUAL_WORK,)) -> list[Row]:
    config = config_for(preset, setting)
    data = batch_for(config, batch // setting.scale or 1, seq // setting.scale or 2, setting.device)
    tokens, rows = data["input_ids"].numel(), []
    flops = 3 * forward_flops_per_token(config, data["input_ids"].shape[1]) * tokens
    for name, work, peer, model in pair(config, setting, works):
        if checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        seconds = train_step_seconds(model, data, torch.device(setting.device), setting.dtype, steps=2)
        rows.append(Row(case, "train tok/s", name, tokens / seconds, "tok/s", work, peer,
                        of_peak=flops / seconds / peak))  # fmt: skip
        print(f"  {name}: {case}: {seconds:.3f} s/step", flush=True)
        del model
    return rows


def inference_rows(case, setting, peak) -> list[Row]:
    config = config_for("gpt-1k", setting)
    data = batch_for(config, 8 // setting.scale or 1, 1024 // setting.scale, setting.device)
    tokens, rows = data["input_ids"].numel(), []
    flops = forward_flops_per_token(config, data["input_ids"].shape[1]) * tokens
    for name, work, peer, model in pair(config, setting):
        seconds = inference_seconds(model, data, torch.device(setting.device), setting.dtype, steps=2)
        rows.append(Row(case, "inference tok/s", name, tokens / seconds, "tok/s", work, peer,
                        of_peak=flops / seconds / peak))  # fmt: skip
        del model
    return rows


def generation_rows(setting) -> list[Row]:
    rows = []
    for layers, compiled in ((None, False), (setting.gen_layers, True)):
        config = config_for("gpt-1k", setting, layers)
        case = f"gpt-1k shape, {config.num_hidden_layers} layers, greedy batch 1"
        deepln, _, peer = contestants_for(config, seed_scheme=False, torchscale=False)
        prompt = torch.randint(0, config.vocab_size, (1, 16), device=setting.device)
        for contestant, options in ((peer, {}), (deepln, {"cache_implementation": "static"})):
            model = contestant.build().to(setting.device)
            if options and not compiled:
                options = {**options, "disable_compile": True}  # a whole 1,000-layer decode graph compiles too long
            if compiled and options and setting.device == "cpu":  # on CUDA generate compiles the static-cache step
                model.forward = torch.compile(model.forward, backend=setting.compile_backend)
            speed, _ = generation_tokens_per_second(
                model, prompt, setting.new_tokens, torch.device(setting.device), setting.dtype, **options
            )
            label = contestant.name + (" static cache" if options else "")
            label += " compiled" if compiled and options else ""
            rows.append(Row(case, "greedy generate tok/s", label, speed, "tok/s", contestant.work, contestant.peer))
            print(f"  {label}: {case}: {speed:.2f} tok/s", flush=True)
            del model
    return rows


def build_rows(setting) -> list[Row]:
    config = config_for("gpt-1k", setting)
    rows = []
    for contestant in contestants_for(config, torchscale=False)[2:]:  # the preset's own scheme, the peer
        model, seconds, _ = timed_build(contestant.build, torch.device(setting.device))
        rows.append(Row(f"build gpt-1k ({config.num_hidden_layers} layers) on {setting.device}", "build s",
                        contestant.name, seconds, "s", contestant.work, contestant.peer))  # fmt: skip
        del model
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiny", action="store_true", help="CPU, fp32, 2 layers, small vocab: checks the script")
    parser.add_argument("--gen-layers", type=int, default=48, help="depth of the compiled static-cache row")
    parser.add_argument("--budget-s", type=float, default=270.0, help="start no new row after this many seconds")
    parser.add_argument("--output-dir", default="gpu_bench")
    parser.add_argument("--only", default="", help="comma-separated row keys: "
                        "train,ckpt,bert,inference,generation,build")  # fmt: skip
    args = parser.parse_args()
    if args.tiny:
        setting = Setting("cpu", torch.float32, 2, 3, 64, "eager", 512, 3)
    else:
        if not torch.cuda.is_available():
            raise SystemExit("gpu_bench.py needs a CUDA device (or --tiny to check it on the CPU).")
        setting = Setting("cuda", torch.bfloat16, None, args.gen_layers, 1, "inductor", None, 16)
    start = time.perf_counter()
    peak = matmul_peak_flops(torch.device(setting.device), setting.dtype, size=256 if args.tiny else 8192)
    print(f"matmul peak {peak / 1e12:.3f} TFLOP/s ({setting.dtype}, {setting.device})", flush=True)
    steps = [
        ("train", lambda: train_rows("gpt-1k train 2x1024", "gpt-1k", 2, 1024, setting, peak,
                                     works=(EQUAL_WORK, SHORTCUTS))),
        ("ckpt", lambda: train_rows("gpt-1k train, activation checkpointing, 16x1024",
                                                         "gpt-1k", 16, 1024, setting, peak, checkpointing=True)),
        ("bert", lambda: train_rows("bert-1k train 32x512", "bert-1k", 32, 512, setting, peak)),
        ("inference", lambda: inference_rows("gpt-1k inference 8x1024", setting, peak)),
        ("generation", lambda: generation_rows(setting)),
        ("build", lambda: build_rows(setting)),
    ]  # fmt: skip
    rows, skipped = [], []
    only = {key.strip() for key in args.only.split(",") if key.strip()}
    for name, step in steps:
        if only and name not in only:
            continue
        if time.perf_counter() - start > args.budget_s:
            skipped.append(name)
            continue
        print(f"{name} ...", flush=True)
        rows += step()
        torch.cuda.empty_cache() if torch.cuda.is_available() else None
    add_ratios(rows)
    print(format_table(rows))
    facts = {"device": torch.cuda.get_device_name() if setting.device == "cuda" else "cpu (--tiny)",
             "cpus": __import__("os").cpu_count(), "threads": torch.get_num_threads(), "torch": torch.__version__,
             "transformers": __import__("transformers").__version__, "dtype": str(setting.dtype),
             "matmul_peak_gflops": peak / 1e9}  # fmt: skip
    for path in write_reports(rows, facts, args.output_dir):
        print(f"wrote {path}")
    (__import__("pathlib").Path(args.output_dir) / "gpu_bench.md").write_text(
        (__import__("pathlib").Path(args.output_dir) / "bench.md").read_text()
        + (f"\nSkipped (time budget): {', '.join(skipped)}\n" if skipped else "")
    )
    print(f"total {time.perf_counter() - start:.0f} s" + (f"; skipped: {', '.join(skipped)}" if skipped else ""))


if __name__ == "__main__":
    main()
