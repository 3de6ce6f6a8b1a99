"""The output folder of a run: what shows it holds a model, what ``--overwrite`` removes, where ``--resume`` starts."""

from __future__ import annotations

import shutil
from pathlib import Path

from ..errors import DeepLNInputError
from .callbacks import last_complete_checkpoint

__all__ = ["PREPARED_DIR", "holds_model", "check_output_dir", "clear_output_dir", "resume_checkpoint"]

PREPARED_DIR = "prepared"
"""Sub-folder of the output folder caching the tokenizer and tokenized data (reused by ``resume``)."""


def holds_model(output_dir: Path) -> str | None:
    """What in ``output_dir`` shows it already holds a model (or None)."""
    if not output_dir.is_dir():
        return None
    if (output_dir / "config.json").is_file():
        return "config.json"
    checkpoints = sorted(p.name for p in output_dir.glob("checkpoint-*") if p.is_dir())
    if checkpoints:
        return checkpoints[-1]
    return None


def check_output_dir(output_dir: Path, overwrite: bool, resume: bool | str) -> None:
    found = holds_model(output_dir)
    if found and not overwrite and not resume:
        raise DeepLNInputError(
            f"Output directory {output_dir} already holds a model ({found}). Pass --overwrite to replace it, "
            "--resume to continue training it, or choose another --output-dir."
        )
    if output_dir.exists() and not output_dir.is_dir():
        raise DeepLNInputError(f"Output directory {output_dir} exists and is not a folder.")


def clear_output_dir(output_dir: Path) -> None:
    """``overwrite``: remove the previous run's checkpoints, cache and results (other files are left alone)."""
    for path in output_dir.glob("checkpoint-*"):
        shutil.rmtree(path, ignore_errors=True)
    shutil.rmtree(output_dir / PREPARED_DIR, ignore_errors=True)
    for name in ("eval_results.json", "all_results.json", "train_results.json", "trainer_state.json"):
        (output_dir / name).unlink(missing_ok=True)


def resume_checkpoint(resume: bool | str, output_dir: Path, is_main: bool) -> str | None:
    if not resume:
        return None
    if isinstance(resume, str) and resume.lower() not in ("true", "1", "yes", "last"):
        path = Path(resume)
        if not (path / "trainer_state.json").is_file():
            raise DeepLNInputError(f"--resume {resume}: not a checkpoint folder (no trainer_state.json).")
        return str(path)
    checkpoint = last_complete_checkpoint(output_dir)
    if checkpoint is None and is_main:
        print(f"[deepln] --resume: no complete checkpoint in {output_dir}; starting from scratch.", flush=True)
    return checkpoint
