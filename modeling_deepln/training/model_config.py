"""The model config of a run: the preset (a name, a config JSON or a model folder) with the options given on the
command line (``--num-layers``, ``--residual-norm``, ...) applied to it."""

from __future__ import annotations

from typing import Any

from ..errors import DeepLNInputError
from ..presets import load_preset
from .args import FinetuneArgs, PretrainArgs

__all__ = ["config_overrides", "build_config", "model_family"]


def config_overrides(a: PretrainArgs | FinetuneArgs) -> dict[str, Any]:
    """Model-config fields given on the command line, for :func:`build_config`.

    Changing the scheme (``--residual-norm``) without ``--post-norm-form`` resets the form to the new scheme's
    default (``post_norm_form=None``), so a preset that names a Post-LN form can still be switched to ``pre_ln``.
    """
    overrides: dict[str, Any] = {}
    if a.residual_norm is not None:
        overrides["residual_norm"] = a.residual_norm
        overrides["post_norm_form"] = None
    if getattr(a, "post_norm_form", None) is not None:
        overrides["post_norm_form"] = a.post_norm_form
    if getattr(a, "final_layer_norm", None) is not None:
        overrides["final_layer_norm"] = a.final_layer_norm
    if getattr(a, "final_hidden_scale", None) is not None:
        overrides["final_hidden_scale"] = a.final_hidden_scale
    if a.num_layers is not None:
        overrides["num_hidden_layers"] = a.num_layers
    if a.hidden_size is not None:
        overrides["hidden_size"] = a.hidden_size
        overrides["intermediate_size"] = 4 * a.hidden_size
    if getattr(a, "intermediate_size", None) is not None:
        overrides["intermediate_size"] = a.intermediate_size
    if a.num_heads is not None:
        overrides["num_attention_heads"] = a.num_heads
    if a.vocab_size is not None:
        overrides["vocab_size"] = a.vocab_size
    for key, value in overrides.items():
        if isinstance(value, int) and not isinstance(value, bool) and value < 1:
            raise DeepLNInputError(f"{key} must be a positive integer, got {value}.")
    return overrides


def build_config(preset: str, overrides: dict[str, Any]):
    """The preset's config with ``overrides``. A smaller ``vocab_size`` drops the preset's special-token ids that fall
    outside it (``gpt-1k``'s 50,256 with a trained 8,192-token vocabulary), which the run then takes from its
    tokenizer, instead of a config that transformers warns is out of range."""
    try:
        vocab_size = overrides.get("vocab_size")
        if vocab_size is not None:
            preset_config = load_preset(preset)
            for field in ("bos_token_id", "eos_token_id", "pad_token_id"):
                token_id = getattr(preset_config, field, None)
                if field not in overrides and isinstance(token_id, int) and token_id >= vocab_size:
                    overrides = {**overrides, field: None}
        return load_preset(preset, **overrides)
    except ValueError as exc:
        raise DeepLNInputError(str(exc)) from exc
    except TypeError as exc:
        raise DeepLNInputError(f"Bad model override for preset {preset!r}: {exc}") from exc


def model_family(config) -> str:
    """``"bert"`` or ``"gpt"``."""
    return "bert" if config.model_type == "deepln_bert" else "gpt"
