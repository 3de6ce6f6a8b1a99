"""Tests of the data side of deepln: corpus, tokenizers, loading, grouping, metrics.

Everything is offline: the corpus comes from gensim's installed test data, tokenizers
are trained here with small vocabularies, and task files are written to ``tmp_path``.
"""

from __future__ import annotations

import json
import math
import os
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np
import pandas as pd
import pytest
from datasets import Dataset, DatasetDict
from transformers import AutoTokenizer, DataCollatorForLanguageModeling, EvalPrediction

from modeling_deepln.training import corpus as corpus_mod
from modeling_deepln.training.data import (
    CorpusTooSmallError,
    DataError,
    DataFileNotFoundError,
    EmptyDataError,
    MissingColumnError,
    load_text_data,
    tokenize_and_group,
)
from modeling_deepln.training.pair_tasks import load_pair_task, tokenize_pairs
from modeling_deepln.training.metrics import classification_metrics, perplexity
from modeling_deepln.training.tokenization import (
    TokenizerVocabMismatchError,
    check_tokenizer_fits,
    load_or_train_tokenizer,
    train_tokenizer,
)

SAMPLE = "The quick brown fox jumps over the lazy dog. Anarchism is a political philosophy!"


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def corpus_cache(tmp_path_factory):
    """A private DEEPLN_CACHE so tests neither read nor write the user's cache."""
    path = tmp_path_factory.mktemp("deepln_cache")
    old = os.environ.get("DEEPLN_CACHE")
    os.environ["DEEPLN_CACHE"] = str(path)
    yield path
    if old is None:
        os.environ.pop("DEEPLN_CACHE", None)
    else:
        os.environ["DEEPLN_CACHE"] = old


@pytest.fixture(scope="module")
def articles(corpus_cache):
    return corpus_mod.wiki_articles()


@pytest.fixture(scope="module")
def train_texts(articles):
    # A subset keeps tokenizer training well under a second.
    return articles[:30]


@pytest.fixture(scope="module")
def bert_dir(tmp_path_factory, train_texts):
    out = tmp_path_factory.mktemp("bert_tok")
    train_tokenizer(train_texts, "bert", vocab_size=1000, output_dir=str(out), model_max_length=128)
    return out


@pytest.fixture(scope="module")
def bert_tok(bert_dir):
    return AutoTokenizer.from_pretrained(str(bert_dir))


@pytest.fixture(scope="module")
def gpt_tok(tmp_path_factory, train_texts):
    out = tmp_path_factory.mktemp("gpt_tok")
    return train_tokenizer(train_texts, "gpt", vocab_size=1000, output_dir=str(out))


# --------------------------------------------------------------------------- corpus


def test_corpus_is_clean_english(articles, corpus_cache):
    assert len(articles) > 50
    assert sum(map(len, articles)) > 1_000_000
    joined = "\n".join(articles)
    for markup in ("'''", "''", "[[", "]]", "{{", "}}", "=="):
        assert markup not in joined, markup
    # real English prose: the commonest words are everywhere
    words = joined.lower().split()
    for w in ("the", "of", "and", "in", "is"):
        assert words.count(w) > 1000, w
    assert all(len(a) >= 500 for a in articles)
    assert articles[0].startswith("Anarchism\nAnarchism is a political philosophy")
    # no reference lists / External links sections survive
    lines = joined.splitlines()
    assert sum("ISBN" in line for line in lines) < 0.01 * len(lines)  # only inline citations remain
    assert not any(line.strip().lower() == "external links" for line in joined.splitlines())
    # cached: a cache file exists and a second call is fast and identical
    assert list(corpus_cache.glob("wiki_articles-*.jsonl"))
    t = time.perf_counter()
    again = corpus_mod.wiki_articles()
    assert time.perf_counter() - t < 1.0
    assert again == articles


