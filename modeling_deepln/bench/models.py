"""The contestants of ``deepln bench``: deepln models and the peers configured to the same shape.

* deepln in the equal-work scheme (``pre_ln`` for the GPT shape, ``post_ln`` for the BERT shape: the same
  operations as GPT-2 / BERT) and in the preset's own scheme (``foundation_ln`` / ``upscale_ln``).
* transformers' ``GPT2LMHeadModel`` / ``BertForMaskedLM`` with the same width, depth, heads, FFN size, vocabulary,
  positions, activation, dropout, LayerNorm epsilon and weight tying.
* Microsoft's ``torchscale`` DeepNorm decoder / encoder when the package is installed (optional; skipped with a
  note otherwise).

Every contestant is a :class:`Contestant`: a name, a ``build()`` returning a module whose
``forward(input_ids=..., labels=...)`` returns an object with ``.loss`` (and ``.logits``), and whether it can
``generate``.
"""

from __future__ import annotations

import copy
import importlib.util
from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import nn
from transformers import BertConfig, BertForMaskedLM, GPT2Config, GPT2LMHeadModel
from transformers.modeling_outputs import MaskedLMOutput

from ..model.configuration_deepln import DeepLNBertConfig, DeepLNGPTConfig
from ..model.modeling_deepln_bert import DeepLNBertForMaskedLM
from ..model.modeling_deepln_gpt import DeepLNGPTForCausalLM

__all__ = ["Contestant", "contestants_for", "peer_config", "torchscale_available"]

EQUAL_WORK_SCHEME = {"deepln_gpt": "pre_ln", "deepln_bert": "post_ln"}
"""The deepln scheme doing exactly the work of the transformers peer (GPT-2 is Pre-LN, BERT Post-LN)."""


EQUAL_WORK, SHORTCUTS, OWN_SCHEME, PEER = "equal work", "deepln shortcuts", "own scheme + shortcuts", "peer"
"""How a row's work compares with its peer's: the same operations (dense LM head); deepln-only shortcuts that skip
work the peer does (the fused LM head + loss, the masked-positions-only MLM head); the preset's own residual
scheme with those shortcuts; or the peer itself."""

SHORTCUT_NAMES = {"deepln_gpt": "fused LM head", "deepln_bert": "sparse MLM head"}


@dataclass
class Contestant:
    """One model in a benchmark row: ``name``, how to build it, what it can do, the kind of ``work`` it does
    (:data:`EQUAL_WORK`, :data:`SHORTCUTS`, :data:`OWN_SCHEME` or :data:`PEER`) and the ``peer`` (a contestant's
    name) that its ratios are computed against (``None`` for a peer)."""

    name: str
    build: Callable[[], nn.Module]
    is_deepln: bool
    can_generate: bool
    work: str = PEER
    peer: str | None = None


def torchscale_available() -> bool:
    """Whether Microsoft's ``torchscale`` package (the DeepNorm reference) can be imported."""
    return importlib.util.find_spec("torchscale") is not None


def peer_config(config: DeepLNGPTConfig | DeepLNBertConfig) -> GPT2Config | BertConfig:
    """transformers' own config of the same shape (the residual scheme aside)."""
    dropout, attn_dropout = config.hidden_dropout_prob, config.attention_probs_dropout_prob
    if config.model_type == "deepln_gpt":
        return GPT2Config(
            vocab_size=config.vocab_size, n_embd=config.hidden_size, n_layer=config.num_hidden_layers,
            n_head=config.num_attention_heads, n_inner=config.intermediate_size,
            n_positions=config.max_position_embeddings, activation_function=config.hidden_act,
            resid_pdrop=dropout, embd_pdrop=dropout, attn_pdrop=attn_dropout,
            layer_norm_epsilon=config.layer_norm_eps, initializer_range=config.initializer_range,
            tie_word_embeddings=config.tie_word_embeddings, bos_token_id=config.bos_token_id,
            eos_token_id=config.eos_token_id, pad_token_id=config.eos_token_id,
        )  # fmt: skip
    return BertConfig(
        vocab_size=config.vocab_size, hidden_size=config.hidden_size, num_hidden_layers=config.num_hidden_layers,
        num_attention_heads=config.num_attention_heads, intermediate_size=config.intermediate_size,
        max_position_embeddings=config.max_position_embeddings, type_vocab_size=config.type_vocab_size,
        hidden_act=config.hidden_act, hidden_dropout_prob=dropout, attention_probs_dropout_prob=attn_dropout,
        layer_norm_eps=config.layer_norm_eps, initializer_range=config.initializer_range,
        tie_word_embeddings=config.tie_word_embeddings, pad_token_id=config.pad_token_id,
    )  # fmt: skip


