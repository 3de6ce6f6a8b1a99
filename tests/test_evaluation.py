"""``deepln eval``: the lm-eval zero-shot suite (Table 4) and the BERT QQP classifier (Table 3), offline.

A tiny deepln GPT (2 layers, hidden 32, a byte-level BPE tokenizer trained here) is saved and run through
``deepln eval --offline-tasks`` on every shipped task definition. The harness's scores are checked against
log-likelihoods computed here from the model's own logits: for each (context, continuation) pair, the sum of
``log_softmax(logits)`` at the continuation's tokens, with the harness's split of the string into context and
continuation tokens (trailing spaces of the context move to the continuation; the continuation's tokens are those of
``encode(context + continuation)`` after ``len(encode(context))``). ``acc`` = argmax over choices is the gold one,
``acc_norm`` the same after dividing by each choice's length in characters, LAMBADA ``acc`` = every target token is
the greedy one, and LAMBADA perplexity = ``exp(-mean over documents of the target's log-likelihood)``. The task
prompts are rebuilt here from the data files, following the harness's YAMLs.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np
import pytest
import torch

pytest.importorskip("lm_eval")

from modeling_deepln import DeepLNBertConfig, DeepLNBertForSequenceClassification, DeepLNGPTConfig
from modeling_deepln import DeepLNGPTForCausalLM, DeepLNBertForMaskedLM
from modeling_deepln.cli import main
from modeling_deepln.evaluation import TASKS_DIR, add_eval_results_to_card, offline_task_dir
from modeling_deepln.training.tokenization import train_tokenizer

LIMIT = 4
DATA = TASKS_DIR / "data"


def _rows(name: str) -> list[dict]:
    return [json.loads(line) for line in (DATA / f"{name}.jsonl").read_text().splitlines()][:LIMIT]


def _texts() -> list[str]:
    texts = []
    for path in sorted(DATA.glob("*.jsonl")):
        for line in path.read_text().splitlines():
            texts += [v if isinstance(v, str) else " ".join(v) for v in json.loads(line).values() if isinstance(v, (str, list))]
    return texts * 2


@pytest.fixture(scope="module")
def gpt_folder(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("tiny-gpt")
    tokenizer = train_tokenizer(_texts(), "gpt", vocab_size=400, output_dir=folder, model_max_length=256)
    torch.manual_seed(0)
    config = DeepLNGPTConfig(
        vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
        max_position_embeddings=256, residual_norm="foundation_ln", post_norm_form="ln", initializer_range=0.3,
        bos_token_id=tokenizer.eos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )  # fmt: skip
    DeepLNGPTForCausalLM(config).save_pretrained(folder)
    (folder / "README.md").write_text(
        "---\nlibrary_name: transformers\nmodel-index:\n- name: tiny-gpt\n  results:\n  - task:\n      type: "
        "text-generation\n    dataset:\n      name: training text\n      type: custom\n    metrics:\n    - type: "
        "perplexity\n      value: 123.0\n---\n\n# tiny-gpt\n\nHand-written card text.\n"
    )
    return folder


@pytest.fixture(scope="module")
def gpt_run(gpt_folder, tmp_path_factory):
    """``deepln eval`` on every offline task (first LIMIT documents), run from an unrelated working directory."""
    out = tmp_path_factory.mktemp("eval-out") / "results.json"
    cwd = os.getcwd()
    os.chdir(tmp_path_factory.mktemp("elsewhere"))
    try:
        main(["eval", str(gpt_folder), "--offline-tasks", "--limit", str(LIMIT), "--batch-size", "3", "--device",
              "cpu", "--output", str(out), "--log-samples", "--no-progress"])  # fmt: skip
    finally:
        os.chdir(cwd)
    return json.loads(out.read_text())


class HandScorer:
    """Log-likelihoods of continuations from the model's own logits (one unpadded forward per pair)."""

    def __init__(self, folder: Path):
        from transformers import AutoTokenizer

        self.tok = AutoTokenizer.from_pretrained(folder)
        self.model = DeepLNGPTForCausalLM.from_pretrained(folder).eval()

    def loglikelihood(self, context: str, continuation: str) -> tuple[float, bool]:
        spaces = len(context) - len(context.rstrip())
        if spaces:
            context, continuation = context[:-spaces], context[-spaces:] + continuation
        whole = self.tok.encode(context + continuation)
        n_context = len(self.tok.encode(context))
        with torch.no_grad():
            logprobs = torch.log_softmax(self.model(torch.tensor([whole])).logits[0].double(), dim=-1)
        targets = torch.tensor(whole[n_context:])
        rows = logprobs[n_context - 1 : len(whole) - 1]
        ll = rows.gather(1, targets[:, None]).sum().item()
        return ll, bool((rows.argmax(-1) == targets).all())

    def choose(self, pairs: list[tuple[str, str]], choices: list[str]) -> tuple[int, int, list[float]]:
        lls = [self.loglikelihood(c, t)[0] for c, t in pairs]
        lengths = np.array([len(c) for c in choices], dtype=float)
        return int(np.argmax(lls)), int(np.argmax(np.array(lls) / lengths)), lls


