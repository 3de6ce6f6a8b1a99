"""Convert transformers' own GPT-2 and BERT models into deepln models with identical outputs.

``gpt2_to_deepln(GPT2LMHeadModel) -> DeepLNGPTForCausalLM`` (scheme ``pre_ln``) and
``bert_to_deepln(BertForMaskedLM) -> DeepLNBertForMaskedLM`` (scheme ``post_ln``). They are the independent
reference that proves the deepln blocks right: on the same weights the logits match to float precision.
They also let a user start a deep scheme from a pretrained checkpoint (convert, then change the config).
"""

from __future__ import annotations

import torch
from transformers import BertForMaskedLM, GPT2LMHeadModel

from .model.configuration_deepln import DeepLNBertConfig, DeepLNGPTConfig
from .model.modeling_deepln_bert import DeepLNBertForMaskedLM
from .model.modeling_deepln_gpt import DeepLNGPTForCausalLM


def _load_exact(model: torch.nn.Module, state_dict: dict[str, torch.Tensor]) -> None:
    """Load ``state_dict`` into ``model``; every key must match (tied weights may be absent)."""
    missing, unexpected = model.load_state_dict(state_dict, strict=False)
    tied = set(getattr(model, "all_tied_weights_keys", {}) or {})
    missing = [key for key in missing if key not in tied]
    if missing or unexpected:
        raise RuntimeError(f"Conversion bug: missing keys {missing}, unexpected keys {unexpected}.")


def gpt2_to_deepln(model: GPT2LMHeadModel) -> DeepLNGPTForCausalLM:
    """A :class:`DeepLNGPTForCausalLM` (``residual_norm="pre_ln"``) computing the same function as ``model``.

    GPT-2's ``Conv1D`` weights are ``[in, out]``; deepln's ``nn.Linear`` weights are ``[out, in]``, and GPT-2's
    fused ``c_attn`` is split into ``q_proj``, ``k_proj``, ``v_proj``.
    """
    source = model.config
    unsupported = {
        "scale_attn_by_inverse_layer_idx": False,
        "reorder_and_upcast_attn": False,
        "scale_attn_weights": True,
        "add_cross_attention": False,
    }
    for field, expected in unsupported.items():
        if getattr(source, field, expected) != expected:
            raise ValueError(f"gpt2_to_deepln supports GPT-2 with {field}={expected} only.")
    config = DeepLNGPTConfig(
        vocab_size=source.vocab_size,
        hidden_size=source.n_embd,
        num_hidden_layers=source.n_layer,
        num_attention_heads=source.n_head,
        intermediate_size=source.n_inner or 4 * source.n_embd,
        max_position_embeddings=source.n_positions,
        hidden_act=source.activation_function,
        hidden_dropout_prob=source.resid_pdrop,
        attention_probs_dropout_prob=source.attn_pdrop,
        embedding_dropout_prob=source.embd_pdrop,
        layer_norm_eps=source.layer_norm_epsilon,
        initializer_range=source.initializer_range,
        residual_norm="pre_ln",
        tie_word_embeddings=bool(getattr(source, "tie_word_embeddings", True)),
        bos_token_id=source.bos_token_id,
        eos_token_id=source.eos_token_id,
        pad_token_id=getattr(source, "pad_token_id", None),
    )
    target = DeepLNGPTForCausalLM(config)
    sd = model.state_dict()
    d = source.n_embd
    new = {
        "transformer.token_embeddings.weight": sd["transformer.wte.weight"],
        "transformer.position_embeddings.weight": sd["transformer.wpe.weight"],
        "transformer.final_norm.weight": sd["transformer.ln_f.weight"],
        "transformer.final_norm.bias": sd["transformer.ln_f.bias"],
        "lm_head.weight": sd["lm_head.weight"],
    }
    for i in range(source.n_layer):
        src, dst = f"transformer.h.{i}.", f"transformer.layers.{i}."
        qkv_weight, qkv_bias = sd[src + "attn.c_attn.weight"], sd[src + "attn.c_attn.bias"]
        for j, name in enumerate(("q_proj", "k_proj", "v_proj")):
            new[dst + f"attention.{name}.weight"] = qkv_weight[:, j * d : (j + 1) * d].t()
            new[dst + f"attention.{name}.bias"] = qkv_bias[j * d : (j + 1) * d]
        pairs = {
            "attention.out_proj": "attn.c_proj",
            "mlp.fc1": "mlp.c_fc",
            "mlp.fc2": "mlp.c_proj",
        }
        for ours, theirs in pairs.items():
            new[dst + ours + ".weight"] = sd[src + theirs + ".weight"].t()
            new[dst + ours + ".bias"] = sd[src + theirs + ".bias"]
        for ours, theirs in (("attention_residual.norm", "ln_1"), ("mlp_residual.norm", "ln_2")):
            new[dst + ours + ".weight"] = sd[src + theirs + ".weight"]
            new[dst + ours + ".bias"] = sd[src + theirs + ".bias"]
    _load_exact(target, {key: value.contiguous() for key, value in new.items()})
    return target.to(dtype=next(model.parameters()).dtype)


