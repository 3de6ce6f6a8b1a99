"""``deepln stability``: train a grid of small models and say how each one fails or learns.

Grid: residual schemes × depths × peak learning rates × warmup ratios, for the GPT (causal LM) and BERT (masked LM)
families, each cell a fresh model trained for the same number of steps with ``transformers.Trainer`` (AdamW, cosine
decay, gradient clipping 1.0) on the embedded corpus, with the per-layer :class:`~.monitor.LayerMonitor` attached.
A scheme is a ``residual_norm`` name, optionally with a post-norm form: ``foundation_ln:alpha_plus_ln`` is
FoundationLayerNorm read as the author's module ``α·s + LN(s)`` (``ShenDezhou/DeepLayerNorm``).

Each cell ends in one failure mode (:func:`classify`), with the step it showed:

* ``diverged``: a non-finite training loss (step: the first one), or a final held-out loss above ``ln V + 1`` nats
  (worse than guessing uniformly; step: from where the training loss stayed above that);
* ``learning``: held-out loss at least ``margin`` below the unigram model's (step: first training loss below it);
* ``collapsed``: on the unigram plateau and the last layer's positions are (nearly) identical, mean cosine ≥ 0.95
  (step: the first monitored step at that cosine);
* ``stalled``: not below the unigram loss, positions distinct: on the plateau or still above it (step: the first
  training loss within ``margin`` of the unigram loss; none when it never got there).

The unigram loss is :func:`modeling_deepln.training.metrics.unigram_loss` (the one reference every deepln command
uses): the add-one-smoothed unigram model of the training tokens, special tokens excluded, scored on the same
held-out targets (next tokens for GPT, masked tokens for BERT): what a model that learned only token frequencies
reaches.
Tokenizer and packed blocks are built once per (family, vocabulary, block length) and cached under
``$DEEPLN_CACHE/stability``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from transformers import TrainerCallback

from ..training.metrics import unigram_loss, unigram_special_ids

__all__ = ["GridSettings", "Cell", "GridData", "GridProgress", "prepare_grid_data", "unigram_loss", "classify",
           "train_cell", "run_grid"]

SCHEMES = ("post_ln", "pre_ln", "deepnorm", "upscale_ln", "foundation_ln:ln", "foundation_ln:alpha_plus_ln", "normformer")
"""The default schemes of the grid (``name[:post_norm_form]``). Both FoundationLayerNorm readings name their form, so
the rows keep their meaning whichever form the scheme defaults to."""

PRESETS = {"gpt": "gpt-1k-cpu", "bert": "bert-1k-cpu"}
"""The 1,000-layer CPU preset of each family, whose model and recipe ``GridSettings.from_presets`` trains."""

COLLAPSE_COSINE = 0.95
"""Mean cosine between positions of the last layer at or above which a model counts as collapsed."""


@dataclass
class GridSettings:
    """The grid and the shape of every model in it (defaults: sized for a 2-core CPU, see the README).

    ``progress_every``: print a progress line every that many steps of a run (0: one line per finished run);
    ``heatmaps``: write each run's per-layer monitor heatmaps (``runs/<cell>/monitor_heatmaps.png``)."""

    families: tuple[str, ...] = ("gpt",)
    schemes: tuple[str, ...] = SCHEMES
    depths: tuple[int, ...] = (6, 12)
    lrs: tuple[float, ...] = (2e-3,)
    warmups: tuple[float, ...] = (0.1,)
    block_lr_scales: tuple[str, ...] = ("1",)
    """Learning-rate multipliers of the residual blocks (``"depth"``: 1/√N), as ``deepln pretrain --block-lr-scale``."""
    steps: int = 100
    hidden_size: int = 64
    num_heads: int = 2
    seq_len: int = 64
    batch_size: int = 16
    vocab_size: int = 2048
    eval_blocks: int = 64
    monitor_every: int = 10
    early_steps: int = 10
    margin: float = 0.05
    seed: int = 0
    precision: str = "fp32"
    max_minutes: float | None = None
    progress_every: int = 0
    heatmaps: bool = False
    from_presets: bool = False
    """Build each family's models from its 1,000-layer CPU preset (:data:`PRESETS`: σ/√(2N) output init, the GPT's
    untied head, the BERT's sinusoidal initial positions; the cell's scheme and depth and the grid's width,
    heads, vocabulary and length replace the preset's) and train them with that preset's recipe: its learning
    rate and warmup where ``lrs`` / ``warmups`` are empty, its cosine floor (``min_lr``), masking rate and weight
    decay."""
    min_lr_ratio: float | None = None
    """Floor of the cosine schedule as a fraction of the peak learning rate (unset: 0, or the preset recipe's)."""
    mlm_probability: float | None = None
    """Masking rate of the BERT rows, training and held-out batches (unset: 0.15, or the preset recipe's)."""
    weight_decay: float | None = None
    """AdamW's decoupled weight decay (unset: 0.01, or the preset recipe's)."""


