"""CompoundGrow's parameter-changing operators on deepln models: depth (progressive stacking) and width (FFN
un-sharing), each returning where every new parameter came from so the optimizer state can follow.

Source: Gu et al., "On the Transformer Growth for Progressive BERT Training", NAACL 2021 (§3-§4) and the
authors' code ``google-research/google-research/grow_bert`` ``ProgressiveMaskedLM.transform_model``.

Width, FFN parameter sharing (k)
    The low-cost FFN of an early stage has inner size ``d_ff/k``: ``W1s: d_ff/k × d``, ``b1s``, ``W2s: d × d_ff/k``,
    ``b2s``. It is the full FFN whose k blocks of ``d_ff/k`` neurons share parameters, so a shared model is a plain
    deepln model with ``intermediate_size = d_ff/k``. The authors' code un-shares by duplicating the blocks (PyTorch
    ``[out, in]`` layout)::

        fc1.weight = W1s.repeat(k, 1)     fc1.bias = b1s.repeat(k)
        fc2.weight = W2s.repeat(1, k) / k fc2.bias = b2s

    ``fc2(φ(fc1 x)) = Σ_j (W2s/k) φ(W1s x + b1s) + b2s = W2s φ(W1s x + b1s) + b2s``: exactly function-preserving.
    NormFormer's FFN mid LayerNorm is tiled too (a tiled vector has the same mean and variance, so
    ``LN(tile(h)) = tile(LN(h))`` with tiled γ, β): still exact.

    **Breaking the symmetry.** Exact copies never separate: each copy of a neuron gets the same gradient and, with
    the same Adam moments, the same update for ever (measured: after 20 AdamW steps the halves of every ``fc1`` were
    still equal to the last bit), so the grown FFN would compute what the shared one did. Net2Net (Chen et al.
    2016, §2.2) splits the outgoing weights unevenly and adds small noise. Here, per neuron ``i`` and copy ``j``:

    * outgoing shares ``w_ij = (1 + s·u_ij)/k`` (``u`` uniform in ``[-1, 1]``, centred over the copies, spread
      ``s = 1/2``): ``fc2`` column block ``j`` is ``W2s·w_·j``. ``Σ_j w_ij = 1``, so this alone is exactly
      function-preserving;
    * incoming noise ``δ_ij ~ N(0, (ε·rms(W1s))²)`` with ``Σ_j w_ij δ_ij = 0``, ``ε = 1e-3``: ``fc1`` row block
      ``j`` is ``W1s + δ_·j``. The first-order terms cancel, ``Σ_j w_j φ((W1s + δ_j)x) = φ(W1s x) + O(δ²)``, so the
      output moves by about ``1e-6`` of its size (tested to ``1e-5``). NormFormer's FFN mid LayerNorm sees the
      noise in its mean and variance at first order: about ``1e-4`` of the output's size there (tested).

    The Adam moments of the copies are carried over as those of the *even* split (``m/k``, ``v/k²``, below) while a
    copy's gradient is ``k·w_ij`` times that: until the moments adapt, a copy with the larger share takes the larger
    steps, and the copies separate (measured on a 2-layer model, 20 AdamW steps at lr 1e-3: ``fc1`` halves 4e-3
    to 7e-3 apart, against exactly 0 without the split; tested). Adam's update is invariant to a constant scale of
    each copy's gradient, so with moments scaled to the uneven split, or a fresh optimizer as the authors build per
    stage, the split alone would not separate the copies; the noise still makes them different neurons.
    ``spread=0, noise=0`` gives the exact tiling of the paper's code.

Depth, progressive stacking
    New layer ``i`` ← copy of small layer ``i mod L_small`` (the whole block: attention, FFN, LayerNorms), as the
    authors' code and Gong et al. 2019 do. Not function-preserving (the paper says so): the copies are extra layers
    on top of the trained stack.

    **α and β of the depth-dependent schemes (DeepNorm, Upscale LN).** α = (2N)^¼ multiplies the skip input of every
    Post-LN residual ``LN(α·x + G(x))``, and deepln computes it from ``config.num_hidden_layers`` (unless
    ``config.residual_alpha`` pins it). Choice: **recompute α for the new depth and rescale the branch output
    projections** (``out_proj`` and ``fc2`` weight and bias) by ``c = α_new/α_old``. LayerNorm is invariant to a
    positive scale of its input (up to its ε), so ``LN(α_new·x + c·G(x)) = LN(c·(α_old·x + G(x))) = LN(α_old·x +
    G(x))``: every copied layer computes exactly what it computed before growth, and the grown model is a plain
    deepln checkpoint whose α is the formula of its saved depth (keeping the old α would need a ``residual_alpha``
    override in the saved config; recomputing without rescaling would change every layer's function at once). The
    first ``L_small`` layers of the grown model therefore reproduce the small model's hidden states exactly (tested).
    In the ``α·s + LN(s)`` form (``post_norm_form="alpha_plus_ln"``) α multiplies the whole sum ``s = x + G(x)``
    outside the LayerNorm, and no rescaling of the weights keeps ``α·s + LN(s)`` when α changes (``LN(s)`` is
    scale-invariant, ``α·s`` is not, and the skip input is not scaled): :func:`stack_layers` refuses a depth change
    that changes α in that form (a scheme whose α does not depend on depth, such as FoundationLayerNorm's 0.974,
    or a pinned ``config.residual_alpha``, stacks as usual). :func:`check_stackable` says so before training.
    β is only DeepNorm's *initialisation* gain: stacked layers copy trained weights, so β is not applied again; the
    config's depth changes, so any weight initialised later (e.g. a new head) gets β of the new depth.

Optimizer state
    Every operator returns ``{new parameter: ParamOrigin}``. The Adam moments of a new parameter are those of its
    source mapped to the new shape and scaled to the gradient the new parameter receives in the function-equivalent
    grown model: un-shared ``fc1``/``b1``/mid-LN copies each receive ``1/k`` of the shared gradient with the even
    split (``m/k``, ``v/k²``; kept for the uneven split on purpose, see above), ``fc2``/``b2`` copies the same
    gradient; a branch projection rescaled by ``c`` receives ``g/c``
    (``m/c``, ``v/c²``). Stacked copies take the source layer's moments and step count unchanged.
"""