def bert_to_deepln(model: BertForMaskedLM) -> DeepLNBertForMaskedLM:
    """A :class:`DeepLNBertForMaskedLM` (``residual_norm="post_ln"``) computing the same function as ``model``."""
    source = model.config
    if getattr(source, "position_embedding_type", "absolute") != "absolute":
        raise ValueError("bert_to_deepln supports absolute position embeddings only.")
    if getattr(source, "is_decoder", False) or getattr(source, "add_cross_attention", False):
        raise ValueError("bert_to_deepln converts encoder BERT models (is_decoder=False) only.")
    config = DeepLNBertConfig(
        vocab_size=source.vocab_size,
        hidden_size=source.hidden_size,
        num_hidden_layers=source.num_hidden_layers,
        num_attention_heads=source.num_attention_heads,
        intermediate_size=source.intermediate_size,
        max_position_embeddings=source.max_position_embeddings,
        type_vocab_size=source.type_vocab_size,
        hidden_act=source.hidden_act,
        hidden_dropout_prob=source.hidden_dropout_prob,
        attention_probs_dropout_prob=source.attention_probs_dropout_prob,
        layer_norm_eps=source.layer_norm_eps,
        initializer_range=source.initializer_range,
        residual_norm="post_ln",
        tie_word_embeddings=bool(getattr(source, "tie_word_embeddings", True)),
        pad_token_id=source.pad_token_id,
    )
    target = DeepLNBertForMaskedLM(config)
    sd = model.state_dict()
    new = {
        "lm_head.dense.weight": sd["cls.predictions.transform.dense.weight"],
        "lm_head.dense.bias": sd["cls.predictions.transform.dense.bias"],
        "lm_head.norm.weight": sd["cls.predictions.transform.LayerNorm.weight"],
        "lm_head.norm.bias": sd["cls.predictions.transform.LayerNorm.bias"],
        "lm_head.decoder.weight": sd["cls.predictions.decoder.weight"],
        "lm_head.decoder.bias": sd.get("cls.predictions.decoder.bias", sd.get("cls.predictions.bias")),
    }
    for name in ("word_embeddings", "position_embeddings", "token_type_embeddings"):
        new[f"bert.embeddings.{name}.weight"] = sd[f"bert.embeddings.{name}.weight"]
    new["bert.embeddings.norm.weight"] = sd["bert.embeddings.LayerNorm.weight"]
    new["bert.embeddings.norm.bias"] = sd["bert.embeddings.LayerNorm.bias"]
    pairs = {
        "attention.q_proj": "attention.self.query",
        "attention.k_proj": "attention.self.key",
        "attention.v_proj": "attention.self.value",
        "attention.out_proj": "attention.output.dense",
        "attention_residual.norm": "attention.output.LayerNorm",
        "mlp.fc1": "intermediate.dense",
        "mlp.fc2": "output.dense",
        "mlp_residual.norm": "output.LayerNorm",
    }
    for i in range(source.num_hidden_layers):
        for ours, theirs in pairs.items():
            for kind in ("weight", "bias"):
                new[f"bert.layers.{i}.{ours}.{kind}"] = sd[f"bert.encoder.layer.{i}.{theirs}.{kind}"]
    _load_exact(target, new)
    return target.to(dtype=next(model.parameters()).dtype)


__all__ = ["gpt2_to_deepln", "bert_to_deepln"]
