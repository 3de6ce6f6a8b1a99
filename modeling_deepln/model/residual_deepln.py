"""Residual-normalization schemes for deep Transformers, shared by the BERT and GPT blocks.

Every sublayer ``G`` (self-attention or feed-forward) of a deepln block is wrapped in one
:class:`ResidualConnection`. What that wrapper computes is decided by a :class:`ResidualScheme`, a small,
stateless object picked by ``config.residual_norm``:

=================  =======================================  =========  ===========  ========================
``residual_norm``  sublayer update                          α          init gain β  final LayerNorm
=================  =======================================  =========  ===========  ========================
``post_ln``        ``x = LN(x + G(x))``                     1          --           no
``pre_ln``         ``x = x + G(LN(x))``                     1          --           yes
``deepnorm``       ``x = LN(α·x + G(x))``                   (2N)^1/4   (8N)^-1/4    no
``upscale_ln``     ``x = LN(α·x + G(x))``                   (2N)^1/4   --           no
``foundation_ln``  ``x = α·s + LN(s)``, ``s = x + G(x)``     0.974      --           no
``normformer``     ``x = x + LN'(G(LN(x)))`` (+ head scale,  1          --           yes
                   FFN mid LN, optional ResScale)
=================  =======================================  =========  ===========  ========================

The Post-LN family (``norm_position="post"``) has two forms of the normalisation at the residual sum, chosen by
``config.post_norm_form`` (:data:`POST_NORM_FORMS`):

* ``"ln"``: ``x = LN(α·x + G(x))``, the table above (DeepNet's equation; FoundationLayerNorm as reconstructed
  from a third-party summary of arXiv 2204.04477); the default of every Post-LN scheme but ``foundation_ln``;
* ``"alpha_plus_ln"``: ``s = x + G(x)``, ``x = α·s + LN(s)``: the FoundationLayerNorm author's own normalization
  module (``ShenDezhou/DeepLayerNorm``, ``forward(x) = α·x + LN(x)``) put where Post-LN has ``LN(s)``
  (a second reading of the paper); the default of ``foundation_ln`` (measured, see :class:`FoundationLN`).
  With α < 1 the stream stays bounded (≈ |LN| / (1 − α)); with α > 1 it
  grows as α^(2N) and overflows at depth. The last hidden state is not normalised in this form.

``config.final_layer_norm`` (``True``/``False``) forces the final LayerNorm on or off for any scheme (``None``: the
table's column).

``N`` is the number of layers. DeepNet's encoder-only (BERT) and decoder-only (GPT) constants are the same
formula of the depth, so one scheme serves both families. "--" means the weights keep the standard
``N(0, initializer_range)`` init. A scheme is registered in :data:`RESIDUAL_SCHEMES`; adding a scheme means
adding one class here and nothing else.

Sources:

* Post-LN / Pre-LN: Vaswani et al. 2017; Xiong et al. 2020; ``microsoft/torchscale``
  ``architecture/encoder.py`` (``EncoderLayer.forward``).
* DeepNorm: Wang et al., "DeepNet: Scaling Transformers to 1,000 Layers", arXiv 2203.00555, Fig. 2 and
  ``torchscale`` ``EncoderLayer.residual_connection`` / ``Encoder.__init__``.
* Upscale LN and FoundationLayerNorm: Shen, "FoundationLayerNorm: Scaling BERT and GPT to 1,000 Layers",
  arXiv 2204.04477. The paper's equations were lost; both are **reconstructed** (see the class docstrings).
* NormFormer: Shleifer, Weston & Ott, arXiv 2110.09456, and ``facebookresearch/fairseq``
  ``fairseq/modules/transformer_layer.py`` (``TransformerDecoderLayerBase``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn


POST_NORM_FORMS = ("ln", "alpha_plus_ln")
"""The forms of the Post-LN family's normalisation at the residual sum: ``LN(α·x + G(x))`` or ``α·s + LN(s)``."""


