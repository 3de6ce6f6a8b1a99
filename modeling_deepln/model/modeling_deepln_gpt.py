"""deepln GPT: a causal decoder of any depth with a selectable residual-normalization scheme.

``DeepLNGPTConfig(residual_norm="pre_ln")`` is GPT-2 (``modeling_deepln.convert.gpt2_to_deepln`` converts
GPT-2 weights and gives the same logits); ``foundation_ln`` is the GPT-1k model of the FoundationLayerNorm
paper (arXiv 2204.04477); ``deepnorm`` is DeepNet's decoder-only model (arXiv 2203.00555).

Classes: :class:`DeepLNGPTModel` (hidden states), :class:`DeepLNGPTForCausalLM` (LM head, ``generate`` with
the KV cache), :class:`DeepLNGPTForSequenceClassification` (pools the last non-padding token, like GPT-2).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from transformers.cache_utils import Cache, DynamicCache
from transformers.generation import GenerationMixin
from transformers.masking_utils import create_causal_mask
from transformers.modeling_outputs import (
    BaseModelOutputWithPast,
    CausalLMOutputWithPast,
    SequenceClassifierOutputWithPast,
)
from transformers.utils import logging

from .configuration_deepln import DeepLNGPTConfig
from .decode_deepln import is_plain_linear, run_linear
from .layers_deepln import (
    CACHE_FIELD,
    DeepLNPreTrainedModel,
    LMHeadTransform,
    build_blocks,
    call_eagerly,
    check_input_ids,
    check_inputs,
    check_sequence_length,
    keep_last_positions,
    not_traced,
    pop_loss_kwargs,
    position_embeddings,
    run_blocks,
)
from .loss_deepln import linear_cross_entropy

logger = logging.get_logger(__name__)

class DeepLNGPTPreTrainedModel(DeepLNPreTrainedModel):
    config_class = DeepLNGPTConfig
    base_model_prefix = "transformer"


class DeepLNGPTModel(DeepLNGPTPreTrainedModel):
    """Token + learned position embeddings, ``num_hidden_layers`` causal :class:`DeepLNBlock` s, and a final
    LayerNorm ``final_norm`` when ``config.final_layer_norm`` (by default: the Pre-LN schemes
    ``pre_ln`` and ``normformer``)."""

    def __init__(self, config: DeepLNGPTConfig):
        super().__init__(config)
        self.token_embeddings = nn.Embedding(config.vocab_size, config.hidden_size)
        self.position_embeddings = position_embeddings(config)
        dropout = config.embedding_dropout_prob
        self.dropout = nn.Dropout(config.hidden_dropout_prob if dropout is None else dropout)
        self.layers = build_blocks(config, is_causal=True)
        self.final_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps) if config.final_layer_norm else None
        self.gradient_checkpointing = False
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.token_embeddings

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.token_embeddings = value

    def _embed(
        self,
        input_ids: torch.Tensor | None,
        inputs_embeds: torch.Tensor | None,
        attention_mask: torch.Tensor | None,
        position_ids: torch.Tensor | None,
        cache: Cache | None,
    ) -> tuple[torch.Tensor, Any, torch.Tensor]:
        """The blocks' inputs: ``dropout(token + position embeddings)``, the causal mask and the positions."""
        if inputs_embeds is None:
            check_input_ids(input_ids, self.config)
            inputs_embeds = self.token_embeddings(input_ids)
        past_length = cache.get_seq_length() if cache is not None else 0
        length = inputs_embeds.shape[1]
        check_sequence_length(past_length + length, self.config)
        if position_ids is None:
            # arange(length) + past_length, as GPT-2: a static cache's length is a tensor, and an arange that
            # starts at a tensor has a data-dependent size (torch.export fails on it)
            position_ids = (torch.arange(length, device=inputs_embeds.device) + past_length).unsqueeze(0)
        else:
            check_input_ids(position_ids, self.config, self.config.max_position_embeddings, name="position_ids")
        hidden_states = self.dropout(inputs_embeds + self.position_embeddings(position_ids))
        mask = create_causal_mask(self.config, inputs_embeds, attention_mask, cache, position_ids)
        return hidden_states, mask, position_ids

    @not_traced
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache: Cache | None = None,
        inputs_embeds: torch.FloatTensor | None = None,
        use_cache: bool | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        past_key_values: Cache | None = None,
        **kwargs: Any,
    ) -> BaseModelOutputWithPast | tuple:
        r"""
        Args:
            input_ids: token ids ``[batch, seq]`` (or pass ``inputs_embeds`` ``[batch, seq, hidden]``).
            attention_mask: 1 for tokens to attend to, 0 for padding; optional (no padding assumed).
            position_ids: positions ``[batch, seq]``; default ``past_length + arange(seq)``.
            cache: a ``transformers`` ``Cache`` of the keys/values already computed (``past_key_values`` is the
                same argument under its pre-5.24 name).
            use_cache: return the updated cache (default ``config.use_cache``).
        """
        cache = cache if cache is not None else past_key_values
        check_inputs(input_ids, inputs_embeds)
        output_attentions = output_attentions if output_attentions is not None else self.config.output_attentions
        output_hidden_states = (
            output_hidden_states if output_hidden_states is not None else self.config.output_hidden_states
        )
        use_cache = use_cache if use_cache is not None else self.config.use_cache
        return_dict = return_dict if return_dict is not None else getattr(self.config, "return_dict", True)
        if self.gradient_checkpointing and self.training and use_cache:
            logger.warning_once("use_cache=True is incompatible with gradient checkpointing; using use_cache=False.")
            use_cache, cache = False, None

        if use_cache and cache is None:
            cache = DynamicCache(config=self.config)
        inputs = (input_ids, inputs_embeds, attention_mask, position_ids, cache)
        if cache is None:  # training, scoring: the embeddings stay out of torch.compile's graphs
            hidden_states, mask, position_ids = call_eagerly(self._embed, *inputs)
        else:  # generation: a compiled decode step (static cache) traces the embeddings too
            hidden_states, mask, position_ids = self._embed(*inputs)
        hidden_states, all_hidden_states, all_attentions = run_blocks(
            self.layers,
            self.final_norm,
            hidden_states,
            final_hidden_scale=self.config.final_hidden_scale,
            attention_mask=mask,
            cache=cache,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
            position_ids=position_ids,
            **kwargs,
        )
        output = BaseModelOutputWithPast(
            last_hidden_state=hidden_states,
            hidden_states=all_hidden_states,
            attentions=all_attentions,
            **{CACHE_FIELD: cache if use_cache else None},
        )
        return output if return_dict else output.to_tuple()


