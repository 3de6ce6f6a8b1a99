"""Building blocks shared by the deepln BERT and GPT models.

* :class:`DeepLNAttention`: multi-head self-attention through transformers' attention interface
  (``eager``, ``sdpa``, flash, ...), with NormFormer's optional per-head scales.
* :class:`DeepLNMLP`: the position-wise feed-forward network, with NormFormer's optional mid LayerNorm.
* :class:`DeepLNBlock`: one Transformer layer: two :class:`~residual_deepln.ResidualConnection` s (attention,
  FFN) whose normalization and residual rule come from the config's residual scheme.
* :class:`DeepLNPreTrainedModel`: the shared ``PreTrainedModel`` base with the scheme-aware weight init.
* :func:`run_blocks`: the layer loop both models use (hidden states, attentions, cache).
* :func:`check_input_ids` and :func:`check_sequence_length`: early, readable errors for bad inputs.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from transformers import PreTrainedModel
from transformers import initialization as init
from transformers.activations import ACT2FN
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import BaseModelOutputWithPast
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
from transformers.utils import logging

from .configuration_deepln import _DeepLNConfig
from .decode_deepln import is_plain_linear, run_linear
from .init_deepln import deferred_normal_init, normal_init_, xavier_normal_init_
from .residual_deepln import ResidualConnection

logger = logging.get_logger(__name__)

CACHE_FIELD = "cache" if "cache" in BaseModelOutputWithPast.__dataclass_fields__ else "past_key_values"
"""Name of the KV-cache field of transformers' model outputs: ``cache`` from 5.24, ``past_key_values`` before."""

# Roles of the Linear layers in a block, used by the init rules (tags on the leaf modules: transformers v5 initialises
# remote-code models leaf by leaf, so the init must dispatch on the Linear layers, not on the attention/MLP containers).
QUERY, KEY, VALUE, ATTN_OUT, FFN_IN, FFN_OUT = "query", "key", "value", "attn_out", "ffn_in", "ffn_out"
BETA_ROLES = (VALUE, ATTN_OUT, FFN_IN, FFN_OUT)  # DeepNorm's β targets (not queries and keys)
OUTPUT_ROLES = (ATTN_OUT, FFN_OUT)  # residual-branch output projections (GPT-2 scaled init)


POSITION = "position"  # the learned position embeddings (init: config.position_embedding_init)


def _tag(module: nn.Module, role: str) -> nn.Module:
    module._deepln_role = role
    return module


def position_embeddings(config: _DeepLNConfig) -> nn.Embedding:
    """The learned absolute position embeddings, tagged for :meth:`DeepLNPreTrainedModel._init_weights`."""
    return _tag(nn.Embedding(config.max_position_embeddings, config.hidden_size), POSITION)


