"""Loading and tokenizing the data ``deepln`` trains and fine-tunes on.

Why this exists
---------------
Training scripts accept one ``--data`` argument that can be:

* nothing: the embedded English Wikipedia corpus (:mod:`.corpus`),
  the offline default;
* local files: ``.txt`` (one example per line), ``.jsonl``/``.json``, ``.csv``, ``.tsv``,
  ``.parquet``; a single file, a list of files, a glob or a directory;
* a Hub dataset name, optionally ``"name:config"`` (``"nyu-mll/glue:qqp"``,
  ``"Salesforce/wikitext:wikitext-103-raw-v1"``). This is the real-user path; tests never
  take it.

Everything goes through ``datasets.load_dataset`` and ``Dataset.map`` so that the
``datasets`` cache makes repeated runs on file-backed data cheap. Mistakes (missing
files, empty files, a missing column) fail early with a message saying what is wrong
and which option fixes it.

Language modelling uses the ``run_clm``/``run_mlm`` "group texts" recipe
(:func:`tokenize_and_group`); sentence(-pair) classification such as QQP is in
:mod:`.pair_tasks`.
"""

from __future__ import annotations

import glob
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

from datasets import DatasetDict, IterableDatasetDict, load_dataset
from transformers import PreTrainedTokenizerBase

__all__ = [
    "DataError",
    "DataFileNotFoundError",
    "EmptyDataError",
    "MissingColumnError",
    "CorpusTooSmallError",
    "SUPPORTED_EXTENSIONS",
    "load_text_data",
    "tokenize_and_group",
]

#: File extension -> ``datasets`` packaged builder.
SUPPORTED_EXTENSIONS: dict[str, str] = {
    ".txt": "text",
    ".text": "text",
    ".jsonl": "json",
    ".json": "json",
    ".csv": "csv",
    ".tsv": "csv",
    ".parquet": "parquet",
}

_VALIDATION_NAMES = ("validation", "valid", "val", "dev")
_SPLIT_STEMS = {"train": "train", "test": "test", **{n: "validation" for n in _VALIDATION_NAMES}}
_GLOB_CHARS = set("*?[")

Family = Literal["bert", "gpt"]


class DataError(ValueError):
    """Base class for data problems the user can fix (bad option or bad file)."""


class DataFileNotFoundError(FileNotFoundError):
    """A local data path, glob or folder matched no usable file."""


class EmptyDataError(DataError):
    """A data file or split holds no examples."""


class MissingColumnError(DataError):
    """A column the task needs is not in the data."""


class CorpusTooSmallError(DataError):
    """Not enough tokens to make a single block of ``block_size`` tokens."""


# --------------------------------------------------------------------------- file resolution


def _looks_like_path(spec: str) -> bool:
    """True for strings meant as local paths (existing, glob, ./ or / prefix, data suffix)."""
    if os.path.exists(os.path.expanduser(spec)) or any(c in spec for c in _GLOB_CHARS):
        return True
    if spec.startswith(("/", "./", "../", "~", ".\\")):
        return True
    return Path(spec).suffix.lower() in SUPPORTED_EXTENSIONS


def _supported(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in SUPPORTED_EXTENSIONS


def _expand(spec: str) -> list[Path]:
    """Expand one path / glob / directory into the data files it names."""
    expanded = os.path.expanduser(spec)
    if any(c in expanded for c in _GLOB_CHARS) and not os.path.exists(expanded):
        matches = sorted(Path(p) for p in glob.glob(expanded, recursive=True))
        files = [p for p in matches if _supported(p)]
        if not files:
            raise DataFileNotFoundError(
                f"The pattern {spec!r} matched no data file with a supported extension "
                f"({', '.join(sorted(SUPPORTED_EXTENSIONS))})."
            )
        return files
    path = Path(expanded)
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if _supported(p))
        if not files:
            raise DataFileNotFoundError(
                f"The folder {spec!r} holds no data file with a supported extension "
                f"({', '.join(sorted(SUPPORTED_EXTENSIONS))})."
            )
        return files
    if not path.exists():
        raise DataFileNotFoundError(
            f"Data file {spec!r} does not exist. Check the path, or pass a Hub dataset name "
            "such as 'Salesforce/wikitext:wikitext-2-raw-v1'."
        )
    if path.suffix.lower() not in SUPPORTED_EXTENSIONS:
        raise DataError(
            f"Unsupported data file type {path.suffix!r} for {spec!r}; use one of "
            f"{', '.join(sorted(SUPPORTED_EXTENSIONS))}."
        )
    return [path]