def test_corpus_splits_by_article(corpus_cache, articles):
    d1 = corpus_mod.wiki_corpus_splits(validation_fraction=0.1, seed=3)
    d2 = corpus_mod.wiki_corpus_splits(validation_fraction=0.1, seed=3)
    assert set(d1) == {"train", "validation"}
    assert d1["train"].column_names == ["text"]
    assert list(d1["validation"]["text"]) == list(d2["validation"]["text"])
    assert len(d1["validation"]) == round(0.1 * len(articles))
    assert set(d1["train"]["text"]).isdisjoint(d1["validation"]["text"])
    assert sorted(list(d1["train"]["text"]) + list(d1["validation"]["text"])) == sorted(articles)
    d3 = corpus_mod.wiki_corpus_splits(validation_fraction=0.1, seed=4)
    assert list(d3["validation"]["text"]) != list(d1["validation"]["text"])
    with pytest.raises(ValueError, match="validation_fraction"):
        corpus_mod.wiki_corpus_splits(validation_fraction=1.5)


def test_clean_wiki_text_rules():
    raw = (
        "'''Foo''' is a ''bar''.\n\n\n==History==\nIt   was made in 1900 .\n"
        "* short item\n* This list item is a real sentence with enough words in it.\n"
        "{| class=wikitable\n| cell\n==References==\n* Smith, Book, ISBN 1-2-3\n"
        "===Sub===\nref text\n==Later==\nMore prose here."
    )
    assert corpus_mod.clean_wiki_text(raw).splitlines() == [
        "Foo is a bar.",
        "History",
        "It was made in 1900.",
        "This list item is a real sentence with enough words in it.",
        "Later",
        "More prose here.",
    ]


def test_missing_gensim_message(monkeypatch):
    monkeypatch.setattr(corpus_mod.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(FileNotFoundError, match=r"pip install 'deepln\[corpus\]'"):
        corpus_mod.wiki_dump_path()


def test_without_gensim_a_copied_corpus_cache_is_used(monkeypatch, tmp_path, capsys):
    """No gensim: the newest cache of this clean-up version under $DEEPLN_CACHE (copied from a machine with gensim)
    is the corpus; another version's cache is not; with none the error says what to install."""
    monkeypatch.setattr(corpus_mod.importlib.util, "find_spec", lambda name: None)
    monkeypatch.setenv("DEEPLN_CACHE", str(tmp_path))
    stale = tmp_path / f"wiki_articles-v{corpus_mod._CLEANUP_VERSION - 1}-0123456789ab.jsonl"
    stale.write_text(json.dumps({"title": "Old", "text": "x" * 600}) + "\n")
    with pytest.raises(FileNotFoundError, match=r"copy the corpus cache"):
        corpus_mod.wiki_articles()
    articles = [{"title": f"T{i}", "text": f"Article {i}. " + "words " * 120} for i in range(3)]
    cached = tmp_path / f"wiki_articles-v{corpus_mod._CLEANUP_VERSION}-0123456789ab.jsonl"
    cached.write_text("".join(json.dumps(a) + "\n" for a in articles))
    assert corpus_mod.wiki_articles() == [f"{a['title']}\n{a['text']}" for a in articles]
    assert f"using the embedded corpus cached in {cached}" in capsys.readouterr().out
    with pytest.raises(FileNotFoundError):  # refresh needs gensim to rebuild
        corpus_mod.wiki_articles(refresh=True)


# --------------------------------------------------------------------------- tokenizers


def test_bert_tokenizer(bert_tok, bert_dir, train_texts):
    tok = bert_tok
    assert len(tok) <= 1000
    assert tok.convert_tokens_to_ids(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]) == [0, 1, 2, 3, 4]
    assert (tok.pad_token, tok.mask_token, tok.cls_token, tok.sep_token) == ("[PAD]", "[MASK]", "[CLS]", "[SEP]")
    enc = tok("Hello World")
    assert enc["input_ids"][0] == tok.cls_token_id and enc["input_ids"][-1] == tok.sep_token_id
    # uncased round trip
    assert tok.decode(tok(SAMPLE)["input_ids"], skip_special_tokens=True) == SAMPLE.lower()
    # pairs: [CLS] a [SEP] b [SEP] with token_type_ids 0/1
    a, b = "the state of the art", "in the united states"
    pair = tok(a, b)
    ids, tt = pair["input_ids"], pair["token_type_ids"]
    n_a = len(tok(a, add_special_tokens=False)["input_ids"])
    n_b = len(tok(b, add_special_tokens=False)["input_ids"])
    assert len(ids) == n_a + n_b + 3
    assert ids[0] == tok.cls_token_id and ids[n_a + 1] == tok.sep_token_id and ids[-1] == tok.sep_token_id
    assert tt == [0] * (n_a + 2) + [1] * (n_b + 1)
    # the in-memory trained tokenizer and the reloaded folder agree exactly
    fresh = train_tokenizer(train_texts, "bert", vocab_size=1000, model_max_length=128)
    for text in [SAMPLE, train_texts[1][:2000]]:
        assert fresh(text)["input_ids"] == tok(text)["input_ids"]
    assert fresh(a, b) == tok(a, b)
    assert tok.model_max_length == 128
    # works with the MLM collator
    collator = DataCollatorForLanguageModeling(tok, mlm=True, mlm_probability=0.5)
    batch = collator([tok(SAMPLE), tok("a shorter one")])
    assert batch["input_ids"].shape == batch["labels"].shape
    assert (batch["input_ids"] == tok.mask_token_id).any()


