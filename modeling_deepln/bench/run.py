"""One ``deepln bench`` run: the cases, each measured for every contestant in the same process.

Cases (``BenchOptions.cases``):

* ``build``: build time and peak memory of the seed presets (bert-1k, gpt-1k) at full depth, against the peers.
* ``bert``: bert-1k training and inference throughput (batch x seq tokens, 15 % of positions masked).
* ``gpt``: the GPT shape at ``slice_layers`` layers: training, inference and greedy generation with the KV cache
  (deepln also with ``cache_implementation="static"``).
* ``gpt1k``: one gpt-1k training step with activation checkpointing (deepln only: minutes on a CPU).

The contestants of a case are built side by side (so the case's peak memory is their sum) and their steps
interleaved: each round runs every contestant's training step (then inference forward, then generation) once in
turn, and a value is the median over rounds, so a machine whose speed drifts during the run slows them alike.

Each row holds the contestant's value, the kind of work it does (equal work, deepln-only shortcuts, own scheme)
and its ratio to the peer it names (``Row.peer``: ``GPT2LMHeadModel``, ``BertForMaskedLM`` or, under
``--compile``, the compiled peer), measured in the same run.
"""

from __future__ import annotations

import gc
from contextlib import ExitStack, nullcontext
from dataclasses import dataclass, field
from tempfile import TemporaryDirectory
from typing import Any, Callable

import torch

from ..presets import load_preset
from .measure import (
    compile_cache_in,
    decode_bytes_per_token,
    forward_flops_per_token,
    fresh_compile_cache,
    generation_step,
    inference_step,
    interleaved_median_seconds,
    matmul_peak_flops,
    memory_bandwidth,
    one_step_seconds,
    synchronize,
    timed_build,
    train_step,
    train_step_seconds,
)
from .models import EQUAL_WORK, OWN_SCHEME, PEER, SHORTCUTS, Contestant, contestants_for
from .profile import profile_by_class

__all__ = ["BenchOptions", "Row", "run_bench", "CASES"]

CASES = ("build", "bert", "gpt", "gpt1k")
PEAK_SIZE = {"cpu": 2048, "cuda": 8192}
"""Side of the square matmul whose speed is the machine's peak (large enough for the BLAS to reach its best)."""


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
    """One measurement: ``value`` (``unit``) of ``contestant`` on ``case``/``metric``; ``work`` = equal work,
    deepln shortcuts, own scheme or peer; ``ratio`` = how many times better than the named ``peer``'s row of the
    same case and metric (speed: value/peer; time and memory: peer/value); ``of_peak`` = achieved FLOP/s /
    measured matmul peak; ``of_bandwidth`` (generation) = the bytes a decode step must read x steps/s / measured
    copy bandwidth: near 1, a model is memory-bound and only reading fewer bytes makes it faster."""

    case: str
    metric: str
    contestant: str
    value: float
    unit: str
    work: str = PEER
    peer: str | None = None
    ratio: float | None = None
    of_peak: float | None = None
    of_bandwidth: float | None = None
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


def add_ratios(rows: list[Row]) -> None:
    """Set each row's ``ratio`` against the row of its named ``peer`` (same case and metric); rows whose peer was
    not measured keep ``None``. Higher is better for speeds, lower for seconds and memory."""
    values = {(r.case, r.metric, r.contestant): r.value for r in rows}
    for row in rows:
        peer = values.get((row.case, row.metric, row.peer)) if row.peer else None
        if peer and row.value:
            row.ratio = peer / row.value if row.unit in ("s", "x") else row.value / peer


def _build_in_fresh_process(preset: str, contestant_name: str, options_dict: dict[str, Any]) -> tuple[float, int, int]:
    """Build one contestant (runs in a spawned process, so memory freed by earlier builds cannot hide its peak);
    return seconds, peak memory growth and the weights' bytes."""
    torch.set_num_threads(options_dict.pop("threads"))
    options = BenchOptions(**options_dict, log=lambda _: None)
    config = _config(preset, options, options.full_layers)
    contestant = next(c for c in _build_contestants(config) if c.name == contestant_name)
    model, seconds, peak = timed_build(contestant.build, options.torch_device)
    weights = sum(p.numel() * p.element_size() for p in {id(p): p for p in model.parameters()}.values())
    return seconds, peak, weights


