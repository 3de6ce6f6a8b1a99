"""The masked-LM recipe study behind the BERT main job (issue 9; README, "The BERT main job").

Trains ``bert-deep-small``-shaped models (hidden 64, 2 heads, FFN 256, vocabulary 8,192) on the embedded corpus
through deepln's own data path (``plan_pretrain`` + ``prepare_lm_data``, cached under ``--cache``), in a plain
PyTorch loop (AdamW, weight decay 0.01 on matrices, cosine to 1e-4, clipping 1.0, the MLM head on masked positions
only), and scores the held-out masked-token loss on 128 blocks masked once at 15 % against the unigram model of the
maskable tokens. The base model is the preset *before* the study (FoundationLayerNorm ``α·s + LN(s)``, normal
position init); ``--config`` overrides config fields, e.g. ``'{"residual_norm": "pre_ln",
"position_embedding_init": "sinusoidal"}'`` (the study's ``--pos-scale 0.02`` rows are that sinusoidal init).
``--hf`` trains transformers' own ``BertForMaskedLM`` of the same shape instead; ``--diag`` prints per-step gradient
and residual-stream norms (how ``α·s + LN(s)`` diverges). One row per run is appended to ``--results``.

    NT=1 python scripts/mlm_recipe_study.py --name l4p_sin --layers 4 --mask 0.4 --dropout 0 \
        --config '{"residual_norm": "pre_ln", "position_embedding_init": "sinusoidal"}'
"""
import argparse, json, math, time, sys
from pathlib import Path
import torch
import os; torch.set_num_threads(int(os.environ.get("NT", "2")))
from transformers import AutoModelForMaskedLM, DataCollatorForLanguageModeling, set_seed, get_cosine_with_min_lr_schedule_with_warmup
import modeling_deepln
from modeling_deepln import load_preset
from modeling_deepln.training import PretrainArgs
from modeling_deepln.training.pretraining import plan_pretrain, prepare_lm_data
from modeling_deepln.training.metrics import masked_unigram_perplexity

p = argparse.ArgumentParser()
p.add_argument("--name", required=True)
p.add_argument("--layers", type=int, default=48)
p.add_argument("--steps", type=int, default=300)
p.add_argument("--lr", type=float, default=2e-3)
p.add_argument("--warmup", type=float, default=0.1)
p.add_argument("--mask", type=float, default=0.15)
p.add_argument("--dropout", type=float, default=0.1)
p.add_argument("--batch", type=int, default=16)
p.add_argument("--seq", type=int, default=128)
p.add_argument("--beta2", type=float, default=0.999)
p.add_argument("--wd", type=float, default=0.01)
p.add_argument("--config", default="{}")
p.add_argument("--pos-scale", type=float, default=0.0)
p.add_argument("--pos-freeze", action="store_true")
p.add_argument("--save", default=None)
p.add_argument("--all-mask", action="store_true")
p.add_argument("--chunk", type=int, default=0)
p.add_argument("--seed", type=int, default=0)
p.add_argument("--hf", action="store_true")
p.add_argument("--diag", action="store_true")
p.add_argument("--minutes", type=float, default=1e9)
p.add_argument("--cache", default="runs/mlm-recipe-study-cache")
p.add_argument("--results", default=str(Path(__file__).resolve().parents[1] / "docs" / "mlm-recipe-study.jsonl"))
a = p.parse_args()

cache = Path(a.cache)
run = plan_pretrain(PretrainArgs(preset="bert-deep-small", output_dir=str(cache), max_eval_samples=128, report_to="none"))
prepare_lm_data(run)
tok = run.tokenizer
train_ds, eval_ds = run.train_dataset, run.eval_dataset
if a.chunk:
    from datasets import Dataset
    def split(ds):
        return Dataset.from_dict({"input_ids": [r[i:i + a.chunk] for r in ds["input_ids"] for i in range(0, len(r), a.chunk)]})
    train_ds, eval_ds = split(train_ds), split(eval_ds)
over = json.loads(a.config)
base = dict(residual_norm="foundation_ln", post_norm_form="alpha_plus_ln", position_embedding_init="normal")
if "residual_norm" in over and "post_norm_form" not in over:
    base.pop("post_norm_form")
config = load_preset("bert-deep-small", num_hidden_layers=a.layers, hidden_dropout_prob=a.dropout,
                     attention_probs_dropout_prob=a.dropout, **{**base, **over})
set_seed(a.seed)
model = AutoModelForMaskedLM.from_config(config)
model.sparse_mlm_loss = True
if a.hf:
    from transformers import BertConfig, BertForMaskedLM
    c = config
    model = BertForMaskedLM(BertConfig(vocab_size=c.vocab_size, hidden_size=c.hidden_size, num_hidden_layers=c.num_hidden_layers,
        num_attention_heads=c.num_attention_heads, intermediate_size=c.intermediate_size, max_position_embeddings=c.max_position_embeddings,
        hidden_dropout_prob=a.dropout, attention_probs_dropout_prob=a.dropout, layer_norm_eps=c.layer_norm_eps, pad_token_id=0))
