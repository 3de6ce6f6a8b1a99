"""Evaluation metrics for ``deepln`` fine-tuning and language modelling.

Why this exists
---------------
``evaluate.load("accuracy")`` / ``evaluate.load("glue", "qqp")`` fetch metric scripts from
the Hub and fail offline. GLUE's QQP metric is accuracy plus binary F1; scikit-learn's
``accuracy_score`` / ``precision_recall_fscore_support`` compute exactly what those
scripts compute, so :func:`classification_metrics` uses them directly and works as
``Trainer(compute_metrics=classification_metrics)``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = [
    "classification_metrics",
    "masked_unigram_perplexity",
    "perplexity",
    "unigram_loss",
    "unigram_perplexity",
    "unigram_special_ids",
]


def _unpack(eval_pred: Any) -> tuple[Any, Any]:
    """(predictions, label_ids) from an ``EvalPrediction`` or a ``(preds, labels)`` tuple."""
    if hasattr(eval_pred, "predictions") and hasattr(eval_pred, "label_ids"):
        return eval_pred.predictions, eval_pred.label_ids
    try:
        predictions, labels = eval_pred
    except (TypeError, ValueError) as exc:
        raise TypeError(
            "classification_metrics expects a transformers EvalPrediction or a "
            f"(predictions, labels) pair, got {type(eval_pred).__name__}."
        ) from exc
    return predictions, labels


def classification_metrics(eval_pred: Any) -> dict[str, float]:
    """Accuracy, precision, recall and F1 of a classifier, for ``Trainer``.

    Args:
        eval_pred: ``EvalPrediction`` (or ``(predictions, labels)``). ``predictions`` are
            logits of shape ``(n, num_classes)``, or already-predicted class ids of shape
            ``(n,)``; when the model returns several tensors it is a tuple and the first
            element (the logits) is used.

    Returns:
        ``{"accuracy", "precision", "recall", "f1"}`` as floats. With two classes these
        are *binary* scores for the positive class 1 (GLUE QQP/MRPC convention);
        otherwise macro averages over the classes present in labels or predictions.
        Labels equal to -100 (ignored positions) are left out.

    Raises:
        ValueError: predictions and labels have different numbers of examples.
    """
    from sklearn.metrics import accuracy_score, precision_recall_fscore_support

    predictions, labels = _unpack(eval_pred)
    if isinstance(predictions, (tuple, list)) and not np.isscalar(predictions[0]):
        predictions = predictions[0]
    if isinstance(labels, (tuple, list)) and len(labels) and not np.isscalar(labels[0]):
        labels = labels[0]
    predictions = np.asarray(predictions)
    labels = np.asarray(labels).reshape(-1)
    preds = predictions.argmax(axis=-1) if predictions.ndim > 1 else predictions
    preds = preds.reshape(-1).astype(np.int64)
    if preds.shape[0] != labels.shape[0]:
        raise ValueError(
            f"Got {preds.shape[0]} predictions but {labels.shape[0]} labels; they must match."
        )
    keep = labels != -100
    preds, labels = preds[keep], labels[keep].astype(np.int64)
    if labels.size == 0:
        return {"accuracy": float("nan"), "precision": float("nan"), "recall": float("nan"), "f1": float("nan")}

    num_classes = predictions.shape[-1] if predictions.ndim > 1 else None
    binary = num_classes == 2 or (
        num_classes is None and set(np.unique(np.concatenate([preds, labels]))) <= {0, 1}
    )
    if binary:
        precision, recall, f1, _ = precision_recall_fscore_support(
            labels, preds, average="binary", pos_label=1, zero_division=0
        )
    else:
        precision, recall, f1, _ = precision_recall_fscore_support(
            labels, preds, average="macro", zero_division=0
        )
    return {
        "accuracy": float(accuracy_score(labels, preds)),
        "precision": float(precision),
        "recall": float(recall),
        "f1": float(f1),
    }


def perplexity(loss: float) -> float:
    """``exp(loss)`` (mean token cross-entropy in nats -> perplexity), overflow-safe.

    Returns ``inf`` instead of raising ``OverflowError`` for huge losses (early in
    training or after divergence) and ``nan`` for a ``nan`` loss.
    """
    loss = float(loss)
    if math.isnan(loss):
        return float("nan")
    try:
        return math.exp(loss)
    except OverflowError:
        return float("inf")


def unigram_loss(train_ids: Any, targets: Any, vocab_size: int, special_ids: Sequence[int] = ()) -> float:
    """The unigram reference of a held-out loss: the cross-entropy (nats), on ``targets``, of the add-one-smoothed
    unigram model of ``train_ids``. Every "learning / on the unigram plateau" verdict of deepln compares with it.

    Definition: ``p(t) = (c(t) + 1) / sum_u (c(u) + 1)``, ``c`` the training counts, sums over the vocabulary
    **without** ``special_ids`` (they get no probability), and ``loss = mean over targets t of -log p(t)``, with
    targets equal to ``-100`` (unscored positions) or in ``special_ids`` left out. A model at this loss has learned
    the token frequencies and nothing of the context.

    ``targets`` are exactly the tokens the compared loss scores, so model and reference see the same sample:

    * causal LM: every next token of the held-out blocks (``blocks[:, 1:]``); ``special_ids`` are the tokenizer's
      special tokens except the end-of-text token, which ends every text and is a target the model is scored on
      (:func:`unigram_special_ids`);
    * masked LM: the labels of the masked held-out positions (``-100`` elsewhere); ``special_ids`` are all the
      tokenizer's special tokens, which the masking never selects. Passing every maskable token instead of one
      masking's labels gives the expectation over masking positions.

    ``train_ids`` and ``targets`` are arrays, tensors or nested lists of token ids (any shape).
    """
    train = np.asarray(train_ids, dtype=np.int64).reshape(-1)
    targets = np.asarray(targets, dtype=np.int64).reshape(-1)
    special = np.asarray(sorted(set(special_ids)), dtype=np.int64)
    counts = np.bincount(train[train >= 0], minlength=vocab_size).astype(np.float64) + 1.0
    counts[special] = 0.0
    targets = targets[(targets != -100) & ~np.isin(targets, special)]
    if targets.size == 0:
        raise ValueError("unigram_loss got no target to score (all are -100 or special tokens).")
    return float(-np.log(counts[targets] / counts.sum()).mean())


def unigram_special_ids(tokenizer: Any, family: str) -> list[int]:
    """The ids :func:`unigram_loss` leaves out for ``family`` (``"gpt"`` or ``"bert"``): the tokenizer's special
    tokens, except a causal LM's end-of-text token (a next-token target like any word)."""
    special = set(tokenizer.all_special_ids)
    if family == "gpt":
        special.discard(tokenizer.eos_token_id)
    return sorted(special)


def unigram_perplexity(train_blocks: Any, eval_blocks: Any, vocab_size: int, special_ids: Sequence[int] = ()) -> float:
    """``exp`` of :func:`unigram_loss` on the next-token targets of ``eval_blocks`` (every token but the first of
    each block, as a causal LM is scored). Blocks are equal-length rows of token ids."""
    targets = np.asarray(eval_blocks, dtype=np.int64)[:, 1:]
    return perplexity(unigram_loss(train_blocks, targets, vocab_size, special_ids))


def masked_unigram_perplexity(
    train_blocks: Any, targets: Any, vocab_size: int, special_ids: Sequence[int] = ()
) -> float:
    """``exp`` of :func:`unigram_loss` for a masked LM: ``targets`` are the held-out labels (``-100`` where not
    masked), or the held-out blocks themselves for the expectation over masking; ``special_ids`` are the
    tokenizer's special tokens (never masked, so given no probability)."""
    return perplexity(unigram_loss(train_blocks, targets, vocab_size, special_ids))
