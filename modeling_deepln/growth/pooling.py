"""CompoundGrow's length operator: mean-pool the embeddings that feed the first layer's queries (masked LM only).

Source: Gu et al. 2021 (§3.1, "embedding pooling"), authors' code ``grow_bert`` ``EmbedPoolLayer`` /
``TransformerEncoder.call``. With ``E = Dropout(LN(word + position + type))`` of the
``[batch, L]`` input and pool size ``p``::

    query_0 = [ E_0 ; meanpool_p(E_1..E_{L-1}) ; E_targets ]     # [CLS] kept, targets = masked positions
    key_0 = value_0 = E                                           # the first layer sees every token
    h_1 = layer_0(query_0, key_0, value_0)                        # its residual is query_0
    h_{l+1} = layer_l(h_l)   (l ≥ 1, length 1 + ⌈(L−1)/p⌉ + T)
    logits = lm_head(h_N[-T:])                                    # scored at the appended target positions

``meanpool_p`` is TF's ``avg_pool(ksize=p, strides=p, padding='SAME')`` (here ``F.avg_pool1d`` with ``ceil_mode``):
the last window of an odd remainder averages only its existing elements. The padding mask of layers ≥ 1 is
max-pooled the same way (``F.max_pool1d``) (a window is valid if any of its
tokens is). The masked positions (``labels != -100``, whose input is ``[MASK]``/random/kept per BERT's 80/10/10) are
appended *unpooled* with their own position embeddings, as the authors' data format appends ``masked_*`` targets;
unlike their pre-processed data, the main sequence here still holds the masked tokens (the collator's format), and
rows with fewer targets are padded (masked out as keys, ignored by the loss). The cost of layers ≥ 1 falls by about
``p`` (attention by ``p²``).

It has no parameters: growth removes it and the saved weights are a plain deepln checkpoint. It is applied by
replacing the ``forward`` of one model *instance* (:func:`enable_length_pooling`), never the class or the model files,
and is removed by :func:`disable_length_pooling`. Causal LM has no such treatment: every position is a prediction
target there, so no position can be pooled without dropping its loss (:func:`enable_length_pooling` refuses GPT).
"""

from __future__ import annotations

import types
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from transformers.modeling_outputs import MaskedLMOutput
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

from .operators import GrowthError

__all__ = ["mean_pool", "max_pool_mask", "enable_length_pooling", "disable_length_pooling", "pool_size"]

POOL_ATTRIBUTE = "_deepln_pool_size"


def mean_pool(hidden: torch.Tensor, size: int) -> torch.Tensor:
    """``[B, n, H]`` -> ``[B, ⌈n/size⌉, H]``: means over windows of ``size``; a partial last window averages only its
    elements (TF's ``padding='SAME'``: ``avg_pool1d`` with ``ceil_mode``, whose out-of-range part is not counted)."""
    return F.avg_pool1d(hidden.transpose(1, 2), size, size, ceil_mode=True).transpose(1, 2)


def max_pool_mask(mask: torch.Tensor, size: int) -> torch.Tensor:
    """``[B, n]`` 0/1 mask -> ``[B, ⌈n/size⌉]``: a window is valid if any of its positions is."""
    return F.max_pool1d(mask[:, None].float(), size, size, ceil_mode=True)[:, 0].long()


def pool_size(model: nn.Module) -> int:
    """The pool size currently applied to ``model`` (1: none)."""
    return int(getattr(model, POOL_ATTRIBUTE, 1))


