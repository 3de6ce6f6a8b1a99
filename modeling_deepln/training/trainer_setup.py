"""Building the ``Trainer`` of a deepln run: processes, ``TrainingArguments``, callbacks, TensorBoard folder.

Batch sizes in deepln's arguments are global (over all processes); :func:`training_arguments` divides them over the
processes that ``accelerate launch`` / ``torchrun`` started, so one process and N processes train the same model.
"""

from __future__ import annotations

import dataclasses
import os
import time
from pathlib import Path
from typing import Any

import torch
from transformers import TrainerCallback

from .args import LR_SCHEDULES, OPTIMIZERS, DeepLNInputError, FinetuneArgs, PretrainArgs
from .callbacks import NAN_POLICIES, NonFiniteGuard, TimeLimitCallback


def schedule_kwargs(schedule: str, min_lr: float | None, lr: float) -> tuple[str, dict[str, Any]]:
    """Trainer's ``lr_scheduler_type`` and ``lr_scheduler_kwargs`` for our schedule names."""
    if schedule not in LR_SCHEDULES:
        raise DeepLNInputError(f"--lr-schedule must be one of {', '.join(LR_SCHEDULES)}, got {schedule!r}.")
    if min_lr is not None and min_lr < 0:
        raise DeepLNInputError(f"--min-lr must be >= 0, got {min_lr}.")
    if min_lr is not None and min_lr > lr:
        raise DeepLNInputError(f"--min-lr ({min_lr}) is larger than --lr ({lr}).")
    if schedule == "constant":
        return "constant_with_warmup", {}
    if schedule == "cosine":
        if min_lr:
            return "cosine_with_min_lr", {"min_lr": float(min_lr)}
        return "cosine", {}
    if min_lr:  # linear decay to min_lr = polynomial decay with power 1
        return "polynomial", {"lr_end": float(min_lr), "power": 1.0}
    return "linear", {}


def per_device(global_batch: int, world: int, name: str) -> int:
    if global_batch < 1:
        raise DeepLNInputError(f"{name} must be >= 1, got {global_batch}.")
    if global_batch % world:
        raise DeepLNInputError(
            f"{name}={global_batch} is the global batch and must be divisible by the number of processes ({world})."
        )
    return global_batch // world


def launched_distributed() -> bool:
    """Started by ``accelerate launch`` / ``torchrun`` with several processes."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1 or int(os.environ.get("LOCAL_RANK", "-1")) != -1


def resolve_use_cpu(requested: bool) -> bool:
    """CPU training: asked for, or a multi-process launch on a machine without CUDA (then gloo on the CPU).

    Accelerate only selects its multi-CPU (gloo) mode when told to use the CPU; ``accelerate launch --multi_gpu``
    (or ``configuration/accelerate/cpu-2proc.yaml``) on a CPU-only machine starts the processes through torchrun
    and this makes them join one gloo process group.
    """
    return bool(requested) or (launched_distributed() and not torch.cuda.is_available())


def process_world(use_cpu: bool = False) -> tuple[int, int]:
    """(process index, number of processes), initialising accelerate's state (and the process group) if needed."""
    from accelerate import PartialState

    state = PartialState(cpu=resolve_use_cpu(use_cpu))
    return state.process_index, state.num_processes


def default_output_dir(prefix: str, use_cpu: bool) -> str:
    name = f"runs/{prefix}-{time.strftime('%Y%m%d-%H%M%S')}"
    _, n_processes = process_world(use_cpu)
    if n_processes > 1:  # every process must use the same folder
        from accelerate.utils import broadcast_object_list

        name = broadcast_object_list([name], from_process=0)[0]
    return name


def report_to(value: str | list[str] | None) -> list[str]:
    if value is None:
        import importlib.util

        targets = ["tensorboard"]
        if importlib.util.find_spec("trackio") is not None:
            targets.append("trackio")
        return targets
    items = value.split(",") if isinstance(value, str) else list(value)
    items = [v.strip() for v in items if v.strip()]
    if not items or items == ["none"]:
        return []
    return items



TORCH_OPTIMIZER = "adamw_torch_fused"
"""Both ``--optim`` choices (AdamW, and Adam as AdamW without decay) run torch's fused AdamW: one kernel over all
parameter tensors instead of a few elementwise ops per tensor (``for`` loop) or per group of tensors (``foreach``).
The same update to float rounding; at 1,000 layers (~16k tensors) the step takes a fraction of foreach's time
(README, "Speed")."""


