"""The paper's Table 3 for a fine-tuned deepln BERT: QQP precision / recall / F1 / accuracy on a validation set.

The classifier (a ``deepln finetune`` output folder, ``DeepLNBertForSequenceClassification``) predicts every pair
with ``Trainer.predict``; the metrics are :func:`modeling_deepln.training.metrics.classification_metrics`
(scikit-learn's binary precision/recall/F1 for the duplicate class 1 and accuracy, what GLUE's QQP metric
computes). ``evaluate.load("glue", "qqp")`` would compute the same but fetches its script from the Hub, so it does
not run offline; deepln uses scikit-learn directly.

Data: a local file in GLUE QQP's format (``question1``, ``question2``, ``label``, ``idx``; csv/tsv/json/jsonl/parquet)
or, with none given, ``load_dataset("nyu-mll/glue", "qqp", split="validation")`` from the Hub (the paper scored
the QQP test split, whose labels GLUE does not publish).
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from ..errors import DeepLNInputError
from .harness import ModelSource

__all__ = ["evaluate_pair_classifier", "load_validation"]

_BUILDERS = {".json": "json", ".jsonl": "json", ".csv": "csv", ".tsv": "csv", ".parquet": "parquet"}


def load_validation(validation_file: str | None, text_columns: tuple[str, ...], label_column: str):
    """The labelled validation examples: a local file in QQP's format, or GLUE QQP's validation split from the Hub."""
    from datasets import load_dataset

    if validation_file is None:
        data = load_dataset("nyu-mll/glue", "qqp", split="validation")
    else:
        path = Path(validation_file).expanduser()
        if not path.is_file():
            raise DeepLNInputError(f"--validation-file {validation_file} does not exist.")
        builder = _BUILDERS.get(path.suffix.lower())
        if builder is None:
            raise DeepLNInputError(f"--validation-file {path.name}: use one of {', '.join(_BUILDERS)}.")
        kwargs = {"delimiter": "\t"} if path.suffix.lower() == ".tsv" else {}
        data = load_dataset(builder, data_files={"validation": str(path)}, split="validation", **kwargs)
    missing = [c for c in (*text_columns, label_column) if c not in data.column_names]
    if missing:
        raise DeepLNInputError(
            f"The validation data has no column(s) {missing}; it has {data.column_names}. QQP's format is "
            "question1, question2, label (0/1), idx (choose others with --text-columns and --label-column)."
        )
    data = data.filter(lambda row: row[label_column] is not None and int(row[label_column]) >= 0)
    if len(data) == 0:
        raise DeepLNInputError("The validation data has no labelled rows (GLUE's test split has label -1).")
    return data


def evaluate_pair_classifier(
    source: ModelSource,
    validation_file: str | None,
    *,
    text_columns: tuple[str, ...] = ("question1", "question2"),
    label_column: str = "label",
    batch_size: int = 32,
    device: str | None = None,
    dtype: str = "auto",
    limit: float | None = None,
    max_seq_len: int | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Predict the validation pairs with ``Trainer.predict``; return accuracy/precision/recall/f1 and ``samples``."""
    from datasets import DatasetDict
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, DataCollatorWithPadding, Trainer
    from transformers import TrainingArguments

    from ..training.metrics import classification_metrics
    from ..training.pair_tasks import tokenize_pairs

    if not any(a.endswith("ForSequenceClassification") for a in source.config.architectures or []):
        raise DeepLNInputError(
            f"{source.name} is a {', '.join(source.config.architectures or ['base'])} model, not a classifier; "
            "Table 3 scores a fine-tuned one: deepln finetune --model FOLDER --train-file ... first."
        )
    data = load_validation(validation_file, text_columns, label_column)
    if limit:
        data = data.select(range(min(len(data), int(limit if limit >= 1 else limit * len(data)) or 1)))
    tokenizer = AutoTokenizer.from_pretrained(source.tokenizer, trust_remote_code=True)
    max_len = max_seq_len or source.config.max_position_embeddings
    encoded = tokenize_pairs(DatasetDict(validation=data), tokenizer, text_columns, label_column, max_len)
    model = AutoModelForSequenceClassification.from_pretrained(source.name, trust_remote_code=True, dtype=dtype)
    print(f"[deepln] Table 3: predicting {len(data)} pairs with {source.name}", flush=True)
    with tempfile.TemporaryDirectory(prefix="deepln-eval-") as scratch:
        args = TrainingArguments(
            output_dir=scratch, per_device_eval_batch_size=batch_size, report_to="none",
            use_cpu=(device == "cpu"), disable_tqdm=not progress,
        )  # fmt: skip
        trainer = Trainer(model=model, args=args, data_collator=DataCollatorWithPadding(tokenizer))
        output = trainer.predict(encoded["validation"])
    metrics = classification_metrics((output.predictions, output.label_ids))
    return {**metrics, "samples": len(data)}
