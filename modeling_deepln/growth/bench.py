"""``deepln grow-bench``: wall time to a target masked-LM loss, CompoundGrow against the full model from the start.

Both runs train the same BERT (same data, seed, optimizer, learning-rate schedule and number of steps) on the embedded
English corpus; the growth run follows a schedule (default ``compound``: seed 002 §4 as fractions of the run). Every
``eval_every`` steps both are evaluated on the same held-out blocks with a *fixed* masking (masked once with seed 0,
so evaluations differ only by the model), and the training wall time so far (evaluation time excluded) is recorded.

* Target loss: the higher of the two final evaluation losses, i.e. a loss both runs reach.
* Time to target: the training wall time at which a run's evaluation loss first reaches the target (linear
  interpolation between evaluations); for the growth run only once it has its full shape (a pooled or shallower
  model is not the model being trained).
* Speedup: ``time_full / time_grow - 1``, the paper's definition (seed 002 Table 2: +73.6 % BERT-base, +82.2 %
  BERT-large wall time, on TPUs at 1M steps).

Prints a table and writes ``grow_bench.json`` and ``grow_bench.png`` (evaluation loss against training wall time).
The full and growth runs are measured one after the other in the same process: on a shared machine, compare their
ratio, not the absolute times.
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
"""CompoundGrow's wall-time speedup over the full model, seed 002 Table 2."""


@dataclass
class GrowBenchArgs:
    """Arguments of :func:`grow_bench` (defaults: about 8 minutes on one busy CPU core)."""

    steps: int = 160
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
    lr: float = 1e-3
    """Peak learning rate (linear warmup 5 %, linear decay)."""
    eval_every: int = 10
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
        batch_size=b.batch_size, grad_accum=1, max_steps=b.steps, lr=b.lr, lr_schedule="linear", warmup_ratio=0.05,
        min_lr=0.0, eval_steps=b.eval_every, save_steps=10 * b.steps, max_eval_samples=b.eval_samples,
        output_dir=str(Path(b.output_dir) / name), overwrite=True, report_to="none", disable_tqdm=True, seed=b.seed,
        num_samples=0, max_minutes=1e9, grow=grow, use_cpu=True,  # no recipe time limit
    )  # fmt: skip


def _masked_eval_labels(run) -> torch.Tensor:
    """The labels of the held-out blocks, which ``build_lm_trainer`` masked once with a fixed seed."""
    return torch.tensor(run.trainer.eval_dataset["labels"])


def _train(b: GrowBenchArgs, name: str, grow: str | None, data: tuple | None) -> tuple[list[dict], tuple, str]:
    from ..training import pretraining as steps
    from .pretrain_growth import attach_growth

    run = steps.plan_pretrain(_pretrain_args(b, name, grow))
    if data is None:
        steps.prepare_lm_data(run)
    else:
        run.tokenizer, run.train_dataset, run.eval_dataset = data
    steps.build_lm_model(run)
    full = (run.config.num_hidden_layers, run.config.intermediate_size)
    if grow:
        attach_growth(run)
    clock = WallClockEval(*full)
    run.extra_callbacks.append(clock)
    steps.build_lm_trainer(run)
    run.trainer.remove_callback(PrinterCallback)  # the table is the output, not one dict per log
    labels = _masked_eval_labels(run)
    print(f"[grow-bench] training {name} ({b.steps} steps)", flush=True)
    run.trainer.train()
    shape = f"{run.model.config.num_hidden_layers} layers, FFN {run.model.config.intermediate_size}"
    unigram = unigram_loss(run.train_dataset.with_format("numpy")["input_ids"], labels, run.config.vocab_size,
                           unigram_special_ids(run.tokenizer, "bert"))  # fmt: skip
    return clock.points, (run.tokenizer, run.train_dataset, run.eval_dataset), shape, unigram