def sinusoidal_positions(num_positions: int, dim: int, amplitude: float = 1.0) -> torch.Tensor:
    """Vaswani et al. 2017 §3.5: ``PE(p, 2i) = sin(p / 10000^(2i/d))``, ``PE(p, 2i+1) = cos(p / 10000^(2i/d))``,
    times ``amplitude``; ``[num_positions, dim]``."""
    positions = torch.arange(num_positions, dtype=torch.float32)[:, None]
    frequencies = torch.exp(torch.arange(0, dim, 2, dtype=torch.float32) * (-math.log(10000.0) / dim))
    table = torch.zeros(num_positions, dim)
    table[:, 0::2] = torch.sin(positions * frequencies)
    table[:, 1::2] = torch.cos(positions * frequencies[: dim // 2])
    return table * amplitude


def eager_attention_forward(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float,
    dropout: float = 0.0,
    **kwargs: Any,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``softmax(Q·Kᵀ·scaling + mask)·V`` on ``[batch, heads, seq, head_dim]`` tensors.

    Returns the output as ``[batch, seq, heads, head_dim]`` (the attention-interface convention) and the
    attention probabilities. ``attention_mask`` is additive (0 / large negative), as built by
    ``transformers.masking_utils`` for the eager implementation.
    """
    scores = torch.matmul(query, key.transpose(2, 3)) * scaling
    if attention_mask is not None:
        if attention_mask.dtype == torch.bool:
            scores = scores.masked_fill(~attention_mask, torch.finfo(scores.dtype).min)
        else:
            scores = scores + attention_mask
    weights = nn.functional.softmax(scores, dim=-1, dtype=torch.float32).to(query.dtype)
    weights = nn.functional.dropout(weights, p=dropout, training=module.training)
    output = torch.matmul(weights, value).transpose(1, 2).contiguous()
    return output, weights


class DeepLNAttention(nn.Module):
    """Multi-head self-attention ``softmax(QKᵀ/√d_h)V·W^O`` with separate ``q_proj``, ``k_proj``, ``v_proj``
    and ``out_proj`` (the names LoRA and other adapters target).

    NormFormer's HeadScale (``config.uses_head_scale``) multiplies head ``i``'s output by a learned scalar
    ``γ_i`` (init 1), before ``W^O`` as in the paper (arXiv 2110.09456 §2) or after it as in fairseq
    (``normformer_head_scale_position="after_out_proj"``).
    """

    def __init__(self, config: _DeepLNConfig, layer_idx: int, is_causal: bool):
        super().__init__()
        self.config = config
        self.layer_idx = layer_idx
        self.is_causal = is_causal
        self.num_heads = config.num_attention_heads
        self.head_dim = config.hidden_size // config.num_attention_heads
        self.num_key_value_groups = 1
        self.scaling = self.head_dim**-0.5
        self.attention_dropout = config.attention_probs_dropout_prob
        d = config.hidden_size
        self.q_proj = _tag(nn.Linear(d, d), QUERY)
        self.k_proj = _tag(nn.Linear(d, d), KEY)
        self.v_proj = _tag(nn.Linear(d, d), VALUE)
        self.out_proj = _tag(nn.Linear(d, d), ATTN_OUT)
        self.head_scale = nn.Parameter(torch.ones(self.num_heads)) if config.uses_head_scale else None
        self.head_scale_before_out_proj = config.normformer_head_scale_position == "before_out_proj"

    def _project_qkv(self, hidden_states: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """``(q_proj(x), k_proj(x), v_proj(x))``; with ``config.fuse_qkv`` as one matmul with the concatenated
        ``[3d, d]`` weight (the same parameters and checkpoint names), but only while all three are plain,
        hook-free ``nn.Linear`` s, so adapters such as LoRA and monitoring hooks see the separate projections.

        The concatenation copies the ``3d²`` weights on every call, so the fused matmul is used only where that
        copy is cheap against the work it saves: weights under 64K elements (``d ≤ 147``), or at least ``d/2``
        rows (a training or prefill batch). A decode step (one row per sequence) at ``d = 256`` runs the three
        projections instead: measured on one CPU thread, fused 59 µs against separate 33 µs per layer at 1 row,
        break-even near 128-256 rows (at ``d = 1024``: 1.45 ms against 0.63 ms at 1 row, still 12.5 against
        11.9 ms at 256 rows); at ``d = 32`` fused wins at any row count (15 against 21 µs)."""
        projections = (self.q_proj, self.k_proj, self.v_proj)
        d = hidden_states.shape[-1]
        rows_amortise_copy = 3 * d * d <= 65536 or 2 * (hidden_states.numel() // d) >= d
        fuse = self.config.fuse_qkv and rows_amortise_copy  # then the hooks check (run_linear checks them itself)
        if not (fuse and all(is_plain_linear(p) and p.bias is not None for p in projections)):
            threaded_matvec = self.config.threaded_matvec  # a config read costs ~1 µs (transformers' getattr)
            return tuple(run_linear(p, hidden_states, threaded_matvec) for p in projections)
        weight = torch.cat([p.weight for p in projections])
        bias = torch.cat([p.bias for p in projections])
        return nn.functional.linear(hidden_states, weight, bias).chunk(3, dim=-1)

    def forward(
        self,
        hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        cache: Any | None = None,
        **kwargs: Any,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        batch, length, _ = hidden_states.shape
        shape = (batch, length, self.num_heads, self.head_dim)
        query, key, value = (x.view(shape).transpose(1, 2) for x in self._project_qkv(hidden_states))
        if cache is not None:
            key, value = cache.update(key, value, self.layer_idx)

        attention_interface: Callable = ALL_ATTENTION_FUNCTIONS.get_interface(
            self.config._attn_implementation, eager_attention_forward
        )
        output, weights = attention_interface(
            self,
            query,
            key,
            value,
            attention_mask,
            dropout=self.attention_dropout if self.training else 0.0,
            scaling=self.scaling,
            **kwargs,
        )  # output: [batch, length, heads, head_dim]
        if self.head_scale is not None and self.head_scale_before_out_proj:
            output = output * self.head_scale[:, None].to(output.dtype)
        output = run_linear(self.out_proj, output.reshape(batch, length, -1), self.config.threaded_matvec)
        if self.head_scale is not None and not self.head_scale_before_out_proj:
            output = (output.view(shape) * self.head_scale[:, None].to(output.dtype)).reshape(batch, length, -1)
        return output, weights


def activation(name: str) -> nn.Module:
    """``ACT2FN[name]``, except GPT-2's ``gelu_new``: the same function ``0.5·x·(1 + tanh(√(2/π)·(x + 0.044715·x³)))``
    as torch's one-kernel ``GELU(approximate="tanh")`` instead of transformers' eight elementwise ops (on the CPU
    those were ~20 % of a GPT-shape training step; outputs agree to float rounding)."""
    return nn.GELU(approximate="tanh") if name == "gelu_new" else ACT2FN[name]


class DeepLNMLP(nn.Module):
    """Feed-forward network ``fc2(φ(fc1(x)))``; with NormFormer's mid LayerNorm ``fc2(LN(φ(fc1(x))))``."""

    def __init__(self, config: _DeepLNConfig):
        super().__init__()
        self.config = config
        self.fc1 = _tag(nn.Linear(config.hidden_size, config.intermediate_size), FFN_IN)
        self.act = activation(config.hidden_act)
        self.mid_norm = (
            nn.LayerNorm(config.intermediate_size, eps=config.layer_norm_eps) if config.uses_ffn_mid_norm else None
        )
        self.fc2 = _tag(nn.Linear(config.intermediate_size, config.hidden_size), FFN_OUT)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        threaded_matvec = self.config.threaded_matvec
        hidden_states = self.act(run_linear(self.fc1, hidden_states, threaded_matvec))
        if self.mid_norm is not None:
            hidden_states = self.mid_norm(hidden_states)
        return run_linear(self.fc2, hidden_states, threaded_matvec)


class LMHeadTransform(nn.Module):
    """``LN(act(dense(h)))``, BERT's prediction-head transform between the last layer and the (tied) decoder.

    Used by the BERT MLM head, and optionally (``config.lm_head_transform``) by the GPT LM head. Post-LN stacks end
    in the LayerNorm of a residual sum dominated by the skip path, so a bare tied decoder first scores a position by
    the similarity of the current token's embedding to the next one's. Measured on the embedded corpus (4 layers,
    hidden 64, 400 steps, lr 1e-3): a ``post_ln`` GPT with a bare head stays at the unigram model (held-out loss
    7.455 vs 7.40), with this transform it reaches 6.887, as transformers' own post-LN ``BertLMHeadModel`` does
    (6.821). At 48 layers with ``foundation_ln`` it does not help in that budget (7.457).
    """

    def __init__(self, config: _DeepLNConfig):
        super().__init__()
        self.config = config
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)
        self.act = ACT2FN[config.hidden_act]
        self.norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.norm(self.act(run_linear(self.dense, hidden_states, self.config.threaded_matvec)))


class DeepLNBlock(GradientCheckpointingLayer):
    """One Transformer layer: self-attention then FFN, each inside the scheme's residual connection.

    ``x = attention_residual(x, attention)``; ``x = mlp_residual(x, mlp)``. For Post-LN this is BERT's layer,
    for Pre-LN GPT-2's block, for DeepNorm ``LN(α·x + G(x))`` (see :mod:`residual_deepln`).
    """

    def __init__(self, config: _DeepLNConfig, layer_idx: int, is_causal: bool):
        super().__init__()
        self.attention = DeepLNAttention(config, layer_idx, is_causal)
        self.attention_residual = ResidualConnection(config, branch_norm=config.uses_attn_branch_norm)
        self.mlp = DeepLNMLP(config)
        self.mlp_residual = ResidualConnection(config, residual_scale=config.uses_residual_scale)

    def forward(
        self,
        hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        cache: Any | None = None,
        **kwargs: Any,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        # The sublayers go in as their bound ``__call__`` (hooks included), not as modules: a hook that moves a
        # module's arguments to its device (Accelerate's offloading, ``device_map`` with "cpu"/"disk") calls
        # ``.to()`` on every argument that has one, and would try to move the offloaded sublayer itself.
        hidden_states, attention_weights = self.attention_residual(
            hidden_states, self.attention.__call__, attention_mask=attention_mask, cache=cache, **kwargs
        )
        hidden_states, _ = self.mlp_residual(hidden_states, self.mlp.__call__)
        return hidden_states, attention_weights


def build_blocks(config: _DeepLNConfig, is_causal: bool) -> nn.ModuleList:
    """The ``num_hidden_layers`` blocks of a model.

    Built with torch's default parameter init switched off: ``post_init`` initialises every weight with the
    scheme's rule anyway, and skipping the discarded first init makes a 1,000-layer model build ~1.5x faster.
    """
    with init.no_init_weights():
        return nn.ModuleList(DeepLNBlock(config, i, is_causal) for i in range(config.num_hidden_layers))


def not_traced(forward: Callable[..., Any]) -> Callable[..., Any]:
    """Decorator for the models' ``forward`` s and :func:`run_blocks`: ``torch.compile`` does not trace the frame
    itself, only the calls made from it, each as its own graph (every block, through
    :func:`_block_loop_compiled_per_block`; the dense heads and losses; with a KV cache the whole layer loop).
    Tracing a frame around the layers costs dynamo time in proportion to the model's parameters: it registers all
    of them each time, once per frame resumed after a graph break (bert-1k, 1,000 layers: a warm compile of 6.5 s,
    1.6 s with this). Only the code object is marked (dynamo's ``skip``, what ``torch.compiler.disable(...,
    recursive=False)`` does without its wrapper, which raises under ``torch.export``): the function is returned
    unchanged, so it costs nothing eagerly and ``torch.export``, which runs it as Python, exports the whole model."""
    try:
        from torch._dynamo.decorators import skip
    except ImportError:  # a torch without it: the same skip, with the wrapper
        return torch.compiler.disable(forward, recursive=False)
    return skip(forward)


def _block_loop(
    layers: nn.ModuleList, hidden_states: torch.Tensor, record: tuple[bool, bool], **kwargs: Any
) -> tuple[torch.Tensor, tuple[torch.Tensor, ...], tuple[torch.Tensor | None, ...]]:
    all_hidden_states: tuple[torch.Tensor, ...] = ()
    all_attentions: tuple[torch.Tensor | None, ...] = ()
    for block in layers:
        if record[0]:
            all_hidden_states += (hidden_states,)
        hidden_states, weights = block(hidden_states, **kwargs)
        if record[1]:
            all_attentions += (weights,)
    return hidden_states, all_hidden_states, all_attentions


@not_traced
def _block_loop_compiled_per_block(
    layers: nn.ModuleList, hidden_states: torch.Tensor, record: tuple[bool, bool], **kwargs: Any
) -> tuple[torch.Tensor, tuple[torch.Tensor, ...], tuple[torch.Tensor | None, ...]]:
    """:func:`_block_loop` in a frame ``torch.compile`` does not trace (``recursive=False``): each ``block(...)``
    call below is compiled on its own, and as every block runs the same code the first compiled graph serves all
    of them (regional compilation). Compile time then does not grow with depth."""
    all_hidden_states: tuple[torch.Tensor, ...] = ()
    all_attentions: tuple[torch.Tensor | None, ...] = ()
    for block in layers:
        if record[0]:
            all_hidden_states += (hidden_states,)
        hidden_states, weights = block(hidden_states, **kwargs)
        if record[1]:
            all_attentions += (weights,)
    return hidden_states, all_hidden_states, all_attentions


def call_eagerly(function: Callable[..., Any], *args: Any) -> Any:
    """``function(*args)`` outside ``torch.compile`` (:func:`_call_outside_compile`); ``torch.export`` traces it
    like any other code."""
    if torch.compiler.is_exporting():
        return function(*args)
    return _call_outside_compile(function, *args)


@torch.compiler.disable
def _call_outside_compile(function: Callable[..., Any], *args: Any) -> Any:
    """``function(*args)`` outside ``torch.compile``: dynamo traces neither it nor anything it calls. The models'
    embeddings (with the mask and the input checks) run so when there is no KV cache, so that
    ``torch.compile(model)`` compiles the blocks (one graph reused by every layer, see
    :func:`_block_loop_compiled_per_block`) and the head, and not the small graph before them, whose kernels
    cost compile time (~0.7 s of C++ each on a CPU) and save next to nothing a step."""
    return function(*args)


def _final_norm(hidden_states: torch.Tensor, final_norm: nn.Module | None, scale: float) -> torch.Tensor:
    """The stack's output: the final LayerNorm (Pre-LN schemes), then ``config.final_hidden_scale``."""
    if final_norm is not None:
        hidden_states = final_norm(hidden_states)
    return hidden_states * scale if scale != 1.0 else hidden_states


@not_traced
def run_blocks(
    layers: nn.ModuleList,
    final_norm: nn.Module | None,
    hidden_states: torch.Tensor,
    attention_mask: torch.Tensor | None,
    cache: Any | None,
    output_attentions: bool,
    output_hidden_states: bool,
    final_hidden_scale: float = 1.0,
    **kwargs: Any,
) -> tuple[torch.Tensor, tuple[torch.Tensor, ...] | None, tuple[torch.Tensor | None, ...] | None]:
    """Run the stack of blocks (and the final LayerNorm of Pre-LN schemes, then ``config.final_hidden_scale``).

    Returns ``(last_hidden_state, all_hidden_states, all_attentions)``; the tuples are ``None`` unless asked for.
    ``all_hidden_states`` holds the embeddings output and every layer's output (the last one after the final
    norm), as transformers' models do.

    Under ``torch.compile(model)`` (and so ``TrainingArguments(torch_compile=True)``) a run without a KV cache
    compiles one block and reuses it for all layers (see :func:`_block_loop_compiled_per_block`); with a cache
    (generation) the whole layer loop is traced as one graph, which ``generate``'s static-cache compilation
    needs. ``torch.compile`` traces neither this function nor the models' ``forward`` s (:func:`not_traced`).
    """
    record = (output_hidden_states, output_attentions)
    loop = _block_loop if cache is not None or torch.compiler.is_exporting() else _block_loop_compiled_per_block
    hidden_states, all_hidden_states, all_attentions = loop(
        layers, hidden_states, record, attention_mask=attention_mask, cache=cache, **kwargs
    )
    if final_norm is not None or final_hidden_scale != 1.0:  # eager without a cache: a graph less to compile
        finishing = (_final_norm, hidden_states, final_norm, final_hidden_scale)
        hidden_states = call_eagerly(*finishing) if cache is None else _final_norm(*finishing[1:])
    if output_hidden_states:
        all_hidden_states += (hidden_states,)
    if output_attentions and all_attentions and all_attentions[0] is None:
        logger.warning_once(
            "output_attentions=True: the attention weights are None, because only attn_implementation='eager' "
            "computes them (SDPA, flash and flex attention never form them). Load the model with "
            "attn_implementation='eager', or call model.set_attn_implementation('eager'), to get them."
        )
    return (
        hidden_states,
        all_hidden_states if output_hidden_states else None,
        all_attentions if output_attentions else None,
    )


def check_input_ids(
    input_ids: torch.Tensor | None, config: _DeepLNConfig, vocab_size: int | None = None, name: str = "input_ids"
) -> None:
    """Raise ``ValueError`` for ids outside ``[0, vocab_size)`` (on CUDA they would be a device-side assert).

    On the CPU the check costs one reduction and gives a readable error. On an accelerator, or while
    ``torch.compile`` traces the model, it never waits for the device: ``torch._assert_async`` fails the
    next synchronising call with the same message instead (no host synchronisation per forward).
    """
    if input_ids is None or input_ids.numel() == 0:
        return
    vocab_size = config.vocab_size if vocab_size is None else vocab_size
    outside = (input_ids < 0) | (input_ids >= vocab_size)
    message = (
        f"{name} contains token ids outside the model's vocabulary [0, {vocab_size}). The tokenizer does not "
        "match the model: use the model's tokenizer, or call model.resize_token_embeddings(len(tokenizer)) "
        "before training."
    )
    if input_ids.device.type != "cpu" or torch.compiler.is_compiling():
        torch._assert_async(~outside.any(), message)
        return
    if bool(outside.any()):
        bad = int(input_ids[outside][0])
        if name != "input_ids":
            raise ValueError(f"{name} contains {bad}, outside [0, {vocab_size}).")
        raise ValueError(
            f"input_ids contains token id {bad}, outside the model's vocabulary [0, {vocab_size}). "
            "The tokenizer does not match the model: use the model's tokenizer, or call "
            "model.resize_token_embeddings(len(tokenizer)) before training."
        )


def check_inputs(input_ids: torch.Tensor | None, inputs_embeds: torch.Tensor | None) -> None:
    """Raise ``ValueError`` unless exactly one of ``input_ids`` ``[batch, seq]`` and ``inputs_embeds``
    ``[batch, seq, hidden]`` is given, with at least one position."""
    if (input_ids is None) == (inputs_embeds is None):
        raise ValueError("Pass exactly one of input_ids or inputs_embeds.")
    name, tensor, dims = ("input_ids", input_ids, 2) if input_ids is not None else ("inputs_embeds", inputs_embeds, 3)
    if tensor.dim() != dims:
        layout = "[batch, seq]" if dims == 2 else "[batch, seq, hidden]"
        raise ValueError(
            f"{name} must be {layout}, got shape {tuple(tensor.shape)}. For one sequence add the batch "
            f"dimension: {name}.unsqueeze(0) (a tokenizer gives it with return_tensors='pt')."
        )
    if tensor.shape[1] == 0:
        raise ValueError(f"{name} has no positions (shape {tuple(tensor.shape)}); pass at least one token.")


def check_sequence_length(length: int | torch.Tensor, config: _DeepLNConfig) -> None:
    """Raise ``ValueError`` when positions would run past ``max_position_embeddings``. ``length`` is a tensor with
    a static cache (its filled length); that one is checked like the token ids: on the CPU in eager mode it
    raises, elsewhere ``torch._assert_async`` fails later with the same message (no host synchronisation, and
    nothing data-dependent for ``torch.export`` or ``torch.compile``)."""
    message = (
        f"Sequence length {{}} (including cached tokens) exceeds max_position_embeddings="
        f"{config.max_position_embeddings}. Truncate the input (tokenizer(..., truncation=True, "
        f"max_length={config.max_position_embeddings})) or use a model with more positions."
    )
    if isinstance(length, torch.Tensor):
        if length.device.type != "cpu" or torch.compiler.is_compiling() or torch.compiler.is_exporting():
            torch._assert_async(length <= config.max_position_embeddings, message.format("(a tensor)"))
            return
        length = int(length)
    if length > config.max_position_embeddings:
        raise ValueError(message.format(length))


LOSS_KWARGS = ("num_items_in_batch", "ignore_index", "shift_labels")


def pop_loss_kwargs(kwargs: dict[str, Any]) -> dict[str, Any]:
    """Remove the loss-only keyword arguments (e.g. Trainer's ``num_items_in_batch``) from ``kwargs``."""
    return {key: kwargs.pop(key) for key in LOSS_KWARGS if key in kwargs}


def keep_last_positions(hidden_states: torch.Tensor, logits_to_keep: int | torch.Tensor) -> torch.Tensor:
    """Keep the last ``logits_to_keep`` positions (0 keeps all) or the positions of a 1-D index tensor."""
    if isinstance(logits_to_keep, int):
        return hidden_states if logits_to_keep == 0 else hidden_states[:, -logits_to_keep:, :]
    return hidden_states[:, logits_to_keep, :]


class DeepLNPreTrainedModel(PreTrainedModel):
    """Shared base of the BERT and GPT families: attention backends, checkpointing and the init rules.

    Init (applied once at construction by ``post_init``; ``from_pretrained`` only initialises weights missing
    from the checkpoint):

    * Embeddings and Linear layers: ``N(0, initializer_range)``, biases 0, LayerNorms weight 1 / bias 0,
      NormFormer head scales and ResScale 1.
    * DeepNorm (the scheme has a β): Xavier-normal with gain β for ``v_proj``, ``out_proj``, ``fc1``, ``fc2``
      and gain 1 for ``q_proj``, ``k_proj`` (DeepNet Fig. 2: ``xavier_normal_(w, gain=β)``).
    * ``scale_output_init`` (schemes without β): ``out_proj`` and ``fc2`` get ``N(0, σ/√(2N))`` (GPT-2).
    """

    supports_gradient_checkpointing = True
    # Attention goes through transformers' attention interface with masks from ``masking_utils`` (which builds
    # each backend's mask format: BlockMask for flex, 2-D padding masks for flash) and ``module.is_causal``, the
    # contract of transformers' own models. Flex attention runs on the CPU without gradients (torch 2.13), tested
    # equal to SDPA; flash attention needs a CUDA GPU and the ``flash-attn``/``kernels`` package (untested here).
    _supports_sdpa = True
    _supports_flex_attn = True
    _supports_flash_attn = True
    _no_split_modules = ["DeepLNBlock"]
    _head_prefixes = ("lm_head.", "lm_head_transform.", "score.", "classifier.", "bert.pooler.", "pooler.")

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: Any, *model_args: Any, **kwargs: Any) -> Any:
        """``PreTrainedModel.from_pretrained`` with errors that say what is wrong with a checkpoint.

        * A truncated or corrupt safetensors file raises ``OSError`` naming the folder (instead of a bare
          ``SafetensorError``).
        * Weights of the right names but the wrong shapes raise ``ValueError`` (unless
          ``ignore_mismatched_sizes=True``).
        * A checkpoint that lacks weights of the model body (layers, embeddings, norms: e.g. a 2-layer
          checkpoint loaded with ``num_hidden_layers=3``) raises ``ValueError``. Missing *heads* (a classifier
          on top of a pretrained LM) are initialised as usual.
        """
        want_info = kwargs.pop("output_loading_info", False)
        try:
            model, info = super().from_pretrained(
                pretrained_model_name_or_path, *model_args, output_loading_info=True, **kwargs
            )
        except RuntimeError as error:
            if "ignore_mismatched_sizes" not in str(error):
                raise
            raise ValueError(
                f"The weights in {pretrained_model_name_or_path} do not fit the config: some have other shapes "
                "(see the load report above). Load with the checkpoint's own config.json, or pass "
                "ignore_mismatched_sizes=True to re-initialise the mismatched weights."
            ) from error
        except Exception as error:
            if type(error).__name__ != "SafetensorError":
                raise
            raise OSError(
                f"The checkpoint in {pretrained_model_name_or_path} is corrupt or truncated ({error}). "
                "Re-download it (huggingface_hub: force_download=True) or save the model again."
            ) from error
        body_missing = [key for key in info.get("missing_keys", ()) if not key.startswith(cls._head_prefixes)]
        if body_missing:
            raise ValueError(
                f"The checkpoint in {pretrained_model_name_or_path} does not fit the config: {len(body_missing)} "
                f"weights of the model body are missing from it (e.g. {sorted(body_missing)[:3]}). Check "
                "num_hidden_layers and the other shape fields against the checkpoint's config.json."
            )
        return (model, info) if want_info else model

    def initialize_weights(self) -> None:
        """``PreTrainedModel.initialize_weights``, with the normal draws filled on all CPU threads at the end
        (:func:`init_deepln.deferred_normal_init`: same distributions, ~threads x faster for 1,000 layers)."""
        with deferred_normal_init():
            super().initialize_weights()

    def _init_weights(self, module: nn.Module) -> None:
        config = self.config
        std = config.initializer_range
        if isinstance(module, nn.Linear):
            role = getattr(module, "_deepln_role", None)
            beta = config.residual_scheme.beta(config)
            if role is not None and beta is not None:
                xavier_normal_init_(module.weight, gain=beta if role in BETA_ROLES else 1.0)
            elif role in OUTPUT_ROLES and config.scale_output_init:
                normal_init_(module.weight, std=std / math.sqrt(2 * config.num_hidden_layers))
            else:
                normal_init_(module.weight, std=std)
            if module.bias is not None:
                init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding) and getattr(module, "_deepln_role", None) == POSITION and (
            config.position_embedding_init == "sinusoidal"
        ):
            table = sinusoidal_positions(*module.weight.shape, amplitude=std)
            init.copy_(module.weight, table.to(device=module.weight.device, dtype=module.weight.dtype))
        elif isinstance(module, nn.Embedding) and module.padding_idx is None:
            normal_init_(module.weight, std=std)
        elif isinstance(module, nn.Embedding):  # drawn now: the padding row is zeroed right after
            init.normal_(module.weight, mean=0.0, std=std)
            if module.padding_idx is not None and not getattr(module.weight, "_is_hf_initialized", False):
                init.zeros_(module.weight[module.padding_idx])
        elif isinstance(module, nn.LayerNorm):
            init.ones_(module.weight)
            init.zeros_(module.bias)
        elif isinstance(module, DeepLNAttention) and module.head_scale is not None:
            init.ones_(module.head_scale)
        elif isinstance(module, ResidualConnection) and module.residual_scale is not None:
            init.ones_(module.residual_scale)
