"""Does a pretrained deepln masked LM use the context, or only the token frequencies?

Reads a ``deepln pretrain`` output folder (the model, and the held-out blocks cached in ``prepared/``), masks the
held-out blocks once exactly as the run's evaluation does (``mask_once``: 15 %, the run's seed) and prints, on
the masked tokens:

* the masked-token loss of the model and of the unigram model of the maskable training tokens;
* top-1 accuracy of the model against always predicting the most frequent maskable token (the unigram's top-1);
* how many different top-1 predictions the model makes (1 for a frequency-only model);
* the mean KL divergence from the unigram distribution to the model's prediction (0 for a frequency-only model).

    python scripts/fill_mask_context.py runs/bert-deep-small-<timestamp> [--blocks 64]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run", type=Path, help="output folder of `deepln pretrain --preset bert-deep-small`")
    parser.add_argument("--blocks", type=int, default=64, help="held-out blocks to score")
    args = parser.parse_args()

    from datasets import load_from_disk
    from transformers import AutoModelForMaskedLM, AutoTokenizer

    import modeling_deepln  # noqa: F401  (registers the Auto classes)
    from modeling_deepln.training.pretraining import mask_once

    model = AutoModelForMaskedLM.from_pretrained(args.run).eval()
    tokenizer = AutoTokenizer.from_pretrained(args.run)
    data = load_from_disk(str(args.run / "prepared" / "lm_data"))
    seed = json.loads((args.run / "prepared" / "fingerprint.json").read_text())["seed"]
    held_out = data["validation"].select(range(min(args.blocks, len(data["validation"]))))
    masked = mask_once(held_out, tokenizer, 0.15, seed)
    input_ids, labels = torch.tensor(masked["input_ids"]), torch.tensor(masked["labels"])

    vocab = model.config.vocab_size
    counts = torch.bincount(torch.tensor(data["train"]["input_ids"]).flatten(), minlength=vocab).double() + 1.0
    counts[tokenizer.all_special_ids] = 0.0
    unigram = counts / counts.sum()

    with torch.no_grad():
        logits = torch.cat([model(input_ids=input_ids[i : i + 16]).logits for i in range(0, len(input_ids), 16)])
    where = labels != -100
    log_probs = logits[where].double().log_softmax(-1)
    targets = labels[where]
    top1 = log_probs.argmax(-1)
    kl = (unigram * (unigram.clamp_min(1e-30).log() - log_probs)).sum(-1)
    report = {
        "masked tokens": int(where.sum()),
        "model loss": float(-log_probs.gather(1, targets[:, None]).mean()),
        "unigram loss": float(-unigram[targets].log().mean()),
        "model top-1 accuracy": float((top1 == targets).double().mean()),
        "unigram top-1 accuracy": float((targets == unigram.argmax()).double().mean()),
        "distinct top-1 predictions": int(top1.unique().numel()),
        "most frequent top-1 predictions": {
            tokenizer.convert_ids_to_tokens(int(t)): int(n)
            for n, t in sorted(((int((top1 == t).sum()), t) for t in top1.unique()), reverse=True)[:8]
        },
        "mean KL(unigram || model), nats": float(kl.mean()),
    }
    for key, value in report.items():
        print(f"{key:32s} {value if not isinstance(value, float) else f'{value:.4f}'}")


if __name__ == "__main__":
    main()
