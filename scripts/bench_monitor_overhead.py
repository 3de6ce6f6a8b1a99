"""Overhead of the per-layer monitor (``--monitor-every K``) on the default ``deepln pretrain`` run.

    python scripts/bench_monitor_overhead.py [--steps 40] [--every 10] [--preset gpt-deep-small] [--compare]

The peer is the same run without the monitor. Two measurements:

1. In one run with the monitor attached, the time of monitored steps against unmonitored ones (median, wall and
   process CPU time); an unmonitored step runs no monitor code but one ``step % K`` test, so it is the peer, measured
   interleaved with the monitored steps (robust on a shared machine). Overhead at K = ``(monitored − plain) / plain / K``.
2. ``--compare``: the same run without the monitor (a second Trainer, same seed and data): mean step time ratio.

Uses the default run's pieces (:mod:`modeling_deepln.training.pretraining`: preset, recipe, tokenizer, blocks).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

from transformers import TrainerCallback

from modeling_deepln.stability.monitor import LayerMonitor
from modeling_deepln.training import PretrainArgs
from modeling_deepln.training.pretraining import build_lm_model, build_lm_trainer, plan_pretrain, prepare_lm_data


class StepTimer(TrainerCallback):
    """Wall and process-CPU seconds of every optimizer step (on_step_begin -> on_step_end, callbacks included)."""

    def __init__(self):
        self.steps: list[tuple[int, float, float]] = []

    def on_step_begin(self, args, state, control, **kwargs):
        self._start = (time.perf_counter(), time.process_time())

    def on_step_end(self, args, state, control, **kwargs):
        wall, cpu = time.perf_counter() - self._start[0], time.process_time() - self._start[1]
        self.steps.append((state.global_step, wall, cpu))


def timed_run(preset: str, steps: int, every: int | None, output_dir: str) -> StepTimer:
    run = plan_pretrain(PretrainArgs(preset=preset, max_steps=steps, output_dir=output_dir, overwrite=True,
                                     report_to="none", eval_steps=0, save_steps=10_000, num_samples=0,
                                     disable_tqdm=True, max_minutes=None))  # fmt: skip
    run.args.max_minutes = None
    prepare_lm_data(run)
    build_lm_model(run)
    timer = StepTimer()
    # The timer goes first and last: its on_step_end runs after the monitor's (which reads back the records).
    run.extra_callbacks += ([LayerMonitor(every=every, plots=False)] if every else []) + [timer]
    build_lm_trainer(run)
    run.trainer.train()
    return timer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="gpt-deep-small")
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--every", type=int, default=10)
    parser.add_argument("--compare", action="store_true", help="Also time the same run without the monitor.")
    ns = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        timer = timed_run(ns.preset, ns.steps, ns.every, f"{folder}/on")
        steps = timer.steps[1:]  # the first step carries one-time start-up costs
        monitored = [s for s in steps if s[0] % ns.every == 0]
        plain = [s for s in steps if s[0] % ns.every != 0]
        print(f"\n{ns.preset}, {ns.steps} steps, monitor every {ns.every} (machine shared: read the ratios)")
        print("| measure | plain step (s) | monitored step (s) | monitored / plain | overhead at K |")
        print("|---|---|---|---|---|")
        for column, name in ((1, "wall"), (2, "CPU")):
            p = statistics.median(s[column] for s in plain)
            m = statistics.median(s[column] for s in monitored)
            print(f"| {name} (median) | {p:.3f} | {m:.3f} | {m / p:.3f} | {100 * (m - p) / p / ns.every:.2f} % |")
        if ns.compare:
            off = timed_run(ns.preset, ns.steps, None, f"{folder}/off").steps[1:]
            for column, name in ((1, "wall"), (2, "CPU")):
                with_monitor = statistics.mean(s[column] for s in steps)
                without = statistics.mean(s[column] for s in off)
                print(f"| {name} (mean, separate runs) | {without:.3f} | {with_monitor:.3f} | "
                      f"{with_monitor / without:.3f} | {100 * (with_monitor - without) / without:.2f} % |")  # fmt: skip


if __name__ == "__main__":
    main()