def test_gpt_tokenizer_byte_level_round_trip(gpt_tok, tmp_path, train_texts):
    tok = gpt_tok
    assert tok.eos_token == tok.bos_token == tok.pad_token == tok.unk_token == "<|endoftext|>"
    assert tok.eos_token_id == 0
    assert "token_type_ids" not in tok("hi")
    for text in [SAMPLE, "  leading spaces, tabs\tand\nnewlines ", "ünïcødé ✓ 日本語 🙂", train_texts[2][:3000]]:
        ids = tok(text)["input_ids"]
        assert tok.decode(ids) == text
    assert tok(SAMPLE)["input_ids"] == tok(SAMPLE, add_special_tokens=True)["input_ids"]  # no specials added
    tok.save_pretrained(tmp_path / "g")
    again = AutoTokenizer.from_pretrained(str(tmp_path / "g"))
    assert again(SAMPLE)["input_ids"] == tok(SAMPLE)["input_ids"]
    assert again.pad_token_id == tok.eos_token_id


def test_tokenizer_errors_and_loading(bert_dir, tmp_path):
    with pytest.raises(ValueError, match="family"):
        train_tokenizer(["text"], "t5", 500)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="at least 257"):
        train_tokenizer(["text"], "gpt", 100)
    with pytest.raises(ValueError, match="no text"):
        train_tokenizer([], "bert", 500)
    loaded = load_or_train_tokenizer(str(bert_dir), "bert", None, 1000, output_dir=tmp_path / "copy")
    assert (tmp_path / "copy" / "tokenizer.json").is_file()
    trained = load_or_train_tokenizer(None, "gpt", ["some text here"] * 5, 300)
    assert len(trained) <= 300
    with pytest.raises(ValueError, match="no texts"):
        load_or_train_tokenizer(None, "gpt", None, 300)
    check_tokenizer_fits(loaded, len(loaded))
    with pytest.raises(TokenizerVocabMismatchError, match=rf"has {len(loaded)} tokens .* --vocab-size {len(loaded)}"):
        check_tokenizer_fits(loaded, len(loaded) - 1)


# --------------------------------------------------------------------------- grouping


def _concat_ids(tok, texts, family):
    out = []
    for t in texts:
        if family == "bert":
            out.extend(tok(t)["input_ids"])
        else:
            out.extend(tok(t)["input_ids"] + [tok.eos_token_id])
    return out


