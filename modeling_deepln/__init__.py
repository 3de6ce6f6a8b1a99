"""deepln: very deep, stably trained BERT- and GPT-style Transformers for the Hugging Face ecosystem.

Importing the package registers both configs and every model class with transformers' Auto classes, so
``AutoModelForCausalLM.from_pretrained(folder)`` works without ``trust_remote_code`` when deepln is installed.
Saved folders also carry the model code (remote code) and load with ``trust_remote_code=True`` where it is not.

Layout (``docs/architecture.md``): ``model/`` is the remote code that travels with every saved model; ``training/``
holds ``pretrain`` / ``finetune`` and their tools; each later feature has a package of its own. Module paths from
before that layout (``modeling_deepln.data``, ``modeling_deepln.layers_deepln``, ...) still import (:data:`MOVED`).
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys

from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForCausalLM,
    AutoModelForMaskedLM,
    AutoModelForSequenceClassification,
)

from . import model as _model_api
from .model import *  # noqa: F403  (the configs, models and schemes; their list is model.__all__)
from .model import (
    DeepLNBertConfig,
    DeepLNBertForMaskedLM,
    DeepLNBertForSequenceClassification,
    DeepLNBertModel,
    DeepLNGPTConfig,
    DeepLNGPTForCausalLM,
    DeepLNGPTForSequenceClassification,
    DeepLNGPTModel,
)
from .presets import PRESETS_DIR, available_presets, load_preset

__version__ = "0.1.0"

_AUTO_CLASSES = (
    (DeepLNBertConfig, AutoModel, DeepLNBertModel),
    (DeepLNBertConfig, AutoModelForMaskedLM, DeepLNBertForMaskedLM),
    (DeepLNBertConfig, AutoModelForSequenceClassification, DeepLNBertForSequenceClassification),
    (DeepLNGPTConfig, AutoModel, DeepLNGPTModel),
    (DeepLNGPTConfig, AutoModelForCausalLM, DeepLNGPTForCausalLM),
    (DeepLNGPTConfig, AutoModelForSequenceClassification, DeepLNGPTForSequenceClassification),
)


def _register() -> None:
    """Register with the Auto classes (local use) and for ``save_pretrained`` to copy the code (remote use)."""
    for config_class in (DeepLNBertConfig, DeepLNGPTConfig):
        AutoConfig.register(config_class.model_type, config_class, exist_ok=True)
        config_class.register_for_auto_class()
    for config_class, auto_class, model_class in _AUTO_CLASSES:
        auto_class.register(config_class, model_class, exist_ok=True)
        model_class.register_for_auto_class(auto_class.__name__)
    _register_peft_targets()


def _register_peft_targets() -> None:
    """Tell peft which modules LoRA targets by default on deepln models (as it knows for GPT-2, BERT, ...)."""
    try:
        from peft.utils import constants
    except Exception:  # peft is optional
        return
    for mapping_name in ("TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING",):
        mapping = getattr(constants, mapping_name, None)
        if isinstance(mapping, dict):
            for model_type in (DeepLNBertConfig.model_type, DeepLNGPTConfig.model_type):
                mapping.setdefault(model_type, ["q_proj", "v_proj"])


_register()

MOVED = {
    **{f"{__name__}.{name}": f"{__name__}.model.{name}" for name in (
        "configuration_deepln", "residual_deepln", "layers_deepln", "modeling_deepln_bert", "modeling_deepln_gpt"
    )},
    **{f"{__name__}.{name}": f"{__name__}.training.{name}" for name in (
        "callbacks", "corpus", "data", "metrics", "model_card", "plots"
    )},
    f"{__name__}.tokenizer_training": f"{__name__}.training.tokenization",
}
"""Old module path -> new one. ``import modeling_deepln.data`` gives ``modeling_deepln.training.data`` itself."""


class _MovedModuleFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Makes each old path in :data:`MOVED` an alias of the module that now lives at the new path."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname not in MOVED:
            return None
        return importlib.util.spec_from_loader(fullname, self)

    def create_module(self, spec):
        return importlib.import_module(MOVED[spec.name])

    def exec_module(self, module):
        pass  # already executed under its new name


if not any(isinstance(finder, _MovedModuleFinder) for finder in sys.meta_path):
    sys.meta_path.append(_MovedModuleFinder())

__all__ = [*_model_api.__all__, "PRESETS_DIR", "available_presets", "load_preset"]
