"""What ``deepln bench`` measures: build time and memory, training / inference / generation throughput, the
machine's matmul peak, and the FLOPs a step does.

FLOPs follow the usual MFU convention (Kaplan et al. 2020; PaLM, Chowdhery et al. 2022, App. B): a forward pass
costs ``2·N_mm`` per token for the ``N_mm`` weights used in matrix multiplications (layers and LM head; not the
embedding lookups) plus ``4·L·T·d`` per token for attention scores and values (``T`` the sequence length, counted
in full even for causal masks); a training step (forward + backward) costs 3x the forward. Achieved FLOP/s are
divided by the peak of a large square matmul measured in the same process, so the fraction is relative to this
machine at this moment (a shared machine included).
"""

from __future__ import annotations

import gc
import os
import statistics
import threading
import time
from contextlib import contextmanager, nullcontext
from typing import Any, Callable, Iterator

import torch
from torch import nn

__all__ = [
    "matmul_peak_flops",
    "memory_bandwidth",
    "decode_bytes_per_token",
    "forward_flops_per_token",
    "PeakMemory",
    "timed_build",
    "interleaved_median_seconds",
    "training_optimizer",
    "train_step",
    "inference_step",
    "generation_step",
    "train_step_seconds",
    "inference_seconds",
    "generation_tokens_per_second",
]


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _best_rate(run: Callable[[], None], work: float, device: torch.device, seconds: float) -> float:
    """``work`` / seconds of the fastest call of ``run`` within a ~``seconds`` loop, after one warm-up call."""
    run()
    synchronize(device)
    best, deadline = 0.0, time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        start = time.perf_counter()
        run()
        synchronize(device)
        best = max(best, work / (time.perf_counter() - start))
    return best


def matmul_peak_flops(device: torch.device, dtype: torch.dtype, size: int = 1024, seconds: float = 1.0) -> float:
    """FLOP/s of repeated ``size x size`` matmuls (``2·size³`` FLOPs each), the best of a ~``seconds`` run."""
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)

    def four_matmuls() -> None:
        for _ in range(4):
            torch.mm(a, b)

    return _best_rate(four_matmuls, 4 * 2 * size**3, device, seconds)


def memory_bandwidth(device: torch.device, mib: int = 256, seconds: float = 1.0) -> float:
    """Bytes/s of copying a ``mib``-MiB float32 tensor into another (read + write counted: ``2·bytes`` per copy),
    the best of a ~``seconds`` run: the bandwidth a memory-bound kernel can reach on this machine and thread count."""
    source = torch.ones(mib * 2**18, device=device)
    target = torch.empty_like(source)
    return _best_rate(lambda: target.copy_(source), 2 * source.numel() * source.element_size(), device, seconds)


def decode_bytes_per_token(model: nn.Module) -> int:
    """Bytes a batch-1 decode step must read at least: every weight once (tied weights once), except an input
    embedding table that is not also the LM head (a decode step reads one of its rows). The KV cache and the
    position table (under 1 % at the bench's shapes) are left out, so this is a lower bound."""
    unique = {id(p): p for p in model.parameters()}
    skipped = set()
    inputs, outputs = model.get_input_embeddings(), model.get_output_embeddings()
    if outputs is None or inputs.weight is not outputs.weight:
        skipped.add(id(inputs.weight))
    return sum(p.numel() * p.element_size() for key, p in unique.items() if key not in skipped)


def forward_flops_per_token(config: Any, seq_len: int) -> float:
    """Forward FLOPs per token of a deepln-shaped model (same for its transformers peer): ``2·N_mm + 4·L·T·d``.

    ``N_mm`` = per layer ``4d²`` (Q, K, V, out) + ``2·d·d_ff`` (FFN), plus the LM head ``d·V`` and the BERT-style
    head transform ``d²`` when the model has one.
    """
    d, ff, layers, vocab = config.hidden_size, config.intermediate_size, config.num_hidden_layers, config.vocab_size
    head = d * vocab + (d * d if config.model_type == "deepln_bert" or getattr(config, "lm_head_transform", 0) else 0)
    matmul_weights = layers * (4 * d * d + 2 * d * ff) + head
    return 2.0 * matmul_weights + 4.0 * layers * seq_len * d