def _hellaswag_text(text: str) -> str:  # the harness's hellaswag utils.preprocess
    text = text.strip().replace(" [title]", ". ")
    return re.sub("\\[.*?\\]", "", text).replace("  ", " ")


def _multiple_choice_docs() -> dict[str, list[tuple[list[tuple[str, str]], list[str], int]]]:
    """Per task: (context, continuation) pairs, the choice strings (for acc_norm), the gold index; as the YAMLs say."""
    docs: dict[str, list] = {"piqa": [], "hellaswag": [], "winogrande": [], "qqp": []}
    for d in _rows("piqa"):
        ctx, sols = f"Question: {d['goal']}\nAnswer:", [d["sol1"], d["sol2"]]
        docs["piqa"].append(([(ctx, " " + s) for s in sols], sols, d["label"]))
    for d in _rows("hellaswag"):
        ctx = _hellaswag_text(d["activity_label"] + ": " + d["ctx_a"] + " " + d["ctx_b"].capitalize())
        endings = [_hellaswag_text(e) for e in d["endings"]]
        docs["hellaswag"].append(([(ctx, " " + e) for e in endings], endings, int(d["label"])))
    for d in _rows("winogrande"):
        i = d["sentence"].index("_")
        contexts = [d["sentence"][:i] + d["option1"], d["sentence"][:i] + d["option2"]]
        target = " " + d["sentence"][i + 1 :].strip()
        docs["winogrande"].append(([(c, target) for c in contexts], contexts, int(d["answer"]) - 1))
    for d in _rows("qqp"):
        ctx = f"Question 1: {d['question1']}\nQuestion 2: {d['question2']}\nQuestion: Do both questions ask the same thing?\nAnswer:"
        docs["qqp"].append(([(ctx, " no"), (ctx, " yes")], ["no", "yes"], d["label"]))
    return docs


def test_every_offline_task_is_scored(gpt_run):
    results = gpt_run["results"]
    assert sorted(results) == sorted(f"deepln_{t}" for t in ("qqp", "lambada_openai", "winogrande", "hellaswag", "piqa"))
    assert all(n["effective"] == LIMIT for n in gpt_run["n_samples"].values())
    assert set(gpt_run["table4"]) >= {"QQP-Acc", "QQP-F1", "LAMBADA-PPL", "LAMBADA-Acc", "Winogrande-Acc",
                                      "Hellaswag-Acc", "Hellaswag-AccNorm", "PIQA-Acc", "PIQA-AccNorm"}  # fmt: skip


