"""Configurations of the deepln models: :class:`DeepLNBertConfig` and :class:`DeepLNGPTConfig`.

Both use transformers' usual field names (``hidden_size``, ``num_hidden_layers``, ...) and add one field,
``residual_norm``, that selects the residual-normalization scheme (``post_ln``, ``pre_ln``, ``deepnorm``,
``upscale_ln``, ``foundation_ln``, ``normformer``; see :mod:`residual_deepln`). Every value is checked when
the config is built, so a wrong value fails early with a message that says what to change.
"""

from __future__ import annotations

import difflib
from typing import Any

from transformers import PretrainedConfig

from .residual_deepln import POST_NORM_FORMS, RESIDUAL_SCHEMES, get_residual_scheme

HEAD_SCALE_POSITIONS = ("before_out_proj", "after_out_proj")
POSITION_EMBEDDING_INITS = ("normal", "sinusoidal")
FAST_PATH_FIELDS = ("fuse_qkv", "threaded_matvec", "fused_lm_loss", "sparse_mlm_loss")
"""Switches that pick a faster computation of the same function (README, "Speed"); saved with the config."""

_BERT_AUTO_MAP = {
    "AutoConfig": "configuration_deepln.DeepLNBertConfig",
    "AutoModel": "modeling_deepln_bert.DeepLNBertModel",
    "AutoModelForMaskedLM": "modeling_deepln_bert.DeepLNBertForMaskedLM",
    "AutoModelForSequenceClassification": "modeling_deepln_bert.DeepLNBertForSequenceClassification",
}
_GPT_AUTO_MAP = {
    "AutoConfig": "configuration_deepln.DeepLNGPTConfig",
    "AutoModel": "modeling_deepln_gpt.DeepLNGPTModel",
    "AutoModelForCausalLM": "modeling_deepln_gpt.DeepLNGPTForCausalLM",
    "AutoModelForSequenceClassification": "modeling_deepln_gpt.DeepLNGPTForSequenceClassification",
}


_COMMON_DEFAULTS: dict[str, Any] = {
    "intermediate_size": None,
    "hidden_dropout_prob": 0.1,
    "attention_probs_dropout_prob": 0.1,
    "initializer_range": 0.02,
    "position_embedding_init": "normal",
    "residual_alpha": None,
    "residual_beta": None,
    "post_norm_form": None,
    "final_layer_norm": None,
    "final_hidden_scale": 1.0,
    "scale_output_init": False,
    "normformer_head_scale": True,
    "normformer_attn_norm": True,
    "normformer_ffn_norm": True,
    "normformer_residual_scale": False,
    "normformer_head_scale_position": "before_out_proj",
    "tie_word_embeddings": True,
    "fuse_qkv": True,
    "threaded_matvec": True,
}
"""Defaults shared by both families; each config class adds its own in ``_family_defaults``."""