@dataclass(frozen=True)
class Cell:
    family: str
    scheme: str
    depth: int
    lr: float
    warmup: float
    block_lr: str = "1"

    @property
    def name(self) -> str:
        blocks = "" if self.block_lr == "1" else f"-blocks{self.block_lr}"
        return f"{self.family}-{self.scheme.replace(':', '+')}-L{self.depth}-lr{self.lr:g}-w{self.warmup:g}{blocks}"


@dataclass
class GridData:
    """One family's packed blocks, tokenizer, fixed held-out batches and their unigram loss."""

    family: str
    tokenizer: Any
    train_blocks: torch.Tensor
    eval_batches: list[dict[str, torch.Tensor]]
    unigram_loss: float
    extras: dict[str, Any] = field(default_factory=dict)


FINAL_NORM_OPTIONS = {"final_ln": True, "no_final_ln": False}
"""Scheme-name suffixes that force ``final_layer_norm`` (``foundation_ln:alpha_plus_ln:no_final_ln``)."""


def split_scheme(scheme: str) -> dict[str, Any]:
    """``"foundation_ln:alpha_plus_ln"`` -> ``{"residual_norm": "foundation_ln", "post_norm_form": "alpha_plus_ln"}``;
    a further ``:final_ln`` / ``:no_final_ln`` sets ``final_layer_norm`` (default: the scheme's)."""
    from ..model.residual_deepln import POST_NORM_FORMS, RESIDUAL_SCHEMES

    name, *options = scheme.split(":")
    if name not in RESIDUAL_SCHEMES:
        raise ValueError(f"Unknown scheme {name!r} in {scheme!r}; choose from {', '.join(RESIDUAL_SCHEMES)}.")
    fields: dict[str, Any] = {"residual_norm": name}
    for option in options:
        if option in POST_NORM_FORMS and "post_norm_form" not in fields:
            fields["post_norm_form"] = option
        elif option in FINAL_NORM_OPTIONS and "final_layer_norm" not in fields:
            fields["final_layer_norm"] = FINAL_NORM_OPTIONS[option]
        else:
            raise ValueError(
                f"Unknown option {option!r} in {scheme!r}: after the scheme name give a post-norm form "
                f"({', '.join(POST_NORM_FORMS)}) and/or {' or '.join(FINAL_NORM_OPTIONS)}, each at most once."
            )
    return fields