from __future__ import annotations

import copy
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..errors import DeepLNInputError

__all__ = [
    "ParamOrigin",
    "model_layers",
    "stack_layers",
    "unshare_ffn",
    "ffn_share_factor",
    "check_stackable",
    "copy_without_hooks",
    "GrowthError",
    "SYMMETRY_NOISE",
    "SPLIT_SPREAD",
]

SPLIT_SPREAD = 0.5
"""Default spread of :func:`unshare_ffn`'s uneven split of the outgoing weights (shares ``(1 ± spread·u)/k``)."""
SYMMETRY_NOISE = 1e-3
"""Default ``ε`` of :func:`unshare_ffn`: the noise on the copied ``fc1`` rows, relative to their RMS."""


class GrowthError(DeepLNInputError):
    """A growth schedule or step that cannot be applied (bad schedule, wrong shape, several processes, ...).

    A :class:`~modeling_deepln.training.args.DeepLNInputError`, so the CLI prints it as ``deepln: error: ...``.
    """


@dataclass
class ParamOrigin:
    """Where a parameter after growth comes from: ``new = reshape(source)`` with Adam moments scaled.

    ``exp_avg_new = reshape(exp_avg) * grad_scale`` and ``exp_avg_sq_new = reshape(exp_avg_sq) * grad_scale²``.
    """

    source: nn.Parameter
    reshape: Callable[[torch.Tensor], torch.Tensor] | None = None
    grad_scale: float = 1.0

    def map_moment(self, tensor: torch.Tensor, power: int) -> torch.Tensor:
        out = self.reshape(tensor) if self.reshape is not None else tensor.clone()
        return out * (self.grad_scale**power) if self.grad_scale != 1.0 else out


def model_layers(model: nn.Module) -> tuple[nn.Module, nn.ModuleList]:
    """The deepln base model (``model.bert`` / ``model.transformer`` / the model itself) and its block list."""
    base = getattr(model, getattr(model, "base_model_prefix", ""), model)
    layers = getattr(base, "layers", None)
    if not isinstance(layers, nn.ModuleList):
        raise GrowthError(f"{type(model).__name__} is not a deepln model (no `.layers` block list).")
    return base, layers


def _linear(weight: torch.Tensor, bias: torch.Tensor | None, like: nn.Linear) -> nn.Linear:
    new = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None, device=weight.device, dtype=weight.dtype)
    with torch.no_grad():
        new.weight.copy_(weight)
        if bias is not None:
            new.bias.copy_(bias)
    if hasattr(like, "_deepln_role"):
        new._deepln_role = like._deepln_role
    return new


def ffn_share_factor(model: nn.Module, full_intermediate_size: int) -> int:
    """The current sharing factor ``k = full_intermediate_size / intermediate_size`` of the model's FFNs."""
    current = model.config.intermediate_size
    if full_intermediate_size % current:
        raise GrowthError(f"intermediate_size {current} does not divide the full FFN size {full_intermediate_size}.")
    return full_intermediate_size // current