def _deepln(config: Any, scheme: str, shortcuts: bool, peer: str) -> Contestant:
    cls = DeepLNGPTForCausalLM if config.model_type == "deepln_gpt" else DeepLNBertForMaskedLM
    # another scheme gets its plain form: the peers' equal-work schemes are plain pre_ln / post_ln
    form = config.post_norm_form if scheme == config.residual_norm else "ln"
    fields = {**config.to_dict(), "residual_norm": scheme, "post_norm_form": form}
    if scheme != config.residual_norm:
        fields["final_layer_norm"] = None  # the other scheme's own default
    scheme_config = type(config).from_dict(fields)

    def build() -> nn.Module:
        model = cls(copy.deepcopy(scheme_config))  # its own config: models built side by side set their own flags
        # the head shortcut on or off explicitly, whatever the default (the path deepln pretrain uses when on)
        setattr(model, "fused_lm_loss" if cls is DeepLNGPTForCausalLM else "sparse_mlm_loss", shortcuts)
        return model

    equal = scheme == EQUAL_WORK_SCHEME[config.model_type]
    work = (SHORTCUTS if equal else OWN_SCHEME) if shortcuts else EQUAL_WORK
    name = f"deepln {scheme}" + (f" + {SHORTCUT_NAMES[config.model_type]}" if shortcuts else "")
    return Contestant(name, build, True, cls is DeepLNGPTForCausalLM, work, peer)


def _peer(config: Any) -> Contestant:
    cls = GPT2LMHeadModel if config.model_type == "deepln_gpt" else BertForMaskedLM
    return Contestant(cls.__name__, lambda: cls(peer_config(config)), False, cls is GPT2LMHeadModel)


class TorchscaleLM(nn.Module):
    """A torchscale DeepNorm encoder (BERT shape) or decoder (GPT shape) with token embeddings and an LM head,
    so that ``forward(input_ids, labels)`` does the same work as the other contestants."""

    def __init__(self, config: Any):
        super().__init__()
        from torchscale.architecture.config import DecoderConfig, EncoderConfig

        shape = dict(
            vocab_size=config.vocab_size, deepnorm=True, dropout=config.hidden_dropout_prob,
            attention_dropout=config.attention_probs_dropout_prob, activation_fn="gelu",
        )  # fmt: skip
        self.causal = config.model_type == "deepln_gpt"
        self.embed = nn.Embedding(config.vocab_size, config.hidden_size)
        self.head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        if self.causal:
            from torchscale.architecture.decoder import Decoder

            cfg = DecoderConfig(
                decoder_embed_dim=config.hidden_size, decoder_layers=config.num_hidden_layers,
                decoder_attention_heads=config.num_attention_heads, decoder_ffn_embed_dim=config.intermediate_size,
                **shape,
            )  # fmt: skip
            self.net = Decoder(cfg, embed_tokens=self.embed, output_projection=self.head)
        else:
            from torchscale.architecture.encoder import Encoder

            cfg = EncoderConfig(
                encoder_embed_dim=config.hidden_size, encoder_layers=config.num_hidden_layers,
                encoder_attention_heads=config.num_attention_heads, encoder_ffn_embed_dim=config.intermediate_size,
                **shape,
            )  # fmt: skip
            self.net = Encoder(cfg, embed_tokens=self.embed, output_projection=self.head)

    def forward(self, input_ids: torch.Tensor, labels: torch.Tensor | None = None, **kwargs: Any) -> MaskedLMOutput:
        if self.causal:
            logits = self.net(input_ids)[0]
            shift_logits, shift_labels = logits[:, :-1], labels[:, 1:] if labels is not None else None
        else:
            logits = self.net(src_tokens=input_ids, features_only=False)["encoder_out"]
            shift_logits, shift_labels = logits, labels
        loss = None
        if labels is not None:
            loss = nn.functional.cross_entropy(shift_logits.reshape(-1, logits.shape[-1]), shift_labels.reshape(-1))
        return MaskedLMOutput(loss=loss, logits=logits)


def contestants_for(config: Any, seed_scheme: bool = True, torchscale: bool = True) -> list[Contestant]:
    """The contestants of one shape, each naming the transformers peer its ratios are against: deepln at equal
    work (the peer's scheme, dense head), the same with the head shortcut, the config's own scheme with the
    shortcut (``seed_scheme``), the transformers peer, and torchscale DeepNorm when installed."""
    equal = EQUAL_WORK_SCHEME[config.model_type]
    peer = _peer(config)
    found = [_deepln(config, equal, False, peer.name), _deepln(config, equal, True, peer.name)]
    if seed_scheme and config.residual_norm != equal:
        found.append(_deepln(config, config.residual_norm, True, peer.name))
    found.append(peer)
    if torchscale and torchscale_available():
        found.append(Contestant("torchscale deepnorm", lambda: TorchscaleLM(config), False, False, EQUAL_WORK,
                                peer.name))  # fmt: skip
    return found