def _blocks(family: str, settings: GridSettings) -> tuple[Any, torch.Tensor, torch.Tensor]:
    """Tokenizer, train and validation blocks ``[n, seq_len]`` of the embedded corpus (cached)."""
    from datasets import DatasetDict
    from transformers import AutoTokenizer

    from ..training.corpus import cache_dir
    from ..training.data import load_text_data, tokenize_and_group
    from ..training.tokenization import load_or_train_tokenizer

    folder = cache_dir() / "stability" / f"{family}-v{settings.vocab_size}-t{settings.seq_len}"
    if (folder / "blocks.pt").is_file():
        blocks = torch.load(folder / "blocks.pt")
        return AutoTokenizer.from_pretrained(str(folder)), blocks["train"], blocks["validation"]
    print(f"[deepln] stability: building the {family} tokenizer and {settings.seq_len}-token blocks", flush=True)
    raw = load_text_data(None, validation_fraction=0.05, seed=0)
    tokenizer = load_or_train_tokenizer(None, family, raw["train"]["text"], vocab_size=settings.vocab_size,
                                        model_max_length=settings.seq_len)  # fmt: skip
    grouped = tokenize_and_group(DatasetDict(raw), tokenizer, block_size=settings.seq_len, family=family)
    blocks = {split: torch.tensor(grouped[split]["input_ids"], dtype=torch.long) for split in ("train", "validation")}
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer.save_pretrained(str(folder))
    torch.save(blocks, folder / "blocks.pt")
    return tokenizer, blocks["train"], blocks["validation"]