@pytest.mark.parametrize("family", ["bert", "gpt"])
def test_tokenize_and_group_blocks(family, bert_tok, gpt_tok, articles):
    tok = bert_tok if family == "bert" else gpt_tok
    texts = articles[:6]
    dd = DatasetDict({"train": Dataset.from_dict({"text": texts}), "validation": Dataset.from_dict({"text": articles[6:8]})})
    block = 64
    out = tokenize_and_group(dd, tok, block_size=block)
    cols = {"input_ids", "attention_mask"} | ({"token_type_ids"} if family == "bert" else set())
    assert set(out["train"].column_names) == cols
    blocks = list(out["train"]["input_ids"])
    assert all(len(b) == block for b in blocks)
    assert all(list(m) == [1] * block for m in out["train"]["attention_mask"])
    flat = _concat_ids(tok, texts, family)
    assert len(blocks) == len(flat) // block
    assert [t for b in blocks for t in b] == flat[: len(blocks) * block]
    if family == "bert":
        assert blocks[0][0] == tok.cls_token_id and tok.sep_token_id in flat
    else:
        assert tok.eos_token_id in [t for b in blocks for t in b]
    # small group batches: every block is still a contiguous window of the stream
    out2 = tokenize_and_group(dd, tok, block_size=block, group_batch_size=2)
    for b in list(out2["train"]["input_ids"])[:5]:
        s = next(i for i in range(len(flat)) if flat[i : i + block] == b)
        assert flat[s : s + block] == b


def test_tokenize_and_group_too_small(gpt_tok):
    dd = DatasetDict({"train": Dataset.from_dict({"text": ["tiny text"]})})
    with pytest.raises(CorpusTooSmallError, match=r"fewer than one block of block_size=512.*--block-size"):
        tokenize_and_group(dd, gpt_tok, block_size=512)
    with pytest.raises(MissingColumnError, match=r"available columns are \['text'\]"):
        tokenize_and_group(dd, gpt_tok, block_size=4, text_column="content")


def test_group_with_mlm_collator(bert_tok, articles):
    dd = DatasetDict({"train": Dataset.from_dict({"text": articles[:2]})})
    out = tokenize_and_group(dd, bert_tok, block_size=32)
    collator = DataCollatorForLanguageModeling(bert_tok, mlm=True)
    batch = collator([out["train"][i] for i in range(4)])
    assert batch["input_ids"].shape == (4, 32)


# --------------------------------------------------------------------------- loading local text


LINES = [f"Line number {i} says something about topic {i % 7}." for i in range(40)]


def test_load_text_formats(tmp_path):
    cache = str(tmp_path / "hf")
    (tmp_path / "a.txt").write_text("\n".join(LINES) + "\n\n")
    pd.DataFrame({"text": LINES, "id": range(40)}).to_json(tmp_path / "a.jsonl", orient="records", lines=True)
    pd.DataFrame({"text": LINES}).to_csv(tmp_path / "a.csv", index=False)
    pd.DataFrame({"text": LINES}).to_parquet(tmp_path / "a.parquet")
    for name in ["a.txt", "a.jsonl", "a.csv", "a.parquet"]:
        dd = load_text_data(str(tmp_path / name), validation_fraction=0.1, seed=0, cache_dir=cache)
        assert set(dd) == {"train", "validation"}, name
        assert len(dd["train"]) == 36 and len(dd["validation"]) == 4, name  # blank lines dropped
        assert sorted(list(dd["train"]["text"]) + list(dd["validation"]["text"])) == sorted(LINES), name
    again = load_text_data(str(tmp_path / "a.csv"), validation_fraction=0.1, seed=0, cache_dir=cache)
    first = load_text_data(str(tmp_path / "a.jsonl"), validation_fraction=0.1, seed=0, cache_dir=cache)
    assert list(again["validation"]["text"]) == list(first["validation"]["text"])  # deterministic


