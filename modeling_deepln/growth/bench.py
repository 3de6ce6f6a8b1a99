"""``deepln grow-bench``: time to target masked-LM losses, CompoundGrow against the full model from the start.

Every arm trains the same BERT (same data, seed, recipe, number of steps and training heads: the MLM head on the
masked positions only, ``sparse_mlm_loss``, which growth carries over to every stage) on the embedded English corpus
with the masked-LM recipe of ``bert-deep-small`` (60 % masking, no dropout, sinusoidal initial positions, AdamW lr
2e-3, 10 % warmup, cosine to 1e-4), the recipe with which the model learns more than the token frequencies. Arms:

* ``full``: the full model from the start, one learning-rate schedule;
* ``grow``: the growth schedule (default ``compound``: the paper's §4 as fractions of the run) with the learning-rate
  schedule restarted at each stage, as the authors' code does (``grow_bert``);
* ``grow-continue`` (``--arms full,grow,grow-continue``): the same growth with one schedule through all stages
  (deepln's earlier choice), to measure what the restart does.

Both growth arms carry the Adam moments over to the grown parameters: that is deepln's choice; the authors build a
fresh optimizer at each stage. Every ``eval_every`` steps each arm is evaluated on the same held-out blocks with a
*fixed* masking (15 %, masked once with the run's seed), and the training wall and CPU time so far (evaluation
excluded) are recorded.

* Targets: ``target_margins`` nats below the unigram loss of the same masked targets (a model that learned the
  token frequencies and nothing of the context), so a target is reached only by using the context.
* Time to target: the training time at which an arm's evaluation loss first reaches the target (linear
  interpolation between evaluations); for a growth arm only once it has its full shape.
* Speedup: ``time_full / time_grow - 1``, the paper's definition (the paper's Table 2: +73.6 % BERT-base, +82.2 %
  BERT-large wall time, on TPUs at 1M steps).

Prints a table and writes ``grow_bench.json`` and ``grow_bench.png`` (evaluation loss against training CPU time). The
arms run one after the other in one process: on a shared machine compare the CPU-time ratios, not wall times.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import TrainerCallback
from transformers.trainer_callback import PrinterCallback

from ..training.metrics import unigram_loss, unigram_special_ids

__all__ = ["GrowBenchArgs", "grow_bench", "time_to_target", "PAPER_SPEEDUP"]

PAPER_SPEEDUP = {"BERT-base": 0.736, "BERT-large": 0.822}
"""CompoundGrow's wall-time speedup over the full model, the paper's Table 2."""


@dataclass
class GrowBenchArgs:
    """Arguments of :func:`grow_bench` (defaults: about 2.5 CPU minutes, one thread)."""

    steps: int = 400
    """Optimizer steps of each run."""
    schedule: str = "compound"
    """Growth schedule (``deepln pretrain --grow`` syntax)."""
    num_layers: int = 8
    """Depth of the full model."""
    hidden_size: int = 64
    """Width of the model."""
    num_heads: int = 2
    """Attention heads."""
    intermediate_size: int = 256
    """FFN size of the full model."""
    vocab_size: int = 4096
    """Vocabulary of the tokenizer trained on the corpus."""
    residual_norm: str | None = "upscale_ln"
    """Residual scheme (default: Upscale LN, the FoundationLayerNorm paper's BERT scheme)."""
    seq_len: int = 64
    """Tokens per block."""
    batch_size: int = 16
    """Blocks per step."""
    lr: float | None = None
    """Peak learning rate (default: the ``bert-deep-small`` recipe's, 2e-3, with its warmup and cosine decay)."""
    target_margins: str = "0.1,0.2,0.3"
    """Targets, in nats below the unigram loss of the held-out masked targets (comma-separated)."""
    arms: str = "full,grow"
    """Arms to run (``full``, ``grow``: LR schedule restarted per stage, ``grow-continue``: one LR schedule)."""
    eval_every: int = 25
    """Evaluate every this many steps."""
    eval_samples: int = 64
    """Held-out blocks per evaluation."""
    output_dir: str = "runs/grow-bench"
    """Folder for the cached data, grow_bench.json and grow_bench.png."""
    seed: int = 42
    """Seed of both runs."""


def _clocks() -> tuple[float, float]:
    return time.perf_counter(), time.process_time()


class WallClockEval(TrainerCallback):
    """Records training wall seconds, this process's CPU seconds (robust to other load on a shared machine), step,
    ``eval_loss`` and whether the model has its full shape, at every evaluation; evaluation time excluded."""

    def __init__(self, full_depth: int, full_ffn: int):
        self.full = (full_depth, full_ffn)
        self.points: list[dict[str, Any]] = []
        self.excluded = (0.0, 0.0)

    def on_train_begin(self, args, state, control, **kwargs):
        self.start = self.last_step_end = _clocks()

    def on_step_end(self, args, state, control, **kwargs):
        self.last_step_end = _clocks()

    def on_evaluate(self, args, state, control, metrics=None, model=None, **kwargs):
        from .pooling import pool_size

        now = _clocks()
        wall, cpu = (self.last_step_end[i] - self.start[i] - self.excluded[i] for i in (0, 1))
        self.excluded = tuple(self.excluded[i] + now[i] - self.last_step_end[i] for i in (0, 1))
        self.last_step_end = now
        full = (model.config.num_hidden_layers, model.config.intermediate_size) == self.full and pool_size(model) == 1
        self.points.append(dict(seconds=wall, cpu=cpu, step=state.global_step, loss=metrics["eval_loss"], full=full))


def time_to_target(points: list[dict[str, Any]], target: float, clock: str = "seconds") -> float | None:
    """First training time (``clock``: ``seconds`` wall or ``cpu``) at which the full-shape evaluation loss reaches
    ``target``, interpolated linearly between evaluations."""
    previous = None
    for point in points:
        if not point["full"]:
            continue
        if point["loss"] <= target:
            if previous is None or previous["loss"] <= target:
                return point[clock]
            share = (previous["loss"] - target) / (previous["loss"] - point["loss"])
            return previous[clock] + share * (point[clock] - previous[clock])
        previous = point
    return None


def _pretrain_args(b: GrowBenchArgs, name: str, grow: str | None):
    from ..training.args import PretrainArgs

    return PretrainArgs(
        preset="bert-deep-small", residual_norm=b.residual_norm, num_layers=b.num_layers, hidden_size=b.hidden_size,
        num_heads=b.num_heads, intermediate_size=b.intermediate_size, vocab_size=b.vocab_size, seq_len=b.seq_len,
        batch_size=b.batch_size, grad_accum=1, max_steps=b.steps, lr=b.lr, eval_mlm_probability=0.15,
        eval_steps=b.eval_every, save_steps=10 * b.steps, max_eval_samples=b.eval_samples,
        output_dir=str(Path(b.output_dir) / name), overwrite=True, report_to="none", disable_tqdm=True, seed=b.seed,
        num_samples=0, max_minutes=1e9, grow=grow, use_cpu=True, nan_policy="stop",  # no recipe time limit
    )  # fmt: skip


def _masked_eval_labels(run) -> torch.Tensor:
    """The labels of the held-out blocks, which ``build_lm_trainer`` masked once with a fixed seed."""
    return torch.tensor(run.trainer.eval_dataset["labels"])


ARMS = {"full": (False, None), "grow": (True, True), "grow-continue": (True, False)}
"""Arm name -> (grows, restarts the learning-rate schedule per stage)."""


def _train(b: GrowBenchArgs, name: str, data: tuple | None) -> dict[str, Any]:
    from ..training import pretraining as steps
    from .pretrain_growth import attach_growth

    grows, restart = ARMS[name]
    run = steps.plan_pretrain(_pretrain_args(b, name, b.schedule if grows else None))
    if data is None:
        steps.prepare_lm_data(run)
    else:
        run.tokenizer, run.train_dataset, run.eval_dataset = data
    steps.build_lm_model(run)
    full = (run.config.num_hidden_layers, run.config.intermediate_size)
    if grows:
        attach_growth(run, restart_lr_schedule=restart)
    clock = WallClockEval(*full)
    run.extra_callbacks.append(clock)
    steps.build_lm_trainer(run)
    run.trainer.remove_callback(PrinterCallback)  # the table is the output, not one dict per log
    labels = _masked_eval_labels(run)
    print(f"[grow-bench] training {name} ({b.steps} steps)", flush=True)
    run.trainer.train()
    config = run.model.config
    train_ids = run.train_dataset.with_format("numpy")["input_ids"]
    return {
        "points": clock.points,
        "shape": f"{config.num_hidden_layers} layers, FFN {config.intermediate_size}",
        "sparse_mlm_loss": bool(getattr(run.model, "sparse_mlm_loss", False)),
        "unigram": unigram_loss(train_ids, labels, run.config.vocab_size, unigram_special_ids(run.tokenizer, "bert")),
        "data": (run.tokenizer, run.train_dataset, run.eval_dataset),
    }


def grow_bench(b: GrowBenchArgs | None = None) -> dict[str, Any]:
    """Run every arm, print the table, write ``grow_bench.json`` and ``grow_bench.png``; return the results."""
    b = b or GrowBenchArgs()
    torch.set_num_threads(1)
    names = [name.strip() for name in b.arms.split(",") if name.strip()]
    unknown = [name for name in names if name not in ARMS]
    if unknown or "full" not in names:
        raise ValueError(f"--arms must include 'full' and name only {sorted(ARMS)}, got {b.arms!r}.")
    data, arms = None, {}
    for name in ["full"] + [n for n in names if n != "full"]:
        arms[name] = _train(b, name, data)
        data = arms[name].pop("data")
    unigram = arms["full"]["unigram"]
    margins = [float(m) for m in b.target_margins.split(",")]
    results = {"args": asdict(b), "unigram_loss": unigram, "targets": [unigram - m for m in margins]}
    results.update(paper_speedup=PAPER_SPEEDUP, arms=list(arms))
    for name, arm in arms.items():
        arm.pop("unigram")
        arm["time_to_target"] = [time_to_target(arm["points"], t, "seconds") for t in results["targets"]]
        arm["cpu_to_target"] = [time_to_target(arm["points"], t, "cpu") for t in results["targets"]]
        results[name] = arm
    for name in arms:
        full, mine = results["full"]["cpu_to_target"], results[name]["cpu_to_target"]
        results[name]["cpu_speedup"] = [f / g - 1 if f and g else None for f, g in zip(full, mine)]
    out = Path(b.output_dir)
    (out / "grow_bench.json").write_text(json.dumps(results, indent=1))
    print(format_table(results))
    print(f"[grow-bench] plot: {plot_curves(results, out / 'grow_bench.png')}; numbers: {out / 'grow_bench.json'}")
    return results


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{value:+.1%}"


def _secs(value: float | None) -> str:
    return "not reached" if value is None else f"{value:.1f}"


LABELS = {
    "full": "full model from the start",
    "grow": "CompoundGrow, LR schedule restarted per stage (authors)",
    "grow-continue": "CompoundGrow, one LR schedule",
}


def format_table(results: dict[str, Any]) -> str:
    """The benchmark's Markdown table (CPU seconds to each target, speedup against the full model) and notes."""
    unigram, targets = results["unigram_loss"], results["targets"]
    head = " | ".join(f"CPU s to {t:.3f} ({unigram - t:.2g} below)" for t in targets)
    rows = [
        f"| arm | final shape | train CPU s (wall s) | final eval loss | {head} |",
        "|---|---|---|---|" + "---|" * len(targets),
    ]
    for name in results["arms"]:
        r, last = results[name], results[name]["points"][-1]
        cells = []
        for seconds, speed in zip(r["cpu_to_target"], r["cpu_speedup"]):
            cells.append(_secs(seconds) + ("" if name == "full" or seconds is None else f" ({_pct(speed)})"))
        rows.append(
            f"| {LABELS[name]} | {r['shape']} | {last['cpu']:.1f} ({last['seconds']:.1f}) | {last['loss']:.4f} | "
            + " | ".join(cells) + " |"
        )
    paper = ", ".join(f"Compound-{n.split('-')[1]} {_pct(v)}" for n, v in PAPER_SPEEDUP.items())
    heads = {name: results[name]["sparse_mlm_loss"] for name in results["arms"]}
    notes = (
        f"Unigram loss of the held-out masked targets {unigram:.4f}; targets {', '.join(f'{t:.4f}' for t in targets)}. "
        f"Speedup in parentheses: CPU time to the target of the full model over that of the arm, minus 1 (paper, TPU "
        f"wall time at 1M steps: {paper}). MLM head on masked positions only (sparse_mlm_loss): {heads}. Growth arms "
        "carry the Adam moments over to the grown parameters (deepln's choice; the authors build a fresh optimizer "
        "per stage)."
    )
    return "\n".join(rows) + "\n" + notes


def plot_curves(results: dict[str, Any], path: Path) -> Path:
    """Evaluation loss against training CPU time for every arm, with the targets and the unigram loss."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(7, 4), dpi=110)
    colors = {"full": "tab:blue", "grow": "tab:orange", "grow-continue": "tab:green"}
    for name in results["arms"]:
        points = results[name]["points"]
        axis.plot([p["cpu"] for p in points], [p["loss"] for p in points], "o-", color=colors[name], markersize=3,
                  label=LABELS[name])  # fmt: skip
    for target in results["targets"]:
        axis.axhline(target, color="gray", linestyle="--", linewidth=0.8)
    axis.axhline(results["unigram_loss"], color="black", linestyle=":", linewidth=1, label="unigram (token frequencies)")
    axis.set_xlabel("training CPU time (s, evaluation excluded)")
    axis.set_ylabel("held-out MLM loss (fixed 15 % masking)")
    axis.set_title("CompoundGrow vs the full model (dashed: targets)", fontsize=10)
    axis.set_ylim(top=results["unigram_loss"] + 1.0)
    axis.grid(alpha=0.3)
    axis.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)
    return path