def test_multiple_choice_scores_equal_hand_loglikelihood_choices(gpt_run, gpt_folder):
    from sklearn.metrics import f1_score

    scorer = HandScorer(gpt_folder)
    for task, docs in _multiple_choice_docs().items():
        harness_docs = sorted(gpt_run["samples"][f"deepln_{task}"], key=lambda s: s["doc_id"])
        acc, acc_norm, preds, golds = [], [], [], []
        for (pairs, choices, gold), sample in zip(docs, harness_docs, strict=True):
            pred, pred_norm, lls = scorer.choose(pairs, choices)
            assert [list(a) for a in sample["arguments"]] == [list(p) for p in pairs], task
            np.testing.assert_allclose([r[0] for r in sample["filtered_resps"]], lls, rtol=1e-4, atol=1e-3)
            acc.append(float(pred == gold))
            acc_norm.append(float(pred_norm == gold))
            assert sample["acc"] == acc[-1] and sample.get("acc_norm", acc_norm[-1]) == acc_norm[-1], (task, pred)
            preds.append(pred)
            golds.append(gold)
        scores = gpt_run["results"][f"deepln_{task}"]
        assert scores["acc,none"] == pytest.approx(np.mean(acc)), task
        if "acc_norm,none" in scores:
            assert scores["acc_norm,none"] == pytest.approx(np.mean(acc_norm)), task
        if task == "qqp":
            assert scores["f1,none"] == pytest.approx(f1_score(golds, preds))
    assert gpt_run["table4"]["PIQA-Acc"] == pytest.approx(100 * gpt_run["results"]["deepln_piqa"]["acc,none"])


def test_lambada_accuracy_and_perplexity_by_hand(gpt_run, gpt_folder):
    scorer = HandScorer(gpt_folder)
    lls, greedy = [], []
    for d in _rows("lambada_openai"):
        context, word = d["text"].rsplit(" ", 1)
        ll, is_greedy = scorer.loglikelihood(context, " " + word)
        lls.append(ll)
        greedy.append(float(is_greedy))
    scores = gpt_run["results"]["deepln_lambada_openai"]
    assert scores["perplexity,none"] == pytest.approx(np.exp(-np.mean(lls)), rel=1e-3)
    assert scores["acc,none"] == pytest.approx(np.mean(greedy))
    assert gpt_run["table4"]["LAMBADA-PPL"] == pytest.approx(scores["perplexity,none"])


def test_results_in_model_index_and_card_text_kept(gpt_run, gpt_folder):
    from huggingface_hub import ModelCard

    card = ModelCard.load(gpt_folder / "README.md")
    results = card.data.eval_results
    assert "Hand-written card text." in card.text
    assert any(r.metric_type == "perplexity" and r.metric_value == 123.0 for r in results)  # the training entry
    piqa = [r for r in results if r.dataset_type == "deepln-offline-piqa" and r.metric_type == "acc"]
    assert len(piqa) == 1 and piqa[0].metric_value == gpt_run["results"]["deepln_piqa"]["acc,none"]
    assert f"{LIMIT} examples" in piqa[0].dataset_name
    # Adding the same results again replaces them instead of duplicating them.
    again = [dict(r.__dict__) for r in results if r.dataset_type.startswith("deepln-offline")]
    add_eval_results_to_card(gpt_folder, again)
    assert len(ModelCard.load(gpt_folder / "README.md").data.eval_results) == len(results)


def test_table4_printout_has_paper_rows(gpt_run, capsys):
    table = gpt_run["table4_markdown"]
    header = table.splitlines()[0]
    for column in ("GPT-1k 815.5M (paper)", "GPT-2 1.5B", "GPT-Neo 1.3B", "GPT-Neo 2.7B", "GPT-J 6B"):
        assert column in header
    piqa = next(line for line in table.splitlines() if line.startswith("| PIQA-Acc |"))
    assert piqa.split("|")[3].strip() == "55.17" and piqa.split("|")[-2].strip() == "76.50"


