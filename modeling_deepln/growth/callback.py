"""The growth ``TrainerCallback``: applies a CompoundGrow schedule while ``transformers.Trainer`` trains.

At the end of the step where a stage ends, :class:`CompoundGrowCallback` grows the model *in place* (same top-level
module object, so Trainer's and Accelerate's references stay valid): FFN un-sharing, then stacking, then the new
pool size (:func:`grow_model`); it then grows the optimizer in place (:func:`~.optim_state.grow_optimizer`: new
``param_groups`` and Adam state, kept across stages: deepln's choice, the authors build a fresh optimizer per
stage). The learning-rate schedule restarts at every stage by default, as the authors' code does
(``StackingStageConfig`` rebuilt per stage: warmup again, then the decay of the whole run from the peak; the
paper's App. A): the scheduler's step counter is set back to 0, so the new stage runs the run's
schedule from its start. ``restart_lr_schedule=False`` keeps one schedule through all stages. Each event is
printed and appended to ``<output_dir>/growth_events.jsonl`` with the step, the old
and new shapes and the loss on a fixed probe batch just before and just after growth (eval mode, same masking).

Checkpoints: ``on_save`` writes ``growth_state.json`` (stage index, pool size, the resolved schedule) next to the
checkpoint's ``trainer_state.json``; :func:`stage_model` rebuilds a fresh model of a stage's shape, which is what
``--resume`` loads the checkpoint's weights and optimizer into.

Single process only: DDP registers its gradient buckets on the parameters when it wraps the model, so parameters
created mid-training would not be synchronised. :meth:`CompoundGrowCallback.on_train_begin` stops with a clear error
under ``accelerate launch`` with several processes.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import TrainerCallback

from .operators import GrowthError, stack_layers, unshare_ffn
from .optim_state import compose_origins, grow_optimizer
from .pooling import enable_length_pooling, pool_size
from .schedule import GrowthStage, resolve_ends, stage_index_at

__all__ = ["CompoundGrowCallback", "grow_model", "stage_config", "stage_model", "GROWTH_STATE_FILE", "read_growth_state"]

GROWTH_STATE_FILE = "growth_state.json"
EVENTS_FILE = "growth_events.jsonl"


def stage_config(full_config: Any, stage: GrowthStage) -> Any:
    """A copy of the full model's config with the stage's depth and (shared) FFN size."""
    config = copy.deepcopy(full_config)
    config.num_hidden_layers = stage.depth
    config.intermediate_size = full_config.intermediate_size // stage.ffn_share
    return config


FAST_PATHS = ("sparse_mlm_loss", "fused_lm_loss")
"""Training fast paths of the model (config fields since they are saved with the config, so ``stage_config``'s copy
already carries them; the copy below only matters for a model that set them as instance attributes)."""


def stage_model(full_config: Any, stage: GrowthStage, model_class: type, like: nn.Module | None = None) -> nn.Module:
    """A freshly initialised model of the stage's shape, with its pooling applied and the :data:`FAST_PATHS` of
    ``like`` (the model it replaces) switched on as they are there."""
    model = model_class(stage_config(full_config, stage))
    for name in FAST_PATHS:
        if like is not None and name in vars(like):
            setattr(model, name, vars(like)[name])
    enable_length_pooling(model, stage.pool)
    return model


def grow_model(model: nn.Module, old: GrowthStage, new: GrowthStage, optimizer: Any = None) -> dict[str, Any]:
    """Grow ``model`` from stage ``old`` to ``new`` in place (and ``optimizer`` with it). Returns the shape change."""
    before = _shape(model)
    origins = unshare_ffn(model, old.ffn_share // new.ffn_share)
    origins = compose_origins(origins, stack_layers(model, new.depth))
    enable_length_pooling(model, new.pool)
    added = grow_optimizer(optimizer, model, origins) if optimizer is not None else 0
    return {"old_shape": before, "new_shape": _shape(model), "new_parameters": added}


def _shape(model: nn.Module) -> dict[str, int]:
    config = model.config
    return {
        "layers": config.num_hidden_layers,
        "ffn": config.intermediate_size,
        "pool": pool_size(model),
        "parameters": sum(p.numel() for p in model.parameters()),
    }


def restart_schedule(scheduler: Any) -> None:
    """Set a ``LambdaLR`` (``Trainer``'s schedules; Accelerate's wrapper is unwrapped) back to its step 0: the next
    optimizer step uses the learning rate of the schedule's first step (with warmup, the warmup starts again)."""
    scheduler = getattr(scheduler, "scheduler", scheduler)
    if not hasattr(scheduler, "lr_lambdas"):
        raise GrowthError(
            f"Cannot restart a {type(scheduler).__name__} per growth stage (a LambdaLR is expected, as Trainer "
            "builds); pass restart_lr_schedule=False to keep one schedule."
        )
    scheduler.last_epoch = 0
    rates = [base * fn(0) for base, fn in zip(scheduler.base_lrs, scheduler.lr_lambdas)]
    for group, rate in zip(scheduler.optimizer.param_groups, rates):
        group["lr"] = rate
    scheduler._last_lr = rates


