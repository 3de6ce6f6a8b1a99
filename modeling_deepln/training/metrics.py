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

__all__ = ["classification_metrics", "perplexity"]


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


def unigram_perplexity(train_blocks: Any, eval_blocks: Any, vocab_size: int) -> float:
    """Perplexity of the add-one-smoothed unigram model of ``train_blocks`` on the next-token targets of
    ``eval_blocks`` (every token but the first of each block, as a causal LM is scored).

    The reference point of a causal LM's perplexity: a model at this value has learned the token frequencies and
    nothing of the context. Blocks are equal-length rows of token ids (arrays or lists).
    """
    train = np.asarray(train_blocks, dtype=np.int64).reshape(-1)
    targets = np.asarray(eval_blocks, dtype=np.int64)[:, 1:].reshape(-1)
    counts = np.bincount(train, minlength=vocab_size).astype(np.float64) + 1.0
    log_probs = np.log(counts / counts.sum())
    return perplexity(float(-log_probs[targets].mean()))


def masked_unigram_perplexity(
    train_blocks: Any, eval_blocks: Any, vocab_size: int, special_ids: Sequence[int] = ()
) -> float:
    """Perplexity of the add-one-smoothed unigram model of the maskable training tokens on the maskable tokens
    of ``eval_blocks``: the reference point of a masked LM's masked-token perplexity.

    The MLM collator selects positions uniformly among the tokens that are not special (``[CLS]``, ``[SEP]``,
    padding), so the expected masked-token loss of a model that predicts the unigram distribution, whatever the
    context, is ``mean over those eval tokens of -log p(token)`` with ``p`` estimated on the same kind of training
    tokens (special ids get no probability mass). Blocks are equal-length rows of token ids.
    """
    train = np.asarray(train_blocks, dtype=np.int64).reshape(-1)
    targets = np.asarray(eval_blocks, dtype=np.int64).reshape(-1)
    special = np.asarray(sorted(set(special_ids)), dtype=np.int64)
    counts = np.bincount(train, minlength=vocab_size).astype(np.float64) + 1.0
    counts[special] = 0.0
    targets = targets[~np.isin(targets, special)]
    log_probs = np.log(counts / counts.sum(), where=counts > 0, out=np.full(vocab_size, -np.inf))
    return perplexity(float(-log_probs[targets].mean()))
