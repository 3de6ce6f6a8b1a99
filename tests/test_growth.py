"""CompoundGrow (modeling_deepln.growth): operators against exact references, optimizer-state growth against autograd,
schedules, the TrainerCallback on a real Trainer, and ``deepln pretrain --grow`` resumed across growth."""

from __future__ import annotations

import json
import math
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from modeling_deepln.growth import (
    CompoundGrowCallback,
    GrowthError,
    GrowthStage,
    enable_length_pooling,
    grow_model,
    grow_optimizer,
    parse_schedule,
    stack_layers,
    unshare_ffn,
)
from modeling_deepln.growth.bench import time_to_target
from modeling_deepln.growth.pooling import mean_pool
from modeling_deepln.growth.schedule import resolve_ends, stage_index_at
from modeling_deepln.model import DeepLNBertConfig, DeepLNBertForMaskedLM, DeepLNGPTConfig, DeepLNGPTForCausalLM

VOCAB, MASK = 64, 3


pytestmark = pytest.mark.usefixtures("single_thread")


def bert(scheme="post_ln", layers=2, ffn=32, **extra) -> DeepLNBertForMaskedLM:
    torch.manual_seed(0)
    config = DeepLNBertConfig(
        vocab_size=VOCAB, hidden_size=16, num_hidden_layers=layers, num_attention_heads=2, intermediate_size=ffn,
        max_position_embeddings=64, residual_norm=scheme, **extra,
    )  # fmt: skip
    return perturb(DeepLNBertForMaskedLM(config))


def gpt(scheme="pre_ln", layers=2, ffn=32) -> DeepLNGPTForCausalLM:
    torch.manual_seed(0)
    config = DeepLNGPTConfig(
        vocab_size=VOCAB, hidden_size=16, num_hidden_layers=layers, num_attention_heads=2, intermediate_size=ffn,
        max_position_embeddings=64, residual_norm=scheme, bos_token_id=1, eos_token_id=1,
    )  # fmt: skip
    return perturb(DeepLNGPTForCausalLM(config))


def perturb(model):
    """Noise on every parameter (LayerNorms and biases away from their init), eval mode."""
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for param in model.parameters():
            param.add_(torch.randn(param.shape, generator=generator) * 0.1)
    return model.eval()


def batch(rows=3, length=13, seed=0):
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, VOCAB, (rows, length), generator=generator)
    labels = torch.full_like(ids, -100)
    for row, positions in enumerate(([2, 5], [3], [1, 7, 12])[:rows]):
        labels[row, positions] = ids[row, positions]
        ids[row, positions] = MASK
    return ids, labels


# ------------------------------------------------------------------------------------------------ width


@pytest.mark.parametrize(
    "make", [lambda: bert("post_ln"), lambda: bert("normformer"), lambda: gpt("pre_ln"), lambda: gpt("deepnorm")]
)
def test_ffn_unsharing_is_function_preserving(make):
    model = make()
    ids, _ = batch()
    with torch.no_grad():
        before = model(ids).logits
    unshare_ffn(model, 4)
    with torch.no_grad():
        after = model(ids).logits
    assert model.config.intermediate_size == 128
    assert all(block.mlp.fc1.out_features == 128 for block in model.base_model.layers)
    torch.testing.assert_close(after, before, rtol=1e-5, atol=1e-5 * float(before.abs().max()))


def _expected(name: str, shared: torch.Tensor, k: int) -> torch.Tensor:
    """The un-shared copy of ``shared`` (a gradient or a moment) for parameter ``name``: fc1 rows /k, fc2 columns."""
    kind = name.split("mlp.")[1]
    if kind == "fc1.weight":
        return shared.repeat(k, 1) / k
    if kind == "fc1.bias":
        return shared.repeat(k) / k
    return shared.repeat(1, k) if kind == "fc2.weight" else shared


def _mlp_grads(model, ids, labels) -> dict[str, torch.Tensor]:
    model.zero_grad()
    model(ids, labels=labels).loss.backward()  # eval mode: no dropout, so the function is deterministic
    return {n: p.grad.clone() for n, p in model.named_parameters() if ".mlp." in n}


