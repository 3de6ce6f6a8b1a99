"""Fast normal-distributed weight init for models of 1,000 layers: the draws of one ``initialize_weights`` pass are
collected, then filled on all CPU threads at once.

A gpt-1k model has ~815M weights drawn from ``N(0, σ²)``; ``Tensor.normal_`` on a CPU fills one tensor on one
thread, which was more than half of the model's build time. Here the weights are cut into chunks of
``CHUNK_ELEMENTS`` (small tensors packed together, large ones split), each chunk gets its own
``torch.Generator`` seeded from the default generator, and a thread pool fills the chunks (``normal_`` releases
the GIL). Each element is still one independent ``N(0, σ²)`` draw of torch's own sampler; the values depend only on
the default generator's state (``torch.manual_seed``) and not on the number of threads.
"""

from __future__ import annotations

import contextvars
import math
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

import torch
from transformers import initialization as init

CHUNK_ELEMENTS = 1 << 22
"""Elements per independently seeded chunk (4M: 16 MiB of float32, enough to amortise a thread hand-off)."""

_pending: contextvars.ContextVar[list[tuple[torch.Tensor, float]] | None] = contextvars.ContextVar(
    "deepln_pending_normal", default=None
)


def normal_init_(tensor: torch.Tensor, std: float) -> None:
    """``N(0, std²)`` init of ``tensor`` (skipped, as ``transformers.initialization.normal_`` does, when the tensor
    is flagged ``_is_hf_initialized``); inside :func:`deferred_normal_init` the draw is queued for the parallel
    fill."""
    if getattr(tensor, "_is_hf_initialized", False):
        return
    queue = _pending.get()
    if queue is None or tensor.device.type != "cpu" or not tensor.is_contiguous():
        init.normal_(tensor, mean=0.0, std=std)
    else:
        queue.append((tensor, std))


def xavier_normal_init_(tensor: torch.Tensor, gain: float) -> None:
    """Glorot & Bengio 2010 (``torch.nn.init.xavier_normal_``): ``N(0, σ²)`` with
    ``σ = gain · √(2 / (fan_in + fan_out))``."""
    fan_in, fan_out = torch.nn.init._calculate_fan_in_and_fan_out(tensor)
    normal_init_(tensor, gain * math.sqrt(2.0 / float(fan_in + fan_out)))


def _chunks(queue: list[tuple[torch.Tensor, float]]) -> list[list[tuple[torch.Tensor, float]]]:
    """Pack the queued ``(tensor, std)`` draws into chunks of about ``CHUNK_ELEMENTS`` elements."""
    chunks: list[list[tuple[torch.Tensor, float]]] = [[]]
    size = 0
    for tensor, std in queue:
        flat = tensor.detach().view(-1)
        for start in range(0, flat.numel(), CHUNK_ELEMENTS):
            piece = flat[start : start + CHUNK_ELEMENTS]
            chunks[-1].append((piece, std))
            size += piece.numel()
            if size >= CHUNK_ELEMENTS:
                chunks.append([])
                size = 0
    return [chunk for chunk in chunks if chunk]


def _fill(chunk: list[tuple[torch.Tensor, float]], seed: int) -> None:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for piece, std in chunk:
            piece.normal_(0.0, std, generator=generator)


@contextmanager
def deferred_normal_init() -> Iterator[None]:
    """Queue the :func:`normal_init_` draws made inside the block; on exit fill them all in parallel."""
    queue: list[tuple[torch.Tensor, float]] = []
    token = _pending.set(queue)
    try:
        yield
    finally:
        _pending.reset(token)
    chunks = _chunks(queue)
    if not chunks:
        return
    seeds = torch.randint(0, 2**62, (len(chunks),), device="cpu").tolist()
    workers = max(1, min(torch.get_num_threads(), len(chunks)))
    if workers == 1:
        for chunk, seed in zip(chunks, seeds):
            _fill(chunk, seed)
        return
    with ThreadPoolExecutor(workers) as pool:
        list(pool.map(_fill, chunks, seeds))
