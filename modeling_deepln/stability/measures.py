"""The per-layer quantities of the stability monitor, as plain tensor functions.

* :func:`grouped_norms`: ``‖g‖`` of groups of tensors (all parameters of one sublayer) from one fused
  ``torch._foreach_norm`` call: ``‖group‖ = sqrt(Σ_p ‖p‖²)``.
* :func:`mean_position_cosine`: the collapse measure, the mean cosine similarity between the hidden states of
  different positions of the same sequence (1.0: every position carries the same vector).
* :func:`mean_token_norm`: the residual-stream norm, the mean L2 norm of a position's hidden state.
* :func:`masked_norm`: the Frobenius norm over the real (not padded) positions.

The activation measures take the batch's ``attention_mask`` (``[batch, T]``, 1 for a real token, 0 for padding) and
count only real positions, so a padded batch measures what its sequences would measure alone.

The relative parameter update ``‖ΔW‖/‖W‖`` of one optimizer step is
``grouped_norms(W_after - W_before) / grouped_norms(W_before)`` per sublayer. It is not DeepNet's *model update*
(Wang et al., arXiv 2203.00555, §3), which is the change of the model's output ``‖F(x; θ_i) − F(x; θ_0)‖``
(:mod:`modeling_deepln.stability.bound` measures that); the two agree in direction (a large relative parameter
update in the first steps is what lets Post-LN's output move far), not in value.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

__all__ = ["grouped_norms", "mean_position_cosine", "mean_token_norm", "masked_norm"]


def grouped_norms(tensors: Sequence[torch.Tensor], group_index: torch.Tensor, num_groups: int) -> torch.Tensor:
    """L2 norms of groups of tensors: ``out[g] = sqrt(Σ_{i: group_index[i] = g} ‖tensors[i]‖²)``.

    One ``torch._foreach_norm`` over all tensors and one ``index_add_``; no Python loop over the tensors'
    values. Returns a float32 vector of ``num_groups`` norms on the tensors' device.
    """
    if not tensors:
        return torch.zeros(num_groups)
    norms = torch.stack(torch._foreach_norm(list(tensors))).float()
    squares = torch.zeros(num_groups, device=norms.device, dtype=torch.float32)
    squares.index_add_(0, group_index.to(norms.device), norms.square())
    return squares.sqrt()


def mean_position_cosine(hidden: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Mean cosine between the hidden states of distinct positions of each sequence, averaged over the batch.

    For unit vectors ``u_t = h_t / ‖h_t‖`` of a sequence with ``T`` real positions:
    ``Σ_{s≠t} u_s·u_t = ‖Σ_t u_t‖² - T``, so the mean over the ``T(T-1)`` ordered pairs costs ``O(T·d)``.
    ``hidden``: ``[batch, T, d]``; ``mask``: ``[batch, T]`` (padded positions 0) or None. Sequences with fewer
    than two real positions are left out. Returns a 0-d float32 tensor (1.0: positions identical; about 0: unrelated).
    """
    hidden = hidden.detach().float()
    units = hidden / hidden.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    if mask is None:
        length = torch.full(hidden.shape[:1], float(hidden.shape[1]), device=hidden.device)
    else:
        mask = mask.to(device=hidden.device, dtype=torch.float32)
        units, length = units * mask.unsqueeze(-1), mask.sum(dim=1)
    total = units.sum(dim=1).square().sum(dim=-1)
    counted = length >= 2
    if not bool(counted.any()):
        return torch.ones((), device=hidden.device)
    cosine = (total - length) / (length * (length - 1)).clamp_min(1.0)
    return cosine[counted].mean()


def mean_token_norm(hidden: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Mean over real positions of ``‖h_t‖`` (the residual-stream norm); a 0-d float32 tensor."""
    norms = hidden.detach().float().norm(dim=-1)
    if mask is None:
        return norms.mean()
    mask = mask.to(device=norms.device, dtype=torch.float32)
    return (norms * mask).sum() / mask.sum().clamp_min(1.0)


def masked_norm(hidden: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Frobenius norm of ``hidden`` (``[batch, T, d]``) over the real positions; a 0-d float32 tensor."""
    hidden = hidden.detach().float()
    if mask is not None:
        hidden = hidden * mask.to(device=hidden.device, dtype=torch.float32).unsqueeze(-1)
    return hidden.norm()