def read_growth_state(checkpoint: str | Path) -> dict[str, Any] | None:
    """The ``growth_state.json`` of a checkpoint folder, or None."""
    path = Path(checkpoint) / GROWTH_STATE_FILE
    return json.loads(path.read_text()) if path.is_file() else None


class CompoundGrowCallback(TrainerCallback):
    """Grow the model at the schedule's stage ends (module docstring).

    Args:
        stages: the schedule (:func:`~.schedule.parse_schedule`); fractional ends resolve against ``max_steps``.
        probe_batch: a fixed batch (dict of tensors) whose loss is logged just before and after each growth.
        output_dir: where ``growth_events.jsonl`` goes (None: not written).
        on_growth: called with the grown model after each event (e.g. to re-attach hooks).
        verbose: print one line per event.
        restart_lr_schedule: restart the learning-rate schedule at each stage, as the authors do (module docstring).
    """

    def __init__(
        self,
        stages: list[GrowthStage],
        probe_batch: dict[str, torch.Tensor] | None = None,
        output_dir: str | Path | None = None,
        on_growth: Callable[[nn.Module], None] | None = None,
        verbose: bool = True,
        restart_lr_schedule: bool = True,
    ):
        self.stages = stages
        self.restart_lr_schedule = restart_lr_schedule
        self.probe_batch = probe_batch
        self.output_dir = Path(output_dir) if output_dir is not None else None
        self.on_growth = on_growth
        self.verbose = verbose
        self.events: list[dict[str, Any]] = []
        self.stage_index = 0

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        if args.world_size > 1:
            raise GrowthError(
                f"Growth (--grow) runs in a single process only; this run has {args.world_size}. DDP fixes its "
                "gradient buckets when it wraps the model, so layers added mid-training would not be synchronised. "
                "Run without accelerate launch (or with one process)."
            )
        self.stages = resolve_ends(self.stages, state.max_steps)
        self.stage_index = stage_index_at(self.stages, state.global_step)
        stage = self.stages[self.stage_index]
        shape = (model.config.num_hidden_layers, pool_size(model))
        if shape != (stage.depth, stage.pool):
            raise GrowthError(
                f"At step {state.global_step} the schedule is in stage {self.stage_index + 1} ({stage.depth} layers, "
                f"pool {stage.pool}) but the model has {shape[0]} layers, pool {shape[1]}: build it with "
                "growth.callback.stage_model (deepln pretrain --grow does) before training or resuming."
            )

    @property
    def completed(self) -> bool:
        """Whether the model has reached the schedule's last stage (the requested shape)."""
        return self.stage_index == len(self.stages) - 1

    def on_step_end(self, args, state, control, model=None, optimizer=None, lr_scheduler=None, **kwargs):
        while self.stages[self.stage_index].end is not None and state.global_step >= self.stages[self.stage_index].end:
            old, new = self.stages[self.stage_index], self.stages[self.stage_index + 1]
            loss_before = self._probe_loss(model)
            change = grow_model(model, old, new, optimizer)
            self.stage_index += 1
            if self.restart_lr_schedule and lr_scheduler is not None:
                restart_schedule(lr_scheduler)
            if self.on_growth is not None:
                self.on_growth(model)
            event = {"step": state.global_step, "stage": self.stage_index + 1, **change}
            event.update(loss_before=loss_before, loss_after=self._probe_loss(model))
            self.events.append(event)
            self._report(event, state.is_world_process_zero)

    def on_save(self, args, state, control, **kwargs):
        if not state.is_world_process_zero:
            return
        folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        if folder.is_dir():
            stages = [s.to_dict() for s in self.stages]
            payload = {"stage": self.stage_index, "pool": self.stages[self.stage_index].pool, "stages": stages}
            (folder / GROWTH_STATE_FILE).write_text(json.dumps(payload, indent=1))

    def _probe_loss(self, model: nn.Module) -> float | None:
        if self.probe_batch is None:
            return None
        was_training = model.training
        model.eval()
        device = next(model.parameters()).device
        with torch.no_grad():
            loss = model(**{k: v.to(device) for k, v in self.probe_batch.items()}).loss
        model.train(was_training)
        return float(loss)

    def _report(self, event: dict[str, Any], is_main: bool) -> None:
        if not is_main:
            return
        old, new = event["old_shape"], event["new_shape"]

        def fmt(loss):
            return "n/a" if loss is None else f"{loss:.4f}"

        if self.verbose:
            print(
                f"[deepln] growth at step {event['step']} -> stage {event['stage']}: layers {old['layers']} -> "
                f"{new['layers']}, FFN {old['ffn']} -> {new['ffn']}, pool {old['pool']} -> {new['pool']}, "
                f"{old['parameters'] / 1e6:.2f}M -> {new['parameters'] / 1e6:.2f}M parameters; probe loss "
                f"{fmt(event['loss_before'])} -> {fmt(event['loss_after'])}",
                flush=True,
            )
        if self.output_dir is not None:
            self.output_dir.mkdir(parents=True, exist_ok=True)
            with open(self.output_dir / EVENTS_FILE, "a") as f:
                f.write(json.dumps(event) + "\n")
