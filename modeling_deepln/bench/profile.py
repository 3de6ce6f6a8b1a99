"""``deepln bench --profile``: where one training step's time goes, per layer, in four classes a newcomer can read.

torch.profiler records every ATen op of one step (after a warm-up). Each op's *self* time (its time minus that
of the ops it calls, so nothing is counted twice) goes to one class:

* **matmul**: the projections, the FFN and the LM head, forward and backward (``addmm``, ``mm``, ``bmm``, ...);
* **attention**: the attention kernel itself (SDPA / flash, or the eager softmax);
* **optimizer**: everything run inside ``optimizer.step()`` (torch marks it ``Optimizer.step#AdamW.step``);
* **elementwise**: all other ATen ops (LayerNorm, residual adds, activations, dropout, copies, zero-fills, the
  loss's log-softmax, embedding lookups);
* **Python / dispatch**: the step's wall time not inside any ATen op (module calls, autograd bookkeeping).

Per-layer numbers are the step's time of a class divided by the number of layers (the LM head and embeddings
are spread over the layers too; at 48+ layers they are a small share).
"""

from __future__ import annotations

import statistics
from typing import Any

import torch
from torch import nn

__all__ = ["CLASSES", "op_class", "class_times", "profile_by_class", "format_profile"]

CLASSES = ("matmul", "attention", "elementwise", "optimizer", "Python / dispatch")

MATMUL_OPS = frozenset({"addmm", "mm", "bmm", "baddbmm", "addbmm", "matmul", "mv", "addmv", "dot", "linear",
                        "_addmm_activation", "mkldnn_linear", "_mkl_linear", "cudnn_convolution"})  # fmt: skip
ATTENTION_PREFIXES = ("_scaled_dot_product", "scaled_dot_product", "_flash_attention", "_efficient_attention",
                      "_softmax", "softmax", "flash_attn", "flex_attention")  # fmt: skip
OPTIMIZER_MARK = "Optimizer.step"
WALL_STEPS = 3
"""Unprofiled steps whose median wall time the ops' time is subtracted from (one step alone can be an outlier: on a
shared 2-core machine one 100-layer step took 1.40 s against a 0.97 s median, and the row read 49 % instead of ~7 %)."""


def op_class(name: str, in_optimizer: bool = False) -> str | None:
    """The class of a profiler event named ``name`` (``aten::addmm``, ...): ``None`` for events that are not ATen
    ops (Python, autograd and ``record_function`` ranges, whose self time is framework overhead)."""
    if in_optimizer and name.startswith("aten::"):
        return "optimizer"
    if not name.startswith("aten::"):
        return None
    op = name[len("aten::") :]
    if op in MATMUL_OPS:
        return "matmul"
    if op.startswith(ATTENTION_PREFIXES):  # forward and backward kernels
        return "attention"
    return "elementwise"


def _inside(event: Any, mark: str) -> bool:
    parent = event.cpu_parent
    while parent is not None:
        if parent.name.startswith(mark):
            return True
        parent = parent.cpu_parent
    return False


def class_times(events: Any, wall_seconds: float) -> dict[str, float]:
    """Seconds per class from torch.profiler's ``prof.events()`` (self CPU time, or self device time for CUDA
    kernels when present) and the step's wall time; "Python / dispatch" is the wall time left over."""
    totals = dict.fromkeys(CLASSES, 0.0)
    for event in events:
        kind = op_class(event.name, _inside(event, OPTIMIZER_MARK))
        if kind is None:
            continue
        device_us = getattr(event, "self_device_time_total", 0) or 0
        totals[kind] += (device_us or event.self_cpu_time_total) / 1e6
    totals["Python / dispatch"] = max(wall_seconds - sum(totals.values()), 0.0)
    return totals


def format_profile(totals: dict[str, float], layers: int) -> str:
    """A table: class, ms per step, ms per layer, share of the step."""
    step = sum(totals.values()) or 1.0
    lines = [f"{'class':<18} {'ms / step':>10} {'ms / layer':>11} {'share':>7}", "-" * 49]
    for kind in CLASSES:
        seconds = totals[kind]
        lines.append(f"{kind:<18} {1e3 * seconds:>10.1f} {1e3 * seconds / layers:>11.3f} {100 * seconds / step:>6.1f}%")
    lines.append(f"{'total':<18} {1e3 * step:>10.1f} {1e3 * step / layers:>11.3f} {100.0:>6.1f}%")
    return "\n".join(lines)


def profile_by_class(
    model: nn.Module, batch: dict[str, torch.Tensor], device: torch.device, dtype: torch.dtype, layers: int
) -> str:
    """Profile one training step (forward, backward, AdamW with its state already created) of ``model`` after a
    warm-up step; return :func:`format_profile`'s table. "Python / dispatch" is the wall time of an unprofiled step
    minus the profiled ops' time (the median of :data:`WALL_STEPS` unprofiled steps; the profiler slows the ops a
    little, so that row is a lower bound)."""
    from torch.profiler import ProfilerActivity, profile

    from .measure import autocast, one_step_seconds, synchronize, training_optimizer

    model.train()
    optimizer = training_optimizer(model)

    def step() -> None:
        with autocast(device, dtype):
            loss = model(**batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        synchronize(device)

    step()
    wall = statistics.median(one_step_seconds(step, device) for _ in range(WALL_STEPS))  # no profiler bookkeeping
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        step()
    return format_profile(class_times(prof.events(), wall), layers)
