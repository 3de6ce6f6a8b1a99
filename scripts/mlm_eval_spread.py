"""How much of a masked LM's held-out result is the measurement: re-score a ``deepln pretrain`` output folder on
**every** held-out block (the run scores ``max_eval_samples`` of them, 64 for ``bert-1k-cpu``) under several
masking draws, each against the masked unigram model of the same masked tokens (README, "1,000 layers").

    python scripts/mlm_eval_spread.py runs/bert-1k-cpu [runs/bert-1k-cpu-seed1 ...] [--draws 8]

Prints one line per draw and the mean and standard deviation of ``unigram loss - model loss`` (nats) per folder.
"""

from __future__ import annotations

import argparse
import math
import statistics

import torch
from datasets import load_from_disk
from transformers import AutoModelForMaskedLM, AutoTokenizer

import modeling_deepln  # noqa: F401  (registers the deepln models with the Auto classes)
from modeling_deepln.training.metrics import unigram_loss
from modeling_deepln.training.pretraining import mask_once


@torch.no_grad()
def masked_loss(model: torch.nn.Module, ids: torch.Tensor, labels: torch.Tensor, batch: int = 16) -> float:
    """Mean cross-entropy over the masked positions (``labels != -100``) of all blocks."""
    total, count = 0.0, 0
    for start in range(0, len(ids), batch):
        part = labels[start : start + batch]
        n = int((part != -100).sum())
        total += float(model(input_ids=ids[start : start + batch], labels=part).loss) * n
        count += n
    return total / count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", help="output folders of deepln pretrain (masked LM)")
    parser.add_argument("--draws", type=int, default=8, help="masking draws of the held-out blocks")
    parser.add_argument("--mlm-probability", type=float, default=0.15, help="the held-out masking rate of the runs")
    args = parser.parse_args()
    for run in args.runs:
        data = load_from_disk(f"{run}/prepared/lm_data")
        tokenizer = AutoTokenizer.from_pretrained(run)
        model = AutoModelForMaskedLM.from_pretrained(run).eval()
        gaps = []
        for seed in range(args.draws):
            rows = mask_once(data["validation"], tokenizer, args.mlm_probability, seed=seed)
            ids, labels = torch.tensor(rows["input_ids"]), torch.tensor(rows["labels"])
            loss = masked_loss(model, ids, labels)
            unigram = unigram_loss(data["train"]["input_ids"], rows["labels"], model.config.vocab_size,
                                   tokenizer.all_special_ids)  # fmt: skip
            gaps.append(unigram - loss)
            print(f"{run}: {len(ids)} held-out blocks, draw {seed}: {int((labels != -100).sum())} masked tokens, "
                  f"model {loss:.3f}, unigram {unigram:.3f}, {unigram - loss:+.3f} nats", flush=True)  # fmt: skip
        mean = statistics.mean(gaps)
        spread = statistics.stdev(gaps) if len(gaps) > 1 else 0.0
        print(f"{run}: {mean:.3f} ± {spread:.3f} nats below the unigram model ({math.exp(-mean):.3f}x its perplexity)")


if __name__ == "__main__":
    main()
