"""Fully sharded data parallel (FSDP2) for deepln runs: the CPU switch, and a sharding plan for deep, narrow models.

FSDP keeps 1/N of every parameter, gradient and optimizer state on each of N processes. Before a *unit* runs (in
forward and again in backward) its parameters are all-gathered; after backward its gradients are reduce-scattered
(Zhao et al., "PyTorch FSDP", arXiv 2304.11277; torch's ``fully_shard``). Accelerate's
``TRANSFORMER_BASED_WRAP`` makes one unit per ``DeepLNBlock``, FSDP's advice for blocks of many millions of
parameters. deepln's blocks are small (0.05M for bert-1k to 0.8M for gpt-1k) and there are up to 1,000 of them: a
unit per block means about 3,000 collectives of tiny messages per step, each paying a fixed latency. Grouping ``k``
consecutive blocks into one unit (``fully_shard`` on a list of modules: one all-gather for all of them) divides the
collectives by ``k`` and holds ``k`` blocks' full parameters at once instead of one. The README's "Accelerate,
DDP and FSDP" section has the measured effect of ``k`` and says when DDP is the better choice.
"""

from __future__ import annotations

import contextlib
import os

import torch

from .args import DeepLNInputError

UNIT_PARAMETERS = 4_000_000
"""Automatic plan: about this many parameters per FSDP unit (the block count is rounded, at least one block)."""


def fsdp_requested() -> bool:
    """``accelerate launch`` was given an FSDP config (it exports ``ACCELERATE_USE_FSDP``)."""
    return os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true"


def enable_fsdp_on_cpu(trainer) -> None:
    """Turn on FSDP2 for a CPU run that ``accelerate launch`` started with an FSDP config.

    Accelerate 1.15 enables FSDP only on GPU-like devices (``AcceleratorState`` sets ``DistributedType.FSDP`` in its
    CUDA/XPU/NPU branch), so on a CPU the launcher's FSDP settings would be dropped silently and the run would train
    as plain DDP; with ``fsdp_version: 1`` the plugin refuses outright (no CUDA device). Torch's FSDP2 runs on the CPU
    with gloo, so this switches the state to FSDP with the plugin read from the launcher's environment; Trainer and
    Accelerate then shard, checkpoint and gather as on GPUs.
    """
    from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin

    state = trainer.accelerator.state
    if not fsdp_requested() or state.distributed_type != DistributedType.MULTI_CPU:
        return
    if os.environ.get("FSDP_VERSION", "1") != "2":
        raise DeepLNInputError(
            "FSDP on the CPU needs `fsdp_version: 2` in the accelerate config (FSDP1 runs only on GPUs); use "
            "configuration/accelerate/cpu-2proc-fsdp2.yaml."
        )
    state.fsdp_plugin = FullyShardedDataParallelPlugin()
    state.distributed_type = DistributedType.FSDP
    trainer.is_fsdp_enabled = True


def decoder_blocks(model: torch.nn.Module) -> torch.nn.ModuleList:
    """The ``ModuleList`` of ``DeepLNBlock``s of a deepln model (GPT, BERT, with or without a head)."""
    for module in model.modules():
        if isinstance(module, torch.nn.ModuleList) and module and type(module[0]).__name__ == "DeepLNBlock":
            return module
    raise DeepLNInputError(f"{type(model).__name__} has no list of DeepLNBlock layers to shard.")


def plan_blocks_per_unit(params_per_block: int, requested: int | None) -> int:
    """Blocks per FSDP unit: ``requested``, or (``None``/``0``) enough blocks for about ``UNIT_PARAMETERS``."""
    if requested is not None and requested < 0:
        raise DeepLNInputError(f"--fsdp-blocks-per-unit must be >= 1 (or 0 for automatic), got {requested}.")
    if requested:
        return requested
    return max(1, round(UNIT_PARAMETERS / max(1, params_per_block)))


def group_blocks(model: torch.nn.Module, blocks_per_unit: int, **fully_shard_kwargs) -> int:
    """``fully_shard`` each run of ``blocks_per_unit`` consecutive blocks as one unit; returns the unit count.

    The rest (embeddings, the final norm with the head, the root) is left to the caller (Accelerate's
    ``fsdp2_prepare_model`` in a run). Parameter names do not change, so checkpoints and the saved folder are the same
    as with one unit per block.
    """
    from torch.distributed.fsdp import fully_shard

    blocks = decoder_blocks(model)
    units = [list(blocks[i : i + blocks_per_unit]) for i in range(0, len(blocks), blocks_per_unit)]
    for unit in units:
        fully_shard(unit, **fully_shard_kwargs)
    return len(units)


