"""``deepln eval``: the seed paper's evaluation of a deepln model folder or Hub id.

A GPT gets the zero-shot suite through lm-eval and the paper's Table 4 (with Table 5's models); a fine-tuned BERT
classifier gets Table 3 (QQP precision / recall / F1 / accuracy). Results go to a JSON file, a PNG chart (GPT) and
the ``model-index`` of the folder's model card.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from ..commands import Subcommand, csv_list

__all__ = ["SUBCOMMANDS", "add_eval_arguments", "run_eval"]


def _limit(value: str) -> float:
    number = float(value)
    if number <= 0:
        raise argparse.ArgumentTypeError(f"--limit must be positive, got {value}")
    return int(number) if number >= 1 else number


def _batch_size(value: str) -> int | str:
    if value == "auto" or value.startswith("auto:"):
        return value
    if not value.isdigit() or int(value) < 1:
        raise argparse.ArgumentTypeError(f"--batch-size must be a positive integer or 'auto', got {value}")
    return int(value)


def add_eval_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``deepln eval`` (named like lm-eval's own)."""
    add = parser.add_argument
    add("model", metavar="MODEL", help="A deepln model folder (deepln pretrain/finetune output) or a Hub id.")
    add("--tasks", type=csv_list, metavar="LIST", help="Comma-separated lm-eval task names (default: the paper's "
        "suite qqp,lambada_openai,winogrande,hellaswag,piqa). BERT classifiers: ignored (QQP, Table 3).")
    add("--offline-tasks", action="store_true", help="Run the suite on deepln's shipped offline task definitions "
        "(the harness's YAMLs on a few local examples per task; nothing is downloaded). Only these and "
        "--include-path tasks are then known.")
    add("--include-path", action="append", default=[], metavar="DIR", help="Folder of extra lm-eval task YAMLs "
        "(repeatable).")
    add("--batch-size", type=_batch_size, default=8, metavar="N", help="Batch size, or 'auto' (default 8).")
    add("--device", default=None, help="torch device (default: cuda when available, else cpu).")
    add("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"], help="Weights dtype.")
    add("--limit", type=_limit, default=None, metavar="N", help="At most N documents per task (a fraction if < 1).")
    add("--bootstrap-iters", type=int, default=0, metavar="N", help="lm-eval's bootstrap resamples for standard "
        "errors (0, the default, skips them; lm-eval's own default is 100000).")
    add("--output", default=None, metavar="FILE", help="Results JSON (default: MODEL/eval_zero_shot.json for a "
        "folder, ./ORG--NAME-eval_zero_shot.json for a Hub id; BERT: eval_qqp.json).")
    add("--log-samples", action="store_true", help="Also write every document's requests and log-likelihoods "
        "(lm-eval's samples) into the JSON.")
    add("--tokenizer", default=None, metavar="NAME_OR_DIR", help="Tokenizer (default: the model's own).")
    add("--no-card", action="store_true", help="Do not add the results to the folder's model card.")
    add("--validation-file", default=None, metavar="FILE", help="BERT (Table 3): QQP-format validation file "
        "(question1, question2, label, idx); default: nyu-mll/glue qqp validation from the Hub.")
    add("--text-columns", type=csv_list, default=["question1", "question2"], metavar="A,B", help="BERT: text columns.")
    add("--label-column", default="label", metavar="COL", help="BERT: label column.")
    add("--max-seq-len", type=int, default=None, metavar="N", help="BERT: truncate pairs to N tokens.")
    add("--no-progress", action="store_true", help="Hide the progress bars.")


def _output_path(ns: argparse.Namespace, source, stem: str) -> Path:
    if ns.output:
        return Path(ns.output)
    if source.folder is not None:
        return source.folder / f"{stem}.json"
    return Path(f"{source.name.replace('/', '--')}-{stem}.json")


def _write_json(path: Path, payload: dict[str, Any]) -> None:
    from lm_eval.utils import handle_non_serializable

    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2, default=handle_non_serializable) + "\n", encoding="utf-8")