def test_unshared_gradients_are_the_shared_ones_split_over_the_copies():
    """Autograd on the grown model: the copies' gradients are the shared ones /k (fc1, b1) or equal (fc2, b2),
    the relation the optimizer-state growth assumes."""
    model, k = bert("post_ln"), 2
    ids, labels = batch()
    shared = _mlp_grads(model, ids, labels)
    unshare_ffn(model, k)
    grown = _mlp_grads(model, ids, labels)
    for name, grad in grown.items():
        want = _expected(name, shared[name], k)
        torch.testing.assert_close(grad, want, rtol=1e-4, atol=1e-5 * float(want.abs().max()))


def test_unshared_adam_moments_and_step():
    model, k = bert("post_ln"), 2
    ids, labels = batch()
    shared = _mlp_grads(model, ids, labels)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    optimizer.step()  # after one step: exp_avg = 0.1 g, exp_avg_sq = 0.001 g², step 1
    origins = unshare_ffn(model, k)
    assert grow_optimizer(optimizer, model, origins) == 4 * len(model.bert.layers)
    for name, param in model.named_parameters():
        if ".mlp." in name:
            expected, state = _expected(name, shared[name], k), optimizer.state[param]
            scale = float(expected.abs().max())
            torch.testing.assert_close(state["exp_avg"], 0.1 * expected, rtol=1e-5, atol=1e-5 * 0.1 * scale)
            torch.testing.assert_close(state["exp_avg_sq"], 0.001 * expected**2, rtol=1e-4,
                                       atol=1e-5 * 0.001 * scale**2)  # fmt: skip
            assert float(state["step"]) == 1.0
    assert sum(len(g["params"]) for g in optimizer.param_groups) == len(list(model.parameters()))
    _mlp_grads(model, ids, labels)
    optimizer.step()  # the grown optimizer steps the grown parameters


# ------------------------------------------------------------------------------------------------ depth


@pytest.mark.parametrize("scheme", ["deepnorm", "upscale_ln", "post_ln", "pre_ln"])
def test_stacking_copies_layers_and_keeps_the_small_stack_exact(scheme, tmp_path):
    model = bert(scheme, layers=2)
    ids, _ = batch()
    with torch.no_grad():
        small = model.bert(ids).last_hidden_state
    alpha_small = model.bert.layers[0].attention_residual.alpha
    stack_layers(model, 6)
    config = model.config
    assert config.num_hidden_layers == 6 and len(model.bert.layers) == 6
    expected_alpha = {"deepnorm": 12**0.25, "upscale_ln": 12**0.25}.get(scheme, 1.0)  # (2N)^1/4 with N = 6
    assert all(b.attention_residual.alpha == pytest.approx(expected_alpha) for b in model.bert.layers)
    assert alpha_small == pytest.approx({"deepnorm": 4**0.25, "upscale_ln": 4**0.25}.get(scheme, 1.0))
    for index, block in enumerate(model.bert.layers):
        source = model.bert.layers[index % 2]
        assert block.attention.layer_idx == index
        for (name, p), q in zip(block.named_parameters(), source.parameters()):
            assert torch.equal(p, q), name
            assert index < 2 or p is not q
    with torch.no_grad():
        hidden = model.bert(ids, output_hidden_states=True).hidden_states
    if scheme != "pre_ln":  # Post-LN: the first two grown layers reproduce the small stack (α compensated)
        torch.testing.assert_close(hidden[2], small, atol=1e-5, rtol=1e-5)
    # a grown model is a plain deepln checkpoint: α is recomputed from the saved depth and gives the same logits
    model.save_pretrained(tmp_path)
    reloaded = DeepLNBertForMaskedLM.from_pretrained(tmp_path).eval()
    with torch.no_grad():
        torch.testing.assert_close(reloaded(ids).logits, model(ids).logits)