class _DeepLNConfig(PretrainedConfig):
    """Fields and validation shared by the BERT and GPT configs (not registered itself).

    Every field is a keyword argument; the defaults are ``_COMMON_DEFAULTS`` updated with the subclass's
    ``_family_defaults`` (both listed in the subclass docstrings).
    """

    _family_defaults = {}  # no annotations here: transformers turns config classes into dataclasses
    _deepln_auto_map = {}

    def __init__(self, **kwargs: Any):
        for name, default in {**_COMMON_DEFAULTS, **self._family_defaults}.items():
            setattr(self, name, kwargs.pop(name, default))
        if self.intermediate_size is None and isinstance(self.hidden_size, int):
            self.intermediate_size = 4 * self.hidden_size
        self._reject_misspelt_fields(kwargs)
        if self.post_norm_form is None and isinstance(getattr(self, "residual_norm", None), str):
            # stored explicitly, so a saved model keeps its form if a scheme's default changes; a config saved
            # before the field existed (it carries transformers_version) was trained with the only form then, "ln"
            scheme = RESIDUAL_SCHEMES.get(self.residual_norm)
            if "transformers_version" in kwargs and scheme is not None and scheme.norm_position == "post":
                self.post_norm_form = "ln"
            else:
                self.post_norm_form = scheme.default_post_norm_form if scheme else None
        if self.final_layer_norm is None and isinstance(getattr(self, "residual_norm", None), str):
            scheme = RESIDUAL_SCHEMES.get(self.residual_norm)  # stored explicitly, like the form
            self.final_layer_norm = scheme.final_norm if scheme else None
        # A complete auto_map, so AutoModel / any head loads a folder saved from any head (remote code).
        kwargs.setdefault("auto_map", dict(self._deepln_auto_map))
        super().__init__(**kwargs)
        self.validate_deepln()

    @classmethod
    def from_dict(cls, config_dict: dict[str, Any], **kwargs: Any):
        """``from_pretrained(folder, residual_norm=..., num_attention_heads=...)``: transformers sets such
        keyword overrides on the finished config with ``setattr``, past the checks of ``__init__``. deepln's own
        fields go into the constructor instead (and so do near-misses of their names), so an override is
        validated like a new config: a bad value or a typo raises there, not in the middle of a forward or
        never. A new ``residual_norm`` also brings that scheme's ``post_norm_form`` and ``final_layer_norm``
        (saved explicitly, so they would otherwise stay the old scheme's), unless those are overridden too."""
        own = {**_COMMON_DEFAULTS, **cls._family_defaults}
        misspelt = [key for key in kwargs if key not in own and difflib.get_close_matches(key, own, 1, 0.85)]
        overrides = {key: kwargs.pop(key) for key in list(kwargs) if key in own or key in misspelt}
        scheme = RESIDUAL_SCHEMES.get(overrides.get("residual_norm"))
        if scheme is not None and overrides["residual_norm"] != config_dict.get("residual_norm"):
            overrides.setdefault("post_norm_form", scheme.default_post_norm_form)
            overrides.setdefault("final_layer_norm", scheme.final_norm)
        return super().from_dict({**config_dict, **overrides}, **kwargs)

    # ------------------------------------------------------------------------------------------------------
    @property
    def residual_scheme(self):
        """The :class:`~residual_deepln.ResidualScheme` object selected by ``residual_norm``."""
        return get_residual_scheme(self.residual_norm)

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    def _reject_misspelt_fields(self, kwargs: dict[str, Any]) -> None:
        """transformers keeps unknown keyword arguments silently; reject those that look like a typo of ours."""
        if "head_dim" in kwargs:
            raise ValueError(
                f"{type(self).__name__} derives head_dim from hidden_size / num_attention_heads; "
                "set those instead of head_dim."
            )
        own = [name for name in vars(self) if not name.startswith("_")]
        for key in kwargs:
            if key in own:
                continue
            close = difflib.get_close_matches(key, own, n=1, cutoff=0.85)
            if close:
                raise ValueError(
                    f"{type(self).__name__} got an unknown field {key!r}; did you mean {close[0]!r}?"
                )

    def validate_deepln(self) -> None:
        """Check every deepln field; raise ``ValueError`` saying what is wrong and how to fix it."""
        name = type(self).__name__
        get_residual_scheme(self.residual_norm)  # unknown scheme -> ValueError listing the choices
        for field in (
            "vocab_size",
            "hidden_size",
            "num_hidden_layers",
            "num_attention_heads",
            "intermediate_size",
            "max_position_embeddings",
        ):
            value = getattr(self, field)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"{name}.{field} must be a positive integer, got {value!r}.")
        if self.hidden_size % self.num_attention_heads != 0:
            raise ValueError(
                f"{name}: hidden_size ({self.hidden_size}) must be divisible by num_attention_heads "
                f"({self.num_attention_heads}); pick a head count that divides it."
            )
        for field in ("hidden_dropout_prob", "attention_probs_dropout_prob"):
            value = getattr(self, field)
            if not isinstance(value, (int, float)) or not 0.0 <= value < 1.0:
                raise ValueError(f"{name}.{field} must be a probability in [0, 1), got {value!r}.")
        for field in ("layer_norm_eps", "initializer_range"):
            value = getattr(self, field)
            if not isinstance(value, (int, float)) or value <= 0:
                raise ValueError(f"{name}.{field} must be a positive number, got {value!r}.")
        for field in ("residual_alpha", "residual_beta"):
            value = getattr(self, field)
            if value is not None and (not isinstance(value, (int, float)) or value <= 0):
                raise ValueError(
                    f"{name}.{field} must be a positive number or None (the scheme's formula), got {value!r}."
                )
        if self.post_norm_form not in POST_NORM_FORMS:
            raise ValueError(
                f"{name}.post_norm_form must be one of {POST_NORM_FORMS}, got {self.post_norm_form!r}."
            )
        if self.post_norm_form != "ln" and self.residual_scheme.norm_position != "post":
            raise ValueError(
                f"{name}.post_norm_form={self.post_norm_form!r} applies to the Post-LN family (post_ln, deepnorm, "
                f"upscale_ln, foundation_ln); residual_norm={self.residual_norm!r} normalises before the sublayer. "
                "Use post_norm_form='ln' (or None)."
            )
        if not isinstance(self.final_layer_norm, bool):
            raise ValueError(
                f"{name}.final_layer_norm must be True, False or None (the scheme's default), "
                f"got {self.final_layer_norm!r}."
            )
        scale = self.final_hidden_scale
        if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not 0 < scale < float("inf"):
            raise ValueError(
                f"{name}.final_hidden_scale must be a positive number (1: no scale), got {scale!r}."
            )
        if self.position_embedding_init not in POSITION_EMBEDDING_INITS:
            raise ValueError(
                f"{name}.position_embedding_init must be one of {POSITION_EMBEDDING_INITS}, "
                f"got {self.position_embedding_init!r}."
            )
        if self.normformer_head_scale_position not in HEAD_SCALE_POSITIONS:
            raise ValueError(
                f"{name}.normformer_head_scale_position must be one of {HEAD_SCALE_POSITIONS}, "
                f"got {self.normformer_head_scale_position!r}."
            )
        for field in FAST_PATH_FIELDS:
            if not isinstance(getattr(self, field, False), bool):
                raise ValueError(f"{name}.{field} must be True or False, got {getattr(self, field)!r}.")
        from transformers.activations import ACT2FN

        if self.hidden_act not in ACT2FN:
            raise ValueError(
                f"{name}.hidden_act {self.hidden_act!r} is not a transformers activation; "
                "use e.g. 'gelu' (BERT), 'gelu_new' (GPT-2) or 'relu'."
            )

    # Helpers used by the model code -------------------------------------------------------------------------
    @property
    def uses_head_scale(self) -> bool:
        return self.residual_scheme.normformer and self.normformer_head_scale

    @property
    def uses_attn_branch_norm(self) -> bool:
        return self.residual_scheme.normformer and self.normformer_attn_norm

    @property
    def uses_ffn_mid_norm(self) -> bool:
        return self.residual_scheme.normformer and self.normformer_ffn_norm

    @property
    def uses_residual_scale(self) -> bool:
        return self.residual_scheme.normformer and self.normformer_residual_scale