def collator(family: str, tokenizer: Any, mlm_probability: float = 0.15):
    """GPT: ``labels = input_ids`` (the model shifts); BERT: transformers' MLM masking (80/10/10 of the masked)."""
    from transformers import DataCollatorForLanguageModeling

    if family == "bert":
        return DataCollatorForLanguageModeling(tokenizer, mlm=True, mlm_probability=mlm_probability)

    def causal(features: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        ids = torch.stack([f["input_ids"] for f in features])
        return {"input_ids": ids, "labels": ids.clone()}

    return causal


def prepare_grid_data(family: str, settings: GridSettings) -> GridData:
    """Blocks, tokenizer, fixed held-out batches (masking drawn once, seeded) and their unigram loss."""
    tokenizer, train, validation = _blocks(family, settings)
    validation = validation[: settings.eval_blocks]
    collate = collator(family, tokenizer, family_recipe(family, settings)["mlm_probability"])
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(settings.seed)
    batches = [collate([{"input_ids": row} for row in validation[i : i + settings.batch_size]])
               for i in range(0, len(validation), settings.batch_size)]  # fmt: skip
    torch.random.set_rng_state(generator_state)
    batches = [{key: batch[key] for key in ("input_ids", "labels")} for batch in batches]
    if family == "gpt":
        targets = torch.cat([batch["labels"][:, 1:] for batch in batches])
    else:
        targets = torch.cat([batch["labels"] for batch in batches])
    special = unigram_special_ids(tokenizer, family)
    return GridData(family, tokenizer, train, batches, unigram_loss(train, targets, settings.vocab_size, special))


class _Blocks(torch.utils.data.Dataset):
    def __init__(self, blocks: torch.Tensor):
        self.blocks = blocks

    def __len__(self) -> int:
        return len(self.blocks)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {"input_ids": self.blocks[index]}


def family_recipe(family: str, settings: GridSettings) -> dict[str, Any]:
    """The training settings of one family's rows: the grid's defaults, under ``settings.from_presets`` the
    family's preset recipe, and over both whatever ``settings`` sets (``lrs``/``warmups`` when not empty, the
    other fields when not ``None``).

    Returns ``{"lrs", "warmups", "min_lr_ratio", "mlm_probability", "weight_decay"}``."""
    values: dict[str, Any] = {"lrs": (), "warmups": (), "min_lr_ratio": 0.0, "mlm_probability": 0.15,
                              "weight_decay": 0.01}  # fmt: skip
    if settings.from_presets:
        from ..training.args import load_recipe

        recipe = load_recipe(PRESETS[family])
        values.update(lrs=(recipe["lr"],), warmups=(recipe["warmup_ratio"],),
                      min_lr_ratio=recipe.get("min_lr", 0.0) / recipe["lr"],
                      mlm_probability=recipe.get("mlm_probability", values["mlm_probability"]),
                      weight_decay=recipe.get("weight_decay", values["weight_decay"]))  # fmt: skip
    values.update({key: getattr(settings, key) for key in ("lrs", "warmups") if getattr(settings, key)})
    values.update({key: getattr(settings, key) for key in ("min_lr_ratio", "mlm_probability", "weight_decay")
                   if getattr(settings, key) is not None})  # fmt: skip
    return values


def build_cell_model(cell: Cell, settings: GridSettings, tokenizer: Any) -> torch.nn.Module:
    """A fresh deepln model of the cell's family, scheme and depth: dropout 0, tied embeddings, or
    (``settings.from_presets``) the family's 1,000-layer CPU preset with the cell's scheme, depth and the grid's shape."""
    from ..model import DeepLNBertConfig, DeepLNBertForMaskedLM, DeepLNGPTConfig, DeepLNGPTForCausalLM

    if settings.from_presets:
        from ..presets import load_preset

        config = load_preset(PRESETS[cell.family], vocab_size=settings.vocab_size, hidden_size=settings.hidden_size,
                             num_hidden_layers=cell.depth, num_attention_heads=settings.num_heads,
                             intermediate_size=4 * settings.hidden_size, max_position_embeddings=settings.seq_len,
                             pad_token_id=tokenizer.pad_token_id or 0, **split_scheme(cell.scheme))  # fmt: skip
        if cell.family == "gpt":
            config.bos_token_id = config.eos_token_id = tokenizer.eos_token_id or 0
        torch.manual_seed(settings.seed)
        return (DeepLNBertForMaskedLM if cell.family == "bert" else DeepLNGPTForCausalLM)(config)
    shape = dict(vocab_size=settings.vocab_size, hidden_size=settings.hidden_size, num_hidden_layers=cell.depth,
                 num_attention_heads=settings.num_heads, intermediate_size=4 * settings.hidden_size,
                 max_position_embeddings=settings.seq_len, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
                 pad_token_id=tokenizer.pad_token_id or 0, **split_scheme(cell.scheme))  # fmt: skip
    torch.manual_seed(settings.seed)
    if cell.family == "bert":
        return DeepLNBertForMaskedLM(DeepLNBertConfig(**shape))
    special = tokenizer.eos_token_id or 0
    return DeepLNGPTForCausalLM(DeepLNGPTConfig(bos_token_id=special, eos_token_id=special, **shape))


class LossWatch(TrainerCallback):
    """Keeps every logged training loss; stops the run at the first non-finite one."""

    def __init__(self):
        self.losses: list[tuple[int, float]] = []
        self.non_finite_step: int | None = None

    def on_log(self, args, state, control, logs=None, **kwargs):
        loss = (logs or {}).get("loss")
        if loss is None:
            return control
        self.losses.append((state.global_step, float(loss)))
        if not math.isfinite(loss) and self.non_finite_step is None:
            self.non_finite_step = state.global_step
            control.should_training_stop = True
        return control


class GridProgress(TrainerCallback):
    """A line every ``every`` steps of a run: step, mean training loss since the last line against the unigram loss,
    seconds per training step, and the time left for the whole grid (the grid's seconds so far, model building and
    evaluation included, per step run, times the steps left; runs that stop early, e.g. on a non-finite loss,
    shorten it).

    ``total_steps`` is the grid's planned number of steps; call :meth:`start_run` / :meth:`finish_run` around each run.
    """

    def __init__(self, every: int, total_steps: int):
        self.every, self.total_steps = every, total_steps
        self.steps_run, self.steps_accounted, self.seconds = 0, 0, 0.0
        self.label, self.unigram, self._losses, self._step, self._start = "", float("nan"), [], 0, time.monotonic()
        self._train_start = self._start

    def start_run(self, label: str, unigram: float) -> None:
        self.label, self.unigram, self._losses, self._step, self._start = label, unigram, [], 0, time.monotonic()
        self._train_start = self._start

    def finish_run(self, planned_steps: int) -> None:
        self.steps_run += self._step
        self.steps_accounted += planned_steps
        self.seconds += time.monotonic() - self._start
        self._step = 0

    def seconds_left(self) -> float:
        seconds = self.seconds + time.monotonic() - self._start if self._step else self.seconds
        steps = self.steps_run + self._step
        return seconds / steps * (self.total_steps - self.steps_accounted - self._step) if steps else float("nan")

    def on_train_begin(self, args, state, control, **kwargs):
        self._train_start = time.monotonic()  # seconds per step leave out building the model

    def on_log(self, args, state, control, logs=None, **kwargs):
        loss = (logs or {}).get("loss")
        if loss is None:
            return
        self._losses.append(float(loss))
        self._step = state.global_step
        if self.every and (self._step % self.every == 0 or self._step == state.max_steps):
            mean = sum(self._losses) / len(self._losses)
            rate = (time.monotonic() - self._train_start) / self._step
            print(f"[deepln]   {self.label} step {self._step}/{state.max_steps}: loss {mean:.3f} (unigram "
                  f"{self.unigram:.3f}), {rate:.2f} s/step; grid {format_duration(self.seconds_left())} left",
                  flush=True)  # fmt: skip
            self._losses = []


def format_duration(seconds: float) -> str:
    """``"1 h 05 min"``, ``"12 min"``, ``"40 s"`` (``"?"`` when unknown)."""
    if not math.isfinite(seconds):
        return "?"
    if seconds >= 3600:
        return f"{int(seconds // 3600)} h {int(seconds % 3600 // 60):02d} min"
    return f"{seconds / 60:.0f} min" if seconds >= 60 else f"{seconds:.0f} s"


def classify(
    losses: list[tuple[int, float]],
    eval_loss: float,
    unigram: float,
    cosine: float,
    cosine_steps: list[tuple[int, float]],
    vocab_size: int,
    margin: float = 0.05,
) -> tuple[str, int | None]:
    """The failure mode of one run and the step that showed it (see the module docstring for the rules).

    ``losses``: ``(step, training loss)``; ``cosine``: the last layer's mean position cosine on held-out data;
    ``cosine_steps``: ``(step, last-layer cosine)`` from the monitor.
    """
    bad = next((step for step, loss in losses if not math.isfinite(loss)), None)
    if bad is not None:
        return "diverged", bad
    threshold = math.log(vocab_size) + 1.0
    if not math.isfinite(eval_loss) or eval_loss > threshold:
        above = None
        for step, loss in losses:
            above = (above or step) if loss > threshold else None
        return "diverged", above
    smoothed = _running_mean(losses, 5)
    if eval_loss < unigram - margin:
        return "learning", next((step for step, loss in smoothed if loss < unigram - margin), None)
    if cosine >= COLLAPSE_COSINE:
        return "collapsed", next((step for step, value in cosine_steps if value >= COLLAPSE_COSINE), None)
    return "stalled", next((step for step, loss in smoothed if loss <= unigram + margin), None)


def _running_mean(points: list[tuple[int, float]], window: int) -> list[tuple[int, float]]:
    values = [loss for _, loss in points]
    return [(step, sum(values[max(0, i - window + 1) : i + 1]) / min(i + 1, window))
            for i, (step, _) in enumerate(points)]  # fmt: skip


@torch.no_grad()
def evaluate_cell(model: torch.nn.Module, data: GridData) -> tuple[float, float]:
    """Held-out loss (token-weighted over the fixed batches) and the last layer's mean position cosine."""
    from .measures import mean_position_cosine

    model.eval()
    device = next(model.parameters()).device
    total, count, cosines = 0.0, 0, []
    for batch in data.eval_batches:
        batch = {key: value.to(device) for key, value in batch.items()}
        out = model(**batch, output_hidden_states=True)
        labels = batch["labels"][:, 1:] if data.family == "gpt" else batch["labels"]
        tokens = int((labels != -100).sum())
        total += float(out.loss) * tokens
        count += tokens
        cosines.append(float(mean_position_cosine(out.hidden_states[-1])))
    return total / max(count, 1), sum(cosines) / max(len(cosines), 1)


def _training_arguments(cell: Cell, settings: GridSettings, output_dir: Path):
    from transformers import TrainingArguments

    on_gpu = torch.cuda.is_available()
    recipe = family_recipe(cell.family, settings)
    return TrainingArguments(
        output_dir=str(output_dir), max_steps=settings.steps, per_device_train_batch_size=settings.batch_size,
        learning_rate=cell.lr, warmup_steps=int(round(cell.warmup * settings.steps)),
        **_schedule(recipe["min_lr_ratio"]), weight_decay=recipe["weight_decay"], max_grad_norm=1.0,
        logging_steps=1, logging_nan_inf_filter=False, save_strategy="no", eval_strategy="no", report_to="none",
        disable_tqdm=True, seed=settings.seed, use_cpu=not on_gpu, bf16=on_gpu and settings.precision == "bf16", dataloader_drop_last=True,
    )  # fmt: skip


def _schedule(min_lr_ratio: float) -> dict[str, Any]:
    """Cosine decay to 0, or to ``min_lr_ratio`` × the peak (transformers' ``cosine_with_min_lr``)."""
    if min_lr_ratio <= 0:
        return {"lr_scheduler_type": "cosine"}
    return {"lr_scheduler_type": "cosine_with_min_lr", "lr_scheduler_kwargs": {"min_lr_rate": min_lr_ratio}}


def train_cell(
    cell: Cell, data: GridData, settings: GridSettings, output_dir: Path, progress: GridProgress | None = None
) -> dict[str, Any]:
    """Train one cell with ``Trainer`` + :class:`LayerMonitor`; return its table row (and the monitor records)."""
    from transformers import PrinterCallback
    from transformers.utils import logging as hf_logging

    from ..training.depth_lr import BlockLRTrainer, block_lr_multiplier
    from .monitor import LayerMonitor

    start, cpu_start = time.monotonic(), time.process_time()
    model = build_cell_model(cell, settings, data.tokenizer)
    monitor = LayerMonitor(every=settings.monitor_every, first_steps=settings.early_steps,
                           output_dir=str(output_dir / cell.name), tensorboard=False, plots=settings.heatmaps)  # fmt: skip
    watch = LossWatch()
    callbacks = [monitor, watch] + ([progress] if progress is not None else [])
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        trainer = BlockLRTrainer(model=model, args=_training_arguments(cell, settings, output_dir / cell.name),
                                 block_lr_multiplier=block_lr_multiplier(cell.block_lr, cell.depth),
                                 train_dataset=_Blocks(data.train_blocks),
                                 data_collator=collator(cell.family, data.tokenizer,
                                                         family_recipe(cell.family, settings)["mlm_probability"]),
                                 callbacks=callbacks)  # fmt: skip
        trainer.remove_callback(PrinterCallback)  # the table's progress line replaces per-step log dicts
        trainer.train()
    finally:
        hf_logging.set_verbosity(verbosity)
    eval_loss, cosine = evaluate_cell(model, data) if watch.non_finite_step is None else (float("nan"), float("nan"))
    last = [g for g, sub in enumerate(monitor.sublayers) if sub.layer == cell.depth - 1 and sub.kind == "ffn"][0]
    cosine_steps = [(r["step"], r["values"]["position_cosine"][last]) for r in monitor.records]
    mode, step = classify(watch.losses, eval_loss, data.unigram_loss, cosine, cosine_steps, settings.vocab_size,
                          settings.margin)  # fmt: skip
    first, final = early_update(monitor, 0, settings.early_steps), early_update(monitor, cell.depth - 1, settings.early_steps)
    return {
        "family": cell.family, "scheme": cell.scheme, "depth": cell.depth, "lr": cell.lr, "warmup": cell.warmup,
        "block_lr": cell.block_lr,
        "steps": settings.steps, "eval_loss": eval_loss, "unigram_loss": data.unigram_loss,
        "gap": eval_loss - data.unigram_loss, "cosine": cosine, "mode": mode, "mode_step": step,
        "update_first": first, "update_last": final, "seconds": time.monotonic() - start,
        "cpu_seconds": time.process_time() - cpu_start,
        "_early": early_update_profile(monitor, settings.early_steps),
        "_monitor": {"records": monitor.records, "sublayers": monitor.sublayers},
    }  # fmt: skip


def early_update(monitor: Any, layer: int, early_steps: int) -> float:
    """Mean ``‖ΔW‖/‖W‖`` of one layer (both sublayers) over the monitored steps ``≤ early_steps``."""
    groups = [g for g, sub in enumerate(monitor.sublayers) if sub.layer == layer]
    values = [r["values"]["relative_update"][g] for r in monitor.records if r["step"] <= max(early_steps, 1) for g in groups]
    return sum(values) / len(values) if values else float("nan")


def early_update_profile(monitor: Any, early_steps: int) -> dict[str, Any]:
    """``{"steps": [...], "updates": [[per-layer mean update] per early step]}`` for the update plot."""
    layers = max(sub.layer for sub in monitor.sublayers) + 1
    records = [r for r in monitor.records if r["step"] <= max(early_steps, 1)]
    updates = []
    for record in records:
        row = record["values"]["relative_update"]
        per_layer = [[] for _ in range(layers)]
        for g, sub in enumerate(monitor.sublayers):
            per_layer[sub.layer].append(row[g])
        updates.append([sum(v) / len(v) for v in per_layer])
    return {"steps": [r["step"] for r in records], "updates": updates}


def grid_cells(settings: GridSettings, family: str) -> list[Cell]:
    """The cells of one family, in table order (scheme, blocks' lr multiplier, depth, lr, warmup)."""
    recipe = family_recipe(family, settings)
    return [Cell(family, scheme, depth, lr, warmup, block_lr) for scheme in settings.schemes
            for block_lr in settings.block_lr_scales for depth in settings.depths for lr in recipe["lrs"]
            for warmup in recipe["warmups"]]  # fmt: skip


def run_grid(
    settings: GridSettings, output_dir: str | Path, on_row: Callable[[list[dict[str, Any]]], None] | None = None
) -> list[dict[str, Any]]:
    """Train every cell (a progress line each, and every ``settings.progress_every`` steps) and return the rows;
    stops early past ``settings.max_minutes``. ``on_row(rows)`` runs after each cell (e.g. to write the table so
    far, so that a grid stopped midway keeps its finished rows)."""
    output_dir = Path(output_dir)
    rows: list[dict[str, Any]] = []
    start = time.monotonic()
    cells = {family: grid_cells(settings, family) for family in settings.families}
    total = sum(len(family_cells) for family_cells in cells.values())
    progress = GridProgress(settings.progress_every, total * settings.steps)
    for family in settings.families:
        data = prepare_grid_data(family, settings)
        print(f"[deepln] stability: {family.upper()} unigram loss {data.unigram_loss:.3f} nats on "
              f"{sum(len(b['input_ids']) for b in data.eval_batches)} held-out blocks", flush=True)  # fmt: skip
        for cell in cells[family]:
            if settings.max_minutes and time.monotonic() - start > 60 * settings.max_minutes:
                print(f"[deepln] stability: time budget of {settings.max_minutes:g} min spent; skipping {cell.name}")
                progress.finish_run(settings.steps)
                continue
            progress.start_run(cell.name, data.unigram_loss)
            row = train_cell(cell, data, settings, output_dir / "runs", progress)
            progress.finish_run(settings.steps)
            rows.append(row)
            if on_row is not None:
                on_row(rows)
            print(f"[deepln] {cell.name:<46} loss {row['eval_loss']:.3f} (unigram {row['unigram_loss']:.3f}) "
                  f"cos {row['cosine']:.2f} {row['mode']:<9} step {row['mode_step']}  {row['seconds']:.1f} s; "
                  f"{len(rows)}/{total} runs, {format_duration(progress.seconds_left())} left", flush=True)  # fmt: skip
    return rows
