"""One ``deepln bench`` run: the cases, each measured for every contestant in the same process.

Cases (``BenchOptions.cases``):

* ``build``: build time and peak memory of the seed presets (bert-1k, gpt-1k) at full depth, against the peers.
* ``bert``: bert-1k training and inference throughput (batch x seq tokens, 15 % of positions masked).
* ``gpt``: the GPT shape at ``slice_layers`` layers: training, inference and greedy generation with the KV cache
  (deepln also with ``cache_implementation="static"``).
* ``gpt1k``: one gpt-1k training step with activation checkpointing (deepln only: minutes on a CPU).

Each row holds the contestant's value and its ratio to the transformers peer measured in the same run.
"""

from __future__ import annotations

import gc
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from ..presets import load_preset
from .measure import (
    forward_flops_per_token,
    generation_tokens_per_second,
    inference_seconds,
    matmul_peak_flops,
    profile_train_step,
    timed_build,
    train_step_seconds,
)
from .models import Contestant, contestants_for

__all__ = ["BenchOptions", "Row", "run_bench", "CASES"]

CASES = ("build", "bert", "gpt", "gpt1k")


@dataclass
class BenchOptions:
    """Settings of one run (the ``deepln bench`` flags)."""

    device: str = "cpu"
    dtype: str = "float32"
    batch_size: int = 8
    seq_len: int = 128
    slice_layers: int = 48
    full_layers: int | None = None  # None: the presets' 1,000
    steps: int = 3
    new_tokens: int = 32
    prompt_len: int = 16
    cases: tuple[str, ...] = ("build", "bert", "gpt")
    seed_schemes: bool = True
    compile: bool = False
    profile: bool = False
    quick: bool = False
    log: Callable[[str], None] = print

    def __post_init__(self) -> None:
        if self.quick:
            self.batch_size, self.seq_len, self.slice_layers = 2, 16, 2
            self.full_layers, self.steps, self.new_tokens, self.prompt_len = 3, 1, 3, 4
        unknown = set(self.cases) - set(CASES)
        if unknown:
            raise ValueError(f"Unknown bench case(s) {sorted(unknown)}; choose from {', '.join(CASES)}.")

    @property
    def torch_device(self) -> torch.device:
        return torch.device(self.device)

    @property
    def torch_dtype(self) -> torch.dtype:
        return getattr(torch, self.dtype)


@dataclass
class Row:
    """One measurement: ``value`` (``unit``) of ``contestant`` on ``case``/``metric``; ``ratio`` = how many times
    better than the transformers peer (speed: value/peer; time and memory: peer/value); ``of_peak`` = achieved
    FLOP/s / measured matmul peak."""

    case: str
    metric: str
    contestant: str
    value: float
    unit: str
    ratio: float | None = None
    of_peak: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def _config(name: str, options: BenchOptions, layers: int | None) -> Any:
    overrides: dict[str, Any] = {"num_hidden_layers": layers} if layers else {}
    if options.quick:  # a small vocabulary too: --quick only checks that the benchmark runs
        overrides.update(vocab_size=512, bos_token_id=0, eos_token_id=0)
    return load_preset(name, **overrides)


def _batch(config: Any, options: BenchOptions, generator: torch.Generator) -> dict[str, torch.Tensor]:
    shape = (options.batch_size, options.seq_len)
    ids = torch.randint(0, config.vocab_size, shape, generator=generator)
    if config.model_type == "deepln_gpt":
        labels = ids.clone()
    else:
        labels = torch.where(torch.rand(shape, generator=generator) < 0.15, ids, torch.full_like(ids, -100))
    return {"input_ids": ids.to(options.device), "labels": labels.to(options.device)}


def _free() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _add_ratios(rows: list[Row], peer_name: str, higher_is_better: bool) -> None:
    peers = {(r.case, r.metric): r.value for r in rows if r.contestant == peer_name}
    for row in rows:
        peer = peers.get((row.case, row.metric))
        if peer and row.value and row.contestant != peer_name:
            row.ratio = row.value / peer if higher_is_better else peer / row.value


