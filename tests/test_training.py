"""End-to-end tests of ``deepln pretrain`` / ``deepln finetune`` (modeling_deepln.training + modeling_deepln.cli).

Everything is offline and tiny (4 layers, hidden 32, sequences of 32 tokens, a ~600-token vocabulary, a few
steps): the text is a slice of the embedded Wikipedia corpus written to a temporary file, QQP-format data is
written by the tests. Torch runs single-threaded here (in-process and in the subprocesses), which keeps tiny models
fast on a busy 2-core machine and makes the in-process and subprocess runs numerically comparable.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest
import torch

import modeling_deepln  # noqa: F401  (registers the Auto classes)
from conftest import kill_at_first_checkpoint
from modeling_deepln.cli import SUBCOMMANDS, build_parser, main
from modeling_deepln.training import (
    PretrainArgs,
    last_complete_checkpoint,
    load_recipe,
    resolve_pretrain_args,
)

REPO = Path(__file__).resolve().parents[1]
TINY = [
    "--num-layers", "4", "--hidden-size", "32", "--num-heads", "2", "--seq-len", "32", "--vocab-size", "600",
    "--batch-size", "8", "--report-to", "none", "--no-progress", "--max-eval-samples", "32",
]  # fmt: skip


pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def text_file(tmp_path_factory) -> Path:
    """~250 KB of English prose from the embedded corpus, one paragraph per line."""
    from modeling_deepln.training.corpus import wiki_articles

    lines = [line for text in wiki_articles()[:6] for line in text.split("\n") if line.strip()]
    path = tmp_path_factory.mktemp("text") / "wiki.txt"
    path.write_text("\n".join(lines), encoding="utf-8")
    return path


def _eval_results(folder: Path) -> dict:
    return json.loads((folder / "eval_results.json").read_text())


def _losses(state_file: Path) -> dict[int, float]:
    history = json.loads(state_file.read_text())["log_history"]
    return {entry["step"]: entry["loss"] for entry in history if "loss" in entry}


# ----------------------------------------------------------------------------------------------- pretraining


@pytest.fixture(scope="module")
def gpt_run(tmp_path_factory, text_file) -> Path:
    out = tmp_path_factory.mktemp("gpt") / "run"
    main(
        ["pretrain", *TINY, "--data", str(text_file), "--output-dir", str(out), "--max-steps", "8",
         "--lr", "3e-3", "--eval-steps", "4", "--save-steps", "4", "--logging-steps", "1", "--num-samples", "1"]
    )  # fmt: skip
    return out


@pytest.fixture(scope="module")
def bert_run(tmp_path_factory, text_file) -> Path:
    out = tmp_path_factory.mktemp("bert") / "run"
    main(
        ["pretrain", "--preset", "bert-deep-small", *TINY, "--data", str(text_file), "--output-dir", str(out),
         "--max-steps", "8", "--lr", "3e-3", "--save-steps", "100", "--num-samples", "1"]
    )  # fmt: skip
    return out


def test_pretrain_gpt_end_to_end(gpt_run):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    results = _eval_results(gpt_run)
    for key in ("eval_loss", "perplexity", "eval_loss_before", "perplexity_before"):
        assert math.isfinite(results[key]), key
    assert results["perplexity"] == pytest.approx(math.exp(results["eval_loss"]), rel=1e-6)
    assert results["eval_loss"] < results["eval_loss_before"]
    assert 1.0 < results["perplexity_unigram"] < results["perplexity_before"]  # the frequency-only reference
    assert (gpt_run / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    for name in ("model.safetensors", "config.json", "tokenizer.json", "README.md", "modeling_deepln_gpt.py"):
        assert (gpt_run / name).is_file(), name
    card = (gpt_run / "README.md").read_text()
    assert "perplexity" in card and "library_name: transformers" in card
    model = AutoModelForCausalLM.from_pretrained(gpt_run)
    tokenizer = AutoTokenizer.from_pretrained(gpt_run)
    assert type(model).__name__ == "DeepLNGPTForCausalLM"
    assert model.config.num_hidden_layers == 4 and model.config.vocab_size == 600
    assert len(tokenizer) <= model.config.vocab_size
    assert model.config.eos_token_id == tokenizer.eos_token_id
    assert model.config.pad_token_id == tokenizer.pad_token_id
    ids = tokenizer("The history of", return_tensors="pt")
    assert model(**ids).logits.shape[-1] == 600
    # the tokenizer and data were cached for --resume
    assert (gpt_run / "prepared" / "tokenizer" / "tokenizer.json").is_file()


def test_pretrain_bert_end_to_end(bert_run):
    from transformers import AutoModelForMaskedLM, AutoTokenizer

    results = _eval_results(bert_run)
    for key in ("eval_loss", "perplexity", "eval_loss_before", "perplexity_before"):
        assert math.isfinite(results[key]), key
    model = AutoModelForMaskedLM.from_pretrained(bert_run)
    tokenizer = AutoTokenizer.from_pretrained(bert_run)
    assert type(model).__name__ == "DeepLNBertForMaskedLM"
    assert tokenizer.mask_token == "[MASK]" and model.config.pad_token_id == tokenizer.pad_token_id
    assert "fill-mask" in (bert_run / "README.md").read_text()


def test_bert_held_out_blocks_are_masked_once_at_the_eval_rate(bert_run):
    """The held-out set is masked once (fixed seed, 15 %), whatever the training rate: repeated evaluations score
    the same positions, and the training collator passes those rows through unchanged."""
    from transformers import AutoTokenizer

    from modeling_deepln.training.pretraining import MaskedLMCollator, mask_once

    tokenizer = AutoTokenizer.from_pretrained(bert_run)
    blocks = {"input_ids": [tokenizer(f"word{i} " * 60)["input_ids"][:64] for i in range(40)]}
    first, again = mask_once(blocks, tokenizer, 0.15, seed=3), mask_once(blocks, tokenizer, 0.15, seed=3)
    assert first["labels"] == again["labels"] and first["input_ids"] == again["input_ids"]
    assert first["labels"] != mask_once(blocks, tokenizer, 0.15, seed=4)["labels"]
    labels = torch.tensor(first["labels"])
    maskable = ~torch.isin(torch.tensor(blocks["input_ids"]), torch.tensor(tokenizer.all_special_ids))
    assert 0.12 < (labels != -100).sum() / maskable.sum() < 0.18  # 15 % of the maskable tokens
    assert torch.equal(labels[labels != -100], torch.tensor(blocks["input_ids"])[labels != -100])
    collator = MaskedLMCollator(tokenizer, mlm_probability=0.9)
    batch = collator([first[i] for i in range(4)])
    assert torch.equal(batch["labels"], labels[:4]) and batch["input_ids"].tolist() == first["input_ids"][:4]
    fresh = collator([{"input_ids": ids} for ids in blocks["input_ids"][:4]])  # training rows: masked at 90 %
    assert (fresh["labels"] != -100).float().mean() > 0.7


def test_pretrain_embedded_corpus_and_tensorboard(tmp_path, capsys, monkeypatch):
    """No --data: the embedded corpus; default report_to writes TensorBoard event files into the output folder."""
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "run"
    main(
        ["pretrain", *[a for a in TINY if a not in ("--report-to", "none")], "--output-dir", str(out),
         "--max-steps", "2", "--eval-steps", "0", "--max-train-samples", "64", "--no-samples"]
    )  # fmt: skip
    assert math.isfinite(_eval_results(out)["perplexity_before"])
    assert list(out.glob("runs/**/events.out.tfevents*")), "no TensorBoard logs"
    assert not (tmp_path / "runs").exists(), "TensorBoard wrote into the working directory"
    printed = capsys.readouterr().out
    assert "tokens/s" in printed and "wall time" in printed


def test_recipes_and_overrides():
    args, recipe = resolve_pretrain_args(PretrainArgs())
    assert args.preset == "gpt-deep-small" and recipe["objective"] == "clm"
    assert (args.seq_len, args.batch_size, args.lr) == (128, 16, 2e-3)  # the measured default recipe (test_recipe.py)
    assert args.tokenizer is None and args.max_minutes
    args, _ = resolve_pretrain_args(PretrainArgs(lr=5e-4, seq_len=64))
    assert (args.lr, args.seq_len) == (5e-4, 64)
    bert = load_recipe("bert-1k", "paper")
    assert bert["objective"] == "mlm" and bert["lr"] == 1e-4 and bert["min_lr"] == 1e-5
    assert bert["lr_schedule"] == "linear" and bert["precision"] == "fp16" and bert["seq_len"] == 512
    assert bert["tokenizer"] == "bert-base-uncased" and bert["weight_decay"] == 0.01 and bert["warmup_ratio"] == 0.01
    gpt = load_recipe("gpt-1k", "paper")
    assert gpt["objective"] == "clm" and gpt["optim"] == "adam" and gpt["lr"] == 1e-5
    assert gpt["lr_schedule"] == "cosine" and gpt["weight_decay"] == 0 and gpt["precision"] == "fp32"
    assert gpt["seq_len"] == 1024 and gpt["tokenizer"] == "gpt2"
    assert load_recipe("bert-deep-small")["objective"] == "mlm"


def test_parser_is_a_table():
    assert {"pretrain", "finetune"} <= set(SUBCOMMANDS)
    ns = build_parser().parse_args(["pretrain", "--lr", "0.01", "--resume"])
    assert ns.lr == 0.01 and ns.resume is True and not hasattr(ns, "seq_len")


def test_accelerate_configs_parse():
    from accelerate.commands.config.config_args import load_config_from_file

    folder = REPO / "configuration" / "accelerate"
    for name in ("cpu-2proc.yaml", "single-gpu.yaml", "multi-gpu-bf16-ddp.yaml", "fsdp.yaml"):
        config = load_config_from_file(str(folder / name))
        assert config.num_processes >= 1, name
    fsdp = load_config_from_file(str(folder / "fsdp.yaml"))
    assert fsdp.fsdp_config["fsdp_transformer_layer_cls_to_wrap"] == "DeepLNBlock"


# ----------------------------------------------------------------------------------------------- fine-tuning


def _write_qqp(folder: Path, n_train: int = 96, n_val: int = 32) -> tuple[Path, Path]:
    """QQP-format jsonl (question1, question2, label, idx): duplicates are near-identical questions."""
    import random

    rng = random.Random(0)
    topics = ["python", "paris", "music", "the moon", "football", "coffee", "history", "math", "cats", "rain"]
    verbs = ["learn about", "visit", "understand", "explain", "enjoy", "find"]

    def rows(n: int, offset: int) -> list[dict]:
        out = []
        for i in range(n):
            t, v = rng.choice(topics), rng.choice(verbs)
            q1 = f"How can I {v} {t}?"
            if i % 2:
                q2, label = f"How do I {v} {t}?", 1
            else:
                q2, label = f"Why is {rng.choice([x for x in topics if x != t])} so popular?", 0
            out.append({"question1": q1, "question2": q2, "label": label, "idx": offset + i})
        return out

    train, val = folder / "train.jsonl", folder / "validation.jsonl"
    train.write_text("\n".join(json.dumps(r) for r in rows(n_train, 0)))
    val.write_text("\n".join(json.dumps(r) for r in rows(n_val, n_train)))
    return train, val


def test_finetune_qqp_from_pretrained_folder(tmp_path, bert_run):
    train, val = _write_qqp(tmp_path)
    out = tmp_path / "ft"
    main(
        ["finetune", "--model", str(bert_run), "--train-file", str(train), "--validation-file", str(val),
         "--output-dir", str(out), "--max-seq-len", "32", "--batch-size", "16", "--lr", "1e-3",
         "--report-to", "none", "--no-progress"]
    )  # fmt: skip
    results = _eval_results(out)
    card = (out / "README.md").read_text()
    assert "f1" in card and "accuracy" in card
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    model = AutoModelForSequenceClassification.from_pretrained(out).eval()
    assert type(model).__name__ == "DeepLNBertForSequenceClassification" and model.config.num_labels == 2
    # The reported metrics, recomputed by hand from the saved model's predictions on the validation file.
    tokenizer = AutoTokenizer.from_pretrained(out)
    rows = [json.loads(line) for line in val.read_text().splitlines() if line.strip()]
    batch = tokenizer([r["question1"] for r in rows], [r["question2"] for r in rows], truncation=True,
                      max_length=32, padding=True, return_tensors="pt")  # fmt: skip
    with torch.no_grad():
        predicted = model(**batch).logits.argmax(-1).tolist()
    labels = [int(r["label"]) for r in rows]
    tp = sum(p == 1 and y == 1 for p, y in zip(predicted, labels))
    fp = sum(p == 1 and y == 0 for p, y in zip(predicted, labels))
    fn = sum(p == 0 and y == 1 for p, y in zip(predicted, labels))
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    accuracy = sum(p == y for p, y in zip(predicted, labels)) / len(labels)
    assert results["eval_accuracy"] == pytest.approx(accuracy)
    assert results["eval_precision"] == pytest.approx(precision)
    assert results["eval_recall"] == pytest.approx(recall)
    assert results["eval_f1"] == pytest.approx(f1)


def test_finetune_single_column_task_from_preset(tmp_path):
    """A GLUE-style single-sentence task with other column names, from a preset with its own tokenizer."""
    rows = [{"sentence": f"this film is {'great' if i % 2 else 'awful'} number {i}", "y": i % 2} for i in range(64)]
    data = tmp_path / "sst"
    data.mkdir()
    (data / "train.csv").write_text("sentence,y\n" + "\n".join(f"{r['sentence']},{r['y']}" for r in rows[:48]))
    (data / "dev.csv").write_text("sentence,y\n" + "\n".join(f"{r['sentence']},{r['y']}" for r in rows[48:]))
    out = tmp_path / "ft"
    main(
        ["finetune", "--preset", "gpt-deep-small", "--num-layers", "2", "--hidden-size", "32", "--vocab-size", "400",
         "--data", str(data), "--text-columns", "sentence", "--label-column", "y", "--output-dir", str(out),
         "--max-seq-len", "16", "--lr", "1e-3", "--report-to", "none", "--no-progress"]
    )  # fmt: skip
    assert set(_eval_results(out)) >= {"eval_accuracy", "eval_precision", "eval_recall", "eval_f1"}


# ----------------------------------------------------------------------------------------------- bad input


def _expect_error(capsys, argv: list[str], match: str) -> None:
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("deepln: error: ")]
    assert len(lines) == 1, err
    assert match.lower() in lines[0].lower(), err
    assert "Traceback" not in err


def test_error_unknown_preset(capsys, tmp_path):
    _expect_error(capsys, ["pretrain", "--preset", "gpt-9k", "--output-dir", str(tmp_path / "o")], "Unknown preset")


def test_error_missing_data_file(capsys, tmp_path):
    _expect_error(
        capsys, ["pretrain", *TINY, "--data", str(tmp_path / "nope.txt"), "--output-dir", str(tmp_path / "o")], "nope"
    )
    assert not (tmp_path / "o").exists() or not any((tmp_path / "o").glob("checkpoint-*"))


def test_error_empty_data_file(capsys, tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    _expect_error(capsys, ["pretrain", *TINY, "--data", str(empty), "--output-dir", str(tmp_path / "o")], "empty")


def test_error_wrong_text_column(capsys, tmp_path):
    data = tmp_path / "d.jsonl"
    data.write_text('{"body": "some text here"}\n{"body": "more text"}\n')
    _expect_error(capsys, ["pretrain", *TINY, "--data", str(data), "--output-dir", str(tmp_path / "o")], "text")


def test_error_tokenizer_larger_than_vocab(capsys, tmp_path, gpt_run):
    argv = ["pretrain", *TINY, "--tokenizer", str(gpt_run), "--vocab-size", "300", "--output-dir", str(tmp_path / "o")]
    _expect_error(capsys, argv, "vocab_size")


def test_error_output_dir_holds_a_model(capsys, gpt_run, text_file):
    _expect_error(
        capsys, ["pretrain", *TINY, "--data", str(text_file), "--output-dir", str(gpt_run)], "already holds a model"
    )


def test_error_fp16_without_gpu(capsys, tmp_path):
    if torch.cuda.is_available():
        pytest.skip("has a GPU")
    _expect_error(capsys, ["pretrain", *TINY, "--precision", "fp16", "--output-dir", str(tmp_path / "o")], "fp16")


def test_error_finetune_wrong_columns(capsys, tmp_path, gpt_run):
    train, val = _write_qqp(tmp_path)
    argv = ["finetune", "--model", str(gpt_run), "--train-file", str(train), "--validation-file", str(val),
            "--text-columns", "sentence1,sentence2", "--output-dir", str(tmp_path / "o")]  # fmt: skip
    _expect_error(capsys, argv, "sentence1")


@pytest.mark.parametrize("flag", ["--mlm-probability", "--eval-mlm-probability"])
def test_error_masking_rate_out_of_range(capsys, tmp_path, flag):
    argv = ["pretrain", "--preset", "bert-deep-small", *TINY, flag, "1.5", "--output-dir", str(tmp_path / "o")]
    _expect_error(capsys, argv, "between 0 and 1")


def test_error_bad_argument_value(capsys):
    with pytest.raises(SystemExit) as info:
        main(["pretrain", "--lr-schedule", "exponential"])
    assert info.value.code == 2
    assert "deepln pretrain: error:" in capsys.readouterr().err


# ----------------------------------------------------------------------------------------------- NaN guard


def test_nan_guard_names_step_and_layer(capsys, tmp_path, text_file, monkeypatch):
    """Layer 2 starts producing inf at step 5: the run stops there, names step and layer, keeps checkpoint-4."""
    from modeling_deepln.model import layers_deepln

    original = layers_deepln.DeepLNBlock.forward
    calls = {"n": 0}

    def poisoned(self, hidden_states, *args, **kwargs):
        out = original(self, hidden_states, *args, **kwargs)
        if self.training and self.attention.layer_idx == 2:
            calls["n"] += 1
            if calls["n"] >= 5:  # forward of training step 5 (no gradient accumulation, no checkpointing)
                return (out[0] * float("inf"), *out[1:])
        return out

    monkeypatch.setattr(layers_deepln.DeepLNBlock, "forward", poisoned)
    out = tmp_path / "run"
    argv = ["pretrain", *TINY, "--data", str(text_file), "--output-dir", str(out), "--max-steps", "10",
            "--save-steps", "2", "--eval-steps", "0", "--no-samples"]  # fmt: skip
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 1
    err = capsys.readouterr().err
    assert "deepln: error:" in err and "step 5" in err and "layers.2" in err, err
    assert last_complete_checkpoint(out) == str(out / "checkpoint-4")
    assert "checkpoint-4" in err
    assert not (out / "model.safetensors").exists()


def test_nan_guard_skip_policy(capsys, tmp_path, text_file, monkeypatch):
    from modeling_deepln.model import layers_deepln

    original = layers_deepln.DeepLNBlock.forward
    calls = {"n": 0}

    def poisoned(self, hidden_states, *args, **kwargs):
        out = original(self, hidden_states, *args, **kwargs)
        if self.training and self.attention.layer_idx == 1:
            calls["n"] += 1
            if calls["n"] == 3:
                return (out[0] * float("nan"), *out[1:])
        return out

    monkeypatch.setattr(layers_deepln.DeepLNBlock, "forward", poisoned)
    out = tmp_path / "run"
    main(
        ["pretrain", *TINY, "--data", str(text_file), "--output-dir", str(out), "--max-steps", "5",
         "--save-steps", "100", "--nan-policy", "skip", "--no-samples"]
    )  # fmt: skip
    printed = capsys.readouterr().out
    assert "step 3" in printed and "Skipping" in printed
    results = _eval_results(out)
    assert math.isfinite(results["eval_loss"])
    from safetensors.torch import load_file

    assert all(torch.isfinite(t).all() for t in load_file(out / "model.safetensors").values())


# ----------------------------------------------------------------------------------------------- resume after SIGKILL



def test_resume_after_sigkill_reproduces_loss_curve(tmp_path, text_file):
    common = ["pretrain", *TINY, "--data", str(text_file), "--max-steps", "24", "--save-steps", "4",
              "--logging-steps", "1", "--eval-steps", "0", "--no-samples", "--lr", "3e-3"]  # fmt: skip
    reference = tmp_path / "reference"
    main([*common, "--output-dir", str(reference)])
    expected = _losses(reference / "trainer_state.json")
    assert sorted(expected) == list(range(1, 25))

    killed = tmp_path / "killed"
    resumed_from = int(kill_at_first_checkpoint(common, killed).name.split("-")[1])
    assert resumed_from < 24

    main([*common, "--output-dir", str(killed), "--resume"])
    got = _losses(killed / "trainer_state.json")
    assert sorted(got) == list(range(1, 25))
    for step in range(1, 25):
        assert got[step] == pytest.approx(expected[step], abs=1e-6, rel=1e-6), step
    assert _eval_results(killed)["eval_loss"] == pytest.approx(_eval_results(reference)["eval_loss"], rel=1e-6)


def test_nan_guard_blames_the_layer_where_a_backward_blow_up_starts():
    """A gradient that turns NaN inside layer 2's FFN poisons layer 2 and everything below it; the guard names
    layer 2 (the first bad layer in backward order), not the embeddings, and ignores finite steps."""
    from types import SimpleNamespace

    from modeling_deepln import DeepLNGPTConfig, DeepLNGPTForCausalLM
    from modeling_deepln.training.callbacks import NonFiniteError, NonFiniteGuard

    torch.manual_seed(0)
    model = DeepLNGPTForCausalLM(
        DeepLNGPTConfig(vocab_size=50, hidden_size=16, num_hidden_layers=4, num_attention_heads=2,
                        bos_token_id=0, eos_token_id=0)
    ).train()  # fmt: skip
    guard = NonFiniteGuard(policy="stop").attach(model)
    state = SimpleNamespace(global_step=6, is_world_process_zero=True)
    ids = torch.randint(0, 50, (2, 8))
    model(ids, labels=ids).loss.backward()
    guard.on_pre_optimizer_step(None, state, None)  # finite: passes
    model.zero_grad()
    fc1 = model.transformer.layers[2].mlp.fc1
    handle = fc1.register_full_backward_hook(lambda module, grad_in, grad_out: (grad_in[0] * float("nan"),))
    model(ids, labels=ids).loss.backward()
    handle.remove()
    with pytest.raises(NonFiniteError, match=r"step 7 .*All activations were finite.*backward order\): "
                       r"transformer\.layers\.2 \(parameter transformer\.layers\.2\."):
        guard.on_pre_optimizer_step(None, state, None)