def _build_contestants(config: Any) -> list[Contestant]:
    """The preset as shipped (its own scheme; the head shortcuts do not change a build) and its peer."""
    contestants = contestants_for(config, torchscale=False)
    own = next(c for c in contestants if c.work in (OWN_SCHEME, SHORTCUTS) and config.residual_norm in c.name)
    peer = next(c for c in contestants if c.work == PEER)
    return [Contestant(f"deepln {config.residual_norm}", own.build, True, False, OWN_SCHEME, peer.name), peer]


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
            for contestant in _build_contestants(config):
                seconds, peak, weights = pool.apply(_build_in_fresh_process, (preset, contestant.name, dict(fields)))
                options.log(f"  built {contestant.name} ({case}): {seconds:.2f} s, peak {peak / 2**20:,.0f} MiB "
                            f"for {weights / 2**20:,.0f} MiB of weights")  # fmt: skip
                labels = {"work": contestant.work, "peer": contestant.peer}
                rows.append(Row(case, "build s", contestant.name, seconds, "s", **labels))
                rows.append(Row(case, "build peak / weights", contestant.name, peak / weights, "x", **labels,
                                extra={"weights_MiB": weights / 2**20}))  # fmt: skip
    add_ratios(rows)
    return rows


GENERATION_ROUNDS = 5
"""Timed generations per contestant (a 32-token greedy ``generate`` takes about a second on a CPU)."""


COLD_COMPILE = "compile s, cold cache (first step - steady step)"
WARM_COMPILE = "compile s, warm cache (the same after torch._dynamo.reset())"
"""The compile-time rows (:func:`_compile_seconds`): each compiled contestant has a cache folder of its own, empty
at first; its first step compiles with nothing cached (a cold compile: no graph or kernel of another contestant,
on disk or in memory), a step after ``torch._dynamo.reset()`` with its folder filled by the first is what a later
process pays (a warm compile: inductor's and AOTAutograd's cached graphs and kernels; dynamo still traces)."""


def _compile_seconds(
    steps: dict[str, Callable[[], None]], cache: dict[str, str], device: torch.device, first: bool = False
) -> dict[str, float]:
    """One step of each compiled contestant after ``torch._dynamo.reset()``, with its own cache folder and
    inductor's in-memory caches emptied (:func:`compile_cache_in`): that step compiles, cold or warm as the folder
    is. A ``first`` step is preceded by an untimed eager one (``torch.compiler.set_stance("force_eager")``): a
    model's first step is slow without any compiler (a bert-1k step: 13.1 s, then 6.3 s: its activations,
    gradients and optimizer state are allocated and page-faulted in), and that is no compile time."""
    seconds = {}
    for name, folder in cache.items():
        if first:
            with torch.compiler.set_stance("force_eager"):
                steps[name]()
        torch._dynamo.reset()
        with compile_cache_in(folder):
            seconds[name] = one_step_seconds(steps[name], device)
    return seconds


