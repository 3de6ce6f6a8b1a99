"""Depth-scaled learning rates: the residual blocks train at ``lr × m``, the embeddings and the head at ``lr``.

Adam moves every parameter by about ``lr`` per step whatever its gradient, so the change of a Pre-LN stack's output
``x_N = x_0 + Σ_l F_l(x_l)`` is a sum of N per-block changes. When the blocks' gradients agree in direction (they do
at init: each block sees the same gradient of the loss with respect to the stream), that sum grows like N, and a
learning rate that suits 48 layers moves a 1,000-layer stack ~20× as far. Measured at 1,000 layers (hidden 32,
lr 2e-3, every parameter at ``lr``): within 20 steps the stream's component shared by all positions grows from 0.03
to 128 at layer 500 while the part that tells positions apart stays near 1, and the model sits on the unigram loss.

Depth-μP (Yang, Yu, Zhu, Hayou, "Tensor Programs VI: Feature Learning in Infinite-Depth Neural Networks", ICLR
2024; Bordelon et al., "Depthwise Hyperparameter Transfer in Residual Networks", ICLR 2024) scales each branch by
``1/√N`` and, for Adam, the hidden weights' learning rate by ``1/√N``, which keeps the per-step change of the
output O(lr) at any depth. The σ/√(2N) output init (``scale_output_init``) stands in for the branch multiplier at
init; ``block_lr_scale="depth"`` adds the learning-rate half: every parameter of the residual blocks trains at
``lr/√N``, the token/position embeddings, the final LayerNorm and the head at ``lr``.

The split is applied to the optimizer ``Trainer`` builds (:class:`BlockLRTrainer`), so weight decay, the fused
AdamW, the schedule (which scales each group's own learning rate), checkpoints and ``--resume`` behave as without it.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from transformers import Trainer

from ..errors import DeepLNInputError

__all__ = ["BlockLRTrainer", "block_lr_multiplier", "split_block_learning_rates"]


def block_lr_multiplier(value: float | str | None, num_layers: int) -> float:
    """The blocks' learning-rate multiplier: ``"depth"`` → ``1/√num_layers``; a positive number as given; ``None``
    → 1.

    Raises:
        DeepLNInputError: anything else (a non-positive number, an unknown word).
    """
    if value is None:
        return 1.0
    if isinstance(value, str):
        if value.strip().lower() == "depth":
            return 1.0 / math.sqrt(num_layers)
        try:
            value = float(value)
        except ValueError:
            raise DeepLNInputError(
                f"--block-lr-scale must be a positive number or 'depth' (1/sqrt(num_layers)), got {value!r}."
            ) from None
    if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
        raise DeepLNInputError(f"--block-lr-scale must be a positive number or 'depth', got {value!r}.")
    return float(value)


def residual_blocks(model: torch.nn.Module) -> torch.nn.Module:
    """The ``layers`` ModuleList of a deepln model (through ``base_model``, also for a wrapped or sharded one)."""
    base = getattr(model, "base_model", model)
    layers = getattr(base, "layers", None)
    if not isinstance(layers, torch.nn.ModuleList):
        raise DeepLNInputError(
            f"--block-lr-scale needs a deepln model (its residual blocks in `layers`); {type(model).__name__} has none."
        )
    return layers


def split_block_learning_rates(optimizer: torch.optim.Optimizer, model: torch.nn.Module, multiplier: float) -> int:
    """Split every parameter group of a fresh ``optimizer`` in two, the residual blocks' parameters at
    ``group lr × multiplier`` and the rest unchanged (other settings, e.g. weight decay, copied). Returns the number
    of block parameters moved. Must run before a learning-rate scheduler is attached (it reads each group's lr)."""
    if optimizer.state:
        raise RuntimeError("split_block_learning_rates needs an optimizer that has not stepped yet.")
    in_blocks = {id(p) for p in residual_blocks(model).parameters()}
    groups: list[dict[str, Any]] = []
    moved = 0
    for group in optimizer.param_groups:
        blocks = [p for p in group["params"] if id(p) in in_blocks]
        others = [p for p in group["params"] if id(p) not in in_blocks]
        moved += len(blocks)
        if others:
            groups.append({**group, "params": others})
        if blocks:
            groups.append({**group, "params": blocks, "lr": group["lr"] * multiplier})
    optimizer.param_groups[:] = groups
    return moved


class BlockLRTrainer(Trainer):
    """``Trainer`` whose optimizer trains the residual blocks at ``lr × block_lr_multiplier``
    (:func:`split_block_learning_rates`); everything else is ``Trainer``'s."""

    def __init__(self, *args: Any, block_lr_multiplier: float = 1.0, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.block_lr_multiplier = block_lr_multiplier

    def create_optimizer(self, model: torch.nn.Module | None = None) -> torch.optim.Optimizer:
        fresh = self.optimizer is None
        optimizer = super().create_optimizer(model)
        if fresh and self.block_lr_multiplier != 1.0:
            split_block_learning_rates(
                getattr(optimizer, "optimizer", optimizer), self.model if model is None else model,
                self.block_lr_multiplier,
            )
        return optimizer
