"""deepln BERT: a bidirectional encoder of any depth with a selectable residual-normalization scheme.

``DeepLNBertConfig(residual_norm="post_ln")`` is BERT (``modeling_deepln.convert.bert_to_deepln`` converts
BERT weights and gives the same logits); ``upscale_ln`` is the BERT-1k model of the FoundationLayerNorm paper
(arXiv 2204.04477); ``deepnorm`` is DeepNet's encoder-only model (arXiv 2203.00555).

Classes: :class:`DeepLNBertModel` (hidden states + pooled [CLS]), :class:`DeepLNBertForMaskedLM`,
:class:`DeepLNBertForSequenceClassification` (pooled [CLS] → classifier, like ``BertForSequenceClassification``).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from transformers.masking_utils import create_bidirectional_mask
from transformers.modeling_outputs import (
    BaseModelOutputWithPooling,
    MaskedLMOutput,
    SequenceClassifierOutput,
)

from .configuration_deepln import DeepLNBertConfig
from .layers_deepln import (
    DeepLNPreTrainedModel,
    LMHeadTransform,
    build_blocks,
    call_eagerly,
    check_input_ids,
    check_inputs,
    check_sequence_length,
    not_traced,
    pop_loss_kwargs,
    position_embeddings,
    run_blocks,
)

class DeepLNBertPreTrainedModel(DeepLNPreTrainedModel):
    config_class = DeepLNBertConfig
    base_model_prefix = "bert"


class DeepLNBertEmbeddings(nn.Module):
    """``Dropout(LN(word + position + token_type))``, BERT's embeddings (kept for every scheme)."""

    def __init__(self, config: DeepLNBertConfig):
        super().__init__()
        self.word_embeddings = nn.Embedding(config.vocab_size, config.hidden_size, padding_idx=config.pad_token_id)
        self.position_embeddings = position_embeddings(config)
        self.token_type_embeddings = nn.Embedding(config.type_vocab_size, config.hidden_size)
        self.norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(
        self,
        input_ids: torch.LongTensor | None,
        token_type_ids: torch.LongTensor | None,
        position_ids: torch.LongTensor | None,
        inputs_embeds: torch.FloatTensor | None,
    ) -> torch.Tensor:
        if inputs_embeds is None:
            inputs_embeds = self.word_embeddings(input_ids)
        batch, length = inputs_embeds.shape[:2]
        if position_ids is None:
            position_ids = torch.arange(length, device=inputs_embeds.device).unsqueeze(0)
        if token_type_ids is None:
            token_type_ids = torch.zeros((batch, length), dtype=torch.long, device=inputs_embeds.device)
        embeddings = inputs_embeds + self.position_embeddings(position_ids) + self.token_type_embeddings(token_type_ids)
        return self.dropout(self.norm(embeddings))


class DeepLNBertPooler(nn.Module):
    """``tanh(W·h_[CLS] + b)``, BERT's pooler."""

    def __init__(self, config: DeepLNBertConfig):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)
        self.activation = nn.Tanh()

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.activation(self.dense(hidden_states[:, 0]))


