"""``deepln pretrain --grow SCHEDULE``: CompoundGrow as an extension of the pre-training run.

:class:`GrowthExtension` follows the run-extension protocol of :func:`modeling_deepln.training.pretraining.pretrain`
(``after_model`` / ``after_training``; growth and pre-training do not import each other, the CLI hands the extension
to ``pretrain``):

* ``after_model`` parses the schedule against the full model the preset describes, replaces ``run.model`` with a
  fresh model of the stage to start in (stage 1, or, with ``--resume``, the stage stored in the checkpoint's
  ``growth_state.json``, so that Trainer loads the checkpoint's weights and optimizer into the right shape; the
  training fast paths of the replaced model carry over), checks before training that stacking can keep each copied
  layer's function, estimates whether the run's time limit lets the schedule reach its last stage (a warning when
  not), and appends a :class:`~.callback.CompoundGrowCallback` to ``run.extra_callbacks``;
* ``after_training``: when the run stopped before the last stage (the time limit), it says so loudly, removes the
  length pooling so that the final evaluation scores the model that is saved, and adds a note to the model card.
"""

from __future__ import annotations

import time
from typing import Any

import torch

from .callback import CompoundGrowCallback, read_growth_state, stage_config, stage_model
from .operators import GrowthError, check_stackable
from .pooling import disable_length_pooling
from .schedule import GrowthStage, parse_schedule, resolve_ends

__all__ = ["GrowthExtension", "attach_growth", "probe_batch", "seconds_to_last_stage"]

PROBE_EXAMPLES = 8


def probe_batch(dataset: Any, collator: Any, examples: int = PROBE_EXAMPLES, seed: int = 0) -> dict[str, torch.Tensor]:
    """The first ``examples`` rows of ``dataset`` collated with a fixed seed (the MLM masking is random)."""
    rows = [dataset[i] for i in range(min(examples, len(dataset)))]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return dict(collator(rows))


def _reattach_guard(run: Any, model: torch.nn.Module) -> None:
    """The NaN guard hooks the blocks and lists the parameters: point it at the grown model."""
    from ..training.callbacks import NonFiniteGuard
    from ..training.trainer_setup import find_callback

    guard = find_callback(run.trainer, NonFiniteGuard) if run.trainer is not None else None
    if guard is not None:
        guard.attach(model)


