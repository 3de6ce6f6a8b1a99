"""A per-layer training monitor for deepln models: :class:`LayerMonitor`, a ``transformers.TrainerCallback``.

Every ``every`` optimizer steps (and at each of the first ``first_steps`` steps) it records, for each layer ``i`` and
sublayer (``attn``, ``ffn``: each :class:`~modeling_deepln.model.residual_deepln.ResidualConnection` with its
sublayer ``G``):

=================  ============================================================================================
``grad_norm``      ``sqrt(Σ_p ‖∇p‖²)`` over the sublayer's parameters (after Trainer's gradient clipping)
``relative_update``  ``‖ΔW‖ / ‖W‖`` of the sublayer's parameters over that optimizer step, the relative parameter
                   update (parameter copies before the step, one fused difference). Not DeepNet's model update
                   ``‖F(x; θ_i) − F(x; θ_0)‖`` (arXiv 2203.00555 §3), a change of the output:
                   :mod:`~modeling_deepln.stability.bound` measures that. Records written before this name used
                   ``update_size`` (:func:`load_monitor_records` reads both).
``stream_norm``    mean over real positions of ``‖x_out‖``, the residual stream leaving the sublayer
``branch_ratio``   ``‖G(x)‖ / ‖α·λ⊙x‖`` (Frobenius over the real positions of the batch): how much the branch adds
                   against the skip path (``α`` the scheme's residual multiplier; 1 in the ``alpha_plus_ln`` form,
                   where α is outside)
``position_cosine``  mean cosine between the outputs at different real positions of a sequence (1.0: collapsed)
=================  ============================================================================================

Real positions: the activation measures leave out padding, using the ``attention_mask`` the model is called with
(a forward pre-hook on the model reads it; without one, every position counts, as in packed pre-training blocks).

Parameter norms come from ``torch._foreach_norm`` over all parameters at once (:func:`grouped_norms`); activation
measures from forward hooks that exist only during a monitored step (first micro-batch only) and keep their results
as device tensors; everything is read back once per monitored step. Unmonitored steps cost nothing.

Outputs (in ``output_dir``, default the Trainer's): ``monitor.jsonl`` (one record per monitored step),
``monitor_heatmaps.png`` (layer × step, one panel per quantity) at the end of training (a model that grows during
training, e.g. with CompoundGrow, is re-grouped at the next monitored step), TensorBoard scalars
(``monitor/<quantity>/layer_<i>_<sublayer>``) and histograms (``monitor/<quantity>``, the values over layers) under
``<output_dir>/monitor_tensorboard``. The first non-finite value is reported once, naming layer, sublayer and
quantity (:attr:`LayerMonitor.first_non_finite`). Works with any ``Trainer`` on a deepln model; attaches itself to
the ``model`` Trainer passes to ``on_train_begin`` (or call :meth:`LayerMonitor.attach`).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import TrainerCallback

from ..training.callbacks import _first_tensor
from .measures import grouped_norms, masked_norm, mean_position_cosine, mean_token_norm

__all__ = ["QUANTITIES", "Sublayer", "LayerMonitor", "find_sublayers", "monitor_callbacks", "load_monitor_records"]

QUANTITIES = ("grad_norm", "relative_update", "stream_norm", "branch_ratio", "position_cosine")
"""What the monitor records per sublayer, in the order of each record's ``values``."""
FORMER_NAMES = {"update_size": "relative_update"}
"""Quantity names of earlier ``monitor.jsonl`` files -> today's."""

SUBLAYER_KINDS = {"attention_residual": "attn", "mlp_residual": "ffn"}
"""Attribute of the ResidualConnection in a ``DeepLNBlock`` -> sublayer name; the branch module is the attribute
without ``_residual`` (``attention``, ``mlp``)."""


@dataclass(frozen=True)
class Sublayer:
    """One monitored sublayer: layer index, kind (``attn``/``ffn``) and the ResidualConnection's module path."""

    layer: int
    kind: str
    module_name: str

    @property
    def label(self) -> str:
        return f"layer_{self.layer:03d}_{self.kind}"