class DeepLNBertModel(DeepLNBertPreTrainedModel):
    """BERT embeddings, ``num_hidden_layers`` bidirectional :class:`DeepLNBlock` s, a final LayerNorm
    ``final_norm`` when ``config.final_layer_norm`` (by default: the Pre-LN schemes),
    and (optionally) BERT's pooler."""

    def __init__(self, config: DeepLNBertConfig, add_pooling_layer: bool = True):
        super().__init__(config)
        self.embeddings = DeepLNBertEmbeddings(config)
        self.layers = build_blocks(config, is_causal=False)
        self.final_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps) if config.final_layer_norm else None
        self.pooler = DeepLNBertPooler(config) if add_pooling_layer else None
        self.gradient_checkpointing = False
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.embeddings.word_embeddings

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.embeddings.word_embeddings = value

    def _embed(
        self,
        input_ids: torch.Tensor | None,
        token_type_ids: torch.Tensor | None,
        position_ids: torch.Tensor | None,
        inputs_embeds: torch.Tensor | None,
        attention_mask: torch.Tensor | None,
    ) -> tuple[torch.Tensor, Any]:
        """The blocks' inputs: the embeddings (after checking the ids) and the attention mask."""
        check_input_ids(input_ids, self.config)
        check_input_ids(token_type_ids, self.config, vocab_size=self.config.type_vocab_size, name="token_type_ids")
        check_input_ids(position_ids, self.config, self.config.max_position_embeddings, name="position_ids")
        hidden_states = self.embeddings(input_ids, token_type_ids, position_ids, inputs_embeds)
        return hidden_states, create_bidirectional_mask(self.config, hidden_states, attention_mask)

    @not_traced
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.LongTensor | None = None,
        position_ids: torch.LongTensor | None = None,
        inputs_embeds: torch.FloatTensor | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        **kwargs: Any,
    ) -> BaseModelOutputWithPooling | tuple:
        r"""
        Args:
            input_ids: token ids ``[batch, seq]`` (or pass ``inputs_embeds`` ``[batch, seq, hidden]``).
            attention_mask: 1 for tokens to attend to, 0 for padding; optional (no padding assumed).
            token_type_ids: segment ids (0 for the first sentence, 1 for the second); default all 0.
            position_ids: positions ``[batch, seq]``; default ``arange(seq)``.
        """
        check_inputs(input_ids, inputs_embeds)
        return_dict = return_dict if return_dict is not None else getattr(self.config, "return_dict", True)
        length = (input_ids if input_ids is not None else inputs_embeds).shape[1]
        check_sequence_length(length, self.config)
        if output_attentions is None:
            output_attentions = self.config.output_attentions
        if output_hidden_states is None:
            output_hidden_states = self.config.output_hidden_states

        # outside torch.compile's graphs (their kernels would cost compile time and save next to nothing)
        hidden_states, mask = call_eagerly(
            self._embed, input_ids, token_type_ids, position_ids, inputs_embeds, attention_mask
        )
        hidden_states, all_hidden_states, all_attentions = run_blocks(
            self.layers,
            self.final_norm,
            hidden_states,
            final_hidden_scale=self.config.final_hidden_scale,
            attention_mask=mask,
            cache=None,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
            **kwargs,
        )
        output = BaseModelOutputWithPooling(
            last_hidden_state=hidden_states,
            pooler_output=self.pooler(hidden_states) if self.pooler is not None else None,
            hidden_states=all_hidden_states,
            attentions=all_attentions,
        )
        return output if return_dict else output.to_tuple()


class DeepLNBertLMHead(LMHeadTransform):
    """BERT's MLM head: ``decoder(LN(act(dense(h))))``; the decoder is tied to the word embeddings."""

    def __init__(self, config: DeepLNBertConfig):
        super().__init__(config)
        self.decoder = nn.Linear(config.hidden_size, config.vocab_size)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.decoder(super().forward(hidden_states))