def test_paper_numbers_sit_beside_the_same_metric():
    """Table 5's HellaSwag numbers are lm-eval ``acc_norm``: printed in the AccNorm row beside the model's acc_norm,
    never in the acc row beside the model's acc."""
    from modeling_deepln.evaluation.tables import format_table4, table4_scores

    scores = table4_scores({"hellaswag": {"acc,none": 0.31, "acc_norm,none": 0.42}})
    rows = {line.split("|")[1].strip(): [c.strip() for c in line.split("|")[2:-1]]
            for line in format_table4("mine", scores).splitlines()[2:]}  # fmt: skip
    assert rows["Hellaswag-Acc"] == ["31.00", "25.54", "–", "–", "–", "–"]
    assert rows["Hellaswag-AccNorm"] == ["42.00", "–", "50.90", "48.90", "55.80", "66.10"]


def test_offline_task_paths_are_absolute(tmp_path):
    folder = offline_task_dir(tmp_path / "tasks")
    for yaml_file in folder.glob("*.yaml"):
        paths = re.findall(r'^\s+\w+: "(.+\.jsonl)"$', yaml_file.read_text(), re.MULTILINE)
        assert len(paths) == 1 and Path(paths[0]).is_absolute() and Path(paths[0]).is_file(), yaml_file.name
    assert (folder / "utils.py").is_file() and (folder / "preprocess_winogrande.py").is_file()


# ------------------------------------------------------------------------------------------------ BERT, Table 3