class ResidualScheme:
    """How one sublayer is combined with its residual stream, and how the block's weights are initialised.

    Attributes:
        name: the value of ``config.residual_norm`` that selects the scheme.
        norm_position: ``"post"`` puts the sublayer LayerNorm on the sum (``LN(α·x + G(x))``), ``"pre"`` on the
            sublayer input (``x + G(LN(x))``).
        final_norm: whether the stack ends with one more LayerNorm by default (true for the Pre-LN family); a
            config's ``final_layer_norm`` overrides it.
        normformer: whether the NormFormer extras (head scale, post-attention LN, FFN mid LN, ResScale) may be
            switched on by the ``normformer_*`` config fields.
        default_post_norm_form: the form (:data:`POST_NORM_FORMS`) a new config of this scheme gets when it does
            not name one: ``"alpha_plus_ln"`` for ``foundation_ln`` (measured, see :class:`FoundationLN`), ``"ln"``
            for the others (a Pre-LN scheme has no other form; with DeepNorm's and Upscale LN's α > 1 the
            ``α·s + LN(s)`` form overflows at depth).
    """

    name: str = ""
    norm_position: str = "post"
    final_norm: bool = False
    normformer: bool = False
    description: str = ""
    default_post_norm_form: str = "ln"

    def default_alpha(self, num_layers: int) -> float:
        """The residual multiplier α of the scheme for a stack of ``num_layers`` layers."""
        return 1.0

    def default_beta(self, num_layers: int) -> float | None:
        """The Xavier gain β of the value/output/FFN weights, or ``None`` for the standard normal init."""
        return None

    def alpha(self, config: Any) -> float:
        """α for ``config``: ``config.residual_alpha`` when set, else the scheme's formula of the depth."""
        if getattr(config, "residual_alpha", None) is not None:
            return float(config.residual_alpha)
        return self.default_alpha(config.num_hidden_layers)

    def post_norm_form(self, config: Any) -> str:
        """The normalisation form for ``config``: ``config.post_norm_form`` when set, else the scheme's default."""
        return getattr(config, "post_norm_form", None) or self.default_post_norm_form

    def beta(self, config: Any) -> float | None:
        """β for ``config``: ``config.residual_beta`` when set, else the scheme's formula (or ``None``)."""
        if getattr(config, "residual_beta", None) is not None:
            return float(config.residual_beta)
        return self.default_beta(config.num_hidden_layers)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r})"


class PostLN(ResidualScheme):
    """Post-LN, the original Transformer and BERT: ``x_{l+1} = LN(x_l + G_l(x_l))``; no final LayerNorm.

    Source: Vaswani et al. 2017; torchscale ``EncoderLayer.forward`` with ``normalize_before=False``.
    """

    name = "post_ln"
    norm_position = "post"
    final_norm = False
    description = "LN(x + G(x)), the original Transformer / BERT block"


class PreLN(ResidualScheme):
    """Pre-LN, GPT-2 and most modern LMs: ``x_{l+1} = x_l + G_l(LN(x_l))``, plus one final LayerNorm.

    Source: Xiong et al. 2020; GPT-2 (``ln_1``, ``ln_2``, ``ln_f``); torchscale with ``normalize_before=True``.
    """

    name = "pre_ln"
    norm_position = "pre"
    final_norm = True
    description = "x + G(LN(x)) with a final LN, the GPT-2 block"


class DeepNorm(ResidualScheme):
    """DeepNorm: ``x_{l+1} = LN(α·x_l + G_l(x_l))`` with ``α = (2N)^(1/4)`` and Xavier-normal init of the
    value, attention-output and both FFN weights with gain ``β = (8N)^(-1/4)`` (queries and keys: gain 1).

    The constants are DeepNet's encoder-only row (``N`` encoder layers) and decoder-only row (``M = N``
    decoder layers), which coincide. α multiplies the *skip* input, not the branch (the labml implementation
    gets this wrong). Source: arXiv 2203.00555 Fig. 2; torchscale ``EncoderLayer.__init__`` (``alpha``) and
    ``Encoder.__init__`` (``init_scale``).
    """

    name = "deepnorm"
    norm_position = "post"
    final_norm = False
    description = "LN(α·x + G(x)), α=(2N)^1/4, β=(8N)^-1/4 Xavier gain on v/out/fc1/fc2 (DeepNet)"

    def default_alpha(self, num_layers: int) -> float:
        return (2.0 * num_layers) ** 0.25

    def default_beta(self, num_layers: int) -> float | None:
        return (8.0 * num_layers) ** -0.25