def _step_seconds(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> float:
    """Wall seconds of one forward and backward pass of ``model`` on ``batch`` (after one untimed warm-up)."""
    model.train()
    device = next(model.parameters()).device
    batch = {key: value.to(device) for key, value in batch.items()}
    seconds = []
    for _ in range(2):
        start = time.perf_counter()
        model(**batch).loss.backward()
        model.zero_grad(set_to_none=True)
        seconds.append(time.perf_counter() - start)
    return seconds[-1]


def seconds_to_last_stage(
    stages: list[GrowthStage], full_config: Any, model_class: type, batch: dict[str, torch.Tensor], like: Any = None
) -> float:
    """Estimated training seconds before the last stage starts: each earlier stage's steps times the timed step of a
    fresh model of its shape on ``batch`` (``stages`` with resolved ends)."""
    seconds, start = 0.0, 0
    with torch.random.fork_rng(devices=[]):
        for stage in stages[:-1]:
            model = stage_model(full_config, stage, model_class, like)
            seconds += (stage.end - start) * _step_seconds(model, batch)
            start = stage.end
    return seconds


def _repeat_rows(batch: dict[str, torch.Tensor], rows: int) -> dict[str, torch.Tensor]:
    return {key: value.repeat((rows + len(value) - 1) // len(value), *[1] * (value.dim() - 1))[:rows]
            for key, value in batch.items()}  # fmt: skip


class GrowthExtension:
    """CompoundGrow in ``pretrain`` (module docstring). ``restart_lr_schedule``: see :class:`CompoundGrowCallback`."""

    option = "grow"

    def __init__(self, restart_lr_schedule: bool = True):
        self.restart_lr_schedule = restart_lr_schedule
        self.callback: CompoundGrowCallback | None = None
        self.full_config: Any = None

    def after_model(self, run: Any) -> None:
        """Start ``run`` (after ``build_lm_model``) in the right growth stage; add the callback."""
        self.callback = attach_growth(run, self.restart_lr_schedule)
        self.full_config = run.config

    def after_training(self, run: Any) -> None:
        """Say so, score the saved model and note it in the card when the run ended before the last stage."""
        callback = self.callback
        if callback is None or callback.completed:
            return
        stage = callback.stages[callback.stage_index]
        disable_length_pooling(run.model)
        shape = f"{stage.depth} layers, FFN {self.full_config.intermediate_size // stage.ffn_share}"
        full = f"{self.full_config.num_hidden_layers} layers, FFN {self.full_config.intermediate_size}"
        note = (
            f"PARTIAL: training stopped in growth stage {callback.stage_index + 1} of {len(callback.stages)} "
            f"(schedule {run.args.grow!r}), so the saved model has {shape}, not the requested {full}; its metrics "
            "are those of this smaller model, without the length pooling of training."
        )
        run.card_notes["growth"] = note
        if run.is_main:
            print(f"[deepln] WARNING: {note}", flush=True)


def _warn_if_time_limited(run: Any, stages: list[GrowthStage], full_config: Any, probe: dict, like: Any) -> None:
    """Before training: warn when the run's time limit stops it before the schedule's last stage."""
    minutes = run.args.max_minutes
    if not minutes or not run.is_main or run.training_args.max_steps <= 0:
        return
    resolved = resolve_ends(stages, run.training_args.max_steps)
    rows = run.training_args.per_device_train_batch_size * run.training_args.gradient_accumulation_steps
    needed = seconds_to_last_stage(resolved, full_config, type(run.model), _repeat_rows(probe, rows), like)
    if needed > 0.9 * minutes * 60:
        print(
            f"[deepln] WARNING: the last growth stage starts at step {resolved[-2].end}, about {needed / 60:.1f} min "
            f"of training at the speed timed just now, but the time limit is {minutes:g} min: the run will probably "
            "stop in an earlier stage and save a smaller model (it will say so, and so will the model card). Raise "
            "--max-minutes, lower --max-steps, or move the stage ends earlier.",
            flush=True,
        )


def attach_growth(run: Any, restart_lr_schedule: bool = True) -> CompoundGrowCallback:
    """Start ``run`` (a ``PretrainRun`` after ``build_lm_model``) in the right growth stage; add the callback."""
    if run.world > 1:
        raise GrowthError(
            f"--grow runs in a single process only (this launch has {run.world}): DDP fixes its gradient buckets "
            "when it wraps the model, so layers added mid-training would not be synchronised. Run it without "
            "accelerate launch."
        )
    full_config = run.model.config
    stages = parse_schedule(run.args.grow, full_config.num_hidden_layers, full_config.intermediate_size, run.family)
    for before, after in zip(stages, stages[1:]):
        check_stackable(stage_config(full_config, before), after.depth)
    start = 0
    if run.resume_from:
        saved = read_growth_state(run.resume_from)
        if saved is None:
            raise GrowthError(
                f"--resume {run.resume_from} with --grow: the checkpoint has no growth_state.json (it was not trained "
                "with --grow). Resume it without --grow, or start a new run."
            )
        start = int(saved["stage"])
        if start >= len(stages):
            raise GrowthError(f"The checkpoint is in growth stage {start + 1}; the schedule has {len(stages)}.")
    from transformers import set_seed

    probe = probe_batch(run.eval_dataset, run.training_collator())
    if not run.resume_from:
        _warn_if_time_limited(run, stages, full_config, probe, run.model)
    set_seed(run.args.seed)
    run.model = stage_model(full_config, stages[start], type(run.model), like=run.model)
    callback = CompoundGrowCallback(
        stages,
        probe_batch=probe,
        output_dir=run.output_dir if run.is_main else None,
        on_growth=lambda model: _reattach_guard(run, model),
        restart_lr_schedule=restart_lr_schedule,
    )
    run.extra_callbacks.append(callback)
    if run.is_main:
        def until(end):
            return "the end" if end is None else f"{end:.0%} of the run" if isinstance(end, float) else f"step {end}"

        plan = " -> ".join(f"[{s.describe(full_config.intermediate_size)} until {until(s.end)}]" for s in stages)
        lr = "restarts at each stage" if restart_lr_schedule else "runs once through all stages"
        print(f"[deepln] growth schedule {run.args.grow!r}: {plan}; the learning-rate schedule {lr}; "
              f"starting in stage {start + 1}", flush=True)  # fmt: skip
    return callback
