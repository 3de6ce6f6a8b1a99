"""Decode-step products on a CPU: ``linear(x)`` for a few rows as one batched ``W·xᵀ`` split across the threads.

A batch-1 decode step is a chain of matrix-vector products that each read a weight once. ``F.linear`` computes them
as ``x·Wᵀ`` (the weight as the transposed right operand), and for one to four rows the CPU BLAS runs that on a
single thread along a slow path: on an AMD EPYC with MKL, 2 threads, weights read from memory (not cache),
``[1024, 256]`` takes 124 µs through ``F.linear`` at 1 row. :func:`decode_linear` computes the same products as
``W·xᵀ`` over the weight's output rows cut into one block per thread, as one ``torch.bmm`` whose batch entries run
in parallel: 42 µs (``[768, 256]``: 90 → 32 µs, ``[256, 1024]``: 75 → 40, ``[256, 256]``: 34 → 16, the
``[50257, 256]`` LM head 5.9 → 1.6 ms; at 4 rows 1.6-4.7x faster). The weights are read where they are: no copy,
nothing kept between calls, so a weight changed in any way (an optimizer step, a LoRA merge through ``.data``) is
read afresh.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.modules.module import _global_forward_hooks, _global_forward_pre_hooks

DECODE_ROWS = 4
"""Products of at most this many rows (tokens) go through :func:`decode_linear`, whatever the weight's shape."""

WIDE_DECODE_ROWS = 16
"""Products of at most this many rows go through :func:`decode_linear` where the weight has at least as many
outputs as inputs: measured (2 threads, AMD EPYC, µs, ``F.linear`` against blocked) at 8 rows the LM head ``[50256,
256]`` 8,857 against 3,520, ``[1024, 256]`` 145 against 88, but ``[256, 1024]`` 107 against 131; at 16 rows 9,506
against 7,506, 171 against 150, 129 against 117; from 32 rows on within 15 % either way, so ``F.linear`` keeps them."""

MIN_BLOCK_ROWS = 16
"""A weight is cut into at most ``out_features // MIN_BLOCK_ROWS`` blocks (a thread's share stays a real product)."""


def is_plain_linear(module: nn.Module) -> bool:
    """A bare ``nn.Linear``: no hooks of its own or global ones, no ``forward`` replaced on the instance (not a
    PEFT/LoRA layer, not watched by a monitor or a profiler, not wrapped by Accelerate's offloading hooks)."""
    return (
        type(module) is nn.Linear
        and "forward" not in module.__dict__
        and not (module._forward_hooks or module._forward_pre_hooks)
        and not (_global_forward_hooks or _global_forward_pre_hooks)
    )


def decode_linear(linear: nn.Linear, hidden_states: torch.Tensor) -> torch.Tensor | None:
    """``linear(hidden_states)`` for a few rows on a CPU (at most :data:`DECODE_ROWS`, or :data:`WIDE_DECODE_ROWS`
    for a weight with at least as many outputs as inputs), computed as ``W·xᵀ`` with ``W``'s
    output rows cut into one block per thread (at least two: even on one thread the batched form avoids the slow
    single-row path), all blocks in one ``torch.baddbmm`` (the bias added in it); ``None`` where the path does not
    apply (more rows, off the CPU, a dtype other than float32, gradients needed, under ``torch.compile``, a
    non-contiguous weight or a tensor subclass such as a quantized or distributed weight), and the caller runs
    ``linear`` itself.

    The same products as ``F.linear`` to float rounding (the sums may be taken in another order). ``linear`` must be
    a plain ``nn.Linear`` (:func:`is_plain_linear`): its hooks and adapters are not called here. Its own cost, the
    checks and views, is ~7 µs a call over an ``nn.Linear`` call (12.6 against 6.0 µs for ``[64, 32]``, 2 threads),
    repaid from ``[256, 256]`` on (16 against 34 µs)."""
    if torch.compiler.is_compiling():  # inductor makes its own kernels
        return None
    weight, bias = linear.weight, linear.bias
    out_features, in_features = weight.shape
    rows = hidden_states.numel() // in_features
    blocks = min(max(2, torch.get_num_threads()), out_features // MIN_BLOCK_ROWS)
    row_limit = WIDE_DECODE_ROWS if out_features >= in_features else DECODE_ROWS
    if not (0 < rows <= row_limit and blocks >= 2 and weight.is_cpu and hidden_states.is_cpu):
        return None
    if hidden_states.dtype != torch.float32 or weight.dtype != torch.float32 or not weight.is_contiguous():
        return None
    if torch.is_grad_enabled() and (hidden_states.requires_grad or weight.requires_grad):
        return None
    if type(weight.data) is not torch.Tensor:  # a tensor subclass multiplies in its own way
        return None
    block_rows = out_features // blocks
    split = blocks * block_rows
    columns = hidden_states.reshape(1, rows, in_features).transpose(1, 2)  # [1, in, rows]
    blocked = (weight if split == out_features else weight[:split]).view(blocks, block_rows, in_features)
    if bias is None:
        products = torch.bmm(blocked, columns.expand(blocks, in_features, rows))
    else:
        biases = (bias if split == out_features else bias[:split]).view(blocks, block_rows, 1)
        products = torch.baddbmm(biases, blocked, columns.expand(blocks, in_features, rows))
    if split < out_features:  # the rows left over (an odd vocabulary): one small product more
        rest = weight[split:] @ columns[0]
        if bias is not None:
            rest += bias[split:, None]
        products = torch.cat([products.view(split, rows), rest])
    if rows > 1:  # [out, rows] -> [rows, out]
        products = products.view(out_features, rows).t().contiguous()
    return products.view(*hidden_states.shape[:-1], out_features)


def run_linear(linear: nn.Module, hidden_states: torch.Tensor, decode_products: bool = True) -> torch.Tensor:
    """``linear(hidden_states)``, through :func:`decode_linear` where ``decode_products`` is on, ``linear`` is a
    plain ``nn.Linear`` and the path applies."""
    decoded = decode_linear(linear, hidden_states) if decode_products and is_plain_linear(linear) else None
    return linear(hidden_states) if decoded is None else decoded
