"""Zero-shot evaluation of a deepln GPT through EleutherAI's lm-evaluation-harness.

The scoring is the harness's own: ``lm_eval.simple_evaluate`` with its ``HFLM`` model (``trust_remote_code=True``),
so a deepln model is scored exactly as GPT-2 or GPT-J are in the harness. For a multiple-choice task the harness
computes, for every choice ``c`` of a context ``x``, the log-likelihood ``ll(c) = sum_t log p(c_t | x, c_<t)`` of
the choice's tokens from the model's logits; ``acc`` is ``1[argmax_c ll(c) == gold]`` and ``acc_norm`` the same
with ``ll(c) / len(c in characters)``. LAMBADA is a loglikelihood task: ``acc`` is 1 when the target word's tokens
are all the model's greedy choices, and ``perplexity = exp(-mean over documents of ll(target))``. QQP's ``f1`` is
scikit-learn's binary F1 of the argmax choices (label 1 = duplicate).

What is checked before the (slow) model load: the model is a deepln model (local folder or Hub id), it has a
tokenizer, and every task name is known to the harness (close matches are suggested otherwise).
"""

from __future__ import annotations

import contextlib
import difflib
import fnmatch
import functools
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

from ..errors import DeepLNInputError
from .suite import GPT_SUITE_TASKS, OFFLINE_TASKS, offline_task_dir

__all__ = ["ModelSource", "resolve_model", "task_names", "run_lm_eval"]

DEEPLN_MODEL_TYPES = ("deepln_gpt", "deepln_bert")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "vocab.txt", "tokenizer.model")


@dataclass
class ModelSource:
    """What ``deepln eval`` was asked to evaluate: a local folder or a Hub id, its config and tokenizer source."""

    name: str
    config: Any
    tokenizer: str
    folder: Path | None

    @property
    def family(self) -> str:
        return "bert" if self.config.model_type == "deepln_bert" else "gpt"


def resolve_model(model: str, tokenizer: str | None = None) -> ModelSource:
    """Load ``model``'s config (folder or Hub id) and check that it is a deepln model with a tokenizer.

    Raises:
        DeepLNInputError: no such folder / unreachable Hub id, not a deepln model, no tokenizer.
    """
    from transformers import AutoConfig

    folder = Path(model).expanduser()
    is_folder = folder.is_dir()
    if not is_folder and (folder.exists() or model.startswith((".", "/", "~")) or model.count("/") > 1):
        raise DeepLNInputError(f"{model!r} is not a model folder. Pass a folder saved by deepln or a Hub id.")
    if is_folder and not (folder / "config.json").is_file():
        raise DeepLNInputError(
            f"{model} has no config.json, so it is not a saved model folder. Pass the folder that "
            "`deepln pretrain`/`deepln finetune` (or save_pretrained) wrote."
        )
    try:
        config = AutoConfig.from_pretrained(model, trust_remote_code=True)
    except (OSError, ValueError) as exc:
        where = "not a loadable model folder" if is_folder else "neither a local folder nor a loadable Hub model id"
        raise DeepLNInputError(f"{model!r} is {where}: {exc}") from None
    if config.model_type not in DEEPLN_MODEL_TYPES:
        raise DeepLNInputError(
            f"{model} is a {config.model_type!r} model, not a deepln model ({' or '.join(DEEPLN_MODEL_TYPES)}). "
            "Evaluate other models with lm-eval directly: lm_eval --model hf --model_args pretrained=... --tasks ..."
        )
    if tokenizer is None and is_folder and not any((folder / f).is_file() for f in TOKENIZER_FILES):
        raise DeepLNInputError(
            f"{model} has no tokenizer (none of {', '.join(TOKENIZER_FILES)}). Save the tokenizer the model was "
            "trained with into the folder (tokenizer.save_pretrained(folder)) or pass --tokenizer NAME_OR_DIR."
        )
    return ModelSource(model, config, tokenizer or model, folder.resolve() if is_folder else None)


def task_names(tasks: Sequence[str] | None, offline: bool) -> list[str]:
    """The harness task names to run: the paper's suite by default; with ``offline`` the shipped local versions."""
    names = list(tasks) if tasks else list(GPT_SUITE_TASKS)
    return [OFFLINE_TASKS.get(name, name) for name in names] if offline else names


def _task_manager(tasks: Sequence[str], include_paths: Sequence[str], local_only: bool = False):
    """A ``TaskManager`` that knows ``tasks``; lm-eval's ~10k built-in tasks are indexed only when needed and never
    with ``local_only`` (``--offline-tasks``: the shipped and ``--include-path`` definitions only)."""
    from lm_eval.tasks import TaskManager

    for path in include_paths:
        if not Path(path).is_dir():
            raise DeepLNInputError(f"--include-path {path} is not a folder of lm-eval task YAMLs.")
    include = list(include_paths) or None
    manager = TaskManager(include_path=include, include_defaults=False) if include else None
    if manager is None or not (local_only or all(_known(name, manager.all_tasks) for name in tasks)):
        manager = TaskManager(include_path=include)
    unknown = [name for name in tasks if not _known(name, manager.all_tasks)]
    if unknown:
        raise DeepLNInputError(_unknown_tasks_message(unknown, manager.all_tasks))
    return manager