def test_load_text_folder_glob_and_list(tmp_path):
    cache = str(tmp_path / "hf")
    d = tmp_path / "corpus"
    d.mkdir()
    (d / "train.txt").write_text("\n".join(LINES[:30]))
    (d / "validation.txt").write_text("\n".join(LINES[30:]))
    dd = load_text_data(str(d), cache_dir=cache)
    assert len(dd["train"]) == 30 and len(dd["validation"]) == 10
    (tmp_path / "p1.txt").write_text("\n".join(LINES[:20]))
    (tmp_path / "p2.txt").write_text("\n".join(LINES[20:]))
    dd = load_text_data(str(tmp_path / "p*.txt"), validation_fraction=0.25, cache_dir=cache)
    assert len(dd["train"]) + len(dd["validation"]) == 40 and len(dd["validation"]) == 10
    dd = load_text_data([str(tmp_path / "p1.txt"), str(tmp_path / "p2.txt")], cache_dir=cache)
    assert len(dd["train"]) + len(dd["validation"]) == 40


def test_load_text_errors(tmp_path):
    cache = str(tmp_path / "hf")
    pd.DataFrame({"body": LINES, "title": LINES}).to_json(tmp_path / "b.jsonl", orient="records", lines=True)
    with pytest.raises(MissingColumnError, match=r"\['text'\] not found.*available columns are \['body', 'title'\].*--text-column"):
        load_text_data(str(tmp_path / "b.jsonl"), cache_dir=cache)
    dd = load_text_data(str(tmp_path / "b.jsonl"), text_column="body", cache_dir=cache)
    assert len(dd["train"]) + len(dd["validation"]) == 40
    with pytest.raises(DataFileNotFoundError, match="does not exist"):
        load_text_data(str(tmp_path / "missing.txt"), cache_dir=cache)
    with pytest.raises(FileNotFoundError, match="matched no data file"):
        load_text_data(str(tmp_path / "nothing*.jsonl"), cache_dir=cache)
    (tmp_path / "empty.txt").write_text("")
    with pytest.raises(EmptyDataError, match="empty"):
        load_text_data(str(tmp_path / "empty.txt"), cache_dir=cache)
    (tmp_path / "blank.txt").write_text("\n\n  \n")
    with pytest.raises(EmptyDataError, match="empty"):
        load_text_data(str(tmp_path / "blank.txt"), cache_dir=cache)
    (tmp_path / "x.docx").write_text("hello")
    with pytest.raises(DataError, match="Unsupported data file type"):
        load_text_data(str(tmp_path / "x.docx"), cache_dir=cache)


def test_load_text_default_is_embedded_corpus(corpus_cache, articles):
    dd = load_text_data(None)
    assert set(dd) == {"train", "validation"}
    assert len(dd["train"]) + len(dd["validation"]) == len(articles)


# --------------------------------------------------------------------------- pair task


def _write_qqp(folder, n_train=40, n_val=12):
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    def frame(n, start, labelled=True):
        return pd.DataFrame(
            {
                "question1": [f"How do I learn topic {i}?" for i in range(start, start + n)],
                "question2": [f"What is the best way to study topic {i + int(rng.integers(0, 2))}?" for i in range(start, start + n)],
                "label": rng.integers(0, 2, n) if labelled else [-1] * n,
                "idx": range(n),
            }
        )
    frame(n_train, 0).to_csv(folder / "train.csv", index=False)
    frame(n_val, 1000).to_csv(folder / "validation.csv", index=False)
    frame(5, 2000, labelled=False).to_csv(folder / "test.csv", index=False)
    return folder