def _build_in_fresh_process(preset: str, contestant_name: str, options_dict: dict[str, Any]) -> tuple[float, int, int]:
    """Build one contestant (runs in a spawned process, so memory freed by earlier builds cannot hide its peak);
    return seconds, peak memory growth and the weights' bytes."""
    torch.set_num_threads(options_dict.pop("threads"))
    options = BenchOptions(**options_dict, log=lambda _: None)
    config = _config(preset, options, options.full_layers)
    contestant = next(c for c in contestants_for(config) if c.name == contestant_name)
    model, seconds, peak = timed_build(contestant.build, options.torch_device)
    weights = sum(p.numel() * p.element_size() for p in {id(p): p for p in model.parameters()}.values())
    return seconds, peak, weights


def bench_build(options: BenchOptions) -> list[Row]:
    """Build time and peak memory (as a multiple of the weights' bytes) of bert-1k and gpt-1k, each build in a
    fresh process."""
    import multiprocessing

    rows: list[Row] = []
    fields = {"device": options.device, "dtype": options.dtype, "full_layers": options.full_layers,
              "quick": options.quick, "threads": torch.get_num_threads()}  # fmt: skip
    with multiprocessing.get_context("spawn").Pool(1, maxtasksperchild=1) as pool:
        for preset in ("bert-1k", "gpt-1k"):
            config = _config(preset, options, options.full_layers)
            case = f"{preset} ({config.num_hidden_layers} layers)"
            for contestant in contestants_for(config)[1:]:  # the preset's own scheme, then the peers
                seconds, peak, weights = pool.apply(_build_in_fresh_process, (preset, contestant.name, dict(fields)))
                options.log(f"  built {contestant.name} ({case}): {seconds:.2f} s, peak {peak / 2**20:,.0f} MiB "
                            f"for {weights / 2**20:,.0f} MiB of weights")  # fmt: skip
                rows.append(Row(case, "build s", contestant.name, seconds, "s"))
                rows.append(Row(case, "build peak / weights", contestant.name, peak / weights, "x",
                                extra={"weights_MiB": weights / 2**20}))  # fmt: skip
    for name in {r.contestant for r in rows if not r.contestant.startswith("deepln")}:
        _add_ratios(rows, name, higher_is_better=False)
    return rows


def _throughput_rows(
    case: str, contestant: Contestant, model: Any, config: Any, batch: dict[str, torch.Tensor],
    options: BenchOptions, peak: float,
) -> list[Row]:  # fmt: skip
    tokens = batch["input_ids"].numel()
    flops = forward_flops_per_token(config, options.seq_len) * tokens
    rows = []
    train = train_step_seconds(model, batch, options.torch_device, options.torch_dtype, options.steps)
    rows.append(Row(case, "train tok/s", contestant.name, tokens / train, "tok/s", of_peak=3 * flops / train / peak))
    infer = inference_seconds(model, batch, options.torch_device, options.torch_dtype, options.steps)
    rows.append(Row(case, "inference tok/s", contestant.name, tokens / infer, "tok/s", of_peak=flops / infer / peak))
    options.log(f"  {contestant.name} ({case}): train {train:.3f} s/step, inference {infer:.3f} s/batch")
    return rows


def _generation_rows(case: str, contestant: Contestant, model: Any, config: Any, options: BenchOptions) -> list[Row]:
    prompt = torch.randint(0, config.vocab_size, (1, options.prompt_len), generator=torch.Generator().manual_seed(1))
    prompt = prompt.to(options.device)
    implementations = ["dynamic", "static"] if contestant.is_deepln else ["dynamic"]
    rows = []
    for implementation in implementations:
        extra = {} if implementation == "dynamic" else {"cache_implementation": "static"}
        speed, ids = generation_tokens_per_second(
            model, prompt, options.new_tokens, options.torch_device, options.torch_dtype, **extra
        )
        label = contestant.name + ("" if implementation == "dynamic" else " static cache")
        rows.append(Row(case, "greedy generate tok/s (batch 1)", label, speed, "tok/s",
                        extra={"tokens": ids[0, options.prompt_len:].tolist()}))  # fmt: skip
        options.log(f"  {label} ({case}): generation {speed:.1f} tok/s")
    return rows


def _compiled(contestant: Contestant) -> Contestant:
    """The contestant under ``torch.compile``: deepln as users call it (``torch.compile(model)``, which compiles
    one block and reuses it for every layer), the peer with Accelerate's regional compilation (whole-model
    compilation of a deep peer takes minutes)."""

    def build() -> Any:
        model = contestant.build()
        if contestant.is_deepln:
            return torch.compile(model)
        from accelerate.utils import compile_regions

        return compile_regions(model)

    return Contestant(contestant.name + " compiled", build, contestant.is_deepln, False)