def _split_of(path: Path) -> str | None:
    """Split a file belongs to by its name (``train.csv``, ``dev.tsv``...), else None."""
    stem = path.name.split(".")[0].lower()
    return _SPLIT_STEMS.get(stem)


def _only_whitespace(path: Path, chunk_bytes: int = 1 << 20) -> bool:
    """True when a text file holds nothing but whitespace (read in chunks: corpora can be larger than memory)."""
    with open(path, "rb") as f:
        while chunk := f.read(chunk_bytes):
            if chunk.strip():
                return False
    return True


def _check_nonempty(files: Sequence[Path]) -> None:
    for f in files:
        if f.stat().st_size == 0 or (f.suffix.lower() != ".parquet" and _only_whitespace(f)):
            raise EmptyDataError(f"Data file {str(f)!r} is empty; it holds no examples.")


def _builder_for(files: Sequence[Path]) -> tuple[str, dict[str, Any]]:
    """The ``load_dataset`` builder (and its options) for a set of local files."""
    builders = {SUPPORTED_EXTENSIONS[f.suffix.lower()] for f in files}
    if len(builders) != 1:
        raise DataError(
            "All data files must have the same type, got a mix of "
            f"{sorted({f.suffix for f in files})}: {[str(f) for f in files]}."
        )
    builder = builders.pop()
    kwargs: dict[str, Any] = {}
    if builder == "csv" and all(f.suffix.lower() == ".tsv" for f in files):
        kwargs["delimiter"] = "\t"
    elif builder == "csv" and any(f.suffix.lower() == ".tsv" for f in files):
        raise DataError("Do not mix .csv and .tsv files; convert them to one format.")
    return builder, kwargs


def _load_local(
    data_files: Mapping[str, Sequence[Path]], cache_dir: str | None, streaming: bool = False
) -> DatasetDict | IterableDatasetDict:
    all_files = [f for files in data_files.values() for f in files]
    _check_nonempty(all_files)
    builder, kwargs = _builder_for(all_files)
    try:
        return load_dataset(
            builder,
            data_files={split: [str(f) for f in files] for split, files in data_files.items()},
            cache_dir=cache_dir,
            streaming=streaming,
            **kwargs,
        )
    except Exception as exc:  # datasets raises many types for malformed files
        if isinstance(exc, (DataError, FileNotFoundError)):
            raise
        raise DataError(
            f"Could not read the {builder} file(s) {[str(f) for f in all_files]}: {exc}"
        ) from exc


def _load_hub(spec: str, cache_dir: str | None, streaming: bool = False) -> DatasetDict | IterableDatasetDict:
    """``"name"`` or ``"name:config"`` -> ``load_dataset(name, config)`` (needs the Hub)."""
    name, _, config = spec.partition(":")
    ds = load_dataset(name, config or None, cache_dir=cache_dir, streaming=streaming)
    if not isinstance(ds, (DatasetDict, IterableDatasetDict)):  # pragma: no cover - load_dataset without split
        ds = (IterableDatasetDict if streaming else DatasetDict)({"train": ds})
    return ds


def _group_by_split(files: Sequence[Path]) -> dict[str, list[Path]]:
    """Files named train/validation/test go to those splits; otherwise all are train."""
    by_split: dict[str, list[Path]] = {}
    for f in files:
        split = _split_of(f)
        by_split.setdefault(split or "", []).append(f)
    if "" in by_split or "train" not in by_split:
        return {"train": list(files)}
    return by_split


# --------------------------------------------------------------------------- common checks


