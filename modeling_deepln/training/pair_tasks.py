"""Sentence(-pair) classification data (GLUE QQP format by default) for ``deepln finetune``.

:func:`load_pair_task` loads a Hub task (``"nyu-mll/glue:qqp"``), a folder with ``train.*`` / ``validation.*`` files
or explicit files, checks the text and label columns, and makes a validation split when there is none;
:func:`tokenize_pairs` encodes one or two text columns for ``*ForSequenceClassification``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

from datasets import DatasetDict, load_dataset
from transformers import PreTrainedTokenizerBase

from .data import (
    DataError,
    DataFileNotFoundError,
    EmptyDataError,
    _ensure_validation,
    _expand,
    _load_hub,
    _load_local,
    _looks_like_path,
    _normalise_splits,
    _require_columns,
    _split_of,
)

__all__ = ["load_pair_task", "tokenize_pairs"]


def _pair_files(data: str | Mapping[str, str]) -> dict[str, list[Path]]:
    """Local files of a pair task: ``{split: file}`` mapping, a folder, or a file."""
    if isinstance(data, Mapping):
        if not data:
            raise DataError("The split -> file mapping is empty.")
        return {split: _expand(os.fspath(path)) for split, path in data.items()}
    files = _expand(data)
    by_split: dict[str, list[Path]] = {}
    for f in files:
        split = _split_of(f)
        if split is not None:
            by_split.setdefault(split, []).append(f)
    if Path(os.path.expanduser(data)).is_dir():
        if "train" not in by_split:
            raise DataFileNotFoundError(
                f"The folder {data!r} has no train file; name the files train.<ext> and "
                f"validation.<ext> (or dev/valid, test). Found: {[f.name for f in files]}."
            )
        return by_split
    return {"train": files}


def load_pair_task(
    data: str | Mapping[str, str] | None,
    text_columns: tuple[str, ...] = ("question1", "question2"),
    label_column: str = "label",
    hub_default: tuple[str, str | None] = ("nyu-mll/glue", "qqp"),
    validation_fraction: float = 0.05,
    seed: int = 0,
    cache_dir: str | None = None,
) -> DatasetDict:
    """Load a sentence or sentence-pair classification task (QQP by default).

    Args:
        data: ``None`` -> ``load_dataset(*hub_default)`` (GLUE QQP from the Hub); a
            ``{split: file}`` mapping; a folder holding ``train.<ext>`` and
            ``validation.<ext>`` (or ``dev``/``valid``, ``test``); a single file (train
            only); or a Hub name, optionally ``"name:config"``. Local formats: csv, tsv,
            jsonl/json, parquet.
        text_columns: one column (single-sentence task) or two (pair task).
        label_column: integer labels (string labels are encoded as class ids).
        validation_fraction, seed: used to split a validation set off ``train`` when
            the data has none.

    Returns:
        ``DatasetDict`` with ``train`` and ``validation`` (and ``test`` if it has labels).
        Rows with label ``-1`` (GLUE's unlabelled test split) or a missing label / text
        are dropped; splits left empty (GLUE ``test``) are removed.

    Raises:
        MissingColumnError: a column is missing (lists the columns, names the options).
        DataFileNotFoundError / EmptyDataError: bad local files.
    """
    if not text_columns or len(text_columns) > 2:
        raise ValueError(
            f"text_columns must name one or two columns, got {tuple(text_columns)}."
        )
    if data is None:
        name, config = hub_default
        ds = load_dataset(name, config, cache_dir=cache_dir)
    elif isinstance(data, Mapping) or _looks_like_path(os.fspath(data)):
        ds = _load_local(_pair_files(data if isinstance(data, Mapping) else os.fspath(data)), cache_dir)
    else:
        ds = _load_hub(os.fspath(data), cache_dir)
    ds = _normalise_splits(ds)

    hint = (
        "Choose the columns with --text-columns COL [COL2] and --label-column COL "
        f"(now text_columns={tuple(text_columns)}, label_column={label_column!r})."
    )
    _require_columns(ds, [*text_columns, label_column], hint)

    def keep(batch: dict[str, list]) -> list[bool]:
        n = len(batch[label_column])
        ok = []
        for i in range(n):
            label = batch[label_column][i]
            good = label is not None and label != -1 and str(label).strip() not in ("", "-1")
            for col in text_columns:
                text = batch[col][i]
                good = good and isinstance(text, str) and bool(text.strip())
            ok.append(good)
        return ok

    filtered = {split: d.filter(keep, batched=True) for split, d in ds.items()}
    filtered = {split: d for split, d in filtered.items() if len(d) > 0}
    if "train" not in filtered:
        raise EmptyDataError(
            "The 'train' split has no labelled examples with non-empty text "
            f"(splits found: {list(ds)})."
        )
    ds = DatasetDict(filtered)
    if getattr(ds["train"].features[label_column], "dtype", None) in ("string", "large_string"):
        ds = ds.class_encode_column(label_column)
    return _ensure_validation(ds, validation_fraction, seed)


def tokenize_pairs(
    dataset_dict: DatasetDict,
    tokenizer: PreTrainedTokenizerBase,
    text_columns: Sequence[str],
    label_column: str,
    max_length: int,
) -> DatasetDict:
    """Tokenize a (pair) classification task for ``Trainer``.

    Each example becomes ``tokenizer(text_a[, text_b], truncation=True,
    max_length=max_length)`` (``[CLS] a [SEP] b [SEP]`` with ``token_type_ids`` for a
    BERT tokenizer) plus ``labels``; the original columns are removed. No padding is
    done here: use ``DataCollatorWithPadding`` for dynamic padding.

    Raises:
        MissingColumnError: a column is missing.
        ValueError: ``max_length`` < 1 or not one/two text columns.
    """
    if max_length < 1:
        raise ValueError(f"max_length must be >= 1, got {max_length}.")
    text_columns = tuple(text_columns)
    if not text_columns or len(text_columns) > 2:
        raise ValueError(f"text_columns must name one or two columns, got {text_columns}.")
    _require_columns(
        dataset_dict,
        [*text_columns, label_column],
        "Choose the columns with --text-columns and --label-column.",
    )

    def encode(batch: dict[str, list]) -> dict[str, list]:
        enc = tokenizer(*(batch[c] for c in text_columns), truncation=True, max_length=max_length)
        out = {k: v for k, v in enc.items()}
        out["labels"] = batch[label_column]
        return out

    return DatasetDict(
        {
            split: d.map(encode, batched=True, remove_columns=d.column_names, desc=f"Tokenizing {split}")
            for split, d in dataset_dict.items()
        }
    )
