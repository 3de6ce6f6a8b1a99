"""The stability tools: the per-layer monitor against hand-computed norms, the grid's failure modes, DeepNet's bound."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch

from modeling_deepln import DeepLNGPTConfig, DeepLNGPTForCausalLM
from modeling_deepln.stability.measures import mean_position_cosine
from modeling_deepln.stability.monitor import QUANTITIES, LayerMonitor


def tiny_gpt(residual_norm: str = "deepnorm", layers: int = 3, **kwargs) -> DeepLNGPTForCausalLM:
    torch.manual_seed(0)
    config = DeepLNGPTConfig(vocab_size=40, hidden_size=16, num_hidden_layers=layers, num_attention_heads=2,
                             max_position_embeddings=16, residual_norm=residual_norm, bos_token_id=0,
                             eos_token_id=0, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, **kwargs)  # fmt: skip
    return DeepLNGPTForCausalLM(config).train()


def monitored_step(model, monitor, ids, optimizer, step=1):
    """One training step driven like Trainer drives callbacks; returns what a plain path sees around it."""
    state = SimpleNamespace(global_step=step - 1, is_world_process_zero=True)
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    monitor.on_step_begin(None, state, None)
    model(ids, labels=ids).loss.backward()
    monitor.on_pre_optimizer_step(None, state, None)
    grads = {name: p.grad.detach().clone() for name, p in model.named_parameters() if p.grad is not None}
    optimizer.step()
    monitor.on_optimizer_step(None, state, None)
    monitor.on_step_end(None, state, None)
    optimizer.zero_grad()
    return before, grads


def group_norm(tensors: dict[str, torch.Tensor], prefixes: tuple[str, ...]) -> float:
    total = sum(float(t.double().pow(2).sum()) for name, t in tensors.items() if name.startswith(prefixes))
    return math.sqrt(total)


def plain_cosine(hidden: torch.Tensor) -> float:
    """Mean cosine between distinct positions, by the definition (all ordered pairs, a double loop)."""
    values = []
    for sequence in hidden:
        for s in range(sequence.shape[0]):
            for t in range(sequence.shape[0]):
                if s != t:
                    values.append(float(torch.nn.functional.cosine_similarity(sequence[s], sequence[t], dim=0)))
    return sum(values) / len(values)


@pytest.mark.parametrize("residual_norm", ["deepnorm", "pre_ln"])
def test_monitor_matches_hand_computed_norms(residual_norm):
    model = tiny_gpt(residual_norm)
    monitor = LayerMonitor(every=1, tensorboard=False, plots=False).attach(model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    ids = torch.randint(0, 40, (3, 7), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():  # the forward pass of the plain path, with the weights before the step
        hidden = model(ids, output_hidden_states=True).hidden_states
        block = model.transformer.layers[1]
        x = hidden[1]  # input of layer 1
        connection = block.attention_residual
        normed = connection.norm(x) if connection.norm_before else x
        branch = block.attention(normed, attention_mask=torch.full((7, 7), -1e9).triu(1)[None, None])[0]
        skip = connection.alpha * x
        attn_out = skip + branch if connection.norm_before else connection.norm(skip + branch)
    before, grads = monitored_step(model, monitor, ids, optimizer)
    after = {name: p.detach() for name, p in model.named_parameters()}
    record = monitor.records[-1]
    labels = [sub.label for sub in monitor.sublayers]
    g = labels.index("layer_001_attn")
    prefixes = ("transformer.layers.1.attention.", "transformer.layers.1.attention_residual.")
    values = record["values"]
    assert set(values) == set(QUANTITIES)
    assert values["grad_norm"][g] == pytest.approx(group_norm(grads, prefixes), rel=1e-5)
    delta = {name: after[name] - before[name] for name in before}
    expected_update = group_norm(delta, prefixes) / group_norm(before, prefixes)
    assert values["relative_update"][g] == pytest.approx(expected_update, rel=1e-4)
    assert values["stream_norm"][g] == pytest.approx(float(attn_out.norm(dim=-1).mean()), rel=1e-5)
    assert values["branch_ratio"][g] == pytest.approx(float(branch.norm() / skip.norm()), rel=1e-5)
    assert values["position_cosine"][g] == pytest.approx(plain_cosine(attn_out), abs=1e-5)
    if residual_norm == "deepnorm":  # the FFN sublayer's output is the layer's output (no final LN in between)
        f = labels.index("layer_001_ffn")
        assert values["position_cosine"][f] == pytest.approx(plain_cosine(hidden[2]), abs=1e-5)
        assert values["stream_norm"][f] == pytest.approx(float(hidden[2].norm(dim=-1).mean()), rel=1e-5)


def test_position_cosine_extremes():
    same = torch.randn(1, 1, 8).expand(2, 5, 8)
    assert float(mean_position_cosine(same)) == pytest.approx(1.0, abs=1e-5)
    orthogonal = torch.eye(6).unsqueeze(0)
    assert float(mean_position_cosine(orthogonal)) == pytest.approx(0.0, abs=1e-5)


def test_monitor_only_hooks_monitored_steps_and_names_first_non_finite(capsys):
    model = tiny_gpt("post_ln")
    monitor = LayerMonitor(every=3, first_steps=1, tensorboard=False, plots=False).attach(model)
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3)
    ids = torch.randint(0, 40, (2, 6), generator=torch.Generator().manual_seed(2))
    hooks_seen = []
    for step in range(1, 5):
        state = SimpleNamespace(global_step=step - 1, is_world_process_zero=True)
        monitor.on_step_begin(None, state, None)
        hooks_seen.append(len(model.transformer.layers[0].mlp_residual._forward_hooks))
        monitor.on_step_end(None, state, None)
    assert hooks_seen == [1, 0, 1, 0]  # steps 1 (first_steps) and 3 (every)
    assert len(model.transformer.layers[0].mlp_residual._forward_hooks) == 0
    fc2 = model.transformer.layers[1].mlp.fc2
    with torch.no_grad():
        fc2.weight.fill_(float("inf"))
    monitored_step(model, monitor, ids, optimizer, step=6)
    assert monitor.first_non_finite["layer"] == 1 and monitor.first_non_finite["sublayer"] == "ffn"
    assert "layer 1, ffn sublayer" in capsys.readouterr().out


def test_nan_guard_names_the_sublayer():
    """The NaN guard (training/callbacks.py) also watches the residual connections: an FFN that outputs inf in
    layer 1 is named as layer 1's feed-forward sublayer, not just as layer 1."""
    from modeling_deepln.training.callbacks import NonFiniteError, NonFiniteGuard

    model = tiny_gpt("post_ln")
    guard = NonFiniteGuard(policy="stop").attach(model)
    with torch.no_grad():
        model.transformer.layers[1].mlp.fc2.bias.fill_(float("inf"))
    ids = torch.randint(0, 40, (2, 6), generator=torch.Generator().manual_seed(3))
    model(ids, labels=ids).loss.backward()
    state = SimpleNamespace(global_step=0, is_world_process_zero=True)
    with pytest.raises(NonFiniteError, match=r"transformer\.layers\.1\.mlp_residual \(feed-forward sublayer\)"):
        guard.on_pre_optimizer_step(None, state, None)