def training_arguments(
    a: PretrainArgs | FinetuneArgs, *, output_dir: str, world: int, extra: dict[str, Any] | None = None
):
    """``TrainingArguments`` from the resolved arguments (batch sizes are global, divided over ``world``)."""
    from transformers import TrainingArguments

    eval_batch_size = a.eval_batch_size or 2 * a.batch_size

    schedule, scheduler_kwargs = schedule_kwargs(a.lr_schedule, a.min_lr, a.lr)
    if a.optim not in OPTIMIZERS:
        raise DeepLNInputError(f"--optim must be one of {', '.join(OPTIMIZERS)}, got {a.optim!r}.")
    weight_decay = 0.0 if a.optim == "adam" else float(a.weight_decay)
    if a.warmup_ratio is not None and not 0 <= a.warmup_ratio < 1:
        raise DeepLNInputError(f"--warmup-ratio must be in [0, 1), got {a.warmup_ratio}.")
    if a.nan_policy not in NAN_POLICIES:
        raise DeepLNInputError(f"--nan-policy must be one of {', '.join(NAN_POLICIES)}, got {a.nan_policy!r}.")
    kwargs: dict[str, Any] = dict(
        output_dir=output_dir,
        per_device_train_batch_size=per_device(a.batch_size, world, "batch_size"),
        per_device_eval_batch_size=max(1, eval_batch_size // world),
        gradient_accumulation_steps=a.grad_accum,
        learning_rate=a.lr,
        lr_scheduler_type=schedule,
        lr_scheduler_kwargs=scheduler_kwargs,
        warmup_steps=float(a.warmup_ratio or 0.0),
        weight_decay=weight_decay,
        optim=TORCH_OPTIMIZER,
        adam_beta2=float(getattr(a, "adam_beta2", None) or 0.999),
        max_steps=a.max_steps if a.max_steps and a.max_steps > 0 else -1,
        num_train_epochs=a.num_epochs,
        logging_steps=a.logging_steps,
        logging_first_step=True,
        eval_strategy="steps" if a.eval_steps else "no",
        eval_steps=a.eval_steps or None,
        save_strategy="steps",
        save_steps=a.save_steps,
        save_total_limit=a.save_total_limit,
        seed=a.seed,
        data_seed=a.seed,
        bf16=a.precision == "bf16",
        fp16=a.precision == "fp16",
        report_to=report_to(a.report_to),
        disable_tqdm=a.disable_tqdm,
        # bf16 without a CUDA GPU (e.g. a GPU recipe tried on a laptop) runs as CPU bf16 autocast, which
        # TrainingArguments only accepts with use_cpu set.
        use_cpu=resolve_use_cpu(a.use_cpu) or (a.precision == "bf16" and not torch.cuda.is_available()),
        dataloader_num_workers=0,
        dataloader_pin_memory=torch.cuda.is_available() and not resolve_use_cpu(a.use_cpu),
    )
    if a.gradient_checkpointing:
        # transformers >= 5.24 names it activation_checkpointing (the old name warns); 5.17 only has the old one.
        names = {f.name for f in dataclasses.fields(TrainingArguments)}
        key = "activation_checkpointing" if "activation_checkpointing" in names else "gradient_checkpointing"
        kwargs[key] = True
    if getattr(a, "compile", False):
        kwargs["torch_compile"] = True
    kwargs.update(extra or {})
    return TrainingArguments(**kwargs)


def nan_guard(a: PretrainArgs | FinetuneArgs, output_dir: str) -> NonFiniteGuard:
    return NonFiniteGuard(policy=a.nan_policy, check_gradients=a.precision != "fp16", output_dir=output_dir)



def run_callbacks(a: PretrainArgs | FinetuneArgs, output_dir: str, model: torch.nn.Module) -> list[TrainerCallback]:
    """The callbacks every deepln run trains with: the NaN/inf guard (attached to ``model``) and the time limit."""
    callbacks: list[TrainerCallback] = [nan_guard(a, output_dir).attach(model)]
    if a.max_minutes:
        callbacks.append(TimeLimitCallback(a.max_minutes))
    return callbacks


def find_callback(trainer, kind: type) -> Any:
    """The trainer's callback of class ``kind`` (or None)."""
    return next((cb for cb in trainer.callback_handler.callbacks if isinstance(cb, kind)), None)


def pin_tensorboard_dir(trainer, output_dir: Path) -> None:
    """Give the TensorBoard callback its folder up front.

    It only picks ``<output_dir>/runs/<date>`` in ``on_train_begin``; the evaluation before training logs first,
    and the writer it creates then would land in ``./runs`` of the working directory.
    """
    for callback in trainer.callback_handler.callbacks:
        if type(callback).__name__ == "TensorBoardCallback" and getattr(callback, "logging_dir", None) is None:
            from transformers.integrations.integration_utils import default_logdir

            callback.logging_dir = os.path.join(str(output_dir), default_logdir())



def undo_eval_prepare(model: torch.nn.Module) -> None:
    """Let ``trainer.train()`` wrap a model that ``trainer.evaluate()`` already prepared.

    ``Trainer.evaluate`` calls ``accelerator.prepare_model(model, evaluation_mode=True)``, which marks the model as
    prepared; ``train()`` then skips the DDP wrapping, so in a multi-process run each process would train on its own
    gradients without synchronisation. Clearing the mark (and the autocast forward wrapper) restores the wrap.
    """
    if getattr(model, "_is_accelerate_prepared", False):
        model._is_accelerate_prepared = False
        original = model.__dict__.pop("_original_forward", None)
        if original is not None:  # mixed precision: accelerate replaced forward by an autocast wrapper
            if getattr(original, "__self__", None) is model:
                model.__dict__.pop("forward", None)  # back to the class's forward
            else:
                model.forward = original


_PROMPTS = ("The history of", "In mathematics,", "The city is", "He was born in", "The first")


def param_count(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
