"""Model presets: config JSON files in the repository's ``configuration/`` folder, loadable by name.

``load_preset("gpt-1k")`` returns a :class:`DeepLNGPTConfig` built from ``configuration/gpt-1k.json``; keyword
arguments override fields (``load_preset("bert-1k", num_hidden_layers=48)``). A path to any config JSON file or
model folder works too. The files are plain ``config.json`` files, so
``AutoConfig.from_pretrained("configuration/gpt-1k.json")`` reads them as well (after ``import modeling_deepln``).
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

from .model.configuration_deepln import DeepLNBertConfig, DeepLNGPTConfig


def _find_presets_dir() -> Path:
    here = Path(__file__).resolve().parent
    for candidate in (here / "configuration", here.parent / "configuration"):
        if (candidate / "gpt-1k.json").is_file():
            return candidate
    return here / "configuration"


PRESETS_DIR = _find_presets_dir()
"""Folder holding the preset JSON files (inside the installed package, or ``configuration/`` in a checkout)."""

_CONFIG_CLASSES = {cls.model_type: cls for cls in (DeepLNBertConfig, DeepLNGPTConfig)}


def available_presets() -> list[str]:
    """Names of the model presets shipped with deepln (files ``<name>.json`` with a deepln ``model_type``)."""
    names = []
    for path in sorted(PRESETS_DIR.glob("*.json")):
        try:
            if json.loads(path.read_text()).get("model_type") in _CONFIG_CLASSES:
                names.append(path.stem)
        except (OSError, json.JSONDecodeError):
            continue
    return names


def preset_path(name_or_path: str | Path) -> Path:
    """Resolve a preset name (``"gpt-1k"``), a JSON file or a model folder to a config JSON path.

    A folder or file of that name in the working directory wins over the built-in preset (as in ``from_pretrained``,
    where a local folder wins over the Hub), with a warning when the name is also a built-in preset's: a
    ``--output-dir gpt-1k-cpu`` of an earlier run would otherwise silently replace the preset ``gpt-1k-cpu``.
    """
    path = Path(name_or_path)
    candidate = PRESETS_DIR / f"{name_or_path}.json"
    if path.is_dir():
        path = path / "config.json"
    if path.is_file():
        if candidate.is_file() and path.resolve() != candidate.resolve():
            warnings.warn(
                f"{str(name_or_path)!r} is a built-in preset and also a path here; using {path} (the local one). "
                f"For the preset, run from another folder or pass {candidate}.",
                stacklevel=2,
            )
        return path
    if candidate.is_file():
        return candidate
    raise ValueError(
        f"Unknown preset {str(name_or_path)!r}. Available presets: {', '.join(available_presets()) or 'none'}; "
        "or pass the path of a config JSON file or a model folder."
    )


def load_preset(name_or_path: str | Path, **overrides: Any) -> DeepLNBertConfig | DeepLNGPTConfig:
    """Build the config of a preset (or config file / model folder), with ``overrides`` applied.

    Overriding ``residual_norm`` without ``post_norm_form`` gives the new scheme its own default form (a preset
    naming ``post_norm_form="alpha_plus_ln"`` can still be switched to ``pre_ln``); overriding either without
    ``final_layer_norm`` gives the new scheme and form their default final LayerNorm.
    """
    path = preset_path(name_or_path)
    data = json.loads(path.read_text())
    model_type = data.pop("model_type", None)
    if model_type not in _CONFIG_CLASSES:
        raise ValueError(
            f"{path} has model_type {model_type!r}; a deepln preset needs one of {sorted(_CONFIG_CLASSES)}."
        )
    data.pop("auto_map", None)
    if "residual_norm" in overrides and "post_norm_form" not in overrides:
        data.pop("post_norm_form", None)  # another scheme: its own default form, not the preset's
    if {"residual_norm", "post_norm_form"} & set(overrides) and "final_layer_norm" not in overrides:
        data["final_layer_norm"] = None  # and the final LayerNorm of that scheme and form
    data.update(overrides)
    return _CONFIG_CLASSES[model_type](**data)