def _known(name: str, all_tasks: Sequence[str]) -> bool:
    return name in all_tasks or (any(c in name for c in "*?[") and bool(fnmatch.filter(all_tasks, name)))


def _unknown_tasks_message(unknown: Sequence[str], all_tasks: Sequence[str]) -> str:
    lines = [f"Unknown lm-eval task name(s): {', '.join(unknown)}."]
    for name in unknown:
        close = difflib.get_close_matches(name, sorted({*all_tasks, *OFFLINE_TASKS}), n=5, cutoff=0.6)
        if close:
            lines.append(f"  {name}: did you mean {', '.join(close)}?")
    lines.append(f"The paper's suite: {', '.join(GPT_SUITE_TASKS)} (offline: --offline-tasks, i.e. "
                 f"{', '.join(OFFLINE_TASKS.values())}).")  # fmt: skip
    lines.append(f"Known here: {len(all_tasks)} tasks and groups"
                 + (f" ({', '.join(sorted(all_tasks))})." if len(all_tasks) <= 20 else "; `lm-eval ls tasks` lists them."))
    return "\n".join(lines)


def run_lm_eval(
    source: ModelSource,
    tasks: Sequence[str],
    *,
    offline: bool = False,
    include_paths: Sequence[str] = (),
    batch_size: int | str = 8,
    device: str | None = None,
    dtype: str = "auto",
    limit: float | None = None,
    bootstrap_iters: int = 0,
    log_samples: bool = False,
) -> dict[str, Any]:
    """``lm_eval.simple_evaluate`` of ``source`` (``HFLM``, ``trust_remote_code=True``) on ``tasks``, zero-shot.

    Args:
        offline: use deepln's shipped task definitions (``deepln_<task>``, local data) and ``include_paths`` only,
            not the harness's built-in tasks.
        include_paths: more folders of task YAMLs (lm-eval's ``--include_path``).
        limit: at most this many documents per task (a fraction of each task when below 1), as lm-eval's ``--limit``.
        bootstrap_iters: resamples for standard errors (lm-eval's default is 100,000; 0 skips them).

    Returns:
        The dict ``simple_evaluate`` returns (``results``, ``versions``, ``n-samples``, ``config``, ...).
    """
    import torch

    try:
        import lm_eval
        from lm_eval.models.huggingface import HFLM
    except ImportError as exc:
        raise DeepLNInputError(f"deepln eval needs lm-eval ({exc}): pip install 'deepln[eval]'.") from None
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    with tempfile.TemporaryDirectory(prefix="deepln-tasks-") as scratch:
        paths = [*include_paths, str(offline_task_dir(Path(scratch) / "tasks"))] if offline else list(include_paths)
        manager = _task_manager(tasks, paths, local_only=offline)
        print(f"[deepln] loading {source.name} for lm-eval on {device} ({dtype})", flush=True)
        lm = HFLM(
            pretrained=source.name,
            tokenizer=source.tokenizer,
            trust_remote_code=True,
            device=device,
            dtype=dtype,
            batch_size=batch_size,
        )
        print(f"[deepln] zero-shot evaluation on {', '.join(tasks)}" + (f" (limit {limit})" if limit else ""), flush=True)
        try:
            return lm_eval.simple_evaluate(
                model=lm,
                tasks=list(tasks),
                num_fewshot=0,
                task_manager=manager,
                limit=limit,
                bootstrap_iters=bootstrap_iters,
                log_samples=log_samples,
            )
        except ConnectionError as exc:
            raise DeepLNInputError(
                f"A task's data set could not be downloaded ({exc}). Without the Hub, run --offline-tasks (the "
                "suite on shipped local examples) or --include-path DIR with task YAMLs that read local files."
            ) from None


LM_EVAL_PROGRESS_MODULES = ("lm_eval.api.task", "lm_eval.api.model", "lm_eval.models.huggingface")
"""The harness modules that draw progress bars with their own ``from tqdm import tqdm`` name."""


def _hidden(bar: Any) -> Any:
    """``bar`` (a tqdm class) called with ``disable=True`` whatever the caller passes."""

    @functools.wraps(bar, updated=())
    def hidden(*args: Any, **kwargs: Any) -> Any:
        return bar(*args, **{**kwargs, "disable": True})

    return hidden


@contextlib.contextmanager
def quiet_progress(quiet: bool = True) -> Iterator[None]:
    """Hide the progress bars of the harness, ``datasets`` and ``transformers`` inside the block (``--no-progress``).

    Scoped: the harness modules' own ``tqdm`` name is replaced by one that draws nothing and put back on exit, and
    ``datasets``' / ``transformers``' bars are enabled again if they were; ``tqdm`` itself is never modified, so
    other code in the process keeps its bars.
    """
    if not quiet:
        yield
        return
    import importlib

    import datasets.utils.logging as datasets_logging
    import transformers.utils.logging as transformers_logging

    modules = [importlib.import_module(name) for name in LM_EVAL_PROGRESS_MODULES]
    saved = [(module, module.tqdm) for module in modules]
    enable = [lib for lib in (datasets_logging, transformers_logging) if lib.is_progress_bar_enabled()]
    for module, bar in saved:
        module.tqdm = _hidden(bar)
    for lib in enable:
        lib.disable_progress_bar()
    try:
        yield
    finally:
        for module, bar in saved:
            module.tqdm = bar
        for lib in enable:
            lib.enable_progress_bar()