def prepare_fsdp(trainer, model: torch.nn.Module, blocks_per_unit: int | None, is_main: bool) -> None:
    """Before ``trainer.train()``: FSDP2 on the CPU if the launcher asked for FSDP, and the block grouping.

    With ``fsdp_version: 2`` the blocks are grouped ``blocks_per_unit`` at a time (``None``/``0``: automatic, about
    ``UNIT_PARAMETERS`` per unit; ``1``: one unit per block, Accelerate's default). Does nothing without FSDP.
    """
    enable_fsdp_on_cpu(trainer)
    plugin = getattr(trainer.accelerator.state, "fsdp_plugin", None)
    if plugin is None:
        if blocks_per_unit and is_main:
            print("[deepln] --fsdp-blocks-per-unit has no effect: the launcher did not ask for FSDP", flush=True)
        return
    if plugin.fsdp_version != 2:
        if blocks_per_unit and blocks_per_unit != 1:
            raise DeepLNInputError("--fsdp-blocks-per-unit needs `fsdp_version: 2` in the accelerate config.")
        return
    from torch.distributed.fsdp import FSDPModule, MixedPrecisionPolicy

    if any(isinstance(m, FSDPModule) for m in model.modules()):  # sharded already (a second train() call)
        return
    blocks = decoder_blocks(model)
    k = min(len(blocks), plan_blocks_per_unit(sum(p.numel() for p in blocks[0].parameters()), blocks_per_unit))
    units = group_blocks(
        model,
        k,
        reshard_after_forward=plugin.reshard_after_forward,
        mp_policy=plugin.mixed_precision_policy or MixedPrecisionPolicy(),
        offload_policy=plugin.cpu_offload,
    )
    # The blocks are wrapped: no auto-wrap policy for Accelerate to apply (it would look them up by class name).
    plugin.auto_wrap_policy = None
    # Accelerate's meta-device loading re-distributes a full state dict; it cannot take blocks sharded already,
    # and every deepln process builds (or loads) the whole model anyway.
    plugin.cpu_ram_efficient_loading = False
    if is_main:
        print(f"[deepln] FSDP2: {len(blocks)} blocks in {units} units of {k} block(s)", flush=True)


@contextlib.contextmanager
def unsharded_evaluation(trainer):
    """``trainer.evaluate()`` before ``trainer.train()`` under FSDP2 (the held-out loss of the fresh model).

    Accelerate shards an FSDP2 model only together with its optimizer and refuses a model alone, which is what
    ``evaluate`` hands it; until ``train`` shards it every process holds the whole model, so the evaluation runs
    on it unsharded, as under DDP.
    """
    enabled = getattr(trainer, "is_fsdp_enabled", False)
    trainer.is_fsdp_enabled = False
    try:
        yield
    finally:
        trainer.is_fsdp_enabled = enabled


def full_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The unsharded weights on every process (each sharded parameter all-gathered once, tied ones kept tied).

    A collective: every process must call it.
    """
    from torch.distributed.tensor import DTensor

    gathered: dict[int, torch.Tensor] = {}
    state_dict = {}
    for name, value in model.state_dict(keep_vars=True).items():
        if id(value) not in gathered:
            tensor = value.full_tensor() if isinstance(value, DTensor) else value
            gathered[id(value)] = tensor.detach().cpu()
        state_dict[name] = gathered[id(value)]
    return state_dict


def save_model(trainer, output_dir: str) -> None:
    """``trainer.save_model``, but an FSDP2 model is saved as a standard safetensors folder with deepln's remote code.

    ``SHARDED_STATE_DICT`` checkpoints (one file per process, written in parallel) are what a resumed run needs; the
    folder a user loads needs the gathered weights. And ``fully_shard`` gives the model a generated class
    (``FSDPDeepLNGPTForCausalLM`` in torch's ``_fsdp_init`` module), which ``save_pretrained`` would write into the
    config's ``auto_map`` and whose torch module it would copy as remote code; the folder is therefore written
    with the model's own class, from the full state dict that every process helps gather (:func:`full_state_dict`).
    """
    plugin = getattr(trainer.accelerator.state, "fsdp_plugin", None)
    if plugin is None or plugin.fsdp_version != 2:
        trainer.save_model(output_dir)
        return
    from torch.distributed.fsdp import FSDPModule
    from transformers.trainer import TRAINING_ARGS_NAME

    state_dict = full_state_dict(trainer.model)
    if not trainer.args.should_save:
        return
    model = trainer.accelerator.unwrap_model(trainer.model)
    sharded_class = type(model)
    model.__class__ = next(c for c in sharded_class.__mro__ if not issubclass(c, FSDPModule))
    try:
        model.save_pretrained(output_dir, state_dict=state_dict)
    finally:
        model.__class__ = sharded_class
    if trainer.processing_class is not None:
        trainer.processing_class.save_pretrained(output_dir)
    torch.save(trainer.args, os.path.join(output_dir, TRAINING_ARGS_NAME))
