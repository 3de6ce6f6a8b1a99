"""Depth-scaled learning rates (``--block-lr-scale``, ``modeling_deepln.training.depth_lr``): the residual blocks
train at ``lr × m`` and everything else at ``lr``.

The reference is Adam's first step: with zero moments, ``m̂ / √v̂ = g / |g| = ±1`` for every element with a non-zero
gradient, so one AdamW step (no weight decay, constant lr) moves each such element by exactly its group's
learning rate (up to ε = 1e-8 relative to |g| and float32 rounding of the parameter)."""

from __future__ import annotations

import math

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoModelForMaskedLM, TrainingArguments

import modeling_deepln  # noqa: F401  (registers the Auto classes)
from modeling_deepln import load_preset
from modeling_deepln.errors import DeepLNInputError
from modeling_deepln.training.depth_lr import BlockLRTrainer, block_lr_multiplier, split_block_learning_rates


@pytest.mark.parametrize("value,layers,expected", [("depth", 1000, 1 / math.sqrt(1000)), ("depth", 4, 0.5),
                                                   (" Depth ", 16, 0.25), (0.1, 7, 0.1), ("0.3", 7, 0.3),
                                                   (None, 7, 1.0), (1, 7, 1.0)])  # fmt: skip
def test_multiplier_is_one_over_root_depth_or_the_number_given(value, layers, expected):
    assert block_lr_multiplier(value, layers) == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("value", ["deep", "-1", 0, -0.5, float("nan"), float("inf")])
def test_bad_multiplier_says_what_it_takes(value):
    with pytest.raises(DeepLNInputError, match="block-lr-scale"):
        block_lr_multiplier(value, 10)


def tiny(family: str):
    preset, auto = ("gpt-1k-cpu", AutoModelForCausalLM) if family == "gpt" else ("bert-1k-cpu", AutoModelForMaskedLM)
    torch.manual_seed(0)
    config = load_preset(preset, num_hidden_layers=4, vocab_size=64, max_position_embeddings=16)
    return auto.from_config(config)


class _Batches(torch.utils.data.Dataset):
    def __init__(self, ids: torch.Tensor):
        self.ids = ids

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"input_ids": self.ids[i], "labels": self.ids[i]}


def one_adam_step(family: str, multiplier: float, tmp_path, lr: float = 1e-3):
    """One ``BlockLRTrainer`` step on one batch; returns the model, its parameters before, and their gradients."""
    model = tiny(family)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    ids = torch.randint(1, 64, (4, 12), generator=torch.Generator().manual_seed(1))
    model(input_ids=ids, labels=ids).loss.backward()
    grads = {n: p.grad.detach().clone() for n, p in model.named_parameters()}
    model.zero_grad(set_to_none=True)
    args = TrainingArguments(output_dir=str(tmp_path), max_steps=1, per_device_train_batch_size=4, learning_rate=lr,
                             lr_scheduler_type="constant", weight_decay=0.0, max_grad_norm=0.0, report_to="none",
                             save_strategy="no", use_cpu=True, disable_tqdm=True)  # fmt: skip
    trainer = BlockLRTrainer(model=model, args=args, train_dataset=_Batches(ids), block_lr_multiplier=multiplier)
    trainer.train()
    return model, before, grads


@pytest.mark.parametrize("family", ["gpt", "bert"])
def test_one_adam_step_moves_block_parameters_by_lr_times_the_multiplier(family, tmp_path):
    lr, multiplier = 1e-3, 0.125
    model, before, grads = one_adam_step(family, multiplier, tmp_path, lr)
    block_names = {n for n, _ in model.named_parameters() if ".layers." in n}
    assert block_names and len(block_names) < len(before)
    checked = set()
    for name, param in model.named_parameters():
        # Elements whose gradient is far above Adam's ε = 1e-8 step by lr·g/(|g| + ε) = lr within 1e-2; the others
        # (unused embedding rows, the key bias, which softmax ignores) are left out.
        live = grads[name].abs() > 1e-6
        if not live.any():
            continue
        moved = (param.detach() - before[name]).abs()[live]
        want = lr * multiplier if name in block_names else lr
        # float32 parameters of size |p| <= ~2: each stored step is off by at most |p|·2^-24 ≈ 1.2e-7.
        torch.testing.assert_close(moved, torch.full_like(moved, want), rtol=1e-2, atol=2.5e-7, msg=name)
        checked.add(name in block_names)
    assert checked == {True, False}


def test_groups_keep_weight_decay_and_cover_every_parameter_once(tmp_path):
    model = tiny("gpt")
    args = TrainingArguments(output_dir=str(tmp_path), learning_rate=2e-3, weight_decay=0.01, report_to="none",
                             use_cpu=True, optim="adamw_torch_fused")  # fmt: skip
    trainer = BlockLRTrainer(model=model, args=args, block_lr_multiplier=0.5)
    optimizer = trainer.create_optimizer()
    seen = [id(p) for group in optimizer.param_groups for p in group["params"]]
    assert sorted(seen) == sorted(id(p) for p in model.parameters())
    blocks = {id(p) for p in model.transformer.layers.parameters()}
    for group in optimizer.param_groups:
        inside = {id(p) in blocks for p in group["params"]}
        assert len(inside) == 1, "a group mixes block and non-block parameters"
        assert group["lr"] == (1e-3 if inside == {True} else 2e-3)
        assert group["weight_decay"] == (0.01 if all(p.ndim >= 2 for p in group["params"]) else 0.0)


def test_multiplier_one_leaves_trainers_optimizer_alone(tmp_path):
    model = tiny("gpt")
    args = TrainingArguments(output_dir=str(tmp_path), learning_rate=2e-3, report_to="none", use_cpu=True)
    assert len(BlockLRTrainer(model=model, args=args).create_optimizer().param_groups) == 2


def test_split_refuses_an_optimizer_that_has_stepped():
    model = tiny("gpt")
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model(input_ids=torch.ones(1, 4, dtype=torch.long), labels=torch.ones(1, 4, dtype=torch.long)).loss.backward()
    optimizer.step()
    with pytest.raises(RuntimeError, match="not stepped"):
        split_block_learning_rates(optimizer, model, 0.5)


def test_a_model_without_residual_blocks_is_refused():
    with pytest.raises(DeepLNInputError, match="deepln model"):
        split_block_learning_rates(torch.optim.AdamW(torch.nn.Linear(2, 2).parameters()), torch.nn.Linear(2, 2), 0.5)
