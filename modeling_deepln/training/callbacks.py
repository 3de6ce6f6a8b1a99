"""Trainer callbacks of the training commands and the checkpoint helper they share.

* :class:`TimeLimitCallback`: ``--max-minutes``; stop gracefully (save, then evaluate as usual).
* :class:`NonFiniteGuard`: a NaN/inf loss or gradient stops the run (or skips the optimizer step) with a message
  naming the step and the first layer whose activations or gradients went non-finite.
* :func:`last_complete_checkpoint`: the newest checkpoint that was completely written (a SIGKILL can leave a
  partial one behind).

The guard reads back one fused gradient norm and the loss per optimizer step (no host synchronisation per layer,
no per-layer hooks), so that a 1,000-layer model keeps its launch queue full; it looks for the layer where a
non-finite step started only when there is one.
"""

from __future__ import annotations

import json
import os
import re
import time
from pathlib import Path
from typing import Any

import torch
from transformers import TrainerCallback

from ..errors import NonFiniteError  # also importable from here (its old home)

NAN_POLICIES = ("stop", "skip")


def distributed_any(flag: bool) -> bool:
    """``flag`` OR-ed over all processes (so every process takes the same decision)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        value = torch.tensor([1.0 if flag else 0.0])
        if torch.distributed.get_backend() == "nccl":
            value = value.cuda()
        torch.distributed.all_reduce(value, op=torch.distributed.ReduceOp.MAX)
        return bool(value.item() > 0)
    return flag


def last_complete_checkpoint(output_dir: str | os.PathLike | None) -> str | None:
    """The highest-numbered ``checkpoint-N`` folder that was completely written (trainer_state.json and weights).

    A run killed while saving leaves a partial folder; ``resume`` must skip it.
    """
    if output_dir is None or not Path(output_dir).is_dir():
        return None
    best: tuple[int, Path] | None = None
    for path in Path(output_dir).glob("checkpoint-*"):
        match = re.fullmatch(r"checkpoint-(\d+)", path.name)
        if not match or not path.is_dir():
            continue
        has_weights = any(path.glob("*.safetensors")) or any(path.glob("pytorch_model*"))
        try:  # Trainer writes trainer_state.json last: a readable one means the checkpoint is complete.
            json.loads((path / "trainer_state.json").read_text())
        except (OSError, ValueError):
            continue
        step = int(match.group(1))
        if has_weights and (best is None or step > best[0]):
            best = (step, path)
    return str(best[1]) if best else None


class TimeLimitCallback(TrainerCallback):
    """Stop training gracefully after ``max_minutes`` of training (a checkpoint is saved; evaluation still runs)."""

    def __init__(self, max_minutes: float):
        self.max_seconds = float(max_minutes) * 60.0
        self.start: float | None = None
        self.stopped_at_step: int | None = None

    def on_train_begin(self, args, state, control, **kwargs):
        self.start = time.monotonic()

    def on_step_end(self, args, state, control, **kwargs):
        if self.start is None:
            self.start = time.monotonic()
        expired = distributed_any(time.monotonic() - self.start >= self.max_seconds)
        if expired and not control.should_training_stop:
            self.stopped_at_step = state.global_step
            control.should_training_stop = True
            control.should_save = True
            if state.is_world_process_zero:
                print(
                    f"\n[deepln] time limit of {self.max_seconds / 60:g} min reached at step {state.global_step}; "
                    "stopping and saving.",
                    flush=True,
                )
        return control


SUBLAYER_NAMES = {"attention_residual": "attention sublayer", "mlp_residual": "feed-forward sublayer"}
"""The guard also watches each block's two residual connections, so that a blow-up is named down to the sublayer."""

_LAYER_RE = re.compile(r"^(.*?\.layers\.\d+)(\.|$)")


def _first_tensor(output: Any) -> torch.Tensor | None:
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, (tuple, list)):
        return next((item for item in output if isinstance(item, torch.Tensor)), None)
    return getattr(output, "last_hidden_state", None)


def _layer_of(param_name: str) -> str:
    match = _LAYER_RE.match(param_name)
    return match.group(1) if match else param_name.rsplit(".", 1)[0]


