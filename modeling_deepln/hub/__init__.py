"""Publishing to the Hugging Face Hub: ``deepln publish`` and the model card.

- ``checks.py``: what a folder must hold (safetensors that verify, complete ``auto_map``, self-contained remote
  code, a tokenizer); each refusal says what to fix.
- ``model_card.py``: the ``huggingface_hub.ModelCard`` (metadata, ``model-index``, shape, usage snippet).
- ``upload.py``: ``publish``, the allow-listed upload (``create_repo`` + one ``create_commit``) and ``--dry-run``.
- ``cli.py``: the ``publish`` subcommand.
"""

from __future__ import annotations

__all__ = ["publish", "plan_upload", "write_model_card", "PublishError"]


def __getattr__(name: str):  # lazy: training imports the card module, which must not import training back
    if name in ("publish", "plan_upload"):
        from . import upload

        return getattr(upload, name)
    if name == "write_model_card":
        from .model_card import write_model_card

        return write_model_card
    if name == "PublishError":
        from .checks import PublishError

        return PublishError
    raise AttributeError(name)