class UpscaleLN(ResidualScheme):
    """Upscale LayerNorm, the BERT variant of FoundationLayerNorm: ``x_{i+1} = LN(α·x_i + G_i(x_i))`` with
    ``α = (2N)^(1/4)`` and **no** β weight scaling (weights keep the standard ``N(0, 0.02)`` init).

    Reconstructed: the paper (arXiv 2204.04477 §4.1) says it "revises DeepNorm by keeping the Layer Normalization
    but holding the weights within the residual branch, instead of scaling with β"; its equation was lost in
    extraction. Form and α are reconstructed from a third-party summary of the paper and the author's own code
    (``ShenDezhou/DeepLayerNorm``: ``alpha = (2 * NUMBER_LAYER) ** 0.25``). Post-LN placement and the absence of
    a final LayerNorm are deepln choices (the paper is silent).
    """

    name = "upscale_ln"
    norm_position = "post"
    final_norm = False
    description = "LN(α·x + G(x)), α=(2N)^1/4, standard init (FoundationLayerNorm paper, BERT-1k)"

    def default_alpha(self, num_layers: int) -> float:
        return (2.0 * num_layers) ** 0.25


class FoundationLN(ResidualScheme):
    """FoundationLayerNorm, the GPT variant, with the empirical constant ``α = 0.974`` (independent of depth) and
    no β weight scaling, in one of two readings (``config.post_norm_form``):

    * ``"alpha_plus_ln"`` (the default since it was measured): ``s = x_i + G_i(x_i)``,
      ``x_{i+1} = α·s + LN(s)``, the author's own normalization module (``ShenDezhou/DeepLayerNorm``,
      ``forward(x) = α·x + LN(x)``) placed where Post-LN has ``LN(s)``;
    * ``"ln"``: ``x_{i+1} = LN(α·x_i + G_i(x_i))`` (from a third-party summary of the paper).

    Why the default is ``"alpha_plus_ln"``: on the embedded corpus (hidden 64, batch 16 × 128, tied bare head)
    the ``"ln"`` reading ends on the unigram solution with every position identical, at 4 layers as at 48
    (held-out loss 7.41 against the unigram model's 7.40, 48 layers, lr 2e-3, 10 % warmup, 300 steps), while
    ``"alpha_plus_ln"`` learns the context (6.51 in the same run; 6.23 at 4 layers): the deepln README ("Why the
    Post-LN family learns only the token frequencies here"), ``docs/collapse-study.md`` and
    ``configuration/benchmarks/``. Configs saved before the switch existed load with ``"ln"`` (what they were
    trained with).

    Reconstructed: the paper (arXiv 2204.04477 §5) calls α "a constant parameter from experience"; its equation was
    lost in extraction. The value 0.974 comes from a single third-party summary of the paper and could not be
    checked against the PDF, so it is a default, overridable with ``config.residual_alpha``. Post-LN placement
    is a deepln choice. In the ``"alpha_plus_ln"`` form the last hidden state is not normalised (its norm grows
    towards ``|LN| / (1 − α)`` with depth), so a bare head starts with large logits (loss at init 16.9 against
    ``ln V`` = 7.6, hidden 32, at 48 as at 1,000 layers). ``final_layer_norm=True`` adds a LayerNorm before the
    head, which brings the loss at init to 7.63; it is not the default because the 48-layer default run diverged
    with it (README, "Residual-normalization schemes") and at 1,000 layers it collapsed onto the unigram solution at
    step 20 where the form without it learns (README, "Every scheme at 1,000 layers").
    """

    name = "foundation_ln"
    norm_position = "post"
    final_norm = False
    description = "0.974·s + LN(s), s = x + G(x) (default) or LN(0.974·x + G(x)); standard init (FoundationLayerNorm, GPT-1k)"
    default_post_norm_form = "alpha_plus_ln"

    def default_alpha(self, num_layers: int) -> float:
        return 0.974


class NormFormer(ResidualScheme):
    """NormFormer: a Pre-LN block with three extra operations (and one optional one)::

        x' = x + LN_attn( HeadScaleMHA( LN_1(x) ) )               # post-attention LN, per-head scales γ_i
        x  = λ ⊙ x' + W_2 · LN_ffn( φ(W_1 · LN_2(x') + b_1) ) + b_2   # FFN mid LN; λ = ResScale (optional)

    Each extra is a config switch: ``normformer_head_scale``, ``normformer_attn_norm``,
    ``normformer_ffn_norm`` (all on by default) and ``normformer_residual_scale`` (off by default; the paper
    found it helps only small models). Head scales are applied before ``W^O`` as in the paper by default, or
    after it as in fairseq (``normformer_head_scale_position="after_out_proj"``). All new scales start at 1,
    new LayerNorms at weight 1 / bias 0. Source: arXiv 2110.09456 §2; fairseq
    ``TransformerDecoderLayerBase``. The encoder (BERT) form applies the same operations by analogy (a
    reconstruction): fairseq implements them in the decoder layer only.
    """

    name = "normformer"
    norm_position = "pre"
    final_norm = True
    normformer = True
    description = "Pre-LN + head scale + post-attention LN + FFN mid LN (+ optional ResScale)"