def test_stacking_optimizer_state_copies_and_rescales():
    model = bert("deepnorm", layers=2)
    ids, labels = batch()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model(ids, labels=labels).loss.backward()
    optimizer.step()
    old = {name: {k: v.clone() for k, v in optimizer.state[p].items()} for name, p in model.named_parameters()}
    ratio = (12 / 4) ** 0.25  # α(6) / α(2)
    change = grow_model(model, GrowthStage(2), GrowthStage(6), optimizer)
    assert change["old_shape"]["layers"] == 2 and change["new_shape"]["layers"] == 6
    named = dict(model.named_parameters())
    assert set(optimizer.state) == set(named.values())
    for name, param in named.items():
        if ".layers." not in name:
            torch.testing.assert_close(optimizer.state[param]["exp_avg"], old[name]["exp_avg"])
            continue
        index = int(name.split(".layers.")[1].split(".")[0])
        source = name.replace(f".layers.{index}.", f".layers.{index % 2}.")
        scale = 1 / ratio if ("out_proj" in name or "fc2" in name) else 1.0
        torch.testing.assert_close(optimizer.state[param]["exp_avg"], old[source]["exp_avg"] * scale)
        torch.testing.assert_close(optimizer.state[param]["exp_avg_sq"], old[source]["exp_avg_sq"] * scale**2)
    model.zero_grad()
    model(ids, labels=labels).loss.backward()
    optimizer.step()


# ------------------------------------------------------------------------------------------------ length


def test_mean_pool_matches_torch_avg_pool_same_padding():
    hidden = torch.randn(2, 7, 3)
    reference = F.avg_pool1d(hidden.transpose(1, 2), 2, 2, ceil_mode=True, count_include_pad=False).transpose(1, 2)
    torch.testing.assert_close(mean_pool(hidden, 2), reference)
    assert mean_pool(hidden, 2)[:, -1].allclose(hidden[:, -1])  # the odd last window averages only itself


@pytest.mark.parametrize("scheme", ["post_ln", "pre_ln"])
def test_pooling_one_layer_scores_targets_like_the_plain_model(scheme):
    """With one layer, the unpooled targets attend to the full-length embeddings: logits identical to the plain
    model's at the masked positions, whatever the pooling of the other queries."""
    model = bert(scheme, layers=1)
    ids, labels = batch()
    with torch.no_grad():
        plain = model(ids, labels=labels)
        enable_length_pooling(model, 2)
        pooled = model(ids, labels=labels)
    for row in range(ids.shape[0]):
        positions = (labels[row] != -100).nonzero().flatten()
        torch.testing.assert_close(pooled.logits[row, : len(positions)], plain.logits[row, positions], atol=1e-5,
                                   rtol=1e-5)  # fmt: skip
    torch.testing.assert_close(pooled.loss, plain.loss, atol=0, rtol=1e-5)


def test_pooling_shortens_later_layers_and_is_removed_without_parameters():
    model = bert("post_ln", layers=2)
    ids, labels = batch(length=13)
    seen = []
    model.bert.layers[1].register_forward_pre_hook(lambda module, args: seen.append(args[0].shape[1]))
    state = {k: v.clone() for k, v in model.state_dict().items()}
    enable_length_pooling(model, 2)
    with torch.no_grad():
        out = model(ids, labels=labels)
    assert seen == [1 + math.ceil(12 / 2) + 3]  # [CLS] + pooled 12 tokens + 3 targets (rows padded to 3)
    assert out.logits.shape == (3, 3, VOCAB) and torch.isfinite(out.loss)
    enable_length_pooling(model, 1)  # growth removes it
    with torch.no_grad():
        assert model(ids, labels=labels).logits.shape == (3, 13, VOCAB)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in state.items())
    with pytest.raises(GrowthError, match="BERT masked-LM models only"):
        enable_length_pooling(gpt(), 2)


# ------------------------------------------------------------------------------------------------ schedule


