"""The model card of a trained folder: kept at this path for old imports; the card lives in :mod:`modeling_deepln.hub`."""

from __future__ import annotations

from ..hub.model_card import write_model_card

__all__ = ["write_model_card"]