def bench_shape(preset: str, layers: int | None, options: BenchOptions, peak: float, generate: bool) -> list[Row]:
    """Training, inference (and greedy generation) throughput of every contestant of ``preset`` at ``layers``."""
    config = _config(preset, options, layers)
    case = f"{preset.split('-')[0]} shape, {config.num_hidden_layers} layers, {options.batch_size}x{options.seq_len}"
    batch = _batch(config, options, torch.Generator().manual_seed(0))
    contestants = contestants_for(config, seed_scheme=options.seed_schemes)
    if options.compile:
        contestants += [_compiled(c) for c in contestants if c.name.startswith(("deepln pre_ln", "deepln post_ln"))]
        contestants += [_compiled(c) for c in contestants if not c.is_deepln and "torchscale" not in c.name]
    rows: list[Row] = []
    for contestant in contestants:
        _free()
        torch.manual_seed(0)
        model = contestant.build().to(options.device)
        if options.profile and "compiled" not in contestant.name:
            table = profile_train_step(model, batch, options.torch_device, options.torch_dtype)
            options.log(f"profile of one training step, {contestant.name} ({case}):\n{table}")
        rows += _throughput_rows(case, contestant, model, config, batch, options, peak)
        if generate and contestant.can_generate:
            rows += _generation_rows(case, contestant, model, config, options)
        del model
    peer = next(c.name for c in contestants if not c.is_deepln)
    _add_ratios(rows, peer, higher_is_better=True)
    return rows


def bench_gpt1k_checkpointed(options: BenchOptions, peak: float) -> list[Row]:
    """One training step of gpt-1k (its own scheme) with activation checkpointing: seconds per step."""
    config = _config("gpt-1k", options, options.full_layers)
    case = f"gpt-1k ({config.num_hidden_layers} layers), activation checkpointing, {options.batch_size}x{options.seq_len}"
    batch = _batch(config, options, torch.Generator().manual_seed(0))
    _free()
    model = contestants_for(config, seed_scheme=True)[1].build().to(options.device)
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    seconds = train_step_seconds(model, batch, options.torch_device, options.torch_dtype, steps=1)
    tokens = batch["input_ids"].numel()
    flops = 3 * forward_flops_per_token(config, options.seq_len) * tokens
    options.log(f"  deepln {config.residual_norm} ({case}): {seconds:.1f} s/step")
    return [
        Row(case, "train s/step", f"deepln {config.residual_norm}", seconds, "s", of_peak=flops / seconds / peak),
        Row(case, "train tok/s", f"deepln {config.residual_norm}", tokens / seconds, "tok/s"),
    ]


def run_bench(options: BenchOptions) -> tuple[list[Row], dict[str, Any]]:
    """Run the selected cases; return the rows and the run's facts (machine, versions, matmul peak)."""
    import platform

    import transformers

    peak = matmul_peak_flops(options.torch_device, options.torch_dtype, size=256 if options.quick else 1024)
    facts = {
        "device": torch.cuda.get_device_name() if options.device.startswith("cuda") else platform.processor() or "cpu",
        "threads": torch.get_num_threads(), "cpus": __import__("os").cpu_count(), "torch": torch.__version__,
        "transformers": transformers.__version__, "dtype": options.dtype, "matmul_peak_gflops": peak / 1e9,
    }  # fmt: skip
    options.log(f"matmul peak {peak / 1e9:,.1f} GFLOP/s ({options.dtype}, {facts['device']}, {facts['threads']} threads)")
    rows: list[Row] = []
    if "build" in options.cases:
        options.log("build ...")
        rows += bench_build(options)
    if "bert" in options.cases:
        options.log("bert shape ...")
        rows += bench_shape("bert-1k", options.full_layers, options, peak, generate=False)
    if "gpt" in options.cases:
        options.log("gpt shape ...")
        rows += bench_shape("gpt-1k", options.slice_layers, options, peak, generate=True)
    if "gpt1k" in options.cases:
        options.log("gpt-1k checkpointed step ...")
        rows += bench_gpt1k_checkpointed(options, peak)
    return rows, facts
