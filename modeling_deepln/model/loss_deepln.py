"""The fused LM loss: the cross-entropy of ``hidden @ weightᵀ`` computed chunk by chunk of tokens, without the
``[tokens, vocab]`` logits (``config.fused_lm_loss``; Liger-Kernel's fused linear cross-entropy)."""

from __future__ import annotations

import math

import torch
from torch import nn

LOGITS_PER_CHUNK = 2**25
"""The fused LM loss's chunk budget: 32M logits (128 MiB in fp32), whatever the batch."""


class _LinearCrossEntropy(torch.autograd.Function):
    """Cross-entropy of ``hidden @ weightᵀ`` without the ``[tokens, vocab]`` logits: chunk by chunk of tokens, the
    forward pass computes the loss and, at once, the gradients (``∂L/∂z = softmax(z) − onehot(target)`` per valid
    token, over the divisor), so no chunk's logits outlive it (the Liger-Kernel "fused linear cross-entropy").
    The matmul work equals the plain path's (forward, ∂hidden, ∂weight). Per chunk, one ``log_softmax`` gives
    the loss and, exponentiated in place, the softmax; the per-token factor ``valid / divisor`` scales the
    ``[chunk, hidden]`` operands instead of the ``[chunk, vocab]`` gradient."""

    @staticmethod
    def forward(ctx, hidden, weight, targets, divisor, ignore_index, chunk_size):  # type: ignore[override]
        grad_hidden = torch.empty_like(hidden) if ctx.needs_input_grad[0] else None
        grad_weight = torch.zeros_like(weight, dtype=torch.float32) if ctx.needs_input_grad[1] else None
        total = torch.zeros((), device=hidden.device, dtype=torch.float32)
        for start in range(0, hidden.shape[0], chunk_size):
            chunk, target = hidden[start : start + chunk_size], targets[start : start + chunk_size]
            logits = chunk @ weight.t()
            valid = target != ignore_index
            safe_target = torch.where(valid, target, 0).unsqueeze(1)
            log_probs = torch.log_softmax(logits.float(), dim=-1)
            total -= (log_probs.gather(1, safe_target).squeeze(1) * valid).sum()
            if grad_hidden is None and grad_weight is None:
                continue
            grad = log_probs.exp_()
            grad.scatter_add_(1, safe_target, torch.full_like(safe_target, -1, dtype=grad.dtype))
            grad = grad.to(logits.dtype)
            scale = (valid / divisor).unsqueeze(1).to(logits.dtype)
            if grad_hidden is not None:
                grad_hidden[start : start + chunk_size] = (grad @ weight).mul_(scale)
            if grad_weight is not None and grad.dtype == torch.float32:
                grad_weight.addmm_(grad.t(), chunk * scale)
            elif grad_weight is not None:  # bf16 / fp16: the product in that dtype, accumulated in fp32
                grad_weight += (grad.t() @ (chunk * scale)).float()
        ctx.save_for_backward(grad_hidden, grad_weight.to(weight.dtype) if grad_weight is not None else None)
        return total / divisor

    @staticmethod
    def backward(ctx, grad_output):  # type: ignore[override]
        grad_hidden, grad_weight = ctx.saved_tensors
        scale = grad_output.to(torch.float32)
        return (
            grad_hidden * scale.to(grad_hidden.dtype) if grad_hidden is not None else None,
            grad_weight * scale.to(grad_weight.dtype) if grad_weight is not None else None,
            None, None, None, None,
        )  # fmt: skip


@torch.compiler.disable
def linear_cross_entropy(
    hidden_states: torch.Tensor,
    weight: torch.Tensor,
    labels: torch.Tensor,
    num_items_in_batch: torch.Tensor | int | None = None,
    ignore_index: int = -100,
    shift_labels: torch.Tensor | None = None,
    chunk_size: int | None = None,
) -> torch.Tensor:
    """The causal-LM loss of ``hidden_states @ weightᵀ`` against ``labels`` shifted by one (transformers'
    ``ForCausalLMLoss``: mean over non-ignored targets, or their sum over ``num_items_in_batch``), computed
    chunk by chunk without materialising the logits (see :class:`_LinearCrossEntropy`). Default chunks: equal
    ones of at most :data:`LOGITS_PER_CHUNK` logits (2 chunks of 512 tokens for 8 x 128 tokens and GPT-2's
    50,257 classes; smaller chunks make the ``∂weight`` accumulation, a read and write of the whole
    ``[vocab, hidden]`` gradient per chunk, the bottleneck)."""
    if chunk_size is None:
        tokens = hidden_states.numel() // hidden_states.shape[-1]
        chunks = max(1, math.ceil(tokens * weight.shape[0] / LOGITS_PER_CHUNK))
        chunk_size = max(1, math.ceil(tokens / chunks))
    if shift_labels is None:
        shift_labels = nn.functional.pad(labels, (0, 1), value=ignore_index)[..., 1:]
    targets = shift_labels.reshape(-1).to(hidden_states.device)
    if num_items_in_batch is None:
        divisor = (targets != ignore_index).sum().float()
    else:
        divisor = torch.as_tensor(num_items_in_batch, device=hidden_states.device).float()
    hidden = hidden_states.reshape(-1, hidden_states.shape[-1])
    return _LinearCrossEntropy.apply(hidden, weight, targets, divisor, ignore_index, chunk_size)