def test_schedules_parse_to_the_papers_stages():
    stages = resolve_ends(parse_schedule("compound", 12, 3072, "bert"), 1000)
    assert [(s.depth, s.ffn_share, s.pool, s.end) for s in stages] == [
        (3, 2, 2, 200), (6, 2, 2, 400), (12, 2, 2, 700), (12, 1, 1, None)]  # fmt: skip
    assert [s.pool for s in parse_schedule("compound", 12, 3072, "gpt")] == [1, 1, 1, 1]
    assert [s.depth for s in parse_schedule("stack", 24, 4096)] == [6, 12, 24]
    assert [stage_index_at(stages, step) for step in (0, 199, 200, 699, 700, 999)] == [0, 0, 1, 2, 3, 3]
    custom = parse_schedule("depth=2,ffn_share=4@10; depth=4@20; depth=full", 4, 64)
    assert [(s.depth, s.ffn_share, s.end) for s in custom] == [(2, 4, 10), (4, 1, 20), (4, 1, None)]
    for bad, message in [
        ("depth=2@5", "at least two"), ("depth=4@5; depth=2", "last stage"), ("depth=1/3@5; depth=full", "whole"),
        ("depth=2; depth=full", "needs an end"), ("depth=2,ffn_share=3@5; depth=full", "divide"),
        ("depth=2,pool=2@5; depth=full", "BERT"), ("width=2@5; depth=full", "Bad stage item"),
    ]:  # fmt: skip
        with pytest.raises(GrowthError, match=message):
            parse_schedule(bad, 12 if "1/3" not in bad else 4, 64, "gpt" if "pool" in bad else "bert")


def test_time_to_target_interpolates_and_waits_for_the_full_shape():
    points = [dict(seconds=1, cpu=0.5, loss=5.0, full=False), dict(seconds=2, cpu=1, loss=3.0, full=True),
              dict(seconds=4, cpu=3, loss=1.0, full=True)]  # fmt: skip
    assert time_to_target(points, 2.0) == pytest.approx(3.0) and time_to_target(points, 2.0, "cpu") == pytest.approx(2.0)
    assert time_to_target(points, 4.0) == 2  # the shallow model's 5.0 -> ... is not the full model
    assert time_to_target(points, 0.5) is None


# ------------------------------------------------------------------------------------------------ Trainer


def _mlm_rows(count=64, length=16):
    generator = torch.Generator().manual_seed(0)
    return [{"input_ids": torch.randint(5, VOCAB, (length,), generator=generator).tolist()} for _ in range(count)]


def _mlm_collate(rows):
    ids = torch.tensor([row["input_ids"] for row in rows])
    labels = torch.full_like(ids, -100)
    labels[:, 2::5] = ids[:, 2::5]
    ids[:, 2::5] = MASK
    return {"input_ids": ids, "labels": labels, "attention_mask": torch.ones_like(ids)}


def test_callback_grows_inside_a_real_trainer(tmp_path):
    from datasets import Dataset
    from transformers import Trainer, TrainingArguments

    from modeling_deepln.growth.callback import stage_model

    full = bert("post_ln", layers=4, ffn=32).config
    stages = parse_schedule(
        "depth=2,ffn_share=2,pool=2@3; depth=full,ffn_share=2,pool=2@5; depth=full,ffn_share=2@7; depth=full", 4, 32
    )
    torch.manual_seed(0)
    model = stage_model(full, stages[0], DeepLNBertForMaskedLM)
    probe = _mlm_collate(_mlm_rows(4))
    callback = CompoundGrowCallback(stages, probe_batch=probe, output_dir=tmp_path, verbose=False)
    args = TrainingArguments(
        output_dir=str(tmp_path), max_steps=9, per_device_train_batch_size=8, learning_rate=1e-3, report_to="none",
        save_strategy="no", logging_steps=1, use_cpu=True, disable_tqdm=True, warmup_steps=0, lr_scheduler_type="linear",
    )  # fmt: skip
    trainer = Trainer(model=model, args=args, train_dataset=Dataset.from_list(_mlm_rows()), data_collator=_mlm_collate,
                      callbacks=[callback])  # fmt: skip
    trainer.train()
    assert [e["step"] for e in callback.events] == [3, 5, 7]
    shapes = [(e["new_shape"]["layers"], e["new_shape"]["ffn"], e["new_shape"]["pool"]) for e in callback.events]
    assert shapes == [(4, 16, 2), (4, 16, 1), (4, 32, 1)]
    assert trainer.model is model and model.config.num_hidden_layers == 4 and model.config.intermediate_size == 32
    width_only = callback.events[2]  # FFN un-sharing alone is function-preserving: same probe loss
    assert width_only["loss_after"] == pytest.approx(width_only["loss_before"], rel=1e-5)
    optimizer = trainer.optimizer.optimizer if hasattr(trainer.optimizer, "optimizer") else trainer.optimizer
    params = set(model.parameters())
    assert {p for g in optimizer.param_groups for p in g["params"]} == params
    assert all(float(optimizer.state[p]["step"]) == 9 for p in params)  # every copy carried its step count on
    assert trainer.lr_scheduler.optimizer is trainer.optimizer and trainer.state.global_step == 9
    rates = [e["learning_rate"] for e in trainer.state.log_history if "learning_rate" in e]
    assert rates == pytest.approx([1e-3 * (9 - step) / 9 for step in range(9)])  # one linear decay through growth
    losses = [e["loss"] for e in trainer.state.log_history if "loss" in e]
    assert len(losses) == 9 and all(math.isfinite(x) for x in losses)
    assert len((tmp_path / "growth_events.jsonl").read_text().splitlines()) == 3