def _rss_bytes() -> int:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:  # not Linux: no sampler
        return 0


class PeakMemory:
    """Peak memory growth during a ``with`` block: CUDA's allocator peak on a GPU, else the process's resident set
    sampled every 2 ms by a thread (Linux ``/proc/self/statm``), minus its value at entry. ``peak`` in bytes."""

    def __init__(self, device: torch.device):
        self.device, self.peak, self._stop = device, 0, threading.Event()

    def __enter__(self) -> "PeakMemory":
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(self.device)
            self._base = torch.cuda.memory_allocated(self.device)
        else:
            self._base = _rss_bytes()
            self._high = self._base
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(0.002):
            self._high = max(self._high, _rss_bytes())

    def __exit__(self, *exc: Any) -> None:
        if self.device.type == "cuda":
            self.peak = torch.cuda.max_memory_allocated(self.device) - self._base
        else:
            self._stop.set()
            self._thread.join()
            self.peak = max(self._high, _rss_bytes()) - self._base


def timed_build(build: Callable[[], nn.Module], device: torch.device) -> tuple[nn.Module, float, int]:
    """Build a model (construct + init) directly on ``device``; return it, the seconds and the peak memory."""
    with PeakMemory(device) as memory:
        start = time.perf_counter()
        with torch.device(device) if device.type != "cpu" else nullcontext():
            model = build()
        synchronize(device)
        seconds = time.perf_counter() - start
    return model, seconds, memory.peak


def one_step_seconds(step: Callable[[], None], device: torch.device) -> float:
    """Wall seconds of one call of ``step`` (the device synchronised after it)."""
    start = time.perf_counter()
    step()
    synchronize(device)
    return time.perf_counter() - start


@contextmanager
def compile_cache_in(folder: str) -> Iterator[str]:
    """Inside the block, ``torch.compile`` writes and reads its on-disk caches (inductor's compiled kernels and
    graphs, AOTAutograd's) in ``folder`` (``TORCHINDUCTOR_CACHE_DIR``), and inductor's in-memory caches of compiled
    code (what ``torch._inductor.utils.fresh_cache`` clears) start empty, so nothing compiled earlier in the process
    is reused: a compile there pays what a new process with that folder pays."""
    from torch._inductor import utils as inductor_utils

    getattr(inductor_utils, "clear_caches", lambda: None)()  # torch >= 2.5: the registered in-memory code caches
    previous = os.environ.get("TORCHINDUCTOR_CACHE_DIR")
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = folder
    try:
        yield folder
    finally:
        if previous is None:
            os.environ.pop("TORCHINDUCTOR_CACHE_DIR", None)
        else:
            os.environ["TORCHINDUCTOR_CACHE_DIR"] = previous


@contextmanager
def fresh_compile_cache() -> Iterator[str]:
    """:func:`compile_cache_in` a new, empty folder, removed afterwards: a first compile there is what a machine
    that never compiled the model pays (a *cold* compile), whatever earlier runs left in the default folder."""
    import shutil
    import tempfile

    folder = tempfile.mkdtemp(prefix="deepln-bench-inductor-")
    try:
        with compile_cache_in(folder):
            yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


@contextmanager
def autocast(device: torch.device, dtype: torch.dtype) -> Iterator[None]:
    """Mixed precision for low-precision dtypes (fp32 master weights, as Trainer's ``bf16=True`` does)."""
    if dtype == torch.float32:
        yield
    else:
        with torch.autocast(device.type, dtype=dtype):
            yield


def _median_seconds(step: Callable[[], None], device: torch.device, steps: int, warmup: int = 1) -> float:
    return interleaved_median_seconds({"step": step}, device, steps, warmup)["step"]