class NonFiniteGuard(TrainerCallback):
    """Stop (``policy="stop"``) or skip the optimizer step (``"skip"``) when the loss or a gradient is NaN/inf.

    Each training step costs one fused norm over the gradients (``torch._foreach_norm``) and one read-back: the
    loss (kept by a hook on the model) and the gradient norms decide. :meth:`attach` also keeps a reference to the
    inputs of the model's last training forward. Only when a step is non-finite does the guard find where it
    started: it replays that forward without gradients, with hooks on every transformer block, its attention and
    feed-forward residual connections (:data:`SUBLAYER_NAMES`) and the embeddings and LayerNorms outside the
    blocks, and names the first module (in forward order) whose output is non-finite, and the first layer *in
    backward order* (the last in model order) with a non-finite gradient: a blow-up in backward spreads from there
    down to the embeddings. (Watching every module on every step cost a 1,000-layer model about a quarter of its
    step time on a CPU; the replay costs one forward, once.) With gradient accumulation the replay is the step's
    last micro-batch. Gradients are not checked with fp16, whose loss scaler skips inf steps itself (so ``skip``
    leaves those steps to the scaler). Raising keeps the last good checkpoint, since nothing is saved after the bad
    step.
    """

    def __init__(self, policy: str = "stop", check_gradients: bool = True, output_dir: str | None = None):
        if policy not in NAN_POLICIES:
            raise ValueError(f"nan_policy must be one of {NAN_POLICIES}, got {policy!r}.")
        self.policy = policy
        self.check_gradients = check_gradients
        self.output_dir = output_dir
        self.skipped_steps: list[int] = []
        self._model: torch.nn.Module | None = None
        self._handles: list[Any] = []
        self._params: list[tuple[str, torch.nn.Parameter]] = []
        self._last_inputs: tuple[tuple[Any, ...], dict[str, Any], tuple[str, torch.dtype] | None] | None = None
        self._loss_flags: list[torch.Tensor] = []

    def attach(self, model: torch.nn.Module) -> "NonFiniteGuard":
        self.detach()
        self._model = model
        self._handles.append(model.register_forward_pre_hook(self._inputs_hook, with_kwargs=True))
        self._handles.append(model.register_forward_hook(self._loss_hook))
        self._params = [(name, param) for name, param in model.named_parameters() if param.requires_grad]
        return self

    def detach(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def _inputs_hook(self, module, args, kwargs):
        if module.training and torch.is_grad_enabled():
            autocast = next(((device, torch.get_autocast_dtype(device)) for device in ("cuda", "cpu")
                             if torch.is_autocast_enabled(device)), None)  # fmt: skip
            self._last_inputs = (args, kwargs, autocast)

    def _loss_hook(self, module, inputs, output):
        loss = getattr(output, "loss", None)
        if module.training and isinstance(loss, torch.Tensor):
            self._loss_flags.append(loss.detach().float().reshape(-1)[:1])

    def _watched_modules(self) -> list[tuple[str, str, torch.nn.Module]]:
        """(name, kind, module) of the blocks, their residual connections and the outer embeddings/LayerNorms."""
        from ..model.layers_deepln import DeepLNBlock
        from ..model.residual_deepln import ResidualConnection

        model = self._model
        blocks = {name for name, module in model.named_modules() if isinstance(module, DeepLNBlock)}

        def inside_block(name: str) -> bool:
            parts = name.split(".")
            return any(".".join(parts[:i]) in blocks for i in range(1, len(parts)))

        watched = []
        for name, module in model.named_modules():
            if not name:
                continue
            outer = isinstance(module, (torch.nn.Embedding, torch.nn.LayerNorm)) and not inside_block(name)
            sublayer = SUBLAYER_NAMES.get(name.rsplit(".", 1)[-1]) if isinstance(module, ResidualConnection) else None
            if isinstance(module, DeepLNBlock) or outer or sublayer:
                watched.append((name, sublayer or type(module).__name__, module))
        return watched

    @torch.no_grad()
    def first_non_finite_module(self) -> tuple[str, str] | None:
        """Replay the last training forward with a hook on every watched module; the first (in forward order) whose
        output is non-finite, as (name, kind), or ``None``. Every process must call it (a sharded model's forward
        is collective)."""
        if self._model is None or self._last_inputs is None:
            return None
        flags: list[tuple[str, str, torch.Tensor]] = []

        def hook_for(name: str, kind: str):
            def hook(module, inputs, output):
                tensor = _first_tensor(output)
                if tensor is not None and tensor.is_floating_point():
                    flags.append((name, kind, torch.isfinite(tensor).all()))

            return hook

        handles = [module.register_forward_hook(hook_for(name, kind)) for name, kind, module in self._watched_modules()]
        args, kwargs, autocast = self._last_inputs  # replayed under the step's mixed precision, if any
        try:
            with torch.autocast(autocast[0] if autocast else "cpu", dtype=autocast[1] if autocast else None,
                                enabled=autocast is not None):  # fmt: skip
                self._model(*args, **kwargs)
        finally:
            for handle in handles:
                handle.remove()
            self._loss_flags = []
        if not flags:
            return None
        ok = torch.stack([flag for *_, flag in flags]).cpu()
        return flags[int((~ok).nonzero()[0])][:2] if (~ok).any() else None

    def _evidence(self) -> tuple[bool, float | None, str | None]:
        """(non-finite?, the non-finite loss, first bad gradient parameter in backward order), read back once."""
        losses = torch.cat(self._loss_flags) if self._loss_flags else torch.zeros(0)
        grads = [param.grad for _, param in self._params] if self.check_gradients else []
        present = [i for i, grad in enumerate(grads) if grad is not None]
        norms = torch._foreach_norm([grads[i] for i in present]) if present else []
        device = losses.device
        no_flags = torch.ones(0, dtype=torch.bool, device=device)
        grad_ok = torch.stack([norm.to(device) for norm in norms]).isfinite() if norms else no_flags
        losses_ok = losses.isfinite()
        # Only the loss and the gradients decide. (Non-finite values that never reach the loss, e.g. at fully masked
        # padding positions, are not an error.)
        if bool(torch.cat([losses_ok, grad_ok]).all()):
            return False, None, None
        bad_loss = float(losses[~losses_ok][0]) if (~losses_ok).any() else None
        bad_grad = self._params[present[int((~grad_ok).nonzero()[-1])]][0] if (~grad_ok).any() else None
        return True, bad_loss, bad_grad

    def describe(
        self, step: int, bad_loss: float | None, bad_module: tuple[str, str] | None, bad_grad: str | None
    ) -> str:
        what = [f"loss = {bad_loss}"] if bad_loss is not None else []
        if bad_grad is not None:
            what.append("non-finite gradients")
        message = f"Training became non-finite at step {step} ({', '.join(what) or 'non-finite gradients'})."
        if bad_module is not None:
            message += f" First layer with non-finite activations: {bad_module[0]} ({bad_module[1]})."
        else:
            message += " All activations were finite in the forward pass."
        if bad_grad is not None:
            message += (
                f" First layer with non-finite gradients (in backward order): {_layer_of(bad_grad)} "
                f"(parameter {bad_grad})."
            )
        return message

    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        step = state.global_step + 1
        non_finite, bad_loss, bad_grad = self._evidence()
        self._loss_flags = []
        if not distributed_any(non_finite):
            self._last_inputs = None
            return control
        bad_module = self.first_non_finite_module()  # every process replays (a sharded forward is collective)
        self._last_inputs = None
        if bad_module is not None:
            bad_grad = None  # the forward was non-finite already: every gradient below it is NaN too
        message = self.describe(step, bad_loss, bad_module, bad_grad)
        if self.policy == "skip":
            if self.check_gradients:  # fp16: the loss scaler skips the step itself and needs the gradients
                for _, param in self._params:
                    param.grad = None
            self.skipped_steps.append(step)
            if state.is_world_process_zero:
                print(f"\n[deepln] {message} Skipping this optimizer step (nan_policy=skip).", flush=True)
            return control
        checkpoint = last_complete_checkpoint(self.output_dir) if self.output_dir else None
        message += (
            f" Stopped; the last good checkpoint is {checkpoint} (continue with --resume, e.g. with a lower --lr)."
            if checkpoint
            else " Stopped; no checkpoint had been saved yet."
        )
        raise NonFiniteError(message)

    def on_evaluate(self, args, state, control, **kwargs):
        self._loss_flags = []

    def on_train_end(self, args, state, control, **kwargs):
        self.detach()
        self._loss_flags, self._last_inputs = [], None
