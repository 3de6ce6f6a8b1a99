"""The per-layer quantities of the stability monitor, as plain tensor functions.

* :func:`grouped_norms`: ``‖g‖`` of groups of tensors (all parameters of one sublayer) from one fused
  ``torch._foreach_norm`` call: ``‖group‖ = sqrt(Σ_p ‖p‖²)``.
* :func:`mean_position_cosine`: the collapse measure, the mean cosine similarity between the hidden states of
  different positions of the same sequence (1.0: every position carries the same vector).
* :func:`mean_token_norm`: the residual-stream norm, the mean L2 norm of a position's hidden state.

The model-update measure ``‖ΔW‖/‖W‖`` is DeepNet's (Wang et al., arXiv 2203.00555, §3: the update of the parameters
relative to their size; its Fig. 3 tracks it per layer for Post-LN vs DeepNorm in the first steps); it is
``grouped_norms(W_after - W_before) / grouped_norms(W_before)`` per sublayer.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

__all__ = ["grouped_norms", "mean_position_cosine", "mean_token_norm"]


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


def mean_position_cosine(hidden: torch.Tensor) -> torch.Tensor:
    """Mean cosine between the hidden states of distinct positions of each sequence, averaged over the batch.

    For unit vectors ``u_t = h_t / ‖h_t‖`` of a sequence of length ``T``:
    ``Σ_{s≠t} u_s·u_t = ‖Σ_t u_t‖² - T``, so the mean over the ``T(T-1)`` ordered pairs costs ``O(T·d)``.
    ``hidden``: ``[batch, T, d]``; returns a 0-d float32 tensor (1.0: positions identical; about 0: unrelated).
    """
    hidden = hidden.detach().float()
    length = hidden.shape[1]
    if length < 2:
        return torch.ones((), device=hidden.device)
    units = hidden / hidden.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    total = units.sum(dim=1).square().sum(dim=-1)
    return ((total - length) / (length * (length - 1))).mean()


def mean_token_norm(hidden: torch.Tensor) -> torch.Tensor:
    """Mean over positions of ``‖h_t‖`` (the residual-stream norm); a 0-d float32 tensor."""
    return hidden.detach().float().norm(dim=-1).mean()