def _require_columns(ds: DatasetDict, columns: Sequence[str], hint: str) -> None:
    for split, d in ds.items():
        missing = [c for c in columns if c not in d.column_names]
        if missing:
            raise MissingColumnError(
                f"Column(s) {missing} not found in split {split!r}; the available columns "
                f"are {d.column_names}. {hint}"
            )


def _normalise_splits(ds: DatasetDict | IterableDatasetDict) -> DatasetDict | IterableDatasetDict:
    """Rename valid/val/dev to ``validation`` (keeps an existing ``validation``)."""
    if "validation" in ds:
        return ds
    for name in _VALIDATION_NAMES[1:]:
        if name in ds:
            out = type(ds)({k: v for k, v in ds.items() if k != name})
            out["validation"] = ds[name]
            return out
    return ds


def _ensure_validation(ds: DatasetDict, validation_fraction: float, seed: int) -> DatasetDict:
    """Split a deterministic validation set off ``train`` when there is none."""
    ds = _normalise_splits(ds)
    if "train" not in ds:
        raise DataError(f"The data has no 'train' split; its splits are {list(ds)}.")
    if "validation" in ds and len(ds["validation"]) > 0:
        return ds
    if not 0.0 < validation_fraction < 1.0:
        raise ValueError(
            f"validation_fraction must be between 0 and 1 (exclusive), got {validation_fraction}."
        )
    n = len(ds["train"])
    if n < 2:
        raise EmptyDataError(
            f"The 'train' split has {n} example(s): too few to split off a validation set. "
            "Add data or provide a validation file."
        )
    n_val = min(n - 1, max(1, round(validation_fraction * n)))
    parts = ds["train"].train_test_split(test_size=n_val, shuffle=True, seed=seed)
    out = DatasetDict({k: v for k, v in ds.items() if k not in ("train", "validation")})
    out["train"] = parts["train"]
    out["validation"] = parts["test"]
    return out


# --------------------------------------------------------------------------- language modelling


def load_text_data(
    data: str | Sequence[str] | None,
    text_column: str = "text",
    validation_fraction: float = 0.05,
    seed: int = 0,
    cache_dir: str | None = None,
) -> DatasetDict:
    """Load raw text for language modelling as ``train``/``validation`` splits.

    Args:
        data: ``None`` for the embedded Wikipedia corpus; a local file, list of files,
            glob or folder; or a Hub dataset name, optionally ``"name:config"``.
            Files named ``train.*`` / ``validation.*`` (``valid``, ``dev``) / ``test.*``
            in a folder or list become those splits.
        text_column: the column holding the text (``.txt`` files always give ``text``).
        validation_fraction: share of ``train`` rows (articles for the embedded corpus)
            split off as ``validation`` when the data has no validation split.
        seed: seed of that split (deterministic).
        cache_dir: ``datasets`` cache folder (default: the ``datasets`` default).

    Returns:
        A ``DatasetDict`` with at least ``train`` and ``validation``; blank rows are
        dropped. For the embedded corpus the column is renamed to ``text_column``.

    Raises:
        DataFileNotFoundError: a local path / glob / folder matched nothing.
        EmptyDataError: a file or the training split is empty.
        MissingColumnError: ``text_column`` is not in the data (lists the columns).
    """
    if data is None:
        from .corpus import wiki_corpus_splits

        ds = wiki_corpus_splits(validation_fraction=validation_fraction, seed=seed)
        if text_column != "text":
            ds = ds.rename_column("text", text_column)
        return ds

    specs = [data] if isinstance(data, (str, os.PathLike)) else list(data)
    if not specs:
        raise DataError("No data given: pass a file, a folder, a glob or a Hub dataset name.")
    specs = [os.fspath(s) for s in specs]
    if len(specs) == 1 and not _looks_like_path(specs[0]):
        ds = _load_hub(specs[0], cache_dir)
    else:
        files: list[Path] = []
        for spec in specs:
            files.extend(_expand(spec))
        ds = _load_local(_group_by_split(files), cache_dir)

    hint = "Pass --text-column NAME to choose the column that holds the text."
    _require_columns(ds, [text_column], hint)
    ds = DatasetDict(
        {
            split: d.filter(_has_text(text_column), batched=True, num_proc=_effective_num_proc(None, len(d)))
            for split, d in ds.items()
        }
    )
    if len(ds.get("train", [])) == 0:
        raise EmptyDataError(
            f"The 'train' split has no non-empty {text_column!r} rows; check the data "
            f"(splits: {list(ds)})."
        )
    return _ensure_validation(ds, validation_fraction, seed)