def _symmetry_breaking(
    fc1_weight: torch.Tensor, k: int, spread: float, noise: float, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per neuron ``i`` and copy ``j``: the outgoing shares ``w_ij = (1 + spread·u_ij)/k`` (``u`` uniform in
    ``[-1, 1]``, centred over the copies, so ``Σ_j w_ij = 1`` and ``w_ij > 0`` for ``spread ≤ 1/2``) as a ``[k·n]``
    vector, and the incoming noise ``δ_ij ~ N(0, (noise·rms(W1s))²)`` made orthogonal to the shares
    (``Σ_j w_ij δ_ij = 0``) as a ``[k·n, d]`` tensor in ``fc1``'s row order (copy-major, as ``repeat``)."""
    n, d = fc1_weight.shape
    u = torch.rand((k, n, 1), generator=generator) * 2 - 1
    shares = (1 + spread * (u - u.mean(dim=0))) / k
    delta = torch.randn((k, n, d), generator=generator)
    delta = delta - shares * (shares * delta).sum(dim=0) / shares.pow(2).sum(dim=0)
    delta = delta * (noise * fc1_weight.detach().float().pow(2).mean().sqrt().cpu())
    device, dtype = fc1_weight.device, fc1_weight.dtype
    return shares.reshape(k * n).to(device, dtype), delta.reshape(k * n, d).to(device, dtype)


def unshare_ffn(
    model: nn.Module,
    factor: int,
    spread: float = SPLIT_SPREAD,
    noise: float = SYMMETRY_NOISE,
    generator: torch.Generator | None = None,
) -> dict[nn.Parameter, ParamOrigin]:
    """Width growth: multiply every block's FFN inner size by ``factor`` by duplicating the shared neurons.

    Function-preserving to second order in ``noise`` (module docstring: zero-sum noise of relative size ``noise``
    on the copied ``fc1`` rows breaks their symmetry; ``noise=0`` gives exact copies that training never
    separates). ``generator`` draws the noise (default: a generator seeded with 0, so growth is reproducible and
    leaves the global random state alone). Updates ``config.intermediate_size``; returns the origins of the
    replaced parameters.
    """
    if factor < 1 or int(factor) != factor:
        raise GrowthError(f"FFN un-sharing factor must be a positive integer, got {factor}.")
    if noise < 0 or not 0 <= spread <= 0.5:
        raise GrowthError(f"Symmetry breaking needs noise >= 0 and 0 <= spread <= 0.5, got {noise}, {spread}.")
    _, layers = model_layers(model)
    origins: dict[nn.Parameter, ParamOrigin] = {}
    if factor == 1:
        return origins
    k = int(factor)
    generator = generator if generator is not None else torch.Generator().manual_seed(0)

    def add(new: nn.Parameter, old: nn.Parameter, reshape, grad_scale: float = 1.0) -> None:
        origins[new] = ParamOrigin(old, reshape, grad_scale)

    for block in layers:
        mlp = block.mlp
        fc1, fc2 = mlp.fc1, mlp.fc2
        rows, cols, tile = (lambda t: t.repeat(k, 1)), (lambda t: t.repeat(1, k)), (lambda t: t.repeat(k))
        with torch.no_grad():
            shares, delta = _symmetry_breaking(fc1.weight, k, spread, noise, generator)
            new_fc1 = _linear(rows(fc1.weight) + delta, tile(fc1.bias) if fc1.bias is not None else None, fc1)
            new_fc2 = _linear(cols(fc2.weight) * shares, fc2.bias, fc2)
        add(new_fc1.weight, fc1.weight, rows, 1.0 / k)
        if fc1.bias is not None:
            add(new_fc1.bias, fc1.bias, tile, 1.0 / k)
        add(new_fc2.weight, fc2.weight, cols)
        if fc2.bias is not None:
            add(new_fc2.bias, fc2.bias, None)
        mlp.fc1, mlp.fc2 = new_fc1, new_fc2
        if mlp.mid_norm is not None:
            old = mlp.mid_norm
            new_norm = nn.LayerNorm(old.normalized_shape[0] * k, eps=old.eps, device=old.weight.device)
            with torch.no_grad():
                new_norm.weight.copy_(tile(old.weight))
                new_norm.bias.copy_(tile(old.bias))
            add(new_norm.weight, old.weight, tile, 1.0 / k)
            add(new_norm.bias, old.bias, tile, 1.0 / k)
            mlp.mid_norm = new_norm
    model.config.intermediate_size = model.config.intermediate_size * k
    return origins


_HOOK_DICTS = (
    "_forward_hooks",
    "_forward_hooks_with_kwargs",
    "_forward_hooks_always_called",
    "_forward_pre_hooks",
    "_forward_pre_hooks_with_kwargs",
    "_backward_hooks",
    "_backward_pre_hooks",
)


def copy_without_hooks(module: nn.Module) -> nn.Module:
    """A deep copy of ``module`` without the hooks registered on it or its submodules.

    ``copy.deepcopy`` copies hook dictionaries too, so a copied block would keep calling the hooks of its source
    (a NaN guard or monitor would then report the copy under the source's name). The hooks are set aside during the
    copy and put back on the source unchanged (their removal handles stay valid). The model config the submodules
    refer to (``attention.config``, ``mlp.config``) is shared, not copied, so that a switch set on
    ``model.config`` later (``threaded_matvec``, ``fuse_qkv``) reaches the copied blocks too.
    """
    saved = []
    shared: dict[int, object] = {}
    for submodule in module.modules():
        config = submodule.__dict__.get("config")
        if config is not None:
            shared[id(config)] = config
        for name in _HOOK_DICTS:
            hooks = getattr(submodule, name, None)
            if hooks:
                saved.append((submodule, name, hooks))
                setattr(submodule, name, OrderedDict())
    try:
        return copy.deepcopy(module, memo=shared)
    finally:
        for submodule, name, hooks in saved:
            setattr(submodule, name, hooks)


def _branch_outputs(block: nn.Module) -> list[nn.Linear]:
    return [block.attention.out_proj, block.mlp.fc2]


def check_stackable(config: Any, new_depth: int) -> None:
    """Raise :class:`GrowthError` when stacking ``config``'s model to ``new_depth`` layers cannot keep the copied
    layers' function: α changes with depth and the scheme is not in the ``LN(α·x + G(x))`` form (module docstring).
    """
    scheme = config.residual_scheme
    grown = copy.copy(config)
    grown.num_hidden_layers = new_depth
    if scheme.alpha(grown) == scheme.alpha(config):
        return
    if scheme.norm_position != "post":
        raise GrowthError(f"{scheme.name}: α depends on depth but the scheme is not Post-LN; cannot rescale.")
    if scheme.post_norm_form(config) == "alpha_plus_ln":
        raise GrowthError(
            f"Cannot stack {scheme.name} with post_norm_form='alpha_plus_ln' from {config.num_hidden_layers} to "
            f"{new_depth} layers: α = {scheme.alpha(config):.4g} becomes {scheme.alpha(grown):.4g}, and in the "
            "α·s + LN(s) form no rescaling of the weights keeps each copied layer's function. Use "
            "post_norm_form='ln' (LN(α·x + G(x)), compensated exactly), or pin α with residual_alpha."
        )


def stack_layers(model: nn.Module, new_depth: int) -> dict[nn.Parameter, ParamOrigin]:
    """Depth growth: layer ``i`` of the grown stack is a copy of layer ``i mod L_small`` (progressive stacking).

    Updates ``config.num_hidden_layers``; recomputes α of depth-dependent schemes and rescales the branch output
    projections so each copied layer keeps its function (module docstring; refused with a :class:`GrowthError`
    where no rescaling can, see :func:`check_stackable`). Blocks are copied without their hooks
    (:func:`copy_without_hooks`). Returns the origins of the new and the rescaled parameters.
    """
    base, layers = model_layers(model)
    config = model.config
    old_depth = len(layers)
    if new_depth < old_depth:
        raise GrowthError(f"Cannot shrink depth from {old_depth} to {new_depth}: growth only adds layers.")
    origins: dict[nn.Parameter, ParamOrigin] = {}
    if new_depth == old_depth:
        return origins
    check_stackable(config, new_depth)
    scheme = config.residual_scheme
    alpha_old = scheme.alpha(config)
    config.num_hidden_layers = new_depth
    alpha_new = scheme.alpha(config)
    ratio = alpha_new / alpha_old
    if ratio != 1.0:
        for block in layers:
            for residual in (block.attention_residual, block.mlp_residual):
                residual.alpha = alpha_new
            with torch.no_grad():
                for linear in _branch_outputs(block):
                    for param in linear.parameters():
                        param.mul_(ratio)
                        origins[param] = ParamOrigin(param, None, 1.0 / ratio)
    new_layers = list(layers)
    for index in range(old_depth, new_depth):
        source = layers[index % old_depth]
        clone = copy_without_hooks(source)
        clone.attention.layer_idx = index
        for new_param, old_param in zip(clone.parameters(), source.parameters()):
            rescaled = origins.get(old_param)  # the source was rescaled in place above: so is its copy
            origins[new_param] = ParamOrigin(old_param, None, rescaled.grad_scale if rescaled else 1.0)
        new_layers.append(clone)
    base.layers = nn.ModuleList(new_layers)
    return origins