def _eval_gpt(ns: argparse.Namespace, source) -> dict[str, Any]:
    from .card import add_eval_results_to_card, lm_eval_card_results
    from .harness import run_lm_eval, task_names
    from .tables import format_table4, plot_table4, table4_scores

    tasks = task_names(ns.tasks, ns.offline_tasks)
    output = run_lm_eval(
        source, tasks, offline=ns.offline_tasks, include_paths=ns.include_path, batch_size=ns.batch_size,
        device=ns.device, dtype=ns.dtype, limit=ns.limit, bootstrap_iters=ns.bootstrap_iters,
        log_samples=ns.log_samples,
    )  # fmt: skip
    results, n_samples = output["results"], output.get("n-samples", {})
    scores = table4_scores(results)
    label = Path(source.name).name if source.folder else source.name
    table = format_table4(label, scores)
    sizes = ", ".join(f"{task} {n.get('effective', '?')}" for task, n in n_samples.items())
    print(f"\nTable 4 (zero-shot, percent; LAMBADA-PPL a perplexity). Documents: {sizes}.\n"
          "Other columns: the FoundationLayerNorm paper (arXiv 2204.04477), Tables 4 and 5.\n" + table, flush=True)  # fmt: skip
    path = _output_path(ns, source, "eval_zero_shot")
    payload = {"model": source.name, "tasks": tasks, "table4": scores, "n_samples": n_samples, "results": results,
               "versions": output.get("versions"), "config": output.get("config"), "table4_markdown": table}  # fmt: skip
    if ns.log_samples:
        payload["samples"] = output.get("samples")
    _write_json(path, payload)
    plot = plot_table4(label, scores, path.with_suffix(".png"))
    print(f"[deepln] results: {path}; chart: {plot}", flush=True)
    if source.folder is not None and not ns.no_card:
        card = add_eval_results_to_card(source.folder, lm_eval_card_results(results, n_samples))
        if card:
            print(f"[deepln] added {len(scores)} results to the model-index of {card}", flush=True)
    return payload


def _eval_classifier(ns: argparse.Namespace, source) -> dict[str, Any]:
    from .card import add_eval_results_to_card
    from .classification import evaluate_pair_classifier
    from .tables import format_table3

    metrics = evaluate_pair_classifier(
        source, ns.validation_file, text_columns=tuple(ns.text_columns), label_column=ns.label_column,
        batch_size=ns.batch_size if isinstance(ns.batch_size, int) else 32, device=ns.device, dtype=ns.dtype,
        limit=ns.limit, max_seq_len=ns.max_seq_len, progress=not ns.no_progress,
    )  # fmt: skip
    dataset = Path(ns.validation_file).name if ns.validation_file else "QQP-validation"
    label = Path(source.name).name if source.folder else source.name
    table = format_table3(label, metrics, dataset)
    print(f"\nTable 3 (QQP, percent; {metrics['samples']} pairs).\n{table}", flush=True)
    path = _output_path(ns, source, "eval_qqp")
    payload = {"model": source.name, "validation": ns.validation_file or "nyu-mll/glue:qqp:validation",
               "table3": metrics, "table3_markdown": table}  # fmt: skip
    _write_json(path, payload)
    print(f"[deepln] results: {path}", flush=True)
    if source.folder is not None and not ns.no_card:
        hub = ns.validation_file is None
        entries = [
            dict(task_type="text-classification", task_name="QQP", dataset_type="nyu-mll/glue" if hub else "json",
                 dataset_name="GLUE QQP" if hub else f"QQP-format file {dataset}", dataset_config="qqp" if hub else None,
                 dataset_split="validation", metric_type=key, metric_value=metrics[key])
            for key in ("accuracy", "precision", "recall", "f1")
        ]  # fmt: skip
        card = add_eval_results_to_card(source.folder, entries)
        if card:
            print(f"[deepln] added the Table 3 metrics to the model-index of {card}", flush=True)
    return payload


def run_eval(ns: argparse.Namespace) -> int:
    from ..errors import DeepLNInputError
    from .harness import quiet_progress, resolve_model

    source = resolve_model(ns.model, ns.tokenizer)
    architectures = source.config.architectures or []
    with quiet_progress(ns.no_progress):
        if source.family == "bert" or any(a.endswith("ForSequenceClassification") for a in architectures):
            _eval_classifier(ns, source)  # Table 3 (a GPT classifier is scored the same way)
            return 0
        if architectures and not any(a.endswith("ForCausalLM") for a in architectures):
            raise DeepLNInputError(
                f"{ns.model} holds a {', '.join(architectures)} without a language-model head; the zero-shot suite "
                "scores a DeepLNGPTForCausalLM (the `deepln pretrain` output)."
            )
        _eval_gpt(ns, source)
    return 0


SUBCOMMANDS: dict[str, Subcommand] = {
    "eval": Subcommand(
        "Evaluate a deepln model as the FoundationLayerNorm paper does: a GPT zero-shot on QQP, LAMBADA, "
        "WinoGrande, HellaSwag and PIQA through lm-eval (Table 4); a fine-tuned BERT classifier on QQP (Table 3).",
        add_eval_arguments,
        run_eval,
    ),
}
