"""Tests of ``deepln pretrain --streaming`` (modeling_deepln.training.streaming) and of the memory-bounded preparation.

The corpora are paragraphs of the embedded Wikipedia text written to local files in the formats Hub datasets come in
(text, jsonl, parquet); nothing touches the Hub. The reference for the streamed blocks is the default path
(:func:`tokenize_and_group` on the same files); the reference for a resumed run is the uninterrupted run.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pandas as pd
import pytest
from datasets import Dataset, DatasetDict, load_dataset

from conftest import kill_at_first_checkpoint, logged_losses as _losses
from modeling_deepln.cli import main

from modeling_deepln.training.data import load_text_data, tokenize_and_group
from modeling_deepln.training.streaming import (
    ResumableBlocks,
    StreamPosition,
    load_text_stream,
    split_held_out,
    stream_blocks,
)
from modeling_deepln.training.tokenization import train_tokenizer

REPO = Path(__file__).resolve().parents[1]
BLOCK = 64


@pytest.fixture(scope="module")
def paragraphs() -> list[str]:
    """~2,600 paragraphs of English prose, with blank lines (dropped by both paths) in between."""
    from modeling_deepln.training.corpus import wiki_articles

    lines = [line for text in wiki_articles()[:40] for line in text.split("\n")]
    assert sum(bool(line.strip()) for line in lines) > 2000  # several groups of 1,000 texts
    return lines


@pytest.fixture(scope="module")
def gpt_tokenizer(paragraphs):
    return train_tokenizer([p for p in paragraphs if p.strip()], "gpt", vocab_size=600)


@pytest.fixture(scope="module")
def bert_tokenizer(paragraphs):
    return train_tokenizer([p for p in paragraphs if p.strip()], "bert", vocab_size=600)


def _write(folder: Path, name: str, rows: list[str], fmt: str) -> None:
    path = folder / f"{name}.{fmt}"
    if fmt == "txt":
        path.write_text("\n".join(rows) + "\n", encoding="utf-8")
    elif fmt == "jsonl":
        pd.DataFrame({"text": rows, "id": range(len(rows))}).to_json(path, orient="records", lines=True)
    else:
        pd.DataFrame({"text": rows}).to_parquet(path)


def _corpus(folder: Path, paragraphs: list[str], fmt: str) -> Path:
    """train.0 / train.1 (a file boundary inside a group of texts) and validation files."""
    folder.mkdir(parents=True, exist_ok=True)
    n = len(paragraphs)
    _write(folder, "train.0", paragraphs[: n // 3], fmt)
    _write(folder, "train.1", paragraphs[n // 3 : n - 300], fmt)
    _write(folder, "validation", paragraphs[n - 300 :], fmt)
    return folder


def _ids(rows) -> list[list[int]]:
    return [list(row["input_ids"]) for row in rows]


@pytest.mark.parametrize(("fmt", "family"), [("txt", "gpt"), ("jsonl", "bert"), ("parquet", "gpt")])
def test_streamed_blocks_equal_the_prepared_blocks(tmp_path, paragraphs, request, fmt, family):
    tokenizer = request.getfixturevalue(f"{family}_tokenizer")
    folder = _corpus(tmp_path / fmt, paragraphs, fmt)
    prepared = tokenize_and_group(load_text_data(str(folder), cache_dir=str(tmp_path / "hf")), tokenizer, BLOCK)
    streams = load_text_stream(str(folder))
    assert set(streams) == {"train", "validation"}
    blocks = {split: stream_blocks(s, tokenizer, BLOCK) for split, s in streams.items()}
    streamed = list(blocks["train"])
    assert len(streamed) == len(prepared["train"]) > 100
    assert set(streamed[0]) == set(prepared["train"].column_names)
    assert _ids(streamed) == _ids(prepared["train"])
    for column in set(streamed[0]) - {"input_ids"}:
        assert [list(r[column]) for r in streamed] == [list(v) for v in prepared["train"][column]], column

    train, held_out = split_held_out(blocks["train"], blocks["validation"], eval_blocks=10)
    assert _ids(held_out) == _ids(prepared["validation"])[:10]
    assert _ids(train.take(3)) == _ids(streamed[:3])  # a validation split leaves the training stream whole


def test_held_out_blocks_come_from_the_start_of_a_single_stream(tmp_path, paragraphs, gpt_tokenizer):
    _write(tmp_path, "corpus", paragraphs[:600], "txt")
    blocks = stream_blocks(load_text_stream(str(tmp_path / "corpus.txt"))["train"], gpt_tokenizer, BLOCK)
    everything = _ids(blocks)
    train, held_out = split_held_out(blocks, None, eval_blocks=7)
    assert _ids(held_out) == everything[:7]
    assert _ids(train) == everything[7:]


def _drain(stream: ResumableBlocks, batches: int, batch: int, read_ahead: int):
    """Read like a DataLoader that fetches ``read_ahead`` batches beyond those trained on; returns the trained ones."""
    iterator = iter(stream)
    fetched = [next(iterator) for _ in range((batches + read_ahead) * batch)]
    return fetched[: batches * batch]


def test_resumable_blocks_continue_with_the_next_block(tmp_path, paragraphs, gpt_tokenizer):
    _write(tmp_path, "corpus", paragraphs[:1500], "txt")

    def fresh() -> object:  # what a restarted process builds
        return stream_blocks(load_text_stream(str(tmp_path / "corpus.txt"))["train"], gpt_tokenizer, BLOCK)

    everything = _ids(fresh())
    batch = 4
    first = ResumableBlocks(fresh(), batch_examples=batch)
    trained = _drain(first, batches=23, batch=batch, read_ahead=2)
    assert _ids(trained) == everything[: 23 * batch]
    position = json.loads(json.dumps(first.position_after(23 * batch)))  # as stored in trainer_state.json
    assert position["examples"] == 23 * batch
    assert first.position_after(5) is None  # only global-batch boundaries are kept

    resumed = ResumableBlocks(fresh(), batch_examples=batch)
    resumed.resume_at(position)
    assert _ids(resumed) == everything[23 * batch :]
    assert _ids(resumed) == everything  # the next pass (epoch) starts at the beginning
    # the position continues to count across the restart
    again = ResumableBlocks(fresh(), batch_examples=batch)
    again.resume_at(position)
    _drain(again, batches=2, batch=batch, read_ahead=1)
    assert again.position_after(25 * batch)["examples"] == 25 * batch


def test_stream_position_is_the_checkpoint_step(tmp_path, paragraphs, gpt_tokenizer):
    _write(tmp_path, "corpus", paragraphs[:600], "txt")
    blocks = ResumableBlocks(stream_blocks(load_text_stream(str(tmp_path))["train"], gpt_tokenizer, BLOCK), batch_examples=2)
    callback = StreamPosition(blocks, examples_per_step=6)  # batch 2 x 3 accumulation steps
    _drain(blocks, batches=9, batch=2, read_ahead=1)

    class State:
        global_step = 3

    callback.on_step_end(None, State(), None)
    assert callback.state()["attributes"]["position"] == blocks.position_after(18)


# ----------------------------------------------------------------------------------------------- end to end

TINY = [
    "--num-layers", "2", "--hidden-size", "32", "--num-heads", "2", "--seq-len", "32", "--vocab-size", "600",
    "--batch-size", "4", "--report-to", "none", "--no-progress", "--max-eval-samples", "8", "--streaming",
]  # fmt: skip




def test_streaming_resume_after_sigkill_continues_the_stream(tmp_path, paragraphs, single_thread):
    corpus = tmp_path / "corpus.jsonl"
    pd.DataFrame({"text": [p for p in paragraphs if p.strip()][:400]}).to_json(corpus, orient="records", lines=True)
    common = ["pretrain", *TINY, "--data", str(corpus), "--max-steps", "20", "--save-steps", "3", "--grad-accum", "2",
              "--logging-steps", "1", "--eval-steps", "0", "--no-samples", "--lr", "3e-3"]  # fmt: skip
    reference = tmp_path / "reference"
    main([*common, "--output-dir", str(reference)])
    expected = _losses(reference / "trainer_state.json")
    assert sorted(expected) == list(range(1, 21))

    killed = tmp_path / "killed"
    checkpoint = kill_at_first_checkpoint(common, killed)
    resumed_from = int(checkpoint.name.split("-")[1])
    assert 0 < resumed_from < 20
    saved = json.loads((checkpoint / "trainer_state.json").read_text())["stateful_callbacks"]["StreamPosition"]
    assert saved["attributes"]["position"]["examples"] == resumed_from * 4 * 2

    main([*common, "--output-dir", str(killed), "--resume"])
    got = _losses(killed / "trainer_state.json")
    assert sorted(got) == list(range(1, 21))
    for step in range(1, 21):  # after the restart too: the same blocks, in the same order
        assert got[step] == pytest.approx(expected[step], abs=1e-6, rel=1e-6), step


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--max-steps", "0"], "--streaming needs --max-steps N"),
        (["--recipe", "paper", "--precision", "fp32"], "--streaming needs --max-steps N"),  # a recipe of epochs
    ],
)
def test_streaming_needs_max_steps(tmp_path, capsys, paragraphs, extra, message):
    corpus = tmp_path / "c.txt"
    corpus.write_text("\n".join(paragraphs[:50]))
    args = ["pretrain", "--preset", "bert-1k", *TINY, "--data", str(corpus), "--output-dir", str(tmp_path / "o"), *extra]
    with pytest.raises(SystemExit) as exc:
        main(args)
    assert exc.value.code == 2
    assert message in capsys.readouterr().err


def test_streaming_needs_data(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["pretrain", *TINY, "--max-steps", "2", "--output-dir", str(tmp_path / "o")])
    assert "--streaming reads --data as a stream" in capsys.readouterr().err


def test_streaming_reports_a_missing_column(tmp_path):
    pd.DataFrame({"content": ["some text here"] * 5}).to_json(tmp_path / "a.jsonl", orient="records", lines=True)
    with pytest.raises(ValueError, match=r"Column 'text' not found.*\['content'\].*--text-column"):
        load_text_stream(str(tmp_path / "a.jsonl"))


# ----------------------------------------------------------------------------------------------- memory-bounded prep


def test_preparation_is_parallel_file_backed_and_independent_of_the_process_count(
    tmp_path, paragraphs, gpt_tokenizer
):
    """The default path tokenizes in several processes and keeps every stage in Arrow files of the datasets cache
    (memory-mapped, not in Python memory); the blocks do not depend on the number of processes."""
    rows = [p for p in paragraphs if p.strip()][:2000] * 3  # 6,000 texts: 2 processes of 3,000
    _write(tmp_path, "train", rows, "txt")
    raw = load_dataset("text", data_files={"train": str(tmp_path / "train.txt")}, cache_dir=str(tmp_path / "hf"))
    calls = []
    original = Dataset.map

    def recording_map(self, function=None, **kwargs):
        calls.append({k: kwargs.get(k) for k in ("batched", "num_proc")})
        return original(self, function, **kwargs)

    Dataset.map = recording_map
    try:
        two = tokenize_and_group(raw, gpt_tokenizer, BLOCK, num_proc=2)["train"]
    finally:
        Dataset.map = original
    one = tokenize_and_group(DatasetDict({"train": raw["train"]}), gpt_tokenizer, BLOCK, num_proc=1)["train"]
    assert calls[0] == {"batched": True, "num_proc": 2}  # tokenizing
    assert all(call["batched"] for call in calls)
    assert two.cache_files and all(Path(f["filename"]).is_file() for f in two.cache_files)
    assert _ids(two) == _ids(one)
