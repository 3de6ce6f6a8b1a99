"""The errors every deepln command shares; the ``deepln`` CLI turns them into exit statuses.

Feature packages (growth, publishing, evaluation, ...) derive their own errors from these, so none of them has to
import the training package for its error type.
"""

from __future__ import annotations

__all__ = ["DeepLNInputError", "NonFiniteError"]


class DeepLNInputError(ValueError):
    """Bad input found before the work started (the CLI prints it as ``deepln: error: ...`` and exits with 2)."""


class NonFiniteError(RuntimeError):
    """The loss or the gradients became NaN/inf during training (``nan_policy="stop"``; the CLI exits with 1)."""
