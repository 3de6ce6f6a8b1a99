"""``deepln publish``: push a trained folder to the Hugging Face Hub with ``huggingface_hub``, allow-listed files only.

What goes up (and nothing else; the same names and layout as in the folder):

* weights: ``model.safetensors``, or ``model.safetensors.index.json`` + its shards;
* ``config.json`` (with the complete ``auto_map``) and the remote-code ``.py`` files it needs;
* the tokenizer files (``tokenizer_config.json``, ``tokenizer.json``, vocabularies);
* ``generation_config.json``, ``eval_results.json`` / ``deepln_eval_results.json``, ``loss.png`` when present, and
  any other top-level PNG the card shows (``![...](plot.png)``, e.g. a plot ``deepln eval`` adds);
* ``README.md``: the model card re-rendered for the repo id (:func:`~modeling_deepln.hub.model_card.card_for_repo`).

Never: pickles (``training_args.bin``, ``optimizer.pt``, ``scheduler.pt``, ``rng_state*.pth``,
``pytorch_model.bin``), ``checkpoint-*/``, the ``prepared/`` data cache, TensorBoard ``runs/`` or any other file.

The upload is ``HfApi.create_repo(exist_ok=True)`` (+ ``create_branch`` for ``--revision``) and one
``HfApi.create_commit``: a ``CommitOperationAdd`` per file, reading the folder's files where they are (no copy of the
shards) and the rewritten ones from memory, and a ``CommitOperationDelete`` for each file already in the repo that
deepln writes but this upload no longer has (an old shard, a weights index, a remote-code file of deepln's), so a
re-publish leaves nothing stale behind. Files of the repo that deepln does not write (a user's own script or notes)
are left alone. ``--dry-run DIR`` writes the repo's files to ``DIR`` and makes no network call.

Repairs made in the uploaded copy only (the folder is never modified): the card (repo id in the snippet, merged
results), and ``tokenizer_class`` in ``tokenizer_config.json`` when a tokenizer was saved without it (transformers
5.x always writes it; the Hub's widgets and older loaders read it before anything else).
"""

from __future__ import annotations

import fnmatch
import json
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from huggingface_hub import CommitOperationAdd, CommitOperationDelete, HfApi
from huggingface_hub.utils import HFValidationError, validate_repo_id

from .. import model as _remote_code
from .checks import PublishError, check_auto_map, check_remote_code, check_tokenizer, check_weights

__all__ = ["UploadPlan", "plan_upload", "write_upload_folder", "commit_operations", "stale_files", "publish",
           "OPTIONAL_FILES", "STALE_PATTERNS", "REMOTE_CODE_FILES"]

OPTIONAL_FILES = (
    "generation_config.json",
    "eval_results.json",
    "deepln_eval_results.json",
    "eval_zero_shot.json",  # deepln eval: Table 4 (its model-index entries are already in the card)
    "eval_qqp.json",  # deepln eval: Table 3
    "loss.png",
    "eval_zero_shot.png",
)
"""Shipped when present, as they are."""
REMOTE_CODE_FILES = tuple(sorted(p.name for p in Path(_remote_code.__file__).parent.glob("*.py")
                                  if p.name != "__init__.py"))  # fmt: skip
"""The remote-code files deepln writes (``modeling_deepln/model/``)."""
STALE_PATTERNS = ["model.safetensors", "model-*-of-*.safetensors", "model.safetensors.index.json", *REMOTE_CODE_FILES]
"""Files in the repo that deepln writes: one of them that this upload does not have is deleted (an old shard, a
weights index, a code file); any other file in the repo is left as it is."""


@dataclass
class UploadPlan:
    """The checked content of one upload: files copied as they are, plus the files written for the repo."""

    folder: Path
    repo_id: str
    copied: list[str]
    written: dict[str, str] = field(default_factory=dict)
    parameters: int = 0
    num_results: int = 0

    @property
    def files(self) -> list[str]:
        """Every path in the repo, sorted."""
        return sorted({*self.copied, *self.written})


def _check_repo_id(repo_id: str) -> None:
    """The Hub's own rule (``huggingface_hub.utils.validate_repo_id``): ``NAME`` or ``ORG/NAME``."""
    try:
        validate_repo_id(repo_id)
    except HFValidationError as exc:
        raise PublishError(f"--repo-id {repo_id!r} is not a Hub model id ({exc}); use NAME or ORG/NAME (letters, "
                           "digits, '-', '_', '.'; e.g. my-org/gpt-1k).") from None  # fmt: skip


def stale_files(remote_files: list[str], plan: UploadPlan) -> list[str]:
    """Files already in the repo that deepln writes (:data:`STALE_PATTERNS`) and this upload does not have."""
    keep = set(plan.files)
    return sorted(name for name in remote_files
                  if name not in keep and any(fnmatch.fnmatchcase(name, p) for p in STALE_PATTERNS))  # fmt: skip


def commit_operations(plan: UploadPlan, remote_files: list[str]) -> list:
    """The commit: folder files added from where they are, rewritten ones from memory, stale deepln files deleted."""
    adds = [CommitOperationAdd(name, str(plan.folder / name)) for name in sorted(plan.copied)]
    adds += [CommitOperationAdd(name, text.encode("utf-8")) for name, text in sorted(plan.written.items())]
    return [*adds, *(CommitOperationDelete(name) for name in stale_files(remote_files, plan))]


def _read_config(folder: Path) -> dict[str, Any]:
    path = folder / "config.json"
    if not path.is_file():
        raise PublishError(f"{folder} has no config.json; is it a model folder? Point deepln publish at the output "
                           "folder of deepln pretrain/finetune (or a model.save_pretrained folder).")  # fmt: skip
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise PublishError(f"{path} is not valid JSON ({exc}); re-save the model with save_pretrained.") from None


