"""Evaluation of deepln models as in the FoundationLayerNorm paper: ``deepln eval``.

- ``suite.py``: the paper's zero-shot suite (lm-eval task names, metrics), its numbers (Tables 3-5), the shipped
  offline task definitions (``configuration/tasks/``).
- ``harness.py``: model/tokenizer/task checks and ``lm_eval.simple_evaluate`` with ``HFLM`` (GPT, Table 4).
- ``classification.py``: a fine-tuned BERT classifier on QQP with ``Trainer.predict`` (Table 3).
- ``tables.py``: the tables beside the paper's rows, and a PNG chart. ``card.py``: results into the model-index.
- ``cli.py``: the ``eval`` subcommand.
"""

from .card import add_eval_results_to_card, lm_eval_card_results
from .suite import GPT_SUITE_TASKS, OFFLINE_TASKS, PAPER_BERT_QQP, PAPER_GPT_ROWS, TASKS_DIR, offline_task_dir

__all__ = [
    "add_eval_results_to_card",
    "lm_eval_card_results",
    "GPT_SUITE_TASKS",
    "OFFLINE_TASKS",
    "PAPER_GPT_ROWS",
    "PAPER_BERT_QQP",
    "TASKS_DIR",
    "offline_task_dir",
]