def find_sublayers(model: torch.nn.Module) -> list[tuple[Sublayer, torch.nn.Module, torch.nn.Module, list]]:
    """``(sublayer, residual connection, branch module, parameters)`` of every block of a deepln model, in
    forward order. The branch module is NormFormer's branch LayerNorm when present, else the sublayer itself."""
    from ..model.layers_deepln import DeepLNBlock

    found = []
    blocks = [(name, module) for name, module in model.named_modules() if isinstance(module, DeepLNBlock)]
    if not blocks:
        raise ValueError(f"{type(model).__name__} has no DeepLNBlock layers: LayerMonitor needs a deepln model.")
    for layer, (name, block) in enumerate(blocks):
        for attribute, kind in SUBLAYER_KINDS.items():
            residual = getattr(block, attribute)
            sublayer = getattr(block, attribute.removesuffix("_residual"))
            branch = residual.branch_norm if residual.branch_norm is not None else sublayer
            params = [p for p in (*residual.parameters(), *sublayer.parameters()) if p.requires_grad]
            found.append((Sublayer(layer, kind, f"{name}.{attribute}"), residual, branch, params))
    return found


class LayerMonitor(TrainerCallback):
    """Record per-layer, per-sublayer training diagnostics every ``every`` steps (see the module docstring).

    Args:
        every: monitor steps ``every, 2·every, ...`` (1-based optimizer steps).
        first_steps: also monitor each of the first ``first_steps`` steps (early relative updates).
        output_dir: where ``monitor.jsonl``, the heatmaps and the TensorBoard folder go (default: Trainer's).
        tensorboard: write TensorBoard scalars and histograms.
        plots: write ``monitor_heatmaps.png`` at the end of training.
    """

    def __init__(
        self,
        every: int = 10,
        first_steps: int = 0,
        output_dir: str | None = None,
        tensorboard: bool = True,
        plots: bool = True,
    ):
        if int(every) < 1:
            raise ValueError(f"LayerMonitor: every must be a positive number of steps, got {every}.")
        self.every, self.first_steps = int(every), int(first_steps)
        self.output_dir, self.tensorboard, self.plots = output_dir, tensorboard, plots
        self.records: list[dict[str, Any]] = []
        self.first_non_finite: dict[str, Any] | None = None
        self.sublayers: list[Sublayer] = []
        self._entries: list[tuple[Sublayer, torch.nn.Module, torch.nn.Module, list]] = []
        self._params: list[torch.nn.Parameter] = []
        self._group_index = torch.zeros(0, dtype=torch.long)
        self._handles: list[Any] = []
        self._model: torch.nn.Module | None = None
        self._signature: tuple[int, ...] = ()
        self._writer = None
        self._reset_step()

    # ------------------------------------------------------------------ setup

    def attach(self, model: torch.nn.Module) -> "LayerMonitor":
        """Find the model's sublayers and group its parameters (call once; Trainer's ``on_train_begin`` does)."""
        self._entries = find_sublayers(model)
        self._model = model
        self._signature = tuple(id(p) for p in model.parameters())
        self.sublayers = [entry[0] for entry in self._entries]
        self._params = [p for entry in self._entries for p in entry[3]]
        self._group_index = torch.tensor(
            [g for g, entry in enumerate(self._entries) for _ in entry[3]], dtype=torch.long
        )
        return self

    def is_monitored(self, step: int) -> bool:
        """Whether optimizer step ``step`` (1-based) is recorded."""
        return step <= self.first_steps or step % self.every == 0

    def _reset_step(self) -> None:
        self._active_step: int | None = None
        self._acts: dict[int, list[torch.Tensor]] = {}
        self._mask: torch.Tensor | None = None
        self._mask_read = False
        self._branch: dict[int, torch.Tensor] = {}
        self._grad: torch.Tensor | None = None
        self._before: list[torch.Tensor] | None = None
        self._update: torch.Tensor | None = None

    def _install_hooks(self) -> None:
        if self._model is not None:
            self._handles.append(self._model.register_forward_pre_hook(self._mask_hook, with_kwargs=True))
        for g, (_, residual, branch, _) in enumerate(self._entries):
            self._handles.append(residual.register_forward_hook(self._residual_hook(g), with_kwargs=True))
            self._handles.append(branch.register_forward_hook(self._branch_hook(g)))

    def _remove_hooks(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def _mask_hook(self, module, args, kwargs):
        """Keep the first monitored forward's ``attention_mask`` (``[batch, T]``; padded positions 0)."""
        if not self._mask_read:
            self._mask_read = True
            mask = kwargs.get("attention_mask")
            self._mask = mask.detach() if isinstance(mask, torch.Tensor) and mask.dim() == 2 else None

    def _real_positions(self, hidden: torch.Tensor) -> torch.Tensor | None:
        """The mask of real positions when it fits ``hidden`` (``[batch, T, ...]``), else None (all count)."""
        mask = self._mask
        return mask if mask is not None and tuple(mask.shape) == tuple(hidden.shape[:2]) else None

    def _branch_hook(self, g: int):
        def hook(module, inputs, output):
            tensor = _first_tensor(output)
            if g not in self._branch and tensor is not None:
                self._branch[g] = masked_norm(tensor, self._real_positions(tensor))

        return hook

    def _residual_hook(self, g: int):
        def hook(module, args, kwargs, output):
            if g in self._acts:  # later micro-batches / checkpointing recomputation
                return
            x = (args[0] if args else kwargs["hidden_states"]).detach().float()
            out = _first_tensor(output)
            skip = x * module.residual_scale.detach().float() if module.residual_scale is not None else x
            mask = self._real_positions(out)
            skip_norm = masked_norm(skip, mask) * (1.0 if module.alpha_plus_ln else abs(module.alpha))
            self._acts[g] = [mean_token_norm(out, mask), skip_norm, mean_position_cosine(out, mask)]

        return hook

    # ------------------------------------------------------------------ Trainer events

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        if not self._entries and model is not None:
            self.attach(model)
        if self.output_dir is None and args is not None:
            self.output_dir = args.output_dir
        if self.tensorboard and state.is_world_process_zero and self._writer is None and self.output_dir:
            from torch.utils.tensorboard import SummaryWriter

            self._writer = SummaryWriter(log_dir=str(Path(self.output_dir) / "monitor_tensorboard"))

    def on_step_begin(self, args, state, control, model=None, **kwargs):
        step = state.global_step + 1
        self._reset_step()
        if model is not None and self._entries and self.is_monitored(step):
            signature = tuple(id(p) for p in model.parameters())
            if signature != self._signature:  # the model changed shape (e.g. CompoundGrow added layers): re-group
                self.attach(model)
        if self._entries and self.is_monitored(step):
            self._active_step = step
            self._install_hooks()

    def on_pre_optimizer_step(self, args, state, control, **kwargs):
        if self._active_step is None:
            return
        grads = [p.grad for p in self._params]
        present = [i for i, grad in enumerate(grads) if grad is not None]
        if present:
            index = self._group_index[present]
            self._grad = grouped_norms([grads[i] for i in present], index, len(self._entries))
        self._before = torch._foreach_mul([p.detach() for p in self._params], 1.0)

    def on_optimizer_step(self, args, state, control, **kwargs):
        if self._active_step is None or self._before is None:
            return
        after = [p.detach() for p in self._params]
        delta = torch._foreach_sub(after, self._before)
        n = len(self._entries)
        self._update = grouped_norms(delta, self._group_index, n) / grouped_norms(
            self._before, self._group_index, n
        ).clamp_min(1e-30)
        self._before = None

    def on_step_end(self, args, state, control, **kwargs):
        if self._active_step is None:
            return
        self._remove_hooks()
        record = self._collect(self._active_step)
        self._reset_step()
        if record is None:
            return
        self.records.append(record)
        self._check_finite(record)
        if state is None or state.is_world_process_zero:
            self._write(record)

    def on_train_end(self, args, state, control, **kwargs):
        self._remove_hooks()
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        if self.plots and self.records and self.output_dir and (state is None or state.is_world_process_zero):
            from .report import plot_monitor_heatmaps

            path = plot_monitor_heatmaps(self.records, self.sublayers, Path(self.output_dir) / "monitor_heatmaps.png")
            print(f"[deepln] per-layer monitor: {len(self.records)} records; heatmaps in {path}", flush=True)

    # ------------------------------------------------------------------ records

    def _collect(self, step: int) -> dict[str, Any] | None:
        """Stack this step's device tensors into ``[quantity, sublayer]`` and read them back once."""
        n = len(self._entries)
        nan = torch.full((n,), float("nan"))
        rows = [nan if self._grad is None else self._grad.cpu(), nan if self._update is None else self._update.cpu()]
        if self._acts:
            acts = [torch.stack(self._acts[g]).cpu() if g in self._acts else torch.full((3,), float("nan"))
                    for g in range(n)]  # fmt: skip
            branch = torch.stack([self._branch.get(g, torch.tensor(float("nan"))).cpu() for g in range(n)])
            acts = torch.stack(acts)  # [n, 3]: stream norm, skip norm, cosine
            rows += [acts[:, 0], branch / acts[:, 1].clamp_min(1e-30), acts[:, 2]]
        else:
            rows += [nan, nan, nan]
        measured = [self._grad is not None, self._update is not None] + [bool(self._acts)] * 3
        if not any(measured):
            return None
        values = dict(zip(QUANTITIES, torch.stack(rows).tolist()))
        return {"step": step, "values": values, "measured": [q for q, m in zip(QUANTITIES, measured) if m]}

    def _check_finite(self, record: dict[str, Any]) -> None:
        """Remember (and print once) the first non-finite value: forward order for activations, then gradients
        in backward order (last layer first, where a backward blow-up starts), then updates."""
        if self.first_non_finite is not None:
            return
        values, order = record["values"], range(len(self.sublayers))
        candidates = [(q, g) for g in order for q in ("stream_norm", "branch_ratio", "position_cosine")]
        candidates += [("grad_norm", g) for g in reversed(order)] + [("relative_update", g) for g in order]
        for quantity, g in candidates:
            value = values[quantity][g]
            if quantity in record["measured"] and not math.isfinite(value):
                sub = self.sublayers[g]
                self.first_non_finite = {"step": record["step"], "layer": sub.layer, "sublayer": sub.kind,
                                         "quantity": quantity, "module": sub.module_name, "value": value}  # fmt: skip
                print(
                    f"\n[deepln] monitor: first non-finite value at step {record['step']}: {quantity} = {value} in "
                    f"layer {sub.layer}, {sub.kind} sublayer ({sub.module_name}).",
                    flush=True,
                )
                return

    def _write(self, record: dict[str, Any]) -> None:
        if self.output_dir:
            path = Path(self.output_dir)
            path.mkdir(parents=True, exist_ok=True)
            with open(path / "monitor.jsonl", "a") as handle:
                labels = [sub.label for sub in self.sublayers]
                handle.write(json.dumps({**record, "sublayers": labels}) + "\n")
        if self._writer is None:
            return
        step = record["step"]
        for quantity, row in record["values"].items():
            finite = [v for v in row if math.isfinite(v)]
            for sub, value in zip(self.sublayers, row):
                if math.isfinite(value):
                    self._writer.add_scalar(f"monitor/{quantity}/{sub.label}", value, step)
            if finite:
                self._writer.add_histogram(f"monitor/{quantity}", torch.tensor(finite), step)

    def as_array(self, quantity: str) -> tuple[list[int], list[list[float]]]:
        """``(steps, values[sublayer][record])`` of one quantity over the recorded steps."""
        steps = [record["step"] for record in self.records]
        columns = [record["values"][quantity] for record in self.records]
        return steps, [list(row) for row in zip(*columns)] if columns else []


def load_monitor_records(path: str | Path) -> list[dict[str, Any]]:
    """The records of a ``monitor.jsonl`` file, quantity names as today's (earlier files' names mapped)."""
    records = []
    for line in Path(path).read_text().splitlines():
        if line.strip():
            record = json.loads(line)
            record["values"] = {FORMER_NAMES.get(k, k): v for k, v in record["values"].items()}
            record["measured"] = [FORMER_NAMES.get(k, k) for k in record.get("measured", [])]
            records.append(record)
    return records


def monitor_callbacks(args: Any) -> list[TrainerCallback]:
    """``[LayerMonitor(every=args.monitor_every)]`` when a run asked for it (``--monitor-every K``), else ``[]``."""
    every = getattr(args, "monitor_every", None)
    return [LayerMonitor(every=int(every))] if every else []