def test_callback_refuses_several_processes():
    callback = CompoundGrowCallback(parse_schedule("stack", 4, 32))
    state = SimpleNamespace(max_steps=10, global_step=0)
    with pytest.raises(GrowthError, match="single process"):
        callback.on_train_begin(SimpleNamespace(world_size=2), state, None, model=bert())
    from modeling_deepln.growth.pretrain_growth import attach_growth

    with pytest.raises(GrowthError, match="single process only .this launch has 2"):  # before any model is built
        attach_growth(SimpleNamespace(world=2, model=None, args=SimpleNamespace(grow="stack")))


# ------------------------------------------------------------------------------------------------ pretrain --grow


@pytest.fixture(scope="module")
def text_file(tmp_path_factory):
    from modeling_deepln.training.corpus import wiki_articles

    lines = [line for text in wiki_articles()[:2] for line in text.split("\n") if line.strip()]
    path = tmp_path_factory.mktemp("text") / "wiki.txt"
    path.write_text("\n".join(lines), encoding="utf-8")
    return path


def _losses(folder):
    history = json.loads((folder / "trainer_state.json").read_text())["log_history"]
    return {entry["step"]: entry["loss"] for entry in history if "loss" in entry}


def test_pretrain_grow_resumes_across_growth(tmp_path, text_file, capsys):
    """GPT: a run resumed from a checkpoint taken after two growth events rebuilds the grown shape and reproduces
    the uninterrupted losses exactly; the saved model is a plain full-size deepln checkpoint."""
    import shutil

    from transformers import AutoModelForCausalLM

    from modeling_deepln.cli import main

    out = tmp_path / "run"
    common = [
        "pretrain", "--num-layers", "4", "--hidden-size", "32", "--num-heads", "2", "--seq-len", "32",
        "--vocab-size", "400", "--batch-size", "8", "--report-to", "none", "--no-progress", "--max-eval-samples",
        "16", "--max-steps", "10", "--eval-steps", "0", "--save-steps", "7", "--logging-steps", "1", "--no-samples",
        "--data", str(text_file), "--output-dir", str(out),
        "--grow", "depth=1,ffn_share=2@3; depth=2,ffn_share=2@0.5; depth=full",
    ]  # fmt: skip
    main(common)
    printed = capsys.readouterr().out
    assert "growth at step 3 -> stage 2: layers 1 -> 2, FFN 64 -> 64" in printed
    assert "growth at step 5 -> stage 3: layers 2 -> 4, FFN 64 -> 128" in printed
    uninterrupted = _losses(out)
    state = json.loads((out / "checkpoint-7" / "growth_state.json").read_text())
    assert state["stage"] == 2 and [s["end"] for s in state["stages"]] == [3, 5, None]
    model = AutoModelForCausalLM.from_pretrained(out)
    assert (model.config.num_hidden_layers, model.config.intermediate_size) == (4, 128)
    shutil.rmtree(out / "checkpoint-10")
    main([*common, "--resume"])
    assert "starting in stage 3" in capsys.readouterr().out
    resumed = _losses(out)
    assert [resumed[s] for s in (8, 9, 10)] == pytest.approx([uninterrupted[s] for s in (8, 9, 10)], abs=1e-6)