def test_load_pair_task_qqp_format(tmp_path, bert_tok):
    cache = str(tmp_path / "hf")
    folder = _write_qqp(tmp_path / "qqp")
    dd = load_pair_task(str(folder), cache_dir=cache)
    assert set(dd) == {"train", "validation"}  # unlabelled GLUE-style test split dropped
    assert len(dd["train"]) == 40 and len(dd["validation"]) == 12
    assert set(dd["train"]["label"]) <= {0, 1}
    # a dict of split -> file, with a -1 and a missing text row to drop
    df = pd.read_csv(folder / "train.csv")
    df.loc[0, "label"] = -1
    df.loc[1, "question2"] = None
    df.to_csv(tmp_path / "t.csv", index=False)
    dd2 = load_pair_task({"train": str(tmp_path / "t.csv"), "dev": str(folder / "validation.csv")}, cache_dir=cache)
    assert len(dd2["train"]) == 38 and len(dd2["validation"]) == 12

    tok = tokenize_pairs(dd, bert_tok, ("question1", "question2"), "label", max_length=16)
    row = tok["train"][0]
    assert set(tok["train"].column_names) == {"input_ids", "token_type_ids", "attention_mask", "labels"}
    assert row["labels"] == dd["train"][0]["label"]
    assert row["input_ids"][0] == bert_tok.cls_token_id and row["input_ids"].count(bert_tok.sep_token_id) == 2
    assert 1 in row["token_type_ids"] and len(row["input_ids"]) <= 16
    assert max(len(x) for x in tok["train"]["input_ids"]) <= 16


def test_load_pair_task_errors_and_single_sentence(tmp_path, gpt_tok):
    cache = str(tmp_path / "hf")
    folder = _write_qqp(tmp_path / "qqp")
    with pytest.raises(MissingColumnError, match=r"\['sentence1'\] not found.*\['question1', 'question2', 'label', 'idx'\].*--text-columns.*--label-column"):
        load_pair_task(str(folder), text_columns=("sentence1", "question2"), cache_dir=cache)
    with pytest.raises(DataFileNotFoundError, match="does not exist"):
        load_pair_task(str(tmp_path / "nope.tsv"), cache_dir=cache)
    # single-sentence task from a TSV with string labels and no validation file
    rows = [{"sentence": f"this film is {'great' if i % 2 else 'awful'} number {i}", "label": "pos" if i % 2 else "neg"} for i in range(40)]
    pd.DataFrame(rows).to_csv(tmp_path / "sst.tsv", sep="\t", index=False)
    dd = load_pair_task(str(tmp_path / "sst.tsv"), text_columns=("sentence",), validation_fraction=0.25, cache_dir=cache)
    assert len(dd["train"]) == 30 and len(dd["validation"]) == 10
    assert dd["train"].features["label"].names == ["neg", "pos"]
    tok = tokenize_pairs(dd, gpt_tok, ("sentence",), "label", max_length=8)
    assert set(tok["validation"].column_names) == {"input_ids", "attention_mask", "labels"}
    # jsonl
    pd.DataFrame(rows).to_json(tmp_path / "s.jsonl", orient="records", lines=True)
    assert len(load_pair_task(str(tmp_path / "s.jsonl"), text_columns=("sentence",), cache_dir=cache)["train"]) == 38


# --------------------------------------------------------------------------- metrics


def test_classification_metrics_binary():
    logits = np.array([[2.0, 1.0], [0.0, 3.0], [0.1, 0.2], [5.0, -1.0], [0.0, 1.0], [1.0, 0.0]])
    labels = np.array([0, 1, 0, 1, 1, 0])
    # preds = [0, 1, 1, 0, 1, 0]: TP=2, FP=1, FN=1, TN=2
    m = classification_metrics(EvalPrediction(predictions=logits, label_ids=labels))
    assert m["accuracy"] == pytest.approx(4 / 6)
    assert m["precision"] == pytest.approx(2 / 3)
    assert m["recall"] == pytest.approx(2 / 3)
    assert m["f1"] == pytest.approx(2 / 3)
    # predictions as a tuple (model returning several tensors)
    m2 = classification_metrics(EvalPrediction(predictions=(logits, np.zeros((6, 4))), label_ids=labels))
    assert m2 == m
    # TP=1 FP=0 FN=2 -> P=1, R=1/3, F1=0.5
    m3 = classification_metrics((np.array([1, 0, 0, 0]), np.array([1, 1, 1, 0])))
    assert (m3["precision"], m3["recall"], m3["f1"], m3["accuracy"]) == pytest.approx((1.0, 1 / 3, 0.5, 0.5))


