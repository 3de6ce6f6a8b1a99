"""Streaming a corpus that is larger than memory or disk into fixed-length blocks: ``deepln pretrain --streaming``.

Why this exists
---------------
The default data path (:func:`.data.tokenize_and_group`) tokenizes the whole corpus before the first step and keeps
it in the ``datasets`` cache. With ``--streaming`` the corpus is read with ``load_dataset(..., streaming=True)`` (a
``datasets.IterableDataset``; Hub datasets and local text/json/jsonl/csv/parquet files alike) and tokenized and packed
on the fly, so training starts as soon as the tokenizer is ready, whatever the corpus size, and nothing is written.

* **Blocks**: the same rule as the default path (the ``run_clm``/``run_mlm`` "group texts" recipe): blank rows are
  dropped, each text is tokenized (BERT: ``[CLS] text [SEP]``; GPT: ``text <|endoftext|>``), the tokens of each
  ``group_batch_size`` consecutive texts are concatenated and cut into blocks of ``block_size`` tokens, the remainder
  of each group dropped. For the same texts in the same order both paths give the same blocks (tested); blocks come
  in corpus order (the default path shuffles them).
* **Held-out blocks**: the first ``eval_blocks`` blocks of the ``validation`` split when the data has one (files named
  ``validation.*``/``valid.*``/``dev.*``, or the Hub dataset's split); otherwise the first ``eval_blocks`` blocks of
  the training stream, and training starts after them. They are read once and kept in memory.
* **Resume**: :class:`ResumableBlocks` notes the stream's position (``IterableDataset.state_dict()``, datasets >=
  2.18) at every global batch, and :class:`StreamPosition` writes the position of the last block a checkpoint's
  optimizer steps consumed into that checkpoint's ``trainer_state.json``; a resumed run loads it
  (``load_state_dict``) and continues with the next block, the one the uninterrupted run would have trained on next
  (tested after SIGKILL). ``datasets`` restores a position by reopening the current file (shard) and skipping the
  rows before it (read, not tokenized), so resuming deep into one huge file takes a read of that file up to the
  position; Hub datasets are sharded into many files. A checkpoint without a saved position (written without
  ``--streaming``) is resumed by Trainer's default: replaying the stream from the start up to the step.
"""

from __future__ import annotations

import copy
import json
import os
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from datasets import Dataset, IterableDataset, IterableDatasetDict
from transformers import PreTrainedTokenizerBase, TrainerCallback
from transformers.trainer_callback import ExportableState

from .data import (
    CorpusTooSmallError,
    DataError,
    EmptyDataError,
    MissingColumnError,
    _expand,
    _group_by_split,
    _group_fn,
    _has_text,
    _infer_family,
    _load_hub,
    _load_local,
    _looks_like_path,
    _normalise_splits,
    _tokenize_fn,
)

__all__ = [
    "STREAMING_EVAL_BLOCKS",
    "UNIGRAM_SAMPLE_BLOCKS",
    "ResumableBlocks",
    "StreamPosition",
    "load_text_stream",
    "stream_blocks",
    "split_held_out",
    "saved_stream_position",
    "leading_token_ids",
]

STREAMING_EVAL_BLOCKS = 128
"""Held-out blocks of a streamed corpus when ``--max-eval-samples`` is not given."""

UNIGRAM_SAMPLE_BLOCKS = 2000
"""Leading training blocks whose token counts make the unigram reference (``perplexity_unigram``) of a streamed run."""


def load_text_stream(
    data: str | Sequence[str], text_column: str = "text", cache_dir: str | None = None
) -> IterableDatasetDict:
    """Open a corpus as streams: ``load_dataset(..., streaming=True)`` per split, blank rows dropped.

    Args:
        data: local file(s), glob or folder (as :func:`.data.load_text_data`; ``train.*``/``validation.*`` files
            become those splits), or a Hub dataset name, optionally ``"name:config"``.
        text_column: the column holding the text; checked on the first row of each split.

    Returns:
        An ``IterableDatasetDict`` with ``train`` and, when the data has one, ``validation``.

    Raises:
        DataFileNotFoundError, EmptyDataError, MissingColumnError, DataError: as :func:`.data.load_text_data`.
    """
    specs = [data] if isinstance(data, (str, os.PathLike)) else list(data)
    if not specs:
        raise DataError("No data given: pass a file, a folder, a glob or a Hub dataset name.")
    specs = [os.fspath(s) for s in specs]
    if len(specs) == 1 and not _looks_like_path(specs[0]):
        streams = _load_hub(specs[0], cache_dir, streaming=True)
    else:
        files = [f for spec in specs for f in _expand(spec)]
        streams = _load_local(_group_by_split(files), cache_dir, streaming=True)
    streams = _normalise_splits(streams)
    if "train" not in streams:
        raise DataError(f"The data has no 'train' split; its splits are {list(streams)}.")
    out = IterableDatasetDict()
    for split in ("train", "validation"):
        if split in streams:
            first = next(iter(streams[split]), None)
            if first is None:
                raise EmptyDataError(f"The {split!r} split holds no rows.")
            if text_column not in first:
                raise MissingColumnError(
                    f"Column {text_column!r} not found in split {split!r}; the available columns are "
                    f"{list(first)}. Pass --text-column NAME to choose the column that holds the text."
                )
            out[split] = streams[split].filter(_has_text(text_column), batched=True)
    return out