def _has_text(text_column: str):
    """Batched ``filter`` predicate: the rows whose ``text_column`` holds a non-blank string."""

    def has_text(batch: dict[str, list]) -> list[bool]:
        return [isinstance(t, str) and bool(t.strip()) for t in batch[text_column]]

    return has_text


def _infer_family(tokenizer: PreTrainedTokenizerBase) -> Family:
    """BERT-style tokenizers have [CLS]/[SEP]; everything else is treated as GPT-style."""
    return "bert" if tokenizer.cls_token is not None and tokenizer.sep_token is not None else "gpt"


def _effective_num_proc(requested: int | None, num_rows: int, min_rows_per_proc: int = 2000) -> int | None:
    """Processes for ``Dataset.map``: all the cores this process may use (or ``requested``), but only as many as
    get a few thousand rows each, so that a small corpus does not pay for starting processes."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    wanted = requested if requested is not None else cpus
    useful = min(wanted, num_rows // min_rows_per_proc)
    return useful if useful > 1 else None


def _tokenize_fn(tokenizer: PreTrainedTokenizerBase, text_column: str, family: Family, add_special_tokens: bool):
    """Batched ``map`` function: token ids of each text (BERT: ``[CLS] .. [SEP]``; GPT: ``.. eos``)."""
    eos_id = tokenizer.eos_token_id
    if family == "gpt" and add_special_tokens and eos_id is None:
        raise ValueError(
            "add_special_tokens=True for a GPT-style tokenizer appends the eos token after "
            "each text, but this tokenizer has no eos_token. Set tokenizer.eos_token or "
            "pass add_special_tokens=False."
        )

    def tokenize(batch: dict[str, list]) -> dict[str, list]:
        enc = tokenizer(
            batch[text_column],
            add_special_tokens=add_special_tokens and family == "bert",
            return_attention_mask=False,
            return_token_type_ids=False,
            verbose=False,
        )
        ids = enc["input_ids"]
        if family == "gpt" and add_special_tokens:
            ids = [seq + [eos_id] for seq in ids]
        return {"input_ids": ids}

    return tokenize


def _group_fn(block_size: int, with_token_types: bool):
    """Batched ``map`` function on Python lists: concatenate the batch's token lists and cut them into full blocks
    (the remainder of the batch is dropped). :func:`_group_table` is the same rule on Arrow tables."""

    def group(batch: dict[str, list]) -> dict[str, list]:
        concatenated = [tok for seq in batch["input_ids"] for tok in seq]
        total = (len(concatenated) // block_size) * block_size
        blocks = [concatenated[i : i + block_size] for i in range(0, total, block_size)]
        out: dict[str, list] = {
            "input_ids": blocks,
            "attention_mask": [[1] * block_size for _ in blocks],
        }
        if with_token_types:
            out["token_type_ids"] = [[0] * block_size for _ in blocks]
        return out

    return group


def _group_table(block_size: int, with_token_types: bool):
    """:func:`_group_fn` on an Arrow table (``with_format("arrow")``): no Python object per token, so one process
    groups as fast as the disk reads, and the blocks do not depend on how many processes tokenized."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    def blocks_of(values: pa.Array) -> pa.Array:
        return pa.FixedSizeListArray.from_arrays(values, block_size).cast(pa.list_(values.type))

    def group(table: pa.Table) -> pa.Table:
        tokens = pc.list_flatten(table.column("input_ids")).combine_chunks()
        total = (len(tokens) // block_size) * block_size
        ones, zeros = pa.array(np.ones(total, np.int8)), pa.array(np.zeros(total, np.int8))
        columns = {"input_ids": blocks_of(tokens.slice(0, total)), "attention_mask": blocks_of(ones)}
        if with_token_types:
            columns["token_type_ids"] = blocks_of(zeros)
        return pa.table(columns)

    return group


def tokenize_and_group(
    dataset_dict: DatasetDict,
    tokenizer: PreTrainedTokenizerBase,
    block_size: int,
    text_column: str = "text",
    num_proc: int | None = None,
    add_special_tokens: bool = True,
    family: Family | None = None,
    group_batch_size: int = 1000,
) -> DatasetDict:
    """Tokenize every text and cut the token stream into blocks of ``block_size``.

    This is the ``run_clm`` / ``run_mlm`` "group texts" recipe:

    1. tokenize each text (``Dataset.map(batched=True)``); for ``family="bert"`` with
       ``add_special_tokens`` the tokenizer wraps each text as ``[CLS] text [SEP]`` (the
       run_mlm approach), for ``family="gpt"`` the tokenizer adds nothing and
       ``add_special_tokens`` appends ``eos`` (``<|endoftext|>``) after each text so
       documents stay delimited;
    2. concatenate the token lists of ``group_batch_size`` consecutive texts and cut
       them into blocks of exactly ``block_size`` tokens, dropping the remainder of
       each such group. With fewer texts than ``group_batch_size`` the blocks are
       exactly the leading ``len(blocks) * block_size`` tokens of the concatenation.
       This step runs in one process on Arrow tables, so the blocks are the same
       whatever the number of processes that tokenized; :mod:`.streaming` applies the
       same rule to a stream.

    Memory stays bounded whatever the corpus size: both steps are batched ``map`` calls writing
    to the ``datasets`` cache (memory-mapped Arrow files); no step holds the corpus in Python.

    Columns out: ``input_ids``, ``attention_mask`` (all ones) and, when the tokenizer
    lists it in ``model_input_names``, ``token_type_ids`` (all zeros). Labels are made by
    ``DataCollatorForLanguageModeling`` (``mlm=True`` for BERT, ``False`` for GPT).

    Args:
        num_proc: processes that tokenize; ``None``: all the cores this process may use,
            but only as many as get a few thousand rows each.
        family: ``"bert"`` or ``"gpt"``; inferred from the tokenizer when ``None``.

    Raises:
        MissingColumnError: ``text_column`` is missing.
        CorpusTooSmallError: some split yields no full block.
    """
    if block_size < 1:
        raise ValueError(f"block_size must be a positive number of tokens, got {block_size}.")
    if group_batch_size < 1:
        raise ValueError(f"group_batch_size must be >= 1, got {group_batch_size}.")
    family = family or _infer_family(tokenizer)
    if family not in ("bert", "gpt"):
        raise ValueError(f"family must be 'bert' or 'gpt', got {family!r}.")
    _require_columns(dataset_dict, [text_column], "Pass --text-column NAME.")

    tokenize = _tokenize_fn(tokenizer, text_column, family, add_special_tokens)
    group = _group_table(block_size, with_token_types="token_type_ids" in tokenizer.model_input_names)

    result = {}
    for split, ds in dataset_dict.items():
        procs = _effective_num_proc(num_proc, len(ds))
        tokenized = ds.map(
            tokenize,
            batched=True,
            remove_columns=ds.column_names,
            num_proc=procs,
            desc=f"Tokenizing {split}",
        )
        grouped = tokenized.with_format("arrow").map(
            group,
            batched=True,
            batch_size=group_batch_size,
            desc=f"Grouping {split} into blocks of {block_size}",
        ).with_format(None)
        if len(grouped) == 0:
            n_tokens = sum(len(x) for x in tokenized["input_ids"])
            raise CorpusTooSmallError(
                f"Split {split!r} has {n_tokens} tokens in {len(ds)} text(s), fewer than one "
                f"block of block_size={block_size} tokens. Use a smaller --block-size or "
                "more text."
            )
        result[split] = grouped
    return DatasetDict(result)


# --------------------------------------------------------------------------- pair classification