class DeepLNBertConfig(_DeepLNConfig):
    r"""Configuration of a deepln BERT (bidirectional encoder, MLM / sequence classification).

    Field names and defaults follow ``transformers.BertConfig`` (bert-base shapes), with the depth and the
    residual-normalization scheme on top. The BERT-1k preset of the FoundationLayerNorm paper is
    ``configuration/bert-1k.json``.

    Args:
        vocab_size: number of token ids (30,522 for the original uncased WordPiece).
        hidden_size, num_hidden_layers, num_attention_heads: the model's width, depth and head count.
        intermediate_size: FFN inner size; default 3,072 (``BertConfig``'s, whatever the width); ``None`` means
            ``4 * hidden_size``.
        max_position_embeddings: longest sequence the model accepts.
        type_vocab_size: number of segment (token type) ids.
        hidden_act: FFN activation, a key of ``transformers.activations.ACT2FN``.
        hidden_dropout_prob, attention_probs_dropout_prob: dropout on sublayer outputs / attention probs.
        classifier_dropout: dropout before the sequence-classification head (``None``: ``hidden_dropout_prob``).
        layer_norm_eps, initializer_range: LayerNorm epsilon and the std of the standard ``N(0, σ)`` init.
        position_embedding_init: init of the learned position embeddings: ``"normal"`` (BERT/GPT-2: ``N(0, σ)``)
            or ``"sinusoidal"`` (Vaswani et al. 2017 §3.5, ``PE(p, 2i) = sin(p / 10000^(2i/d))``,
            ``PE(p, 2i+1) = cos(...)``, times σ; still trained). Only the start differs: with sinusoids an offset
            between positions is a linear map of the embedding, which attention can pick up at once; measured to
            help a masked LM learn from its neighbours in a short run (README, "The BERT main job").
        residual_norm: the scheme: ``post_ln`` (default, BERT), ``pre_ln``, ``deepnorm``, ``upscale_ln``,
            ``foundation_ln`` or ``normformer``.
        residual_alpha: override the scheme's residual multiplier α (``None``: the scheme's formula).
        residual_beta: override DeepNorm's init gain β (``None``: the formula; other schemes: standard init).
        post_norm_form: the Post-LN family's normalisation at the residual sum: ``"ln"`` = ``LN(α·x + G(x))``
            or ``"alpha_plus_ln"`` = ``α·s + LN(s)`` with ``s = x + G(x)`` (the FoundationLayerNorm author's
            module; see ``residual_deepln``). ``None``: the scheme's default (``"alpha_plus_ln"`` for
            ``foundation_ln``, measured; ``"ln"`` otherwise), stored explicitly; a saved config without the field
            (older deepln) loads as ``"ln"``.
        final_layer_norm: end the stack with one more LayerNorm (``final_norm``) before the heads, whatever the
            scheme. ``None``: the scheme's default, stored explicitly: yes for the Pre-LN schemes (``pre_ln``,
            ``normformer``), no for the Post-LN family. In the ``"alpha_plus_ln"`` form the last hidden state
            ``α·s + LN(s)`` is not normalised, and ``True`` gives the head a normalised input (loss at init ``ln V``
            instead of about twice that); measured to diverge in the 48-layer default run, so it is opt-in (README,
            "Residual-normalization schemes").
        final_hidden_scale: multiply the last hidden state (after ``final_norm``, if any) by this constant before
            the heads (default 1: nothing). In FoundationLayerNorm's ``α·s + LN(s)`` form the stream is a geometric
            sum of the residual sums' LayerNorm outputs, of RMS up to ``1 / (1 − α)`` (38.5) at init, and ``1 − α``
            turns it into their weighted average, so a head initialised for normalised inputs starts at loss
            ``ln V`` (9.02 instead of 17.6 at 1,000 layers, hidden 32; 9.06 instead of 47.4 at hidden 256). Measured,
            that start is not an improvement: the 1,000-layer ``gpt-1k-cpu`` run stays on the unigram plateau with it
            where the unscaled form learns (README, "1,000 layers"), so it is an ablation, not a default.
        scale_output_init: init the attention-output and FFN-output weights with ``σ/sqrt(2N)``
            (GPT-2/Megatron scaled init) in schemes without β.
        normformer_head_scale, normformer_attn_norm, normformer_ffn_norm, normformer_residual_scale:
            NormFormer's switches (used only when ``residual_norm="normformer"``).
        normformer_head_scale_position: ``"before_out_proj"`` (paper) or ``"after_out_proj"`` (fairseq).
        tie_word_embeddings: tie the MLM decoder to the word embeddings.
        fuse_qkv: compute the query, key and value projections as one matmul (``[3d, d]`` weight) instead of three;
            the same parameters, names and outputs (to float rounding). Used only while ``q_proj``, ``k_proj`` and
            ``v_proj`` are plain ``nn.Linear`` s without hooks, so LoRA/PEFT adapters and forward hooks still see
            three separate projections, and only where the concatenation (a copy of ``3d²`` weights per call) is cheap
            against the matmul: ``d ≤ 147`` or at least ``d/2`` rows (a decode step at ``d = 256`` runs three).
            Default ``True``.
        threaded_matvec: on a CPU, compute the products of at most 4 rows (tokens; 16 for weights with at least as
            many outputs as inputs) without gradients, such as a generation step's, as ``W·xᵀ`` with the weight's
            output rows cut into one block per thread, in one batched product (``decode_deepln.decode_linear``),
            instead of ``F.linear``'s single-threaded matrix-vector path: the same products to float rounding,
            reading the weights where they are (no copies). Only for plain ``nn.Linear`` s without hooks (LoRA
            layers and watched modules run as before). Default ``True``.
        sparse_mlm_loss: in a training forward (``model.train()``, gradients on) with ``labels``, run the MLM head
            only on the masked positions (``labels != -100``): the loss and its gradients equal the dense head's,
            the head's work shrinks to the masking rate, and ``outputs.logits`` is ``None`` (Cramming, Geiping &
            Goldstein 2022, arXiv 2212.14034; ModernBERT). Evaluation and ``model.eval()`` forwards still return
            logits. Default ``False`` (code that reads training logits keeps working); ``deepln pretrain`` turns
            it on.
    """

    model_type = "deepln_bert"
    _deepln_auto_map = _BERT_AUTO_MAP
    _family_defaults = {
        "vocab_size": 30522,
        "hidden_size": 768,
        "num_hidden_layers": 12,
        "num_attention_heads": 12,
        "intermediate_size": 3072,
        "max_position_embeddings": 512,
        "type_vocab_size": 2,
        "sparse_mlm_loss": False,
        "hidden_act": "gelu",
        "classifier_dropout": None,
        "layer_norm_eps": 1e-12,
        "residual_norm": "post_ln",
        "use_cache": False,
        "pad_token_id": 0,
        "bos_token_id": None,
        "eos_token_id": None,
    }

    def __init__(self, **kwargs: Any):  # an own __init__ keeps transformers from generating a dataclass one
        super().__init__(**kwargs)

    def validate_deepln(self) -> None:
        super().validate_deepln()
        value = self.type_vocab_size
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise ValueError(f"DeepLNBertConfig.type_vocab_size must be a positive integer, got {value!r}.")


