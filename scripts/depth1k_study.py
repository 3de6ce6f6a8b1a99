"""Which scheme + recipe learns at 1,000 layers on a CPU (README, "1,000 layers").

Trains narrow 1,000-layer models (GPT: causal LM; BERT: masked LM) on the embedded corpus through deepln's own data
path (``plan_pretrain`` + ``prepare_lm_data``: trained tokenizer, vocabulary 8,192, cached under ``--cache``) in a
plain PyTorch loop that matches ``deepln pretrain`` (AdamW with weight decay on matrices only, gradient clipping 1.0,
warmup then linear / cosine / constant, the fused LM loss / sparse MLM loss), and records, every ``--eval-every``
steps, the held-out loss against the unigram model's (GPT: all tokens; BERT: the masked tokens of blocks masked once
at 15 %), plus CPU-seconds per step (``time.process_time``, which counts every thread: a machine shared with other
jobs slows the wall clock, not the CPU-seconds). One JSON row per run is appended to ``--results``.

``--config`` overrides config fields (``'{"residual_norm": "pre_ln", "scale_output_init": true}'``);
``--final-ln`` adds a LayerNorm before the head (``final_layer_norm=True``) to a scheme that has none.

    OMP_NUM_THREADS=1 python scripts/depth1k_study.py --family gpt --name preln_lr2e-3 \\
        --config '{"residual_norm": "pre_ln", "scale_output_init": true}' --lr 2e-3 --steps 60
"""
import argparse
import json
import math
import os
import signal
import time
from pathlib import Path

import torch
from transformers import get_scheduler, set_seed

import modeling_deepln  # noqa: F401  (registers the Auto classes)
from modeling_deepln import load_preset
from modeling_deepln.training import PretrainArgs
from modeling_deepln.training.depth_lr import block_lr_multiplier, split_block_learning_rates
from modeling_deepln.training.metrics import masked_unigram_perplexity, unigram_perplexity
from modeling_deepln.training.pretraining import (
    MaskedLMCollator,
    causal_lm_collator,
    mask_once,
    plan_pretrain,
    prepare_lm_data,
)

p = argparse.ArgumentParser()
p.add_argument("--family", choices=("gpt", "bert"))
p.add_argument("--name")
p.add_argument("--table", action="store_true", help="print the stored rows of --results as a Markdown table")
p.add_argument("--layers", type=int, default=1000)
p.add_argument("--hidden", type=int, default=32)
p.add_argument("--heads", type=int, default=2)
p.add_argument("--steps", type=int, default=60)
p.add_argument("--eval-every", type=int, default=20)
p.add_argument("--lr", type=float, default=2e-3)
p.add_argument("--schedule", default="constant", choices=("linear", "cosine", "constant"))
p.add_argument("--schedule-steps", type=int, default=0, help="steps of the schedule (default --steps)")
p.add_argument("--warmup", type=float, default=0.1)
p.add_argument("--beta2", type=float, default=0.999)
p.add_argument("--diag", action="store_true",
               help="at each evaluation also print, at layers 0, 10, 100, N/2 and N, the norm of the stream's part shared "
                    "by all positions (|mean over positions|) and of the part that tells them apart (mean |h - mean|)")
p.add_argument("--block-lr-scale", default="1", help="the residual blocks at lr x this ('depth': 1/sqrt(layers))")
p.add_argument("--wd", type=float, default=0.01)
p.add_argument("--batch", type=int, default=8)
p.add_argument("--seq", type=int, default=64)
p.add_argument("--mask", type=float, default=0.6)
p.add_argument("--config", default="{}")
p.add_argument("--final-ln", action="store_true")
p.add_argument("--eval-blocks", type=int, default=64)
p.add_argument("--seed", type=int, default=0)
p.add_argument("--cache", default="runs/depth1k-study-cache")
p.add_argument("--results", default=str(Path(__file__).resolve().parents[1] / "docs" / "depth1k-study.jsonl"))
a = p.parse_args()


def print_table(path: str) -> None:
    """The README table: held-out loss at each evaluated step against the unigram model's, and CPU-s per step."""
    print("| family | run | lr, schedule | held-out loss at step k (unigram) | perplexity / unigram's | CPU-s/step |")
    print("|---|---|---|---|---|---|")
    for line in Path(path).read_text().splitlines():
        r = json.loads(line)
        curve = ", ".join(f"{k}: {loss:.2f}" for k, loss in r["curve"])
        blocks = r.get("block_lr_scale", "1")
        print(f"| {r['family'].upper()} | `{r['name']}`{': ' + r['status'] if r['status'] != 'ok' else ''} | "
              f"{r['lr']:g}{'' if blocks == '1' else f' (blocks x {blocks})'}, {r['schedule']} | {curve} ({r['unigram']:.2f}) | {r['ppl_ratio']:.2f}x | "
              f"{'–' if r['cpu_s_per_step'] is None else format(r['cpu_s_per_step'], '.1f')} |")


if a.table:
    print_table(a.results)
    raise SystemExit
if not (a.family and a.name):
    p.error("--family and --name are required")
torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))

preset = "gpt-deep-small" if a.family == "gpt" else "bert-deep-small"
run = plan_pretrain(PretrainArgs(preset=preset, output_dir=f"{a.cache}-{a.family}", report_to="none", seq_len=a.seq))
prepare_lm_data(run)
tok, train_ds, eval_ds = run.tokenizer, run.train_dataset, run.eval_dataset
eval_ds = eval_ds.select(range(min(a.eval_blocks, len(eval_ds))))
over = json.loads(a.config)
if a.final_ln:
    over["final_layer_norm"] = True