def _gather_targets(labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Positions of the prediction targets per row (padded to the batch's max count), their validity and labels."""
    is_target = labels != -100
    count = int(is_target.sum(dim=1).max()) if labels.numel() else 0
    order = torch.sort(is_target.to(torch.int8), dim=1, descending=True, stable=True).indices[:, :count]
    valid = torch.gather(is_target, 1, order)
    target_labels = torch.where(valid, torch.gather(labels, 1, order), torch.full_like(order, -100))
    return order, valid, target_labels


def _attend(attention: nn.Module, query_in: torch.Tensor, kv_in: torch.Tensor, key_mask: torch.Tensor) -> torch.Tensor:
    """deepln self-attention with queries from ``query_in`` and keys/values from ``kv_in`` (same projections), through
    the model's attention interface (``ALL_ATTENTION_FUNCTIONS[config._attn_implementation]``, as
    ``DeepLNAttention.forward``); NormFormer's head scales and ``out_proj`` as there."""
    from ..model.layers_deepln import eager_attention_forward

    batch, q_len, _ = query_in.shape
    heads, head_dim = attention.num_heads, attention.head_dim
    query = attention.q_proj(query_in).view(batch, q_len, heads, head_dim).transpose(1, 2)
    key = attention.k_proj(kv_in).view(batch, -1, heads, head_dim).transpose(1, 2)
    value = attention.v_proj(kv_in).view(batch, -1, heads, head_dim).transpose(1, 2)
    interface = ALL_ATTENTION_FUNCTIONS.get_interface(attention.config._attn_implementation, eager_attention_forward)
    mask = key_mask.to(torch.bool)[:, None, None, :]
    dropout = attention.attention_dropout if attention.training else 0.0
    output, _ = interface(attention, query, key, value, mask, dropout=dropout, scaling=attention.scaling)
    scale = attention.head_scale  # output: [batch, q_len, heads, head_dim]
    if scale is not None and attention.head_scale_before_out_proj:
        output = output * scale[:, None].to(output.dtype)
    output = attention.out_proj(output.reshape(batch, q_len, -1))
    if scale is not None and not attention.head_scale_before_out_proj:
        output = (output.view(batch, q_len, heads, head_dim) * scale[:, None]).reshape(batch, q_len, -1)
    return output


def _pooled_first_layer(block: nn.Module, query: torch.Tensor, embeddings: torch.Tensor, mask: torch.Tensor):
    """Layer 0 with pooled queries over the full-length embeddings, inside the block's own residual connections."""
    residual = block.attention_residual
    kv_in = residual.norm(embeddings) if residual.norm_before else embeddings
    hidden, _ = residual(query, lambda normed_query: _attend(block.attention, normed_query, kv_in, mask))
    hidden, _ = block.mlp_residual(hidden, block.mlp)
    return hidden


def pooled_mlm_forward(
    self: nn.Module,
    input_ids: torch.LongTensor | None = None,
    attention_mask: torch.Tensor | None = None,
    token_type_ids: torch.LongTensor | None = None,
    position_ids: torch.LongTensor | None = None,
    inputs_embeds: torch.FloatTensor | None = None,
    labels: torch.LongTensor | None = None,
    **kwargs: Any,
) -> MaskedLMOutput:
    """``DeepLNBertForMaskedLM.forward`` with the first layer's queries mean-pooled (module docstring).

    ``logits`` are ``[batch, T, vocab]`` for the ``T`` target positions (those of ``labels != -100``), not for every
    input position. Without ``labels`` nothing is pooled (the plain forward runs).
    """
    if labels is None:
        return type(self).forward(self, input_ids, attention_mask, token_type_ids, position_ids, inputs_embeds, **kwargs)
    from ..model.layers_deepln import pop_loss_kwargs, run_blocks

    size, bert = pool_size(self), self.bert
    loss_kwargs = pop_loss_kwargs(kwargs)
    embeddings = bert.embeddings(input_ids, token_type_ids, position_ids, inputs_embeds)
    batch, length, hidden_size = embeddings.shape
    if attention_mask is None:
        attention_mask = torch.ones(batch, length, dtype=torch.long, device=embeddings.device)
    order, valid, target_labels = _gather_targets(labels)
    targets = torch.gather(embeddings, 1, order[..., None].expand(-1, -1, hidden_size))
    query = torch.cat([embeddings[:, :1], mean_pool(embeddings[:, 1:], size), targets], dim=1)
    query_mask = torch.cat([attention_mask[:, :1].long(), max_pool_mask(attention_mask[:, 1:], size), valid.long()], 1)
    hidden = _pooled_first_layer(bert.layers[0], query, embeddings, attention_mask)
    layer_mask = query_mask.to(torch.bool)[:, None, None, :]
    hidden, _, _ = run_blocks(bert.layers[1:], bert.final_norm, hidden, layer_mask, None, False, False)
    logits = self.lm_head(hidden[:, hidden.shape[1] - order.shape[1] :])
    loss = self.loss_function(logits, target_labels, vocab_size=self.config.vocab_size, **loss_kwargs)
    return MaskedLMOutput(loss=loss, logits=logits)


def enable_length_pooling(model: nn.Module, size: int) -> None:
    """Pool the first layer's queries of this BERT masked-LM instance by ``size`` (``1`` removes the pooling)."""
    if size == 1:
        disable_length_pooling(model)
        return
    if int(size) != size or size < 1:
        raise GrowthError(f"Pool size must be a positive integer, got {size}.")
    if not (hasattr(model, "bert") and hasattr(model, "lm_head")):
        raise GrowthError(
            f"The length treatment (embedding pooling) applies to BERT masked-LM models only, not "
            f"{type(model).__name__}: in causal LM every position is a target. Use depth/width growth for GPT."
        )
    setattr(model, POOL_ATTRIBUTE, int(size))
    model.forward = types.MethodType(pooled_mlm_forward, model)


def disable_length_pooling(model: nn.Module) -> None:
    """Remove the pooling (it has no parameters): the plain forward of the model class runs again."""
    model.__dict__.pop("forward", None)
    model.__dict__.pop(POOL_ATTRIBUTE, None)