def _throughput_rows(
    case: str, contestants: list[Contestant], models: dict[str, Any], config: Any, batch: dict[str, torch.Tensor],
    options: BenchOptions, peak: float,
) -> list[Row]:  # fmt: skip
    """Training throughput of every contestant and inference throughput of those that do not only add a training
    shortcut, the contestants' steps interleaved (:func:`interleaved_median_seconds`); for a compiled contestant
    also the compile time (its first step minus a steady one)."""
    tokens = batch["input_ids"].numel()
    flops = forward_flops_per_token(config, options.seq_len) * tokens
    device, dtype = options.torch_device, options.torch_dtype
    steps = {c.name: train_step(models[c.name], batch, device, dtype) for c in contestants}
    compiled = [c.name for c in contestants if "compile" in c.name]
    with ExitStack() as folders:  # each compiled contestant's own cache folder: its cold, then its warm compile
        cache = {name: folders.enter_context(TemporaryDirectory(prefix="deepln-bench-inductor-")) for name in compiled}
        if compiled:  # the compiler's one-time start-up (imports, toolchain, precompiled headers): no one's compile
            torch.compile(torch.sin)(torch.zeros(8, device=device))
        first = _compile_seconds(steps, cache, device, first=True)  # cold: nothing of another contestant
        with fresh_compile_cache() if compiled else nullcontext():  # the warm-up round recompiles what reset dropped
            train = interleaved_median_seconds(steps, device, options.steps)
        again = _compile_seconds(steps, cache, device)  # warm: what a later process on the machine pays
    del steps
    inferring = [c for c in contestants if c.work != SHORTCUTS]  # a shortcut changes the training loss only
    infer = interleaved_median_seconds(
        {c.name: inference_step(models[c.name], batch, device, dtype) for c in inferring}, device, options.steps
    )
    rows = []
    for contestant in contestants:
        name, labels = contestant.name, {"work": contestant.work, "peer": contestant.peer}
        rows.append(Row(case, "train tok/s", name, tokens / train[name], "tok/s", **labels,
                        of_peak=3 * flops / train[name] / peak))  # fmt: skip
        if name in first:
            for metric, seconds in ((COLD_COMPILE, first[name]), (WARM_COMPILE, again[name])):
                rows.append(Row(case, metric, name, max(seconds - train[name], 0.0), "s", **labels))
        if name in infer:
            rows.append(Row(case, "inference tok/s", name, tokens / infer[name], "tok/s", **labels,
                            of_peak=flops / infer[name] / peak))  # fmt: skip
        inference = f", inference {infer[name]:.3f} s/batch" if name in infer else ""
        options.log(f"  {name} ({case}): train {train[name]:.3f} s/step{inference}")
    return rows


def _generation_rows(
    case: str, contestants: list[Contestant], models: dict[str, Any], config: Any, options: BenchOptions,
    bandwidth: float,
) -> list[Row]:  # fmt: skip
    """Greedy generation at batch 1 of every contestant (deepln also with the static cache), the generations
    interleaved, median of :data:`GENERATION_ROUNDS`."""
    prompt = torch.randint(0, config.vocab_size, (1, options.prompt_len), generator=torch.Generator().manual_seed(1))
    prompt = prompt.to(options.device)
    steps, outputs, runs = {}, {}, {}
    for contestant in contestants:
        for implementation in ["dynamic", "static"] if contestant.is_deepln else ["dynamic"]:
            extra = {} if implementation == "dynamic" else {"cache_implementation": "static"}
            label = contestant.name + ("" if implementation == "dynamic" else " static cache")
            steps[label], outputs[label] = generation_step(
                models[contestant.name], prompt, options.new_tokens, options.torch_device, options.torch_dtype,
                **extra,
            )  # fmt: skip
            runs[label] = contestant
    seconds = interleaved_median_seconds(steps, options.torch_device, GENERATION_ROUNDS)
    rows = []
    for label, contestant in runs.items():
        speed = options.new_tokens / seconds[label]
        weight_bytes = decode_bytes_per_token(models[contestant.name])
        of_bandwidth = weight_bytes * speed / bandwidth
        rows.append(Row(case, "greedy generate tok/s (batch 1)", label, speed, "tok/s", contestant.work,
                        contestant.peer, of_bandwidth=of_bandwidth,
                        extra={"tokens": outputs[label][0][0, options.prompt_len:].tolist()}))  # fmt: skip
        options.log(f"  {label} ({case}): generation {speed:.1f} tok/s ({100 * of_bandwidth:.0f} % of the copy "
                    f"bandwidth for its {weight_bytes / 2**20:,.0f} MiB of weights per token)")
    return rows


REGIONAL_PEER_LAYERS = 100
"""Above this depth the peer is compiled with Accelerate's ``compile_regions`` (one block, reused), as a whole-model
``torch.compile`` of a 1,000-layer peer takes many minutes."""


def _compiled(contestant: Contestant, layers: int) -> Contestant:
    """The contestant under ``torch.compile``, named for what was compiled. deepln as users call it
    (``torch.compile(model)``, which compiles one block and reuses it for every layer); the transformers peer as
    a user tries first, ``torch.compile(model)``, or regionally above :data:`REGIONAL_PEER_LAYERS` layers. A
    compiled deepln row's peer is the compiled peer."""
    regional = not contestant.is_deepln and layers > REGIONAL_PEER_LAYERS

    def build() -> Any:
        model = contestant.build()
        if regional:
            from accelerate.utils import compile_regions

            return compile_regions(model)
        return torch.compile(model)

    name = contestant.name + (" compile_regions" if regional else " torch.compile")
    peer = None if contestant.peer is None else _compiled_peer_name(contestant.peer, layers)
    return Contestant(name, build, contestant.is_deepln, False, contestant.work, peer)


