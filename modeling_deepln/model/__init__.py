"""The deepln model: exactly the files that ``save_pretrained`` copies next to the weights as remote code.

They are flat siblings that import only torch, transformers, the standard library and each other (``from .x import``),
so a saved folder loads with ``trust_remote_code=True`` where deepln is not installed. This ``__init__`` is not
copied; it only re-exports.

- ``configuration_deepln.py``: ``DeepLNBertConfig`` / ``DeepLNGPTConfig`` (one table of shared defaults, validation).
- ``residual_deepln.py``: the residual-normalization schemes (one small object each) and ``ResidualConnection``.
- ``init_deepln.py``: the normal-init draws of ``initialize_weights``, filled on all CPU threads at once.
- ``layers_deepln.py``: attention, MLP, the ``DeepLNBlock`` both families use, ``DeepLNPreTrainedModel`` (init).
- ``decode_deepln.py``: products of a few rows (decode steps) on a CPU as ``W·xᵀ`` split across the threads.
- ``loss_deepln.py``: the fused LM loss (``fused_lm_loss``): LM head + cross-entropy in chunks, no logits.
- ``modeling_deepln_bert.py`` / ``modeling_deepln_gpt.py``: the BERT and GPT models and their heads.
"""

from .configuration_deepln import DeepLNBertConfig, DeepLNGPTConfig
from .modeling_deepln_bert import (
    DeepLNBertForMaskedLM,
    DeepLNBertForSequenceClassification,
    DeepLNBertModel,
    DeepLNBertPreTrainedModel,
)
from .modeling_deepln_gpt import (
    DeepLNGPTForCausalLM,
    DeepLNGPTForSequenceClassification,
    DeepLNGPTModel,
    DeepLNGPTPreTrainedModel,
)
from .residual_deepln import RESIDUAL_SCHEMES, ResidualScheme, get_residual_scheme

__all__ = [
    "DeepLNBertConfig",
    "DeepLNGPTConfig",
    "DeepLNBertPreTrainedModel",
    "DeepLNBertModel",
    "DeepLNBertForMaskedLM",
    "DeepLNBertForSequenceClassification",
    "DeepLNGPTPreTrainedModel",
    "DeepLNGPTModel",
    "DeepLNGPTForCausalLM",
    "DeepLNGPTForSequenceClassification",
    "RESIDUAL_SCHEMES",
    "ResidualScheme",
    "get_residual_scheme",
]