def _tokenizer_config(folder: Path) -> str | None:
    """``tokenizer_config.json`` with ``tokenizer_class`` added, or None when it already has one."""
    data = json.loads((folder / "tokenizer_config.json").read_text())
    if data.get("tokenizer_class"):
        return None
    data["tokenizer_class"] = "PreTrainedTokenizerFast" if (folder / "tokenizer.json").is_file() else None
    return json.dumps(data, indent=2, ensure_ascii=False) + "\n" if data["tokenizer_class"] else None


def plan_upload(
    folder: str | Path,
    repo_id: str,
    *,
    require_metrics: bool = True,
    license: str | None = None,
    base_model: str | None = None,
    log: Callable[[str], None] = print,
) -> UploadPlan:
    """Check the folder and decide the repo's files; raises :class:`PublishError` saying what to fix."""
    from transformers import AutoConfig

    from .model_card import card_for_repo

    folder = Path(folder)
    _check_repo_id(repo_id)
    if not folder.is_dir():
        raise PublishError(f"{folder} is not a folder; pass the output folder of deepln pretrain/finetune.")
    config_dict = _read_config(folder)
    weights, parameters = check_weights(folder)
    log(f"[deepln] weights ok: {', '.join(weights)} ({parameters:,} parameters)")
    code = check_remote_code(folder, check_auto_map(config_dict))
    log(f"[deepln] remote code ok: {', '.join(code)} (imports only torch, transformers, the standard library)")
    config = AutoConfig.from_pretrained(str(folder), trust_remote_code=True)
    tokenizer_files = check_tokenizer(folder, config_dict.get("vocab_size"))
    log(f"[deepln] tokenizer ok: {', '.join(tokenizer_files)}")
    optional = [name for name in OPTIONAL_FILES if (folder / name).is_file()]
    plan = UploadPlan(folder, repo_id, [*weights, "config.json", *code, *tokenizer_files, *optional],
                      parameters=parameters)  # fmt: skip
    fixed = _tokenizer_config(folder)
    if fixed:
        plan.written["tokenizer_config.json"] = fixed
        plan.copied.remove("tokenizer_config.json")
    card = card_for_repo(folder, repo_id, config, parameters=parameters, license=license, base_model=base_model)
    plan.num_results = len(card.data.eval_results or [])
    if require_metrics and not plan.num_results:
        raise PublishError(f"The model card would have no evaluation results: {folder} has no eval_results.json "
                           "(written by deepln pretrain/finetune) and no model-index in README.md (deepln eval adds "
                           "one). Evaluate the model first, or pass --no-metrics to publish without results.")
    plan.written["README.md"] = str(card)
    shown = set(re.findall(r"!\[[^\]]*\]\(([\w.-]+\.png)\)", str(card)))
    plan.copied += sorted(name for name in shown - set(plan.copied) if (folder / name).is_file())
    log(f"[deepln] model card ok: {plan.num_results} results in the model-index, usage snippet for {repo_id}")
    return plan


def write_upload_folder(plan: UploadPlan, dest: str | Path) -> list[str]:
    """Write exactly the repo's files into ``dest`` (an empty or new folder); returns their names."""
    dest = Path(dest)
    if dest.exists() and any(dest.iterdir()):
        raise PublishError(f"{dest} is not empty; --dry-run writes exactly the files of the repo, so give it an empty "
                           "or new folder.")  # fmt: skip
    if dest.resolve() == plan.folder.resolve():
        raise PublishError("--dry-run DIR must not be the model folder itself.")
    dest.mkdir(parents=True, exist_ok=True)
    for name in plan.copied:
        shutil.copy2(plan.folder / name, dest / name)
    for name, text in plan.written.items():
        (dest / name).write_text(text, encoding="utf-8")
    return plan.files


def publish(
    folder: str | Path,
    repo_id: str,
    *,
    private: bool = False,
    revision: str | None = None,
    dry_run: str | Path | None = None,
    require_metrics: bool = True,
    token: str | None = None,
    license: str | None = None,
    base_model: str | None = None,
    commit_message: str | None = None,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Check ``folder`` and push it to ``repo_id`` (or, with ``dry_run``, write the upload into that folder).

    Returns ``{"files": [...], "repo_id": ..., "url": ... (None for a dry run), "commit": ...}``.
    """
    plan = plan_upload(folder, repo_id, require_metrics=require_metrics, license=license, base_model=base_model,
                       log=log)  # fmt: skip
    if dry_run is not None:
        files = write_upload_folder(plan, dry_run)
        log(f"[deepln] dry run: wrote the {len(files)} files of {repo_id} to {dry_run} (nothing uploaded)")
        return {"files": files, "repo_id": repo_id, "url": None, "commit": None}
    api = HfApi(token=token)
    repo_url = api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
    if revision:
        api.create_branch(repo_id, branch=revision, exist_ok=True, repo_type="model")
    operations = commit_operations(plan, api.list_repo_files(repo_id, revision=revision, repo_type="model"))
    deleted = [op.path_in_repo for op in operations if isinstance(op, CommitOperationDelete)]
    log(f"[deepln] uploading {len(plan.files)} files to {repo_url}" + (f" (branch {revision})" if revision else "")
        + (f"; deleting the stale {', '.join(deleted)}" if deleted else ""))  # fmt: skip
    info = api.create_commit(
        repo_id, operations, commit_message=commit_message or f"Upload {plan.folder.name} with deepln publish",
        repo_type="model", revision=revision,
    )  # fmt: skip
    commit = getattr(info, "oid", None)
    log(f"[deepln] published {repo_id} (commit {commit}): {getattr(info, 'commit_url', repo_url)}")
    return {"files": plan.files, "repo_id": repo_id, "url": str(repo_url), "commit": commit}