def interleaved_median_seconds(
    steps: dict[str, Callable[[], None]], device: torch.device, rounds: int, warmup: int = 1
) -> dict[str, float]:
    """Median seconds of each named step over ``rounds`` rounds, each round running every step once in turn (after
    ``warmup`` untimed rounds). A machine whose speed drifts while the benchmark runs (a shared or virtual one:
    the same step took 3.97 and 4.85 s in two runs minutes apart) then slows every contestant alike, and their
    ratios stay meaningful."""
    for _ in range(warmup):
        for step in steps.values():
            step()
    synchronize(device)
    times: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(rounds):
        for name, step in steps.items():
            times[name].append(one_step_seconds(step, device))
    return {name: statistics.median(values) if values else 0.0 for name, values in times.items()}


def training_optimizer(model: nn.Module) -> torch.optim.Optimizer:
    """The optimizer every contestant trains with: torch's fused AdamW, which ``Trainer`` builds by default
    (``optim="adamw_torch_fused"``, transformers >= 5 with torch >= 2.8) and ``deepln pretrain`` runs. torch's own
    default on a CPU is the per-tensor loop, ~3x slower at bert-1k's 16,000 tensors (537 against 171 ms a step,
    ``scripts/ab_optimizer.py``), a cost no Trainer user pays."""
    return torch.optim.AdamW(model.parameters(), lr=1e-5, fused=True)


def train_step(
    model: nn.Module, batch: dict[str, torch.Tensor], device: torch.device, dtype: torch.dtype
) -> Callable[[], None]:
    """One training step per call: forward with labels, backward, :func:`training_optimizer`'s step (the optimizer
    and its state persist across calls). Puts ``model`` in training mode."""
    model.train()
    optimizer = training_optimizer(model)

    def step() -> None:
        with autocast(device, dtype):
            loss = model(**batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def inference_step(
    model: nn.Module, batch: dict[str, torch.Tensor], device: torch.device, dtype: torch.dtype
) -> Callable[[], None]:
    """One inference forward per call (eval mode, no grad, no KV cache) over ``batch["input_ids"]``. Puts ``model``
    in eval mode."""
    model.eval()
    inputs = {"input_ids": batch["input_ids"]}

    def step() -> None:
        with torch.inference_mode(), autocast(device, dtype):
            model(**inputs, **({"use_cache": False} if hasattr(model, "generate") else {}))

    return step


def generation_step(
    model: nn.Module, prompt: torch.Tensor, new_tokens: int, device: torch.device, dtype: torch.dtype, **generate: Any
) -> tuple[Callable[[], None], list[torch.Tensor]]:
    """One greedy ``generate`` of exactly ``new_tokens`` tokens with the KV cache per call, and the list that holds
    the last call's ids (to compare fast paths). Puts ``model`` in eval mode."""
    model.eval()
    options = dict(
        max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False, use_cache=True,
        pad_token_id=model.config.eos_token_id, **generate,
    )  # fmt: skip
    output: list[torch.Tensor] = []

    def step() -> None:
        with torch.inference_mode(), autocast(device, dtype):
            output[:] = [model.generate(prompt, attention_mask=torch.ones_like(prompt), **options)]

    return step, output


def train_step_seconds(
    model: nn.Module, batch: dict[str, torch.Tensor], device: torch.device, dtype: torch.dtype, steps: int
) -> float:
    """Median seconds of one :func:`train_step` over ``steps`` steps after a warm-up."""
    return _median_seconds(train_step(model, batch, device, dtype), device, steps)


def inference_seconds(
    model: nn.Module, batch: dict[str, torch.Tensor], device: torch.device, dtype: torch.dtype, steps: int
) -> float:
    """Median seconds of one :func:`inference_step` over ``steps`` forwards after a warm-up."""
    return _median_seconds(inference_step(model, batch, device, dtype), device, steps)


def generation_tokens_per_second(
    model: nn.Module, prompt: torch.Tensor, new_tokens: int, device: torch.device, dtype: torch.dtype, **generate: Any
) -> tuple[float, torch.Tensor]:
    """Greedy ``generate`` (:func:`generation_step`) at batch ``prompt.shape[0]``: new tokens per second (median of
    five timed runs after a warm-up; a run of 32 tokens takes about a second on a CPU) and the generated ids."""
    step, output = generation_step(model, prompt, new_tokens, device, dtype, **generate)
    seconds = _median_seconds(step, device, steps=5)
    return prompt.shape[0] * new_tokens / seconds, output[0]