if a.pos_scale:
    pe = model.bert.embeddings.position_embeddings.weight
    n, d = pe.shape
    pos = torch.arange(n).float()[:, None]
    div = torch.exp(torch.arange(0, d, 2).float() * (-math.log(10000.0) / d))
    with torch.no_grad():
        pe[:, 0::2] = torch.sin(pos * div) * a.pos_scale
        pe[:, 1::2] = torch.cos(pos * div) * a.pos_scale
    if a.pos_freeze: pe.requires_grad_(False)
coll = DataCollatorForLanguageModeling(tok, mlm_probability=a.mask, **({"mask_replace_prob": 1.0, "random_replace_prob": 0.0} if a.all_mask else {}))
special = tok.all_special_ids
uni = math.log(masked_unigram_perplexity(train_ds["input_ids"], eval_ds["input_ids"], config.vocab_size, special))
# fixed eval masks at 15%
g = torch.Generator().manual_seed(123)
eval_coll = DataCollatorForLanguageModeling(tok, mlm_probability=0.15)
torch.manual_seed(123)
eval_batches = [eval_coll([{"input_ids": x} for x in eval_ds[i:i+32]["input_ids"]]) for i in range(0, len(eval_ds), 32)]

@torch.no_grad()
def evaluate():
    model.eval()
    tot, n, correct = 0.0, 0, 0
    for b in eval_batches:
        out = model(input_ids=b["input_ids"], labels=b["labels"])
        m = b["labels"] != -100
        k = int(m.sum()); tot += float(out.loss) * k; n += k
        correct += int((out.logits.argmax(-1)[m] == b["labels"][m]).sum())
    model.train()
    return tot / n, correct / n

decay = [p_ for n_, p_ in model.named_parameters() if p_.ndim >= 2 and p_.requires_grad]
nodecay = [p_ for n_, p_ in model.named_parameters() if p_.ndim < 2]
opt = torch.optim.AdamW([{"params": decay, "weight_decay": a.wd}, {"params": nodecay, "weight_decay": 0.0}], lr=a.lr, betas=(0.9, a.beta2))
sched = get_cosine_with_min_lr_schedule_with_warmup(opt, round(a.warmup * a.steps), a.steps, min_lr=1e-4)
l0, acc0 = evaluate()
order = torch.randperm(len(train_ds), generator=torch.Generator().manual_seed(a.seed))
ids_all = train_ds["input_ids"]
start = time.monotonic(); step = 0; pos = 0; curve = []
while step < a.steps and time.monotonic() - start < a.minutes * 60:
    idx = order[pos:pos + a.batch].tolist(); pos += a.batch
    if pos >= len(order): pos = 0
    b = coll([{"input_ids": ids_all[i][:a.seq]} for i in idx])
    out = model(input_ids=b["input_ids"], labels=b["labels"], output_hidden_states=a.diag)
    out.loss.backward()
    gn = torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    if a.diag:
        hs = out.hidden_states
        norms = [float(h.detach().norm(dim=-1).mean()) for h in hs]
        mx = [float(h.detach().abs().max()) for h in hs]
        print(f"diag step {step} loss {float(out.loss):.3f} gnorm {float(gn):.3g} stream_norm first {norms[1]:.1f} mid {norms[len(norms)//2]:.1f} last {norms[-1]:.1f} maxabs {max(mx):.3g} at layer {mx.index(max(mx))}", flush=True)
        if not torch.isfinite(out.loss) or not torch.isfinite(gn): break
    opt.step(); sched.step(); opt.zero_grad(set_to_none=True); step += 1
    curve.append(float(out.loss))
    if step % 50 == 0:
        print(f"{a.name} step {step} train {sum(curve[-50:])/50:.3f} {time.monotonic()-start:.0f}s", flush=True)
secs = time.monotonic() - start
l, acc = evaluate()
row = dict(name=a.name, layers=a.layers, steps=step, lr=a.lr, warmup=a.warmup, mask=a.mask, dropout=a.dropout, batch=a.batch, seq=a.seq,
           config=over, hf=a.hf, chunk=a.chunk, seed=a.seed, all_mask=a.all_mask, beta2=a.beta2, pos_scale=a.pos_scale, pos_freeze=a.pos_freeze, loss_init=l0, loss=l, unigram=uni, gap=uni - l, acc=acc, secs=secs, s_per_step=secs / max(step, 1))
print(json.dumps(row), flush=True)
if a.save:
    model.save_pretrained(a.save); tok.save_pretrained(a.save)
with open(a.results, "a") as f: f.write(json.dumps(row) + "\n")