class DeepLNGPTConfig(_DeepLNConfig):
    r"""Configuration of a deepln GPT (causal decoder, language modeling / sequence classification).

    Field names follow BERT/Llama (``hidden_size``, ``num_hidden_layers``, ...); defaults are GPT-2 small's
    shapes with the Pre-LN scheme, so ``DeepLNGPTConfig()`` is GPT-2. The GPT-1k preset of the
    FoundationLayerNorm paper is ``configuration/gpt-1k.json``. Arguments are those of
    :class:`DeepLNBertConfig` without the segment fields; ``residual_norm`` defaults to ``pre_ln``.
    ``use_cache`` enables the KV cache in generation; ``embedding_dropout_prob`` is the dropout on the
    embeddings (GPT-2's ``embd_pdrop``; ``None``: ``hidden_dropout_prob``); ``lm_head_transform`` puts BERT's
    head transform ``LN(act(dense(h)))`` before the LM head (off: GPT-2's bare head; the post-LN presets turn it
    on, see ``layers_deepln.LMHeadTransform``).

    ``fused_lm_loss``: in a training forward (``model.train()``, gradients on) with ``labels``, compute the LM head
    and the cross-entropy together, chunk by chunk, without the ``[tokens, vocab]`` logits
    (``loss_deepln.linear_cross_entropy``, Liger-Kernel's fused linear cross-entropy): the same loss and
    gradients, less memory and time, and ``outputs.logits`` is ``None``, as under transformers'
    ``use_liger_kernel``. Evaluation, generation and ``model.eval()`` forwards return logits, and so does a head
    that is wrapped or hooked (LoRA on ``lm_head``, Accelerate's device hooks: the fused loss would bypass them).
    Default ``False``
    (code that reads training logits, e.g. a token-accuracy metric, keeps working); ``deepln pretrain`` turns it
    on. ``fuse_qkv`` as in :class:`DeepLNBertConfig`.

    ``threaded_matvec`` as in :class:`DeepLNBertConfig` (greedy generation at batch 1, 48 layers, 2 AMD EPYC cores:
    1.6x faster than through ``F.linear``; the README's speed section).
    """

    model_type = "deepln_gpt"
    _deepln_auto_map = _GPT_AUTO_MAP
    _family_defaults = {
        "vocab_size": 50257,
        "hidden_size": 768,
        "num_hidden_layers": 12,
        "num_attention_heads": 12,
        "max_position_embeddings": 1024,
        "hidden_act": "gelu_new",
        "embedding_dropout_prob": None,
        "lm_head_transform": False,
        "fused_lm_loss": False,
        "layer_norm_eps": 1e-5,
        "residual_norm": "pre_ln",
        "use_cache": True,
        "pad_token_id": None,
        "bos_token_id": 50256,
        "eos_token_id": 50256,
    }

    def __init__(self, **kwargs: Any):  # an own __init__ keeps transformers from generating a dataclass one
        super().__init__(**kwargs)


__all__ = ["DeepLNBertConfig", "DeepLNGPTConfig", "RESIDUAL_SCHEMES"]
