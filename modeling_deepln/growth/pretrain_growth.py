"""``deepln pretrain --grow SCHEDULE``: build the model of the current stage and attach the growth callback.

:func:`attach_growth` runs between ``build_lm_model`` and ``build_lm_trainer`` of
:mod:`modeling_deepln.training.pretraining`. It parses the schedule against the full model the preset describes,
replaces ``run.model`` with a fresh model of the stage to start in (stage 1, or, with ``--resume``, the stage stored in
the checkpoint's ``growth_state.json``, so that Trainer loads the checkpoint's weights and optimizer into the right
shape) and appends a :class:`~.callback.CompoundGrowCallback` to ``run.extra_callbacks``.
"""

from __future__ import annotations

from typing import Any

import torch

from .callback import CompoundGrowCallback, read_growth_state, stage_model
from .operators import GrowthError
from .schedule import parse_schedule

__all__ = ["attach_growth", "probe_batch"]

PROBE_EXAMPLES = 8


def probe_batch(dataset: Any, collator: Any, examples: int = PROBE_EXAMPLES, seed: int = 0) -> dict[str, torch.Tensor]:
    """The first ``examples`` rows of ``dataset`` collated with a fixed seed (the MLM masking is random)."""
    rows = [dataset[i] for i in range(min(examples, len(dataset)))]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return dict(collator(rows))


def _collator(run: Any) -> Any:
    from transformers import DataCollatorForLanguageModeling

    from ..training.pretraining import causal_lm_collator

    if run.family == "bert":
        return DataCollatorForLanguageModeling(run.tokenizer, mlm=True, mlm_probability=run.args.mlm_probability)
    return causal_lm_collator


def _reattach_guard(run: Any, model: torch.nn.Module) -> None:
    """The NaN guard hooks the blocks and lists the parameters: point it at the grown model."""
    from ..training.callbacks import NonFiniteGuard
    from ..training.trainer_setup import find_callback

    guard = find_callback(run.trainer, NonFiniteGuard) if run.trainer is not None else None
    if guard is not None:
        guard.attach(model)


def attach_growth(run: Any) -> CompoundGrowCallback:
    """Start ``run`` (a ``PretrainRun`` after ``build_lm_model``) in the right growth stage; add the callback."""
    if run.world > 1:
        raise GrowthError(
            f"--grow runs in a single process only (this launch has {run.world}): DDP fixes its gradient buckets "
            "when it wraps the model, so layers added mid-training would not be synchronised. Run it without "
            "accelerate launch."
        )
    full_config = run.model.config
    stages = parse_schedule(run.args.grow, full_config.num_hidden_layers, full_config.intermediate_size, run.family)
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

    set_seed(run.args.seed)
    run.model = stage_model(full_config, stages[start], type(run.model))
    callback = CompoundGrowCallback(
        stages,
        probe_batch=probe_batch(run.eval_dataset, _collator(run)),
        output_dir=run.output_dir if run.is_main else None,
        on_growth=lambda model: _reattach_guard(run, model),
    )
    run.extra_callbacks.append(callback)
    if run.is_main:
        def until(end):
            return "the end" if end is None else f"{end:.0%} of the run" if isinstance(end, float) else f"step {end}"

        plan = " -> ".join(f"[{s.describe(full_config.intermediate_size)} until {until(s.end)}]" for s in stages)
        print(f"[deepln] growth schedule {run.args.grow!r}: {plan}; starting in stage {start + 1}", flush=True)
    return callback