class DeepLNGPTForCausalLM(DeepLNGPTPreTrainedModel, GenerationMixin):
    """:class:`DeepLNGPTModel` with a linear LM head (tied to the token embeddings when
    ``config.tie_word_embeddings``), after BERT's head transform when ``config.lm_head_transform``.
    ``labels`` are shifted inside the model, as in GPT-2.

    ``config.fused_lm_loss`` (off by default, saved with the config): when on, a training forward with labels
    computes the LM head and the cross-entropy together in chunks (:func:`loss_deepln.linear_cross_entropy`) and
    returns ``logits=None``, as transformers does under Liger's ``use_liger_kernel``. ``deepln pretrain`` turns it
    on; code that reads ``outputs.logits`` while training (e.g. TRL's token accuracy) keeps the default.

    ``config.threaded_matvec`` (on by default): on a CPU, the decode steps' products (at most 4 tokens, no
    gradients) run as ``W·xᵀ`` split across the threads (:func:`decode_deepln.decode_linear`).
    """

    _tied_weights_keys = {"lm_head.weight": "transformer.token_embeddings.weight"}

    @property
    def fused_lm_loss(self) -> bool:
        """``config.fused_lm_loss`` (setting it here sets the config field)."""
        return self.config.fused_lm_loss

    @fused_lm_loss.setter
    def fused_lm_loss(self, value: bool) -> None:
        self.config.fused_lm_loss = bool(value)

    def __init__(self, config: DeepLNGPTConfig):
        super().__init__(config)
        self.transformer = DeepLNGPTModel(config)
        self.lm_head_transform = LMHeadTransform(config) if config.lm_head_transform else None
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    def get_output_embeddings(self) -> nn.Linear:
        return self.lm_head

    def set_output_embeddings(self, new_embeddings: nn.Linear) -> None:
        self.lm_head = new_embeddings

    @not_traced
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache: Cache | None = None,
        inputs_embeds: torch.FloatTensor | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        past_key_values: Cache | None = None,
        **kwargs: Any,
    ) -> CausalLMOutputWithPast | tuple:
        r"""
        Args:
            labels: ``[batch, seq]`` next-token targets, usually ``input_ids``; -100 is ignored. The model shifts
                them by one position itself.
            logits_to_keep: compute logits only for the last ``n`` positions (0: all), as ``generate`` asks.
            Other arguments: see :meth:`DeepLNGPTModel.forward`.
        """
        return_dict = return_dict if return_dict is not None else getattr(self.config, "return_dict", True)
        loss_kwargs = pop_loss_kwargs(kwargs)
        if labels is not None and use_cache is None:
            use_cache = False  # a loss computation needs no KV cache (and compiles one block for all layers)
        outputs = self.transformer(
            input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            cache=cache if cache is not None else past_key_values,
            inputs_embeds=inputs_embeds,
            use_cache=use_cache,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
            return_dict=True,
            **kwargs,
        )
        hidden_states = keep_last_positions(outputs.last_hidden_state, logits_to_keep)
        if self.lm_head_transform is not None:
            hidden_states = self.lm_head_transform(hidden_states)
        logits = loss = None
        fused = self.fused_lm_loss and self.training and torch.is_grad_enabled() and is_plain_linear(self.lm_head)
        if labels is not None and fused and self.lm_head.bias is None:
            # Training: the fused LM head + cross-entropy, no [tokens, vocab] logits (Liger's rule: no logits
            # returned when training with labels). It reads the head's weight itself, so a wrapped or hooked
            # head (LoRA on ``lm_head``, Accelerate's device hooks) takes the plain path, which calls the module.
            loss = linear_cross_entropy(hidden_states, self.lm_head.weight, labels, **loss_kwargs)
        else:
            logits = run_linear(self.lm_head, hidden_states, self.config.threaded_matvec)
            if labels is not None:
                loss = self.loss_function(logits, labels, vocab_size=self.config.vocab_size, **loss_kwargs)
        output = CausalLMOutputWithPast(
            loss=loss,
            logits=logits,
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
            **{CACHE_FIELD: getattr(outputs, CACHE_FIELD)},
        )
        return output if return_dict else output.to_tuple()