def stream_blocks(
    stream: IterableDataset,
    tokenizer: PreTrainedTokenizerBase,
    block_size: int,
    text_column: str = "text",
    add_special_tokens: bool = True,
    family: str | None = None,
    group_batch_size: int = 1000,
) -> IterableDataset:
    """The stream of ``block_size``-token blocks of a stream of texts, tokenized and packed on the fly by the rule of
    :func:`.data.tokenize_and_group` (same columns: ``input_ids``, ``attention_mask``, BERT: ``token_type_ids``)."""
    if block_size < 1:
        raise ValueError(f"block_size must be a positive number of tokens, got {block_size}.")
    family = family or _infer_family(tokenizer)
    columns = list(next(iter(stream)))
    tokenize = _tokenize_fn(tokenizer, text_column, family, add_special_tokens)
    group = _group_fn(block_size, with_token_types="token_type_ids" in tokenizer.model_input_names)
    tokenized = stream.map(tokenize, batched=True, remove_columns=columns)
    return tokenized.map(group, batched=True, batch_size=group_batch_size, remove_columns=["input_ids"])


def split_held_out(
    train_blocks: IterableDataset, validation_blocks: IterableDataset | None, eval_blocks: int
) -> tuple[IterableDataset, Dataset]:
    """``(training stream, held-out blocks)``: the first ``eval_blocks`` blocks of the validation stream, or, without
    one, of the training stream, which then starts after them.

    Raises:
        CorpusTooSmallError: the stream yields no full block.
    """
    if eval_blocks < 1:
        raise ValueError(f"The held-out set needs at least one block, got eval_blocks={eval_blocks}.")
    source = validation_blocks if validation_blocks is not None else train_blocks
    held_out = list(source.take(eval_blocks))
    if not held_out:
        split = "validation" if validation_blocks is not None else "train"
        raise CorpusTooSmallError(
            f"The {split!r} stream yields no full block; use a smaller --seq-len or more text."
        )
    train = train_blocks if validation_blocks is not None else train_blocks.skip(len(held_out))
    return train, Dataset.from_list(held_out)


def leading_token_ids(blocks: Any, num_blocks: int) -> np.ndarray:
    """The token ids of the first ``num_blocks`` blocks of a stream, as a ``[blocks, block_size]`` array."""
    stream = blocks.blocks if isinstance(blocks, ResumableBlocks) else blocks
    return np.asarray([row["input_ids"] for row in stream.take(num_blocks)], dtype=np.int64)


class ResumableBlocks(torch.utils.data.IterableDataset):
    """A stream of blocks for ``Trainer`` that can continue at any global-batch boundary.

    While it yields blocks it keeps the stream's ``state_dict()`` after every ``batch_examples`` blocks (the global
    micro-batch, which the DataLoader reads ahead of training by a batch or two) for the last ``history`` batches;
    :meth:`position_after` returns the position after a given number of blocks, :meth:`resume_at` makes the next
    pass start there. Passes after the first start at the stream's beginning (a new epoch).
    """

    def __init__(self, blocks: IterableDataset, batch_examples: int, history: int = 64):
        if batch_examples < 1:
            raise ValueError(f"batch_examples must be >= 1, got {batch_examples}.")
        self.blocks, self.batch_examples, self.history = blocks, batch_examples, history
        self.produced = 0
        self._positions: OrderedDict[int, dict] = OrderedDict()
        self._resume: dict | None = None

    def resume_at(self, position: dict) -> None:
        """Start the next pass at ``position`` (from :meth:`position_after`, e.g. read back from a checkpoint)."""
        self._resume = position

    def position_after(self, examples: int) -> dict | None:
        """``{"examples", "stream"}`` after the first ``examples`` blocks, or None when it is no longer kept."""
        if examples == 0:
            return {"examples": 0, "stream": None}
        state = self._positions.get(examples)
        return None if state is None else {"examples": examples, "stream": state}

    def __iter__(self):
        stream = self.blocks
        if self._resume is not None:
            position, self._resume = self._resume, None
            self.produced = int(position["examples"])
            if position["stream"] is not None:
                stream = copy.deepcopy(self.blocks)  # the restored position applies to this pass only
                stream.load_state_dict(position["stream"])
        for block in stream:
            self.produced += 1
            if self.produced % self.batch_examples == 0:
                self._positions[self.produced] = stream.state_dict()
                while len(self._positions) > self.history:
                    self._positions.popitem(last=False)
            yield block


class StreamPosition(TrainerCallback, ExportableState):
    """Saves, in each checkpoint's ``trainer_state.json`` (``stateful_callbacks``), the stream position after the
    blocks its optimizer steps consumed: ``global_step * examples_per_step`` blocks. The state is written inside
    ``Trainer._save_checkpoint``, with the rest of the checkpoint, so a complete checkpoint always holds it."""

    def __init__(self, blocks: ResumableBlocks | None = None, examples_per_step: int = 0):
        self.blocks, self.examples_per_step = blocks, examples_per_step
        self.global_step = 0

    def on_step_end(self, args, state, control, **kwargs):
        self.global_step = state.global_step

    def state(self) -> dict:
        position = None
        if self.blocks is not None:
            position = self.blocks.position_after(self.global_step * self.examples_per_step)
        return {"args": {}, "attributes": {"position": position}}


def saved_stream_position(checkpoint: str | Path) -> dict | None:
    """The stream position :class:`StreamPosition` saved in a checkpoint, or None when it holds none."""
    state_file = Path(checkpoint) / "trainer_state.json"
    if not state_file.is_file():
        return None
    saved = json.loads(state_file.read_text()).get("stateful_callbacks", {}).get(StreamPosition.__name__)
    if isinstance(saved, list):
        saved = saved[-1] if saved else None
    return (saved or {}).get("attributes", {}).get("position")
