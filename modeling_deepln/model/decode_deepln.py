"""The CPU decoding path of ``generate``: matrix-vector products through transposed weight copies.

:func:`transposed_decode_weights` marks one ``generate`` call; inside it :func:`decode_linear` multiplies the
decode steps' rows (at most :data:`DECODE_ROWS`) by contiguous ``[in, out]`` copies of the weights with more
outputs than inputs, refreshed from the weights in each call once a weight has served
:data:`PLAIN_PRODUCTS_FIRST` products through ``F.linear``. The layers call
:func:`decode_linear` and fall back to their ``nn.Linear`` where it returns ``None``.
"""

from __future__ import annotations

import contextvars
import weakref
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

DECODE_ROWS = 4
"""Products of at most this many rows (tokens) are matrix-vector products for :func:`decode_linear`."""

PLAIN_PRODUCTS_FIRST = 5
"""Decode products of each weight that a ``generate`` call runs through ``F.linear`` before it refreshes the
weight's copy: a refresh costs about as much as the copy saves in five products (48 layers of width 256 on an AMD
EPYC: ~0.6 ms of transposing per layer against ~0.11 ms saved per step; the head 20 ms against 4 ms), so a call
that stops within five tokens never pays for one, and a long call gives up five tokens' saving (ski rental)."""


class _GenerateCall:
    """Marks one ``generate`` call (weakly referenced by the copies refreshed in it) and counts its decode products
    per weight owner until their copies are refreshed."""

    __slots__ = ("__weakref__", "plain_products")

    def __init__(self) -> None:
        self.plain_products: dict[int, int] = {}


class _TransposedCopy:
    """The contiguous ``[in, out]`` copy of a module's weight(s) (``None``: not served) and the ``generate`` calls
    it was refreshed in (a set: calls running side by side in threads refresh it once each, not at every step)."""

    __slots__ = ("weight", "bias", "calls")

    def __init__(self, weight: torch.Tensor | None):
        self.weight = weight
        self.bias: torch.Tensor | None = None
        self.calls: weakref.WeakSet[_GenerateCall] = weakref.WeakSet()


_decode_call: contextvars.ContextVar[_GenerateCall | None]
_decode_call = contextvars.ContextVar("deepln_decode_call", default=None)
_transposed_copies: weakref.WeakKeyDictionary[nn.Module, _TransposedCopy] = weakref.WeakKeyDictionary()


@contextmanager
def transposed_decode_weights(enabled: bool = True) -> Iterator[None]:
    """One ``generate`` call: inside the ``with`` block :func:`decode_linear` multiplies the decode steps' rows by
    contiguous transposed copies ``Wᵀ`` (``[in, out]``) of the weights with more outputs than inputs (the fused
    QKV ``[3d, d]``, the FFN's first layer ``[4d, d]``, the LM head ``[V, d]``).

    Why: a decode step at batch 1 is a chain of matrix-vector products that read every weight once, and the CPU
    BLAS reads the two layouts at different speeds. ``F.linear`` computes ``x·Wᵀ`` from ``W`` stored ``[out, in]``;
    with its short rows (``in = 256``) MKL's product runs at 6-8 GB/s on an AMD EPYC, over the copy's long rows at
    12-14 GB/s (``[1024, 256]``: 160 against 75 µs at 1 row; 1.25x at 4 rows; ~1.1x from 64 rows on).

    Each copy is refreshed from its weights in every call, after :data:`PLAIN_PRODUCTS_FIRST` products through
    ``F.linear`` (a transpose into the kept buffer: ~50 ms for a 48-layer GPT of width 256, about five decode steps'
    saving), so weights changed between calls (an optimizer step, ``load_state_dict``, a LoRA merge through
    ``.data``) are always read afresh. The buffers stay allocated
    between calls, +58 % of the blocks' weights plus the head's, until ``model.train()`` or
    :func:`release_transposed_copies`.
    """
    token = _decode_call.set(_GenerateCall() if enabled else None)
    try:
        yield
    finally:
        _decode_call.reset(token)