def test_classification_metrics_macro():
    logits = np.eye(3)[[0, 1, 2, 2, 1, 0]]  # preds 0,1,2,2,1,0
    labels = np.array([0, 1, 2, 1, 1, 2])
    # class0: P=1/2 R=1 F=2/3; class1: P=1 R=2/3 F=4/5; class2: P=1/2 R=1/2 F=1/2
    m = classification_metrics(EvalPrediction(predictions=logits, label_ids=labels))
    assert m["accuracy"] == pytest.approx(4 / 6)
    assert m["precision"] == pytest.approx((0.5 + 1 + 0.5) / 3)
    assert m["recall"] == pytest.approx((1 + 2 / 3 + 0.5) / 3)
    assert m["f1"] == pytest.approx((2 / 3 + 0.8 + 0.5) / 3)
    with pytest.raises(ValueError, match="3 predictions but 2 labels"):
        classification_metrics((np.array([0, 1, 1]), np.array([0, 1])))


def test_perplexity():
    assert perplexity(0.0) == 1.0
    assert perplexity(math.log(50.0)) == pytest.approx(50.0)
    assert perplexity(1e6) == math.inf
    assert math.isnan(perplexity(float("nan")))
    assert perplexity(np.float32(2.0)) == pytest.approx(math.exp(2.0))


def test_unigram_perplexity_matches_hand_computed_value():
    from modeling_deepln.training.metrics import unigram_perplexity

    # counts of [0, 0, 1, 2] with add-one over 4 ids: [3, 2, 2, 1] / 8; targets of [3, 0, 1] are 0 and 1.
    value = unigram_perplexity([[0, 0, 1, 2]], [[3, 0, 1]], vocab_size=4)
    assert value == pytest.approx(math.sqrt((8 / 3) * (8 / 2)), rel=1e-12)


def test_unigram_loss_by_hand_with_special_tokens():
    """Special ids get no probability and are not scored; -100 targets are skipped; the rest is add-one smoothed."""
    from types import SimpleNamespace

    from modeling_deepln.training.metrics import unigram_loss, unigram_special_ids

    train = [[0, 2, 2, 3, 1], [0, 2, 4, 4, 1]]  # 0 = [CLS], 1 = [SEP]
    # non-special counts + 1 over ids 2..5: 2 -> 4, 3 -> 2, 4 -> 3, 5 -> 1; total 10
    targets = [[-100, 2, -100, 5, 1]]  # masked-LM labels: scored 2 and 5 ([SEP] can never be a target)
    want = -(math.log(4 / 10) + math.log(1 / 10)) / 2
    assert unigram_loss(train, targets, vocab_size=6, special_ids=[0, 1]) == pytest.approx(want, rel=1e-12)
    # without exclusions every id keeps its add-one count: 0 -> 3, 1 -> 3, 2 -> 4, 3 -> 2, 4 -> 3, 5 -> 1; total 16
    want_all = -(math.log(4 / 16) + math.log(1 / 16) + math.log(3 / 16)) / 3
    assert unigram_loss(np.array(train), np.array(targets), vocab_size=6) == pytest.approx(want_all, rel=1e-12)
    with pytest.raises(ValueError, match="no target"):
        unigram_loss(train, [[-100, 0, 1]], vocab_size=6, special_ids=[0, 1])
    # which ids are special: all of a masked LM's; all but end-of-text for a causal LM (a next-token target)
    tokenizer = SimpleNamespace(all_special_ids=[3, 0, 1], eos_token_id=1)
    assert unigram_special_ids(tokenizer, "bert") == [0, 1, 3]
    assert unigram_special_ids(tokenizer, "gpt") == [0, 3]