RESIDUAL_SCHEMES: dict[str, ResidualScheme] = {
    scheme.name: scheme for scheme in (PostLN(), PreLN(), DeepNorm(), UpscaleLN(), FoundationLN(), NormFormer())
}
"""Every scheme deepln knows, by the ``config.residual_norm`` value that selects it."""


def get_residual_scheme(name: str) -> ResidualScheme:
    """Return the scheme registered under ``name``; raise a ``ValueError`` naming the valid choices otherwise."""
    try:
        return RESIDUAL_SCHEMES[name]
    except (KeyError, TypeError):
        choices = ", ".join(repr(key) for key in RESIDUAL_SCHEMES)
        raise ValueError(
            f"Unknown residual_norm {name!r}. Choose one of {choices} (see modeling_deepln.residual_deepln)."
        ) from None


class ResidualConnection(nn.Module):
    """One sublayer with its residual path: ``norm_post(α·λ⊙x + dropout(branch_norm(G(norm_pre(x)))))``.

    Exactly one of ``norm_pre``/``norm_post`` is the LayerNorm ``self.norm`` (placed by the scheme); the other is
    the identity. In the ``"alpha_plus_ln"`` post-norm form, α moves from the skip input to the module that
    replaces the LayerNorm: ``s = x + dropout(G(x))``, output ``α·s + LN(s)``. ``branch_norm`` is NormFormer's post-attention LayerNorm, and ``residual_scale`` (λ) its
    ResScale vector; both are absent for the other schemes. α is a plain float computed from the config, so it
    is never stored in (or lost from) a checkpoint.

    Args:
        config: a deepln config.
        branch_norm: add a LayerNorm on the sublayer output (NormFormer's post-attention LN).
        residual_scale: add a learnable per-channel scale λ on the skip input (NormFormer's ResScale).
    """

    def __init__(self, config: Any, branch_norm: bool = False, residual_scale: bool = False):
        super().__init__()
        scheme = get_residual_scheme(config.residual_norm)
        self.norm_before = scheme.norm_position == "pre"
        self.alpha = scheme.alpha(config)
        self.alpha_plus_ln = not self.norm_before and scheme.post_norm_form(config) == "alpha_plus_ln"
        self.norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.branch_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps) if branch_norm else None
        self.residual_scale = nn.Parameter(torch.ones(config.hidden_size)) if residual_scale else None
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(
        self, hidden_states: torch.Tensor, sublayer: Callable[..., Any], **sublayer_kwargs: Any
    ) -> tuple[torch.Tensor, Any]:
        """Apply ``sublayer`` with the scheme's normalisation and residual rule.

        ``sublayer`` returns a tensor or a ``(tensor, extra)`` tuple (attention returns its weights as
        ``extra``); the extra value is passed through as the second output.
        """
        branch = sublayer(self.norm(hidden_states) if self.norm_before else hidden_states, **sublayer_kwargs)
        extra = None
        if isinstance(branch, tuple):
            branch, extra = branch
        if self.branch_norm is not None:
            branch = self.branch_norm(branch)
        if self.training and self.dropout.p > 0:  # eval, or no dropout: no module call
            branch = self.dropout(branch)
        if self.residual_scale is not None:
            hidden_states = hidden_states * self.residual_scale
        if self.alpha == 1.0 or self.alpha_plus_ln:
            hidden_states = hidden_states + branch
        else:  # α·x + G as one kernel (no separate α·x tensor; its backward has one elementwise op fewer)
            hidden_states = torch.add(branch, hidden_states, alpha=self.alpha)
        if self.alpha_plus_ln:
            hidden_states = torch.add(self.norm(hidden_states), hidden_states, alpha=self.alpha)
        elif not self.norm_before:
            hidden_states = self.norm(hidden_states)
        return hidden_states, extra

    def extra_repr(self) -> str:
        form = "pre" if self.norm_before else ("alpha*s+LN(s)" if self.alpha_plus_ln else "post")
        return f"norm={form}, alpha={self.alpha:.6g}"