def release_transposed_copies(model: nn.Module) -> None:
    """Free the transposed weight copies :func:`decode_linear` keeps for ``model``'s modules."""
    if _transposed_copies:
        for module in model.modules():
            _transposed_copies.pop(module, None)


def is_plain_linear(module: nn.Module) -> bool:
    """A bare ``nn.Linear`` without hooks (not a PEFT/LoRA layer, not watched by a monitor)."""
    return type(module) is nn.Linear and not (module._forward_hooks or module._forward_pre_hooks)


def _refresh_transposed_copy(
    owner: nn.Module, hidden_states: torch.Tensor, linears: tuple[nn.Linear, ...], call: _GenerateCall
) -> _TransposedCopy:
    """Write ``cat(weights)ᵀ`` into ``owner``'s kept buffer (allocated on first use) for the ``generate`` call
    ``call``; for weights the path does not serve (on an accelerator, a tensor subclass, another dtype than
    ``hidden_states``, no more outputs than inputs) an empty entry that says so for the rest of the call. Outside
    inference mode: the buffer outlives a call made under ``torch.inference_mode()``."""
    weights = [linear.weight for linear in linears]
    shape = (weights[0].shape[1], sum(weight.shape[0] for weight in weights))
    copy = _transposed_copies.get(owner)
    served = weights[0].device.type == "cpu" and hidden_states.device.type == "cpu" and shape[1] > shape[0]
    # dense float weights only: a tensor subclass (torchao quantization, DTensor) multiplies in its own way
    served = served and all(type(weight.data) is torch.Tensor for weight in weights)
    if not served or weights[0].dtype != hidden_states.dtype:
        copy = _transposed_copies[owner] = _TransposedCopy(None)
    else:
        with torch.inference_mode(False), torch.no_grad():
            kept = copy.weight if copy is not None else None
            if kept is None or kept.shape != shape or kept.dtype != weights[0].dtype:
                buffer = torch.empty(shape, dtype=weights[0].dtype, device=weights[0].device)
                copy = _transposed_copies[owner] = _TransposedCopy(buffer)
            start = 0
            for weight in weights:
                copy.weight[:, start : start + weight.shape[0]].copy_(weight.t())
                start += weight.shape[0]
            biases = [linear.bias for linear in linears]
            copy.bias = biases[0] if len(biases) == 1 or biases[0] is None else torch.cat(biases)
    copy.calls.add(call)
    return copy


def decode_linear(
    owner: nn.Module, hidden_states: torch.Tensor, linears: tuple[nn.Linear, ...]
) -> torch.Tensor | None:
    """``cat([linear(hidden_states) for linear in linears], -1)`` through the transposed copy of the concatenated
    weight kept for ``owner`` (:func:`transposed_decode_weights`), or ``None`` where that path does not apply:
    outside a ``generate`` call, under ``torch.compile``, with gradients, above :data:`DECODE_ROWS` rows, off the
    CPU, or for weights with no more outputs than inputs. The same products as ``F.linear`` to float rounding
    (another summation order). Its checks cost a decode product ~2 µs over a bare ``addmm`` (7.0 against 4.9
    µs)."""
    if torch.compiler.is_compiling():  # first: dynamo would break the graph on the context variable
        return None
    call = _decode_call.get()
    if call is None or hidden_states.numel() > DECODE_ROWS * hidden_states.shape[-1]:
        return None
    needs_grad = hidden_states.requires_grad or any(linear.weight.requires_grad for linear in linears)
    if needs_grad and torch.is_grad_enabled():
        return None
    copy = _transposed_copies.get(owner)
    if copy is None or call not in copy.calls:
        done = call.plain_products.get(id(owner), 0)
        if done < PLAIN_PRODUCTS_FIRST:
            call.plain_products[id(owner)] = done + 1
            return None
        copy = _refresh_transposed_copy(owner, hidden_states, linears, call)
    if copy.weight is None or hidden_states.dtype != copy.weight.dtype:
        return None
    rows = hidden_states.reshape(-1, hidden_states.shape[-1])
    output = rows @ copy.weight if copy.bias is None else torch.addmm(copy.bias, rows, copy.weight)
    return output.view(*hidden_states.shape[:-1], copy.weight.shape[1])