config = load_preset(preset, num_hidden_layers=a.layers, hidden_size=a.hidden, intermediate_size=4 * a.hidden,
                     num_attention_heads=a.heads, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, **over)
set_seed(a.seed)
if a.family == "gpt":
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_config(config)
    model.fused_lm_loss = True
    base = model.transformer if hasattr(model, "transformer") else model.model
    uni = math.log(unigram_perplexity(train_ds["input_ids"], eval_ds["input_ids"], config.vocab_size))
    collate = causal_lm_collator
    eval_rows = list(eval_ds)
else:
    from transformers import AutoModelForMaskedLM

    model = AutoModelForMaskedLM.from_config(config)
    model.sparse_mlm_loss = True
    base = model.bert
    uni = math.log(masked_unigram_perplexity(train_ds["input_ids"], eval_ds["input_ids"], config.vocab_size,
                                             tok.all_special_ids))
    collate = MaskedLMCollator(tok, a.mask)
    eval_rows = list(mask_once(eval_ds, tok, 0.15, seed=42))


def eval_batches():
    for i in range(0, len(eval_rows), 16):
        rows = eval_rows[i:i + 16]
        yield collate(rows)


@torch.no_grad()
def evaluate() -> float:
    model.eval()
    total, count = 0.0, 0
    for batch in eval_batches():
        out = model(input_ids=batch["input_ids"], labels=batch["labels"])
        n = int((batch["labels"][:, 1:] if a.family == "gpt" else batch["labels"]).ne(-100).sum())
        total, count = total + float(out.loss) * n, count + n
    model.train()
    return total / count


@torch.no_grad()
def stream_parts(batch) -> str:
    """Shared vs position-specific part of the residual stream of the first held-out block (``--diag``)."""
    hidden = base(input_ids=batch["input_ids"][:1], output_hidden_states=True).hidden_states
    parts = []
    for layer in sorted({min(k, len(hidden) - 1) for k in (0, 10, 100, a.layers // 2, a.layers)}):
        h = hidden[layer][0]
        shared = h.mean(0)
        parts.append(f"L{layer} shared {float(shared.norm()):.3g} apart {float((h - shared).norm(dim=-1).mean()):.3g}")
    return "; ".join(parts)


decay = [q for q in model.parameters() if q.ndim >= 2]
no_decay = [q for q in model.parameters() if q.ndim < 2]
groups = [{"params": decay, "weight_decay": a.wd}, {"params": no_decay, "weight_decay": 0.0}]
opt = torch.optim.AdamW(groups, lr=a.lr, betas=(0.9, a.beta2), fused=True)
split_block_learning_rates(opt, model, block_lr_multiplier(a.block_lr_scale, a.layers))
total_steps = a.schedule_steps or a.steps
sched = get_scheduler(a.schedule if a.schedule != "constant" else "constant_with_warmup", opt,
                      num_warmup_steps=round(a.warmup * total_steps), num_training_steps=total_steps)
order = torch.randperm(len(train_ds), generator=torch.Generator().manual_seed(a.seed)).tolist()
curve = [(0, evaluate())]
print(f"{a.name}: unigram {uni:.3f}, step 0 held-out {curve[0][1]:.3f}", flush=True)
cpu0, wall0, status, train_losses = time.process_time(), time.monotonic(), "ok", []
signal.signal(signal.SIGTERM, signal.default_int_handler)  # `kill PID` stores the row of the steps done so far
try:
    steps = range(1, a.steps + 1)
    for step in steps:
        rows = [train_ds[order[(step * a.batch + i) % len(order)]] for i in range(a.batch)]
        batch = collate(rows)
        loss = model(input_ids=batch["input_ids"], labels=batch["labels"]).loss
        loss.backward()
        grad_norm = float(torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0))
        if not math.isfinite(float(loss.detach())) or not math.isfinite(grad_norm):
            status = f"diverged at step {step}"
            break
        opt.step(), sched.step(), opt.zero_grad(set_to_none=True)
        train_losses.append(float(loss))
        if step % a.eval_every == 0 or step == a.steps:
            curve.append((step, evaluate()))
            cpu = time.process_time() - cpu0
            print(f"{a.name} step {step}: held-out {curve[-1][1]:.3f} (unigram {uni:.3f}), train {loss:.3f}, "
                  f"grad norm {grad_norm:.3g}, {cpu / step:.2f} CPU-s/step, {(time.monotonic() - wall0) / step:.2f} s/step"
                  + (f" | {stream_parts(next(eval_batches()))}" if a.diag else ""), flush=True)
except KeyboardInterrupt:
    status = f"stopped after step {len(train_losses)}"
steps_done = len(train_losses)
cpu = time.process_time() - cpu0
row = dict(family=a.family, name=a.name, layers=a.layers, hidden=a.hidden, heads=a.heads, batch=a.batch, seq=a.seq,
           lr=a.lr, block_lr_scale=a.block_lr_scale, schedule=a.schedule, schedule_steps=total_steps, warmup=a.warmup, beta2=a.beta2, wd=a.wd,
           mask=a.mask if a.family == "bert" else None, config=over, final_ln=a.final_ln, seed=a.seed, status=status,
           steps=steps_done, unigram=uni, curve=curve, final=curve[-1][1], gap=uni - curve[-1][1],
           ppl_ratio=math.exp(curve[-1][1] - uni), cpu_s_per_step=cpu / max(steps_done, 1),
           wall_s_per_step=(time.monotonic() - wall0) / max(steps_done, 1), threads=torch.get_num_threads())
print(json.dumps(row), flush=True)
with open(a.results, "a") as f:
    f.write(json.dumps(row) + "\n")