@pytest.fixture(scope="module")
def bert_classifier(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("tiny-bert-qqp")
    tokenizer = train_tokenizer(_texts(), "bert", vocab_size=300, output_dir=folder, model_max_length=128)
    torch.manual_seed(1)
    config = DeepLNBertConfig(
        vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
        max_position_embeddings=128, residual_norm="upscale_ln", num_labels=2, initializer_range=0.5,
        pad_token_id=tokenizer.pad_token_id,
    )  # fmt: skip
    DeepLNBertForSequenceClassification(config).save_pretrained(folder)
    return folder


def test_bert_table3_metrics_by_hand(bert_classifier, tmp_path, capsys):
    from transformers import AutoTokenizer

    out = tmp_path / "qqp.json"
    main(["eval", str(bert_classifier), "--validation-file", str(DATA / "qqp.jsonl"), "--output", str(out),
          "--device", "cpu", "--batch-size", "3", "--no-progress"])  # fmt: skip
    printed = capsys.readouterr().out
    assert "| BERT-1k (paper) | QQP-test | 72.00 | 69.00 | 70.00 | 73.00 |" in printed
    metrics = json.loads(out.read_text())["table3"]

    tok = AutoTokenizer.from_pretrained(bert_classifier)
    model = DeepLNBertForSequenceClassification.from_pretrained(bert_classifier).eval()
    rows = [json.loads(line) for line in (DATA / "qqp.jsonl").read_text().splitlines()]
    with torch.no_grad():
        preds = [int(model(**tok(r["question1"], r["question2"], return_tensors="pt")).logits.argmax()) for r in rows]
    labels = [r["label"] for r in rows]
    tp = sum(p == 1 and y == 1 for p, y in zip(preds, labels))
    fp = sum(p == 1 and y == 0 for p, y in zip(preds, labels))
    fn = sum(p == 0 and y == 1 for p, y in zip(preds, labels))
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    assert metrics["samples"] == len(rows)
    assert metrics["accuracy"] == pytest.approx(np.mean([p == y for p, y in zip(preds, labels)]))
    assert (metrics["precision"], metrics["recall"], metrics["f1"]) == pytest.approx((precision, recall, f1))


# ------------------------------------------------------------------------------------------------ bad input


def _error(argv, capsys) -> str:
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    return capsys.readouterr().err


def test_unknown_task_name_lists_valid_ones(gpt_folder, capsys):
    err = _error(["eval", str(gpt_folder), "--offline-tasks", "--tasks", "deepln_piqaa,lambada_openai"], capsys)
    assert "Unknown lm-eval task name(s): deepln_piqaa" in err and "did you mean deepln_piqa" in err
    assert "qqp, lambada_openai, winogrande, hellaswag, piqa" in err


def test_folder_without_tokenizer(gpt_folder, tmp_path, capsys):
    for name in ("config.json", "model.safetensors"):
        (tmp_path / name).write_bytes((gpt_folder / name).read_bytes())
    err = _error(["eval", str(tmp_path), "--offline-tasks"], capsys)
    assert "has no tokenizer" in err and "--tokenizer" in err


def test_not_a_deepln_model(tmp_path, capsys):
    from transformers import GPT2Config

    GPT2Config(n_layer=1, n_embd=8, n_head=2).save_pretrained(tmp_path)
    err = _error(["eval", str(tmp_path)], capsys)
    assert "'gpt2' model, not a deepln model" in err


def test_folder_without_config_and_missing_path(tmp_path, capsys):
    assert "has no config.json" in _error(["eval", str(tmp_path)], capsys)
    assert "is not a model folder" in _error(["eval", str(tmp_path / "nope" / "missing")], capsys)


def test_bert_masked_lm_is_not_a_classifier(bert_classifier, tmp_path, capsys):
    config = DeepLNBertConfig.from_pretrained(bert_classifier)
    DeepLNBertForMaskedLM(config).save_pretrained(tmp_path)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (tmp_path / name).write_bytes((bert_classifier / name).read_bytes())
    err = _error(["eval", str(tmp_path), "--validation-file", str(DATA / "qqp.jsonl")], capsys)
    assert "not a classifier" in err and "deepln finetune" in err


def test_bert_validation_file_with_wrong_columns(bert_classifier, tmp_path, capsys):
    bad = tmp_path / "dev.jsonl"
    bad.write_text('{"sentence1": "a", "sentence2": "b", "label": 1}\n')
    err = _error(["eval", str(bert_classifier), "--validation-file", str(bad)], capsys)
    assert "no column(s) ['question1', 'question2']" in err and "sentence1" in err


def test_gpt_without_lm_head_is_refused(gpt_folder, tmp_path, capsys):
    from modeling_deepln import DeepLNGPTModel

    DeepLNGPTModel(DeepLNGPTConfig.from_pretrained(gpt_folder)).save_pretrained(tmp_path)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (tmp_path / name).write_bytes((gpt_folder / name).read_bytes())
    err = _error(["eval", str(tmp_path), "--offline-tasks"], capsys)
    assert "without a language-model head" in err and "DeepLNGPTForCausalLM" in err


def test_task_data_that_cannot_be_downloaded(gpt_folder, tmp_path, capsys):
    yaml = (TASKS_DIR / "deepln_piqa.yaml").read_text().replace("task: deepln_piqa", "task: hub_piqa")
    yaml = re.sub(r"dataset_path: json\ndataset_kwargs:\n  data_files:\n    validation: \S+\n",
                  "dataset_path: deepln-test/no-such-dataset\n", yaml)  # fmt: skip
    (tmp_path / "hub_piqa.yaml").write_text(yaml)
    err = _error(["eval", str(gpt_folder), "--offline-tasks", "--include-path", str(tmp_path), "--tasks", "hub_piqa",
                  "--no-card", "--output", str(tmp_path / "out.json")], capsys)  # fmt: skip
    assert "could not be downloaded" in err and "--offline-tasks" in err


def test_quiet_progress_is_scoped_to_the_harness_and_the_block():
    """``--no-progress`` hides the harness's bars inside the block only; tqdm itself is never modified."""
    import io

    import lm_eval.api.task
    import tqdm
    import transformers.utils.logging as transformers_logging

    from modeling_deepln.evaluation.harness import quiet_progress

    init, harness_bar = tqdm.tqdm.__dict__["__init__"], lm_eval.api.task.tqdm
    with quiet_progress():
        assert lm_eval.api.task.tqdm(range(3), file=io.StringIO(), disable=False).disable
        assert not tqdm.tqdm(range(3), file=io.StringIO()).disable  # other code keeps its bars
        assert not transformers_logging.is_progress_bar_enabled()
    assert tqdm.tqdm.__dict__["__init__"] is init and lm_eval.api.task.tqdm is harness_bar
    assert transformers_logging.is_progress_bar_enabled()