def _compiled_peer_name(peer: str, layers: int) -> str:
    return peer + (" compile_regions" if layers > REGIONAL_PEER_LAYERS else " torch.compile")


def bench_shape(
    preset: str, layers: int | None, options: BenchOptions, peak: float, bandwidth: float | None = None
) -> list[Row]:
    """Training, inference (and, given the machine's copy ``bandwidth``, greedy generation) throughput of every
    contestant of ``preset`` at ``layers``."""
    config = _config(preset, options, layers)
    depth = config.num_hidden_layers
    case = f"{preset.split('-')[0]} shape, {depth} layers, {options.batch_size}x{options.seq_len}"
    batch = _batch(config, options, torch.Generator().manual_seed(0))
    contestants = contestants_for(config, seed_scheme=options.seed_schemes)
    if options.compile:
        compiled = [c for c in contestants if c.work in (EQUAL_WORK, SHORTCUTS, PEER) and "torchscale" not in c.name]
        contestants += [_compiled(c, depth) for c in compiled]
    _free()
    models = {}
    for contestant in contestants:  # all built first: their steps are interleaved
        torch.manual_seed(0)
        models[contestant.name] = contestant.build().to(options.device)
        if options.profile and contestant.work in (EQUAL_WORK, PEER) and "compile" not in contestant.name:
            table = profile_by_class(models[contestant.name], batch, options.torch_device, options.torch_dtype, depth)
            options.log(f"profile of one training step, {contestant.name} ({case}):\n{table}")
    rows = _throughput_rows(case, contestants, models, config, batch, options, peak)
    generating = [c for c in contestants if c.can_generate and c.work in (EQUAL_WORK, OWN_SCHEME, PEER)]
    if bandwidth and generating:
        rows += _generation_rows(case, generating, models, config, options, bandwidth)
    del models
    _free()
    add_ratios(rows)
    return rows


def bench_gpt1k_checkpointed(options: BenchOptions, peak: float) -> list[Row]:
    """One training step of gpt-1k (its own scheme) with activation checkpointing: seconds per step."""
    config = _config("gpt-1k", options, options.full_layers)
    case = f"gpt-1k ({config.num_hidden_layers} layers), activation checkpointing, {options.batch_size}x{options.seq_len}"
    batch = _batch(config, options, torch.Generator().manual_seed(0))
    _free()
    own = next(c for c in contestants_for(config, seed_scheme=True, torchscale=False) if c.work == OWN_SCHEME)
    model = own.build().to(options.device)
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    seconds = train_step_seconds(model, batch, options.torch_device, options.torch_dtype, steps=1)
    tokens = batch["input_ids"].numel()
    flops = 3 * forward_flops_per_token(config, options.seq_len) * tokens
    options.log(f"  {own.name} ({case}): {seconds:.1f} s/step")
    return [
        Row(case, "train s/step", own.name, seconds, "s", OWN_SCHEME, of_peak=flops / seconds / peak),
        Row(case, "train tok/s", own.name, tokens / seconds, "tok/s", OWN_SCHEME),
    ]


def run_bench(options: BenchOptions) -> tuple[list[Row], dict[str, Any]]:
    """Run the selected cases; return the rows and the run's facts (machine, versions, matmul peak)."""
    import platform

    import transformers

    peak = matmul_peak_flops(options.torch_device, options.torch_dtype, size=256 if options.quick else PEAK_SIZE[options.torch_device.type])
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
        rows += bench_shape("bert-1k", options.full_layers, options, peak)
    if "gpt" in options.cases:
        options.log("gpt shape ...")
        bandwidth = memory_bandwidth(options.torch_device, mib=16 if options.quick else 256)
        facts["memory_bandwidth_gbs"] = bandwidth / 1e9
        options.log(f"copy bandwidth {bandwidth / 1e9:,.1f} GB/s (read + write)")
        rows += bench_shape("gpt-1k", options.slice_layers, options, peak, bandwidth)
    if "gpt1k" in options.cases:
        options.log("gpt-1k checkpointed step ...")
        rows += bench_gpt1k_checkpointed(options, peak)
    return rows, facts
