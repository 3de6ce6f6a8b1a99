"""Grow an Adam/AdamW optimizer in place after a growth operator changed the model's parameters.

The optimizer object is kept (``Trainer`` and Accelerate hold references to it, and the learning-rate scheduler
holds the optimizer): its ``param_groups`` are rebuilt with the model's current parameters and ``state`` gets the
moments of each new parameter from its :class:`~.operators.ParamOrigin` (``exp_avg`` scaled by the gradient ratio,
``exp_avg_sq`` by its square, ``step`` copied). A new parameter joins the group of its source, so weight-decay groups
stay as ``Trainer.create_optimizer`` made them, in ``named_parameters`` order: a checkpoint of the grown optimizer
loads into the optimizer ``Trainer`` builds for a fresh model of the grown shape.
"""

from __future__ import annotations

import torch
from torch import nn

from .operators import GrowthError, ParamOrigin

__all__ = ["compose_origins", "grow_optimizer", "unwrap_optimizer"]


def unwrap_optimizer(optimizer: torch.optim.Optimizer) -> torch.optim.Optimizer:
    """The torch optimizer inside Accelerate's ``AcceleratedOptimizer`` (or the optimizer itself)."""
    while hasattr(optimizer, "optimizer") and not isinstance(optimizer, torch.optim.Optimizer):
        optimizer = optimizer.optimizer
    inner = getattr(optimizer, "optimizer", None)
    return inner if isinstance(inner, torch.optim.Optimizer) else optimizer


def compose_origins(first: dict[nn.Parameter, ParamOrigin], then: dict[nn.Parameter, ParamOrigin]):
    """Origins of two operators applied one after the other, traced back to the parameters before the first."""
    combined = dict(first)
    for param, origin in then.items():
        before = first.get(origin.source)
        if before is None:
            combined[param] = origin
            continue
        inner, outer = before.reshape, origin.reshape

        def reshape(t, inner=inner, outer=outer):
            t = inner(t) if inner is not None else t
            return outer(t) if outer is not None else t

        combined[param] = ParamOrigin(before.source, reshape, before.grad_scale * origin.grad_scale)
    return combined


def grow_optimizer(optimizer: torch.optim.Optimizer, model: nn.Module, origins: dict[nn.Parameter, ParamOrigin]) -> int:
    """Point ``optimizer`` at ``model``'s current parameters, carrying the Adam state over (module docstring).

    Parameters that were in the optimizer and are unchanged keep their state object; parameters without an origin
    that were not in the optimizer before raise :class:`GrowthError`. Returns the number of new parameters.
    """
    torch_optimizer = unwrap_optimizer(optimizer)
    group_of = {id(p): index for index, group in enumerate(torch_optimizer.param_groups) for p in group["params"]}
    old_state = torch_optimizer.state
    new_params: list[list[nn.Parameter]] = [[] for _ in torch_optimizer.param_groups]
    new_state: dict[nn.Parameter, dict] = {}
    added = 0
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        origin = origins.get(param)
        source = origin.source if origin is not None else param
        if id(source) not in group_of:
            raise GrowthError(f"Parameter {name} has no source in the optimizer; cannot carry its state over.")
        new_params[group_of[id(source)]].append(param)
        added += origin is not None and origin.source is not param
        state = old_state.get(source)
        if not state:
            continue
        if origin is None:
            new_state[param] = state
            continue
        moved = {}
        for key, value in state.items():
            if key == "exp_avg":
                moved[key] = origin.map_moment(value, 1)
            elif key in ("exp_avg_sq", "max_exp_avg_sq"):
                moved[key] = origin.map_moment(value, 2)
            else:  # step (and anything scalar)
                moved[key] = value.clone() if torch.is_tensor(value) else value
        new_state[param] = moved
    for group, params in zip(torch_optimizer.param_groups, new_params):
        group["params"] = params
    torch_optimizer.state.clear()
    torch_optimizer.state.update(new_state)
    return added