def grow_bench(b: GrowBenchArgs | None = None) -> dict[str, Any]:
    """Run both trainings, print the table, write ``grow_bench.json`` and ``grow_bench.png``; return the results."""
    b = b or GrowBenchArgs()
    torch.set_num_threads(1)
    full_points, data, full_shape, unigram = _train(b, "full", None, None)
    grow_points, _, grow_shape, _ = _train(b, "grow", b.schedule, data)
    target = max(full_points[-1]["loss"], grow_points[-1]["loss"])
    results = {"args": asdict(b), "target_loss": target, "unigram_loss": unigram, "paper_speedup": PAPER_SPEEDUP}
    for name, points, shape in (("full", full_points, full_shape), ("grow", grow_points, grow_shape)):
        times = {clock: time_to_target(points, target, clock) for clock in ("seconds", "cpu")}
        results[name] = {"points": points, "shape": shape}
        results[name].update(time_to_target=times["seconds"], cpu_to_target=times["cpu"])
    for key, clock in (("speedup", "time_to_target"), ("cpu_speedup", "cpu_to_target")):
        t_full, t_grow = results["full"][clock], results["grow"][clock]
        results[key] = t_full / t_grow - 1 if t_full and t_grow else None
    out = Path(b.output_dir)
    (out / "grow_bench.json").write_text(json.dumps(results, indent=1))
    print(format_table(results))
    print(f"[grow-bench] plot: {plot_curves(results, out / 'grow_bench.png')}; numbers: {out / 'grow_bench.json'}")
    return results


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{value:+.1%}"


def _secs(value: float | None) -> str:
    return "not reached" if value is None else f"{value:.1f}"


def format_table(results: dict[str, Any]) -> str:
    """The benchmark's Markdown table and its verdict."""
    rows = [
        "| run | final shape | train wall s | train CPU s | final eval loss | wall s to target | CPU s to target "
        "| speedup wall (CPU) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    labels = {"full": "full model from the start", "grow": f"CompoundGrow `{results['args']['schedule']}`"}
    for name, label in labels.items():
        r, last = results[name], results[name]["points"][-1]
        speed = "(peer)" if name == "full" else f"{_pct(results['speedup'])} ({_pct(results['cpu_speedup'])})"
        rows.append(
            f"| {label} | {r['shape']} | {last['seconds']:.1f} | {last['cpu']:.1f} | {last['loss']:.4f} | "
            f"{_secs(r['time_to_target'])} | {_secs(r['cpu_to_target'])} | {speed} |"
        )
    for name, value in PAPER_SPEEDUP.items():
        size = name.split("-")[1]
        rows.append(f"| paper: Compound-{size} vs BERT-{size} (TPU, 1M steps) | | | | | | | {_pct(value)} |")
    target, unigram = results["target_loss"], results["unigram_loss"]
    pays = (results["speedup"] or 0) > 0 and (results["cpu_speedup"] or 0) > 0
    if target > unigram:
        level = "above it: both models are still learning the token frequencies, so the speedup is about that plateau"
    elif target > unigram - 0.1:
        level = f"only {unigram - target:.2f} nats below it: little context learned yet, far from the paper's regime"
    else:
        level = f"{unigram - target:.2f} nats below it: the models use context"
    verdict = (
        f"Target eval loss {target:.4f} (the higher final loss); unigram loss of the same targets {unigram:.4f}, the "
        f"target is {level}. "
        + ("Growth pays at this scale." if pays else "Growth does NOT pay at this scale (see the times above).")
    )
    return "\n".join(rows) + "\n" + verdict


def plot_curves(results: dict[str, Any], path: Path) -> Path:
    """Evaluation loss against training wall time for both runs, with the target and the growth events."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(7, 4), dpi=110)
    for name, color, label in (("full", "tab:blue", "full model"), ("grow", "tab:orange", "CompoundGrow")):
        points = results[name]["points"]
        seconds, losses = [p["seconds"] for p in points], [p["loss"] for p in points]
        axis.plot(seconds, losses, "o-", color=color, markersize=3, label=label)
        if results[name]["time_to_target"]:
            axis.axvline(results[name]["time_to_target"], color=color, linestyle=":", linewidth=1)
    axis.axhline(results["target_loss"], color="gray", linestyle="--", linewidth=1, label="target")
    axis.axhline(results["unigram_loss"], color="gray", linestyle=":", linewidth=1, label="unigram (token frequencies)")
    axis.set_xlabel("training wall time (s, evaluation excluded)")
    axis.set_ylabel("held-out MLM loss (fixed masking)")
    speeds = f"{_pct(results['speedup'])} wall, {_pct(results['cpu_speedup'])} CPU"
    axis.set_title(f"CompoundGrow vs full model: speedup {speeds}", fontsize=10)
    axis.grid(alpha=0.3)
    axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)
    return path