class DeepLNGPTForSequenceClassification(DeepLNGPTPreTrainedModel):
    """:class:`DeepLNGPTModel` with a linear classifier on the last non-padding token (GPT-2's rule: the
    rightmost token that is not ``pad_token_id``, so left and right padding both work)."""

    # The loss is a per-example mean that ignores Trainer's ``num_items_in_batch``: let Trainer divide it by the
    # gradient-accumulation steps itself.
    accepts_loss_kwargs = False

    def __init__(self, config: DeepLNGPTConfig):
        super().__init__(config)
        self.num_labels = config.num_labels
        self.transformer = DeepLNGPTModel(config)
        self.score = nn.Linear(config.hidden_size, config.num_labels, bias=False)
        self.post_init()

    @not_traced
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache: Cache | None = None,
        inputs_embeds: torch.FloatTensor | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        past_key_values: Cache | None = None,
        **kwargs: Any,
    ) -> SequenceClassifierOutputWithPast | tuple:
        r"""
        Args:
            labels: ``[batch]`` class ids (or floats for regression when ``num_labels == 1``).
            Other arguments: see :meth:`DeepLNGPTModel.forward`.
        """
        return_dict = return_dict if return_dict is not None else getattr(self.config, "return_dict", True)
        pop_loss_kwargs(kwargs)
        outputs = self.transformer(
            input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            cache=cache if cache is not None else past_key_values,
            inputs_embeds=inputs_embeds,
            use_cache=use_cache,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
            return_dict=True,
            **kwargs,
        )
        logits = self.score(outputs.last_hidden_state)
        batch_size = logits.shape[0]
        pad_token_id = self.config.pad_token_id
        if pad_token_id is None and batch_size != 1:
            raise ValueError(
                "Cannot classify a batch of more than one sequence without config.pad_token_id: set it to the "
                "tokenizer's pad token id (e.g. model.config.pad_token_id = tokenizer.pad_token_id)."
            )
        if pad_token_id is None or input_ids is None:
            if input_ids is None and pad_token_id is not None:
                logger.warning_once("Padding cannot be detected in inputs_embeds; pooling the last position.")
            last_token = torch.full((batch_size,), logits.shape[1] - 1, device=logits.device)
        else:
            non_pad = (input_ids != pad_token_id).to(logits.device, torch.int32)
            positions = torch.arange(input_ids.shape[-1], device=logits.device, dtype=torch.int32)
            last_token = (positions * non_pad).argmax(-1)
        pooled_logits = logits[torch.arange(batch_size, device=logits.device), last_token]
        loss = None
        if labels is not None:
            loss = self.loss_function(labels=labels, pooled_logits=pooled_logits, config=self.config)
        output = SequenceClassifierOutputWithPast(
            loss=loss,
            logits=pooled_logits,
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
            **{CACHE_FIELD: getattr(outputs, CACHE_FIELD)},
        )
        return output if return_dict else output.to_tuple()


__all__ = [
    "DeepLNGPTPreTrainedModel",
    "DeepLNGPTModel",
    "DeepLNGPTForCausalLM",
    "DeepLNGPTForSequenceClassification",
]