def test_nan_guard_keeps_no_hooks_and_replays_the_bad_step_under_its_mixed_precision():
    """A normal step leaves no hook on any layer (the guard watches the loss and one fused gradient norm); a bad
    step is replayed, once, with the step's inputs and under its autocast, to name where it started."""
    from modeling_deepln.training.callbacks import NonFiniteError, NonFiniteGuard

    model = tiny_gpt("pre_ln")
    guard = NonFiniteGuard(policy="stop").attach(model)
    assert not any(module._forward_hooks or module._forward_pre_hooks for module in model.transformer.modules())
    seen = []
    model.transformer.layers[2].register_forward_hook(
        lambda module, inputs, output: seen.append((torch.is_autocast_enabled("cpu"), tuple(inputs[0].shape))))
    ids = torch.randint(0, 40, (2, 6), generator=torch.Generator().manual_seed(3))
    state = SimpleNamespace(global_step=4, is_world_process_zero=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        model(ids, labels=ids).loss.backward()
    guard.on_pre_optimizer_step(None, state, None)  # finite: no replay
    assert len(seen) == 1
    model.zero_grad()
    with torch.no_grad():
        model.transformer.layers[2].mlp.fc2.bias.fill_(float("inf"))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        model(ids[:1], labels=ids[:1]).loss.backward()
    with pytest.raises(NonFiniteError, match=r"step 5 .*transformer\.layers\.2\.mlp_residual"):
        guard.on_pre_optimizer_step(None, state, None)
    assert seen[1:] == [(True, (1, 6, 16)), (True, (1, 6, 16))]  # the bad step, then its replay: same inputs, bf16


# ------------------------------------------------------------------------------------------------ the grid


def synthetic_gpt_data(rule: str, vocab: int = 32, seq_len: int = 16, blocks: int = 256):
    """Blocks that follow a next-token rule (``t+1 = t + 1 mod V``: learnable) or i.i.d. skewed tokens (nothing to
    learn beyond the token frequencies: the unigram plateau)."""
    from modeling_deepln.stability.grid import GridData, unigram_loss

    generator = torch.Generator().manual_seed(0)
    if rule == "successor":
        starts = torch.randint(0, vocab, (blocks, 1), generator=generator)
        ids = (starts + torch.arange(seq_len)) % vocab
    else:
        probs = torch.arange(1, vocab + 1, dtype=torch.float).reciprocal()
        ids = torch.multinomial(probs, blocks * seq_len, replacement=True, generator=generator).view(blocks, seq_len)
    train, held_out = ids[:-32], ids[-32:]
    batches = [{"input_ids": held_out[i : i + 16], "labels": held_out[i : i + 16]} for i in (0, 16)]
    unigram = unigram_loss(train, held_out[:, 1:], vocab)
    return GridData("gpt", SimpleNamespace(pad_token_id=0, eos_token_id=0), train, batches, unigram)


def tiny_settings(**kwargs):
    from modeling_deepln.stability.grid import GridSettings

    values = dict(families=("gpt",), hidden_size=16, num_heads=2, seq_len=16, batch_size=16, vocab_size=32,
                  steps=40, monitor_every=5, early_steps=3, margin=0.1)  # fmt: skip
    return GridSettings(**{**values, **kwargs})


@pytest.mark.parametrize(
    "rule, scheme, depth, lr, expected",
    [
        ("successor", "pre_ln", 2, 1e-2, {"learning"}),
        ("iid", "pre_ln", 2, 1e-2, {"stalled", "collapsed"}),
        ("successor", "pre_ln", 2, 1e3, {"diverged"}),
        ("successor", "upscale_ln:alpha_plus_ln", 16, 1e-3, {"diverged"}),  # α = 32^¼ > 1: the stream overflows
    ],
)
def test_grid_cell_separates_failure_modes(tmp_path, rule, scheme, depth, lr, expected):
    from modeling_deepln.stability.grid import Cell, train_cell

    data = synthetic_gpt_data(rule)
    settings = tiny_settings()
    row = train_cell(Cell("gpt", scheme, depth, lr, 0.1), data, settings, tmp_path)
    assert row["mode"] in expected, row
    if row["mode"] == "learning":
        assert row["eval_loss"] < 0.5 * data.unigram_loss and row["mode_step"] is not None
    if row["mode"] in ("stalled", "collapsed"):
        assert abs(row["gap"]) < 0.1, row
    if row["mode"] != "diverged":
        assert row["update_first"] > 0 and row["update_last"] > 0
        assert (tmp_path / Cell("gpt", scheme, depth, lr, 0.1).name / "monitor.jsonl").is_file()


def test_classify_rules():
    from modeling_deepln.stability.grid import classify

    losses = [(1, 5.0), (2, 4.0), (3, 3.5), (4, 3.45), (5, 3.44)]
    assert classify([(1, 5.0), (2, float("nan"))], 3.4, 3.4, 0.5, [], 32) == ("diverged", 2)
    assert classify([(1, 3.0), (2, 40.0), (3, 50.0)], 45.0, 3.4, 0.5, [], 32) == ("diverged", 2)
    assert classify(losses, 3.45, 3.44, 0.99, [(2, 0.5), (4, 0.97)], 32) == ("collapsed", 4)
    assert classify(losses, 3.45, 3.44, 0.50, [(2, 0.5), (4, 0.6)], 32)[0] == "stalled"
    tail = [(step, 1.0) for step in range(6, 11)]  # the 5-step running mean drops below 3.44 - 0.05 at step 6
    assert classify(losses + tail, 1.2, 3.44, 0.5, [], 32) == ("learning", 6)


def test_every_command_uses_the_one_unigram_reference():
    """The grid, grow-bench and pretrain's report compare with training.metrics.unigram_loss (one definition)."""
    from modeling_deepln.growth import bench
    from modeling_deepln.stability import grid
    from modeling_deepln.training import metrics, pretraining

    assert grid.unigram_loss is bench.unigram_loss is metrics.unigram_loss
    assert pretraining.unigram_perplexity is metrics.unigram_perplexity
    assert pretraining.masked_unigram_perplexity is metrics.masked_unigram_perplexity


def test_deepnet_bound_trend_on_small_depths():
    """DeepNet's Theorem 4.2 setting (an SGD step on the sublayer weights): Post-LN's model update grows with depth
    (about linearly), DeepNorm's stays within a constant band."""
    from modeling_deepln.stability.bound import SETTINGS, model_update

    depths = (2, 4, 8)
    kwargs = dict(hidden=16, seq_len=16, batch_size=4, eval_batches=1, seeds=(0,), **SETTINGS["theorem"])
    post = [model_update("post_ln", n, **kwargs) for n in depths]
    deep = [model_update("deepnorm", n, **kwargs) for n in depths]
    assert post[0] < post[1] < post[2] and post[2] > 2.5 * post[0], post
    assert max(deep) < 1.5 * min(deep), deep


def test_stability_cli_bound_only(tmp_path, capsys):
    from modeling_deepln.cli import main

    main(["stability", "--bound-only", "--bound-depths", "2,3", "--output-dir", str(tmp_path)])
    out = capsys.readouterr().out
    assert "post_ln / deepnorm" in out and (tmp_path / "bound_theorem.csv").is_file()
    with pytest.raises(SystemExit) as info:
        main(["stability", "--schemes", "post_ln,nope", "--output-dir", str(tmp_path)])
    assert info.value.code == 2 and "Unknown scheme 'nope'" in capsys.readouterr().err


def test_pretrain_flag_attaches_the_monitor(tmp_path):
    """``deepln pretrain --monitor-every 2``: records at steps 2 and 4 for every sublayer, the heatmap PNG and
    TensorBoard event files in the output folder."""
    import json

    from modeling_deepln.cli import main
    from modeling_deepln.training.corpus import wiki_articles

    text = tmp_path / "text.txt"
    text.write_text("\n".join(line for article in wiki_articles()[:2] for line in article.split("\n") if line.strip()))
    out = tmp_path / "run"
    main(["pretrain", "--data", str(text), "--num-layers", "3", "--hidden-size", "16", "--num-heads", "2",
          "--seq-len", "16", "--vocab-size", "300", "--batch-size", "4", "--max-steps", "4", "--eval-steps", "0",
          "--max-eval-samples", "8", "--report-to", "none", "--no-progress", "--no-samples", "--output-dir", str(out),
          "--monitor-every", "2"])  # fmt: skip
    records = [json.loads(line) for line in (out / "monitor.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [2, 4]
    assert records[0]["sublayers"] == [f"layer_{i:03d}_{k}" for i in range(3) for k in ("attn", "ffn")]
    assert all(math.isfinite(v) for r in records for row in r["values"].values() for v in row)
    assert (out / "monitor_heatmaps.png").stat().st_size > 1000
    assert list((out / "monitor_tensorboard").glob("events.out.tfevents*"))


def test_finetune_flag_attaches_the_monitor(tmp_path):
    """``deepln finetune --monitor-every 1`` on a tiny sentence task: a record per step for both layers."""
    import json

    from modeling_deepln.cli import main

    rows = [f"this film is {'great' if i % 2 else 'awful'} number {i},{i % 2}" for i in range(40)]
    data = tmp_path / "task"
    data.mkdir()
    (data / "train.csv").write_text("sentence,y\n" + "\n".join(rows[:32]))
    (data / "dev.csv").write_text("sentence,y\n" + "\n".join(rows[32:]))
    out = tmp_path / "ft"
    main(["finetune", "--preset", "gpt-deep-small", "--num-layers", "2", "--hidden-size", "16", "--vocab-size", "300",
          "--data", str(data), "--text-columns", "sentence", "--label-column", "y", "--output-dir", str(out),
          "--max-seq-len", "16", "--max-steps", "2", "--report-to", "none", "--no-progress", "--monitor-every", "1"])  # fmt: skip
    records = [json.loads(line) for line in (out / "monitor.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2] and len(records[0]["sublayers"]) == 4


def _activation_values(model, ids, mask=None):
    """The monitor's activation measures of one forward pass (no optimizer step)."""
    monitor = LayerMonitor(every=1, tensorboard=False, plots=False).attach(model)
    state = SimpleNamespace(global_step=0, is_world_process_zero=True)
    monitor.on_step_begin(None, state, None)
    with torch.no_grad():
        model(input_ids=ids, attention_mask=mask)
    monitor.on_step_end(None, state, None)
    return {q: torch.tensor(v) for q, v in monitor.records[-1]["values"].items()}


@pytest.mark.parametrize("family", ["gpt", "bert"])
def test_monitor_leaves_padded_positions_out(family):
    """A right-padded batch measures what its sequences measure alone: the stream norm is the token-weighted mean
    of theirs, the position cosine the mean of theirs, and nothing depends on what the padded positions hold."""
    from modeling_deepln import DeepLNBertConfig, DeepLNBertForMaskedLM

    if family == "gpt":
        model = tiny_gpt("post_ln").eval()
    else:
        torch.manual_seed(0)
        model = DeepLNBertForMaskedLM(DeepLNBertConfig(
            vocab_size=40, hidden_size=16, num_hidden_layers=3, num_attention_heads=2, intermediate_size=32,
            max_position_embeddings=16, residual_norm="post_ln", hidden_dropout_prob=0.0,
            attention_probs_dropout_prob=0.0, pad_token_id=0)).eval()  # fmt: skip
    generator = torch.Generator().manual_seed(3)
    a, b = torch.randint(1, 40, (1, 7), generator=generator), torch.randint(1, 40, (1, 4), generator=generator)
    mask = torch.tensor([[1] * 7, [1] * 4 + [0] * 3])
    padded = [torch.cat([a, torch.cat([b, fill], dim=1)]) for fill in (torch.zeros(1, 3, dtype=torch.long),
                                                                       torch.randint(1, 40, (1, 3), generator=generator))]  # fmt: skip
    alone_a, alone_b = _activation_values(model, a), _activation_values(model, b)
    first, second = (_activation_values(model, ids, mask) for ids in padded)
    # float32 sums of 11 token norms / 7-token unit-vector sums: relative error ~1e-6; 1e-5 leaves a margin
    torch.testing.assert_close(first["stream_norm"], (7 * alone_a["stream_norm"] + 4 * alone_b["stream_norm"]) / 11,
                               rtol=1e-5, atol=0)  # fmt: skip
    torch.testing.assert_close(first["position_cosine"], (alone_a["position_cosine"] + alone_b["position_cosine"]) / 2,
                               rtol=0, atol=1e-5)  # fmt: skip
    for quantity in ("stream_norm", "branch_ratio", "position_cosine"):
        torch.testing.assert_close(first[quantity], second[quantity], rtol=1e-5, atol=1e-6)


def test_monitor_records_of_earlier_versions_read_with_todays_names(tmp_path):
    from modeling_deepln.stability.monitor import load_monitor_records

    old = {"step": 1, "values": {"grad_norm": [1.0], "update_size": [0.01]}, "measured": ["grad_norm", "update_size"]}
    (tmp_path / "monitor.jsonl").write_text(__import__("json").dumps(old) + "\n")
    (record,) = load_monitor_records(tmp_path / "monitor.jsonl")
    assert record["values"]["relative_update"] == [0.01] and record["measured"] == ["grad_norm", "relative_update"]
    assert "relative_update" in QUANTITIES and "update_size" not in QUANTITIES


# ------------------------------------------------------------------------------------------ the depth-1,000 mode


def _plateau(unigram: float, steps: range, start: float = 9.0) -> list[tuple[int, float]]:
    """A training loss that falls from ``start`` to the unigram loss by step 20 and stays there."""
    return [(step, max(unigram, start - 0.2 * step)) for step in steps]


def test_classify_fabricated_histories_of_each_failure_mode():
    """Loss histories made by hand for each verdict of the depth-1,000 table; the label and its step are the rules'."""
    from modeling_deepln.stability.grid import classify

    unigram, vocab, steps = 6.44, 2048, range(1, 201)
    plateau = _plateau(unigram, steps)
    # diverged: a NaN at step 37 (the run stops there)
    nan_run = [(s, 7.0) for s in range(1, 37)] + [(37, float("nan"))]
    assert classify(nan_run, float("nan"), unigram, float("nan"), [], vocab) == ("diverged", 37)
    # diverged: finite but worse than uniform guessing (ln V + 1 = 8.62) from step 120 to the end
    blown = [(s, 7.0 if s < 120 else 30.0) for s in steps]
    assert classify(blown, 31.0, unigram, 0.3, [], vocab) == ("diverged", 120)
    # stalled on the unigram plateau, positions distinct: the step where the loss reached the plateau
    mode, step = classify(plateau, unigram + 0.01, unigram, 0.40, [(20, 0.4), (200, 0.4)], vocab)
    assert mode == "stalled" and 14 <= step <= 22, step
    # collapsed: the same plateau, but the last layer's positions became identical from step 60
    cosines = [(20, 0.5), (40, 0.9), (60, 0.99), (200, 1.0)]
    assert classify(plateau, unigram + 0.01, unigram, 1.0, cosines, vocab) == ("collapsed", 60)
    # stalled above the plateau (slow learner not there yet): no plateau step
    above = [(s, 7.5 - 0.001 * s) for s in steps]
    assert classify(above, 7.3, unigram, 0.5, [], vocab) == ("stalled", None)
    # learning: leaves the plateau at step 150 and ends 0.3 nats below the unigram loss
    learning = [(s, loss if s < 150 else unigram - 0.3) for s, loss in plateau]
    mode, step = classify(learning, unigram - 0.25, unigram, 0.3, [], vocab)
    assert mode == "learning" and 150 <= step <= 155, step


def test_depth_1000_mode_runs_with_a_few_layers_standing_in(tmp_path, monkeypatch, capsys):
    """The --depth-1000 grid (every scheme, the α·s + LN(s) form with and without its final LN) at 3 layers on
    learnable synthetic data: every row gets a verdict, progress lines give the time left, heatmaps are written."""
    from modeling_deepln.cli import main
    from modeling_deepln.stability import cli, grid

    monkeypatch.setattr(grid, "prepare_grid_data", lambda family, settings: synthetic_gpt_data("successor"))
    main(["stability", "--depth-1000", "--families", "gpt", "--depths", "3", "--hidden-size", "16",
          "--seq-len", "16", "--batch-size", "16", "--vocab-size", "32", "--steps", "6", "--progress-every", "3",
          "--monitor-every", "3", "--block-lr-scales", "1,depth", "--output-dir", str(tmp_path)])  # fmt: skip
    out = capsys.readouterr().out
    table = (tmp_path / "stability.md").read_text()
    schemes = cli.DEPTH_1000["schemes"]
    assert cli.DEPTH_1000["block_lr_scales"] == ("depth",)  # the rule the presets train with; "1" is the ablation
    runs = len(schemes) * 2
    assert len(table.strip().splitlines()) == 2 + runs
    for scheme in schemes:
        for scale in ("1", "depth"):
            row = next(line for line in table.splitlines() if f"| {scheme} | {scale} |" in line)
            assert any(f"| {mode} |" in row for mode in ("diverged", "stalled", "collapsed", "learning")), row
        # the gpt-1k-cpu recipe's lr and warmup, since neither flag was given
        assert f"{scheme.replace(':', '+')}-L3-lr0.002-w0.05 step 3/6: loss" in out
        assert f"{scheme.replace(':', '+')}-L3-lr0.002-w0.05-blocksdepth step 3/6: loss" in out
    assert "grid" in out and "left" in out and f"{runs}/{runs} runs" in out
    for quantity in ("grad_norm", "position_cosine"):
        assert (tmp_path / f"heatmaps_{quantity}.png").stat().st_size > 0
    assert (tmp_path / "runs" / "gpt-pre_ln-L3-lr0.002-w0.05" / "monitor_heatmaps.png").is_file()


def test_depth_1000_rows_train_each_familys_preset_model_and_recipe(tmp_path):
    """In --depth-1000 every row is the family's 1,000-layer CPU preset (its init, head tying, positions) with only
    the scheme and depth swapped, trained with that preset's recipe file; flags given beside the mode still win."""
    import json

    from transformers import get_scheduler

    from modeling_deepln.stability import cli, grid
    from modeling_deepln.training.args import RECIPES_DIR

    settings = cli._settings({"depth_1000": True})
    tokenizer = SimpleNamespace(pad_token_id=0, eos_token_id=0)
    for family, preset in (("gpt", "gpt-1k-cpu"), ("bert", "bert-1k-cpu")):
        recipe = json.loads((RECIPES_DIR / f"{preset}.json").read_text())
        cells = grid.grid_cells(settings, family)
        assert {(c.lr, c.warmup, c.block_lr) for c in cells} == {(recipe["lr"], recipe["warmup_ratio"], "depth")}
        assert len(cells) == len(cli.DEPTH_1000["schemes"])
        values = grid.family_recipe(family, settings)
        assert values["mlm_probability"] == recipe.get("mlm_probability", 0.15)
        assert values["weight_decay"] == recipe["weight_decay"]
        model = grid.build_cell_model(grid.Cell(family, "deepnorm", 3, recipe["lr"], 0.05, "depth"), settings, tokenizer)
        preset_config = json.loads((RECIPES_DIR.parent / f"{preset}.json").read_text())
        config = model.config
        assert (config.residual_norm, config.num_hidden_layers, config.vocab_size) == ("deepnorm", 3, 8192)
        for key in ("scale_output_init", "tie_word_embeddings", "hidden_act", "layer_norm_eps"):
            assert getattr(config, key) == preset_config[key], key
        if family == "bert":
            assert config.position_embedding_init == "sinusoidal"
        # the schedule ends on the recipe's floor, min_lr, not on 0
        args = grid._training_arguments(cells[0], settings, tmp_path)
        optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=args.learning_rate)
        schedule = get_scheduler(args.lr_scheduler_type, optimizer, num_warmup_steps=args.warmup_steps,
                                 num_training_steps=settings.steps, scheduler_specific_kwargs=args.lr_scheduler_kwargs)  # fmt: skip
        for _ in range(settings.steps):
            optimizer.step()
            schedule.step()
        assert schedule.get_last_lr()[0] == pytest.approx(recipe["min_lr"], rel=1e-6)
        assert args.weight_decay == recipe["weight_decay"]
    mine = cli._settings({"depth_1000": True, "lrs": (1e-3,), "block_lr_scales": ("1",), "mlm_probability": 0.15,
                          "min_lr_ratio": 0.0})  # fmt: skip
    assert {(c.lr, c.block_lr) for c in grid.grid_cells(mine, "bert")} == {(1e-3, "1")}
    assert grid.family_recipe("bert", mine)["mlm_probability"] == 0.15  # a flag beside the mode wins over the recipe
    assert grid._training_arguments(grid.grid_cells(mine, "gpt")[0], mine, tmp_path).lr_scheduler_type == "cosine"
    with pytest.raises(Exception, match="--lrs and --warmups"):
        cli._settings({"lrs": ()})


def test_scheme_names_set_form_and_final_layer_norm():
    from modeling_deepln.stability.grid import split_scheme

    assert split_scheme("foundation_ln:alpha_plus_ln:final_ln") == {
        "residual_norm": "foundation_ln", "post_norm_form": "alpha_plus_ln", "final_layer_norm": True}
    assert split_scheme("pre_ln:no_final_ln") == {"residual_norm": "pre_ln", "final_layer_norm": False}
    with pytest.raises(ValueError, match="Unknown option 'final'"):
        split_scheme("post_ln:final")


def test_merge_joins_the_tables_of_two_grids(tmp_path, capsys):
    """--merge reads back what two grids wrote (numbers parsed, empty cells None) as one table and plot."""
    from modeling_deepln.cli import main
    from modeling_deepln.stability.cli import TABLE_COLUMNS
    from modeling_deepln.stability.report import read_table, write_table

    def row(family, scheme, gap, mode, step):
        return {"family": family, "scheme": scheme, "block_lr": "depth", "depth": 1000, "lr": 0.002, "warmup": 0.05,
                "steps": 100, "eval_loss": 7.0 + gap, "unigram_loss": 7.0, "gap": gap, "cosine": 0.5, "mode": mode,
                "mode_step": step, "update_first": 1e-4, "update_last": 2e-4, "seconds": 900.5, "cpu_seconds": 880.25}  # fmt: skip

    gpt = [row("gpt", "pre_ln", -0.125, "learning", 61), row("gpt", "foundation_ln:alpha_plus_ln", float("nan"), "diverged", 7)]
    bert = [row("bert", "post_ln", 0.0625, "collapsed", None)]
    write_table(gpt, TABLE_COLUMNS, tmp_path / "gpt" / "stability")
    write_table(bert, TABLE_COLUMNS, tmp_path / "bert" / "stability")
    main(["stability", "--merge", f"{tmp_path / 'gpt'},{tmp_path / 'bert'}", "--output-dir", str(tmp_path / "all")])
    merged = read_table(tmp_path / "all" / "stability.csv")
    assert len(merged) == 3
    for got, want in zip(merged, gpt + bert):
        for key in TABLE_COLUMNS:
            if isinstance(want[key], float) and math.isnan(want[key]):
                assert math.isnan(got[key])
            else:
                assert got[key] == want[key] and type(got[key]) is type(want[key]), key
    assert (tmp_path / "all" / "gap_by_scheme.png").stat().st_size > 0
    assert "3 rows from 2 grids" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["stability", "--merge", str(tmp_path / "nowhere"), "--output-dir", str(tmp_path / "x")])
    assert "nowhere/stability.csv does not exist" in capsys.readouterr().err