class DeepLNBertForMaskedLM(DeepLNBertPreTrainedModel):
    """:class:`DeepLNBertModel` (without pooler) with BERT's masked-language-modeling head.

    ``config.sparse_mlm_loss`` (off by default, saved with the config): when on, a training forward with labels
    runs the head only on the masked positions (``labels != -100``) and returns ``logits=None``: the "sparse
    prediction" of Cramming (Geiping & Goldstein 2022, arXiv 2212.14034) and ModernBERT. The loss and its gradients
    are those of the dense path; the head's work shrinks to the masking rate. ``deepln pretrain`` turns it on for
    its own run.
    """

    _tied_weights_keys = {"lm_head.decoder.weight": "bert.embeddings.word_embeddings.weight"}

    @property
    def sparse_mlm_loss(self) -> bool:
        """``config.sparse_mlm_loss`` (setting it here sets the config field)."""
        return self.config.sparse_mlm_loss

    @sparse_mlm_loss.setter
    def sparse_mlm_loss(self, value: bool) -> None:
        self.config.sparse_mlm_loss = bool(value)

    def __init__(self, config: DeepLNBertConfig):
        super().__init__(config)
        self.bert = DeepLNBertModel(config, add_pooling_layer=False)
        self.lm_head = DeepLNBertLMHead(config)
        self.post_init()

    def get_output_embeddings(self) -> nn.Linear:
        return self.lm_head.decoder

    def set_output_embeddings(self, new_embeddings: nn.Linear) -> None:
        self.lm_head.decoder = new_embeddings

    def _sparse_mlm_loss(self, hidden_states: torch.Tensor, labels: torch.Tensor, loss_kwargs: dict) -> torch.Tensor:
        """The MLM loss with the head run on the masked positions (``labels != -100``) only."""
        labels = labels.to(hidden_states.device)
        masked = labels != -100
        masked_logits = self.lm_head(hidden_states[masked])
        return self.loss_function(masked_logits, labels[masked], vocab_size=self.config.vocab_size, **loss_kwargs)

    @not_traced
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.LongTensor | None = None,
        position_ids: torch.LongTensor | None = None,
        inputs_embeds: torch.FloatTensor | None = None,
        labels: torch.LongTensor | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        **kwargs: Any,
    ) -> MaskedLMOutput | tuple:
        r"""
        Args:
            labels: ``[batch, seq]`` original ids at masked positions and -100 elsewhere (as
                ``DataCollatorForLanguageModeling`` builds them).
            Other arguments: see :meth:`DeepLNBertModel.forward`.
        """
        return_dict = return_dict if return_dict is not None else getattr(self.config, "return_dict", True)
        loss_kwargs = pop_loss_kwargs(kwargs)
        outputs = self.bert(
            input_ids,
            attention_mask=attention_mask,
            token_type_ids=token_type_ids,
            position_ids=position_ids,
            inputs_embeds=inputs_embeds,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
            return_dict=True,
            **kwargs,
        )
        hidden_states, logits, loss = outputs.last_hidden_state, None, None
        if labels is not None and self.sparse_mlm_loss and self.training and torch.is_grad_enabled():
            # eager under torch.compile: the number of masked tokens changes every batch (a recompile each time)
            loss = call_eagerly(self._sparse_mlm_loss, hidden_states, labels, loss_kwargs)
        else:
            logits = self.lm_head(hidden_states)
            if labels is not None:
                loss = self.loss_function(logits, labels, vocab_size=self.config.vocab_size, **loss_kwargs)
        output = MaskedLMOutput(
            loss=loss, logits=logits, hidden_states=outputs.hidden_states, attentions=outputs.attentions
        )
        return output if return_dict else output.to_tuple()


class DeepLNBertForSequenceClassification(DeepLNBertPreTrainedModel):
    """:class:`DeepLNBertModel` with dropout and a linear classifier on the pooled [CLS] vector."""

    # The loss is a per-example mean that ignores Trainer's ``num_items_in_batch``: let Trainer divide it by the
    # gradient-accumulation steps itself.
    accepts_loss_kwargs = False

    def __init__(self, config: DeepLNBertConfig):
        super().__init__(config)
        self.num_labels = config.num_labels
        self.bert = DeepLNBertModel(config)
        dropout = config.classifier_dropout
        self.dropout = nn.Dropout(config.hidden_dropout_prob if dropout is None else dropout)
        self.classifier = nn.Linear(config.hidden_size, config.num_labels)
        self.post_init()

    @not_traced
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.LongTensor | None = None,
        position_ids: torch.LongTensor | None = None,
        inputs_embeds: torch.FloatTensor | None = None,
        labels: torch.LongTensor | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        **kwargs: Any,
    ) -> SequenceClassifierOutput | tuple:
        r"""
        Args:
            labels: ``[batch]`` class ids (or floats for regression when ``num_labels == 1``).
            Other arguments: see :meth:`DeepLNBertModel.forward`.
        """
        return_dict = return_dict if return_dict is not None else getattr(self.config, "return_dict", True)
        pop_loss_kwargs(kwargs)
        outputs = self.bert(
            input_ids,
            attention_mask=attention_mask,
            token_type_ids=token_type_ids,
            position_ids=position_ids,
            inputs_embeds=inputs_embeds,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
            return_dict=True,
            **kwargs,
        )
        logits = self.classifier(self.dropout(outputs.pooler_output))
        loss = None
        if labels is not None:
            loss = self.loss_function(labels=labels, pooled_logits=logits, config=self.config)
        output = SequenceClassifierOutput(
            loss=loss, logits=logits, hidden_states=outputs.hidden_states, attentions=outputs.attentions
        )
        return output if return_dict else output.to_tuple()


__all__ = [
    "DeepLNBertPreTrainedModel",
    "DeepLNBertModel",
    "DeepLNBertForMaskedLM",
    "DeepLNBertForSequenceClassification",
]
