"""Every fast path equals the plain path (fp32, tight tolerances), and the benchmark tools run.

* fused LM head + cross-entropy == ``lm_head`` then transformers' ``ForCausalLMLoss`` (loss and gradients);
* BERT's masked-positions-only MLM head == the dense head (loss and gradients);
* ``torch.compile(model)`` compiles one block for all layers and gives the eager loss and gradients; the same
  through ``TrainingArguments(torch_compile=True)``;
* ``cache_implementation="static"`` generates the dynamic cache's greedy tokens, with and without compile;
* ``threaded_matvec`` products equal ``F.linear`` within float32 rounding, and ``generate`` through them gives the
  ``F.linear`` path's tokens and scores, also after the weights change between calls;
* the token-id check keeps its error on CPU and under compile (async assert);
* ``deepln bench --quick`` writes its table, and the FLOP formula matches torch's FLOP counter;
* the GPU script runs on CPU with a tiny shape.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers.loss.loss_utils import ForCausalLMLoss

from modeling_deepln import DeepLNBertForMaskedLM, DeepLNGPTForCausalLM, load_preset
from modeling_deepln.model import loss_deepln
from modeling_deepln.model.loss_deepln import linear_cross_entropy

ROOT = Path(__file__).resolve().parents[1]


def tiny_gpt_config(layers: int = 3, **overrides):
    shape = dict(
        num_hidden_layers=layers, vocab_size=97, hidden_size=32, intermediate_size=64, num_attention_heads=2,
        max_position_embeddings=64, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, bos_token_id=0,
        eos_token_id=0,
    )  # fmt: skip
    return load_preset("gpt-1k", **{**shape, **overrides})


@pytest.mark.parametrize("num_items, chunk", [(None, 7), (None, 1000), (37, 5), (None, None), (37, None)])
def test_linear_cross_entropy_equals_lm_head_then_loss(num_items, chunk, monkeypatch):
    monkeypatch.setattr(loss_deepln, "LOGITS_PER_CHUNK", 97 * 10)  # default chunks: 4 of 9, 9, 9 and 6 tokens
    torch.manual_seed(0)
    weight = torch.randn(97, 16, requires_grad=True)
    hidden = torch.randn(3, 11, 16, requires_grad=True)
    labels = torch.randint(0, 97, (3, 11))
    labels[0, :4] = -100
    plain = ForCausalLMLoss(hidden @ weight.t(), labels, 97, num_items_in_batch=num_items)
    plain_grads = torch.autograd.grad(plain * 3.0, (hidden, weight))
    fused = linear_cross_entropy(hidden, weight, labels, num_items_in_batch=num_items, chunk_size=chunk)
    fused_grads = torch.autograd.grad(fused * 3.0, (hidden, weight))
    torch.testing.assert_close(fused, plain, rtol=1e-5, atol=0)
    for got, want in zip(fused_grads, plain_grads):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5 * max(float(g.abs().max()) for g in plain_grads))


def test_linear_cross_entropy_in_bfloat16_accumulates_the_weight_gradient_in_float32():
    torch.manual_seed(0)
    weight = torch.randn(97, 16, dtype=torch.bfloat16, requires_grad=True)
    hidden = torch.randn(3, 11, 16, dtype=torch.bfloat16, requires_grad=True)
    labels = torch.randint(0, 97, (3, 11))
    plain = ForCausalLMLoss(hidden.float() @ weight.float().t(), labels, 97)
    plain_grads = torch.autograd.grad(plain, (hidden, weight))
    fused = linear_cross_entropy(hidden, weight, labels, chunk_size=5)
    fused_grads = torch.autograd.grad(fused, (hidden, weight))
    assert fused.dtype == torch.float32 and fused_grads[1].dtype == torch.bfloat16
    torch.testing.assert_close(fused, plain, rtol=1e-2, atol=0)  # bf16 logits: ~3 significant digits
    for got, want in zip(fused_grads, plain_grads):
        torch.testing.assert_close(got.float(), want.float(), rtol=0, atol=2e-2 * float(want.float().abs().max()))


def test_gpt_training_loss_uses_fused_head_and_matches_plain_path():
    torch.manual_seed(0)
    model = DeepLNGPTForCausalLM(tiny_gpt_config(lm_head_transform=True))
    ids = torch.randint(0, 97, (2, 9))
    model.eval()  # plain path: logits, then ForCausalLMLoss (no dropout anyway)
    plain = model(ids, labels=ids)
    plain.loss.backward()
    plain_grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    model.train()
    assert model(ids, labels=ids).logits.shape == (2, 9, 97)  # opt-in: training returns logits by default
    model.zero_grad()
    model.fused_lm_loss = True
    fused = model(ids, labels=ids)
    fused.loss.backward()
    assert fused.logits is None and plain.logits.shape == (2, 9, 97)
    torch.testing.assert_close(fused.loss, plain.loss, rtol=1e-5, atol=0)
    for name, param in model.named_parameters():
        torch.testing.assert_close(param.grad, plain_grads[name], rtol=1e-5,
                                   atol=1e-5 * max(float(g.abs().max()) for g in plain_grads.values()), msg=name)  # fmt: skip


def test_bert_sparse_mlm_loss_matches_dense_head():
    """The masked-positions-only MLM head gives the dense path's loss and gradients (Trainer's
    ``num_items_in_batch`` included), and returns no logits."""
    torch.manual_seed(0)
    config = load_preset(
        "bert-1k", num_hidden_layers=2, vocab_size=97, hidden_size=32, intermediate_size=64, num_attention_heads=2,
        max_position_embeddings=64, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
    )  # fmt: skip
    model = DeepLNBertForMaskedLM(config)
    ids = torch.randint(5, 97, (2, 9))
    labels = torch.full_like(ids, -100)
    labels[0, [1, 4]], labels[1, 7] = ids[0, [1, 4]], ids[1, 7]
    for num_items in (None, 5):
        kwargs = {} if num_items is None else {"num_items_in_batch": num_items}
        model.train()
        model.zero_grad()
        dense = model(ids, labels=labels, **kwargs)
        dense.loss.backward()
        dense_grads = {n: p.grad.clone() for n, p in model.named_parameters()}
        model.zero_grad()
        model.sparse_mlm_loss = True
        sparse = model(ids, labels=labels, **kwargs)
        sparse.loss.backward()
        model.sparse_mlm_loss = False
        assert sparse.logits is None and dense.logits.shape == (2, 9, 97)
        torch.testing.assert_close(sparse.loss, dense.loss, rtol=1e-5, atol=0)
        for name, param in model.named_parameters():
            torch.testing.assert_close(param.grad, dense_grads[name], rtol=1e-5,
                                       atol=1e-5 * max(float(g.abs().max()) for g in dense_grads.values()), msg=name)  # fmt: skip
    model.sparse_mlm_loss = True
    model.eval()  # evaluation keeps the logits (metrics, pipelines)
    assert model(ids, labels=labels).logits.shape == (2, 9, 97)


def _compile_counters():
    import torch._dynamo.utils as dynamo_utils

    torch._dynamo.reset()
    dynamo_utils.counters.clear()
    return dynamo_utils.counters


@pytest.mark.parametrize("scheme", ["foundation_ln", "pre_ln"])  # pre_ln: with the final LayerNorm
def test_torch_compile_reuses_one_block_graph_and_equals_eager(scheme):
    torch.manual_seed(0)
    model = DeepLNGPTForCausalLM(tiny_gpt_config(layers=3, residual_norm=scheme, final_layer_norm=None))
    ids = torch.randint(0, 97, (2, 9))
    eager = model(ids, labels=ids).loss
    eager.backward()
    eager_grad = model.transformer.layers[2].attention.q_proj.weight.grad.clone()
    model.zero_grad()
    counters = _compile_counters()
    compiled_model = torch.compile(model, backend="aot_eager")
    compiled = compiled_model(ids, labels=ids).loss
    compiled.backward()
    # one block graph shared by all 3 layers, the LM head and the loss (each called from a model frame that dynamo
    # does not trace); the embeddings (with the mask and the id check) and the final LayerNorm run eagerly. A
    # graph per layer would make >= 5 here
    assert counters["stats"]["unique_graphs"] == 3
    torch.testing.assert_close(compiled, eager, rtol=1e-5, atol=0)
    torch.testing.assert_close(model.transformer.layers[2].attention.q_proj.weight.grad, eager_grad, rtol=1e-5,
                               atol=1e-5 * float(eager_grad.abs().max()))  # fmt: skip
    bad = ids.clone()
    bad[0, 0] = 500  # the id check runs eagerly under compile too: the same ValueError
    with pytest.raises(ValueError, match="token id 500, outside the model's vocabulary"):
        compiled_model(bad, labels=ids)


def test_torch_export_runs_the_whole_model_equal_to_eager():
    """``torch.export`` (what ONNX export builds on) sees the whole model: the frames ``torch.compile`` skips and the
    eager-only calls are plain Python there, and the layer loop is traced as one."""
    torch.manual_seed(0)
    ids = torch.randint(0, 97, (2, 9))
    gpt = DeepLNGPTForCausalLM(tiny_gpt_config(layers=2)).eval()
    shape = dict(vocab_size=97, hidden_size=32, intermediate_size=64, num_attention_heads=2)
    bert = DeepLNBertForMaskedLM(load_preset("bert-1k", num_hidden_layers=2, **shape)).eval()
    for model, kwargs in ((gpt, {"use_cache": False}), (bert, {})):
        exported = torch.export.export(model, (ids,), kwargs=kwargs)
        with torch.no_grad():
            want = model(ids, **kwargs).logits
        got = exported.module()(ids, **kwargs).logits
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_token_id_check_still_raises_value_error_eagerly_on_cpu():
    model = DeepLNGPTForCausalLM(tiny_gpt_config(layers=1))
    with pytest.raises(ValueError, match="token id 200, outside the model's vocabulary"):
        model(torch.tensor([[1, 200]]))


def test_trainer_torch_compile_trains_with_regional_compilation(tmp_path):
    from datasets import Dataset
    from transformers import Trainer, TrainingArguments

    torch.manual_seed(0)
    model = DeepLNGPTForCausalLM(tiny_gpt_config(layers=4))
    ids = torch.randint(0, 97, (8, 12))
    data = Dataset.from_dict({"input_ids": ids.tolist(), "labels": ids.tolist()})
    args = TrainingArguments(
        output_dir=str(tmp_path), torch_compile=True, torch_compile_backend="eager", max_steps=2,
        per_device_train_batch_size=4, report_to="none", use_cpu=True, save_strategy="no", logging_steps=1,
    )  # fmt: skip
    counters = _compile_counters()
    result = Trainer(model=model, args=args, train_dataset=data).train()
    assert torch.isfinite(torch.tensor(result.training_loss))
    assert counters["stats"]["unique_graphs"] == 3  # as in the test above; one per layer would be >= 6


def test_static_cache_generation_equals_dynamic_with_and_without_compile():
    torch.manual_seed(0)
    model = DeepLNGPTForCausalLM(tiny_gpt_config(layers=2)).eval()
    prompt = torch.randint(1, 97, (1, 5))
    options = dict(max_new_tokens=8, min_new_tokens=8, do_sample=False, pad_token_id=0)
    dynamic = model.generate(prompt, **options)
    static = model.generate(prompt, cache_implementation="static", **options)
    model.forward = torch.compile(model.forward, backend="eager")
    compiled = model.generate(prompt, cache_implementation="static", **options)
    assert dynamic.shape == (1, 13)
    assert torch.equal(static, dynamic) and torch.equal(compiled, dynamic)


def test_flop_formula_matches_torch_flop_counter():
    from torch.utils.flop_counter import FlopCounterMode

    from modeling_deepln.bench.measure import forward_flops_per_token

    config = tiny_gpt_config(layers=2)
    model = DeepLNGPTForCausalLM(config).eval()
    model.config._attn_implementation = "eager"  # matmuls the counter sees (SDPA on CPU counts the same)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(torch.randint(0, 97, (2, 10)), use_cache=False)
    assert counter.get_total_flops() == pytest.approx(forward_flops_per_token(config, 10) * 20, rel=1e-9)


def _env():
    return {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "MPLBACKEND": "Agg",
            "OMP_NUM_THREADS": "1"}  # fmt: skip


def test_bench_quick_writes_table_csv_markdown_and_plot(tmp_path):
    from modeling_deepln.bench.report import write_reports
    from modeling_deepln.bench.run import BenchOptions, run_bench

    lines: list[str] = []
    options = BenchOptions(quick=True, cases=("bert", "gpt"), seed_schemes=False, log=lines.append)
    rows, facts = run_bench(options)
    paths = write_reports(rows, facts, tmp_path)
    assert {p.name for p in paths} == {"bench.csv", "bench.md", "bench.png"}
    by_key = {(r.metric, r.contestant): r for r in rows}
    gpt_case = next(r.case for r in rows if r.case.startswith("gpt shape"))
    peer = by_key[("train tok/s", "GPT2LMHeadModel")]
    ours = next(r for r in rows if r.case == gpt_case and r.metric == "train tok/s" and r.contestant == "deepln pre_ln")
    assert ours.peer == peer.contestant and ours.ratio is not None  # compared with the named peer, not set order
    generated = [r for r in rows if r.metric.startswith("greedy") and r.contestant.startswith("deepln pre_ln")]
    assert len(generated) == 2 and generated[0].extra["tokens"] == generated[1].extra["tokens"]  # static == dynamic
    assert "GPT2LMHeadModel" in (tmp_path / "bench.md").read_text()
    assert all(r.of_bandwidth is not None and r.of_bandwidth > 0 for r in generated)
    assert "copy bandwidth" in (tmp_path / "bench.md").read_text()


@pytest.mark.parametrize("tied, final_norm", [(True, True), (False, True), (False, False)])
def test_decode_bytes_per_token_counts_every_weight_once_but_the_input_table(tied, final_norm):
    """A batch-1 decode step reads every weight once (a tied LM head once) and one row of an untied input table:
    against a count from the config's shapes."""
    from modeling_deepln.bench.measure import decode_bytes_per_token

    config = tiny_gpt_config(layers=2, tie_word_embeddings=tied, final_layer_norm=final_norm)
    model = DeepLNGPTForCausalLM(config)
    d, f, v, layers = config.hidden_size, config.intermediate_size, config.vocab_size, config.num_hidden_layers
    per_layer = (4 * d * d + 4 * d) + (2 * d * f + f + d) + 2 * 2 * d  # attention, FFN, two LayerNorms
    head = v * d  # the tied table, or the untied head (the untied input table is read one row a token)
    expected = layers * per_layer + head + config.max_position_embeddings * d  # positions
    expected += 2 * d if final_norm else 0  # the final LayerNorm (not in gpt-1k's α·s + LN(s))
    assert decode_bytes_per_token(model) == 4 * expected


def test_bench_rejects_unknown_case():
    from modeling_deepln.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(["bench", "--cases", "nope"])
    assert exit_info.value.code == 2


def test_gpu_script_runs_on_cpu_with_a_tiny_shape(tmp_path):
    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "gpu_bench.py"), "--tiny", "--only", "train,generation",
         "--output-dir", str(tmp_path)],
        capture_output=True, text=True, timeout=300, env=_env(), cwd=ROOT,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert (tmp_path / "gpu_bench.md").is_file()
    assert "static cache" in result.stdout


def test_fused_qkv_equals_separate_projections_and_yields_to_hooks():
    torch.manual_seed(0)
    model = DeepLNGPTForCausalLM(tiny_gpt_config(layers=2))
    assert model.config.fuse_qkv is True  # on by default: the same function and parameters
    ids = torch.randint(0, 97, (2, 9))
    results = []
    for fused in (False, True):
        model.config.fuse_qkv = fused
        loss = model(ids, labels=ids).loss
        loss.backward()
        results.append((loss.detach(), [p.grad.clone() for p in model.parameters()]))
        model.zero_grad()
    torch.testing.assert_close(results[1][0], results[0][0], rtol=1e-5, atol=0)
    for got, want in zip(results[1][1], results[0][1]):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5 * max(float(g.abs().max()) for g in results[0][1]))
    seen = []  # a hook (e.g. an adapter or a monitor) on q_proj still sees its call
    model.transformer.layers[0].attention.q_proj.register_forward_hook(lambda *args: seen.append(1))
    model(ids)
    assert seen == [1]


def test_fused_qkv_is_used_only_where_the_rows_amortise_the_weight_copy(monkeypatch):
    """At d = 256 a one-row decode step runs three projections (the concatenation would copy 3d² weights for one
    row), a batch of d/2 rows or more runs one; at d = 32 every call is fused. Outputs equal the unfused path's."""
    calls = []
    linear = torch.nn.functional.linear
    monkeypatch.setattr(torch.nn.functional, "linear", lambda x, w, b=None: calls.append(w.shape[0]) or linear(x, w, b))
    for width, rows, fused in ((256, 1, False), (256, 127, False), (256, 128, True), (32, 1, True)):
        torch.manual_seed(0)
        config = tiny_gpt_config(
            layers=1, hidden_size=width, num_attention_heads=2, intermediate_size=2 * width, threaded_matvec=False
        )  # F.linear's calls are what is counted
        attention = DeepLNGPTForCausalLM(config).eval().transformer.layers[0].attention
        x = torch.randn(1, rows, width)
        calls.clear()
        with torch.no_grad():
            got = attention._project_qkv(x)
            assert calls == ([3 * width] if fused else [width] * 3), (width, rows)
            want = (attention.q_proj(x), attention.k_proj(x), attention.v_proj(x))
        for g, w in zip(got, want):
            torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-5 * float(w.abs().max()))


def _greedy_scores(model, prompt, new_tokens=10, **kwargs):
    out = model.generate(
        prompt, max_new_tokens=new_tokens, do_sample=False, output_scores=True, return_dict_in_generate=True,
        pad_token_id=0, **kwargs,
    )  # fmt: skip
    return out.sequences, torch.stack(out.scores)


def _assert_scores_close(got, want):
    """fp32 logits of two summation orders: relative to the largest logit (width 32: a few ulps of it)."""
    torch.testing.assert_close(got, want, rtol=0, atol=1e-5 * float(want.abs().max()))


def _float64_error_bound(rows, weight):
    """The float32 error bound of ``rows @ weight.T`` per element, for any summation order: ``2·n·u·(|x|·|W|ᵀ)``
    (``n`` products summed, ``u`` the unit roundoff; Higham, *Accuracy and Stability*, §3.1), plus the bias's
    rounding."""
    n = weight.shape[1]
    unit = torch.finfo(torch.float32).eps / 2
    return 2 * n * unit * (rows.abs().double() @ weight.abs().double().t()) + 1e-30


@pytest.mark.parametrize("threads", [1, 2, 3])
@pytest.mark.parametrize("shape", [(97, 32), (64, 32), (32, 64), (50, 50)])
def test_threaded_matvec_equals_f_linear_within_float32_rounding(shape, threads):
    """``decode_linear`` (``W·xᵀ`` in per-thread blocks of output rows, one ``bmm``; an odd row count leaves a
    remainder) for 1-4 rows (and 8-16 where the weight has at least as many outputs as inputs), 2-D and 3-D inputs,
    with and without bias: within float32's dot-product error bound of the float64 product, as ``F.linear`` is."""
    from modeling_deepln.model.decode_deepln import decode_linear

    out_features, in_features = shape
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        for bias in (True, False):
            torch.manual_seed(out_features + bias)
            linear = torch.nn.Linear(in_features, out_features, bias=bias)
            shapes = [(1, in_features), (3, in_features), (2, 2, in_features), (1, 1, in_features)]
            if out_features >= in_features:  # up to 16 rows for such weights
                shapes += [(8, in_features), (4, 4, in_features)]
            for rows in shapes:
                x = torch.randn(rows)
                with torch.no_grad():
                    got, plain = decode_linear(linear, x), linear(x)
                exact = x.double() @ linear.weight.double().t() + (linear.bias.double() if bias else 0)
                bound = _float64_error_bound(x, linear.weight) + (1e-7 * linear.bias.abs().double() if bias else 0)
                assert got is not None and got.shape == plain.shape and got.is_contiguous()
                assert ((got.double() - exact).abs() <= bound).all()
                assert ((plain.double() - exact).abs() <= bound).all()
    finally:
        torch.set_num_threads(previous)


def test_threaded_matvec_declines_where_it_does_not_apply():
    """``None`` (the caller runs ``F.linear``) above 16 rows (4 for a weight with more inputs than outputs), with
    gradients needed, for float64, for a non-contiguous weight and a weight too small to split; ``run_linear`` calls
    hooked modules, so the hooks (the module's own and global ones) fire, and a ``forward`` replaced on the instance
    runs."""
    from modeling_deepln.model.decode_deepln import decode_linear, run_linear

    linear = torch.nn.Linear(32, 64)
    x = torch.randn(1, 32)
    with torch.no_grad():
        assert decode_linear(linear, torch.randn(16, 32)) is not None  # [64, 32]: up to 16 rows
        assert decode_linear(linear, torch.randn(17, 32)) is None
        assert decode_linear(torch.nn.Linear(64, 32), torch.randn(5, 64)) is None  # more inputs: up to 4 rows
    assert decode_linear(linear, x) is None  # the weight requires grad and grad mode is on
    with torch.no_grad():
        assert decode_linear(linear, x) is not None
        assert decode_linear(linear.double(), x.double()) is None
        assert decode_linear(torch.nn.Linear(32, 31), x.float()) is None  # 31 rows: no two blocks of 16
        transposed = torch.nn.Linear(64, 32)
        transposed.weight = torch.nn.Parameter(torch.randn(64, 32).t())  # [32, 64], not contiguous
        assert decode_linear(transposed, torch.randn(1, 64)) is None
        seen = []
        hooked = torch.nn.Linear(32, 64)
        hooked.register_forward_hook(lambda *args: seen.append(1))
        run_linear(hooked, x.float())
        handle = torch.nn.modules.module.register_module_forward_hook(lambda *args: seen.append(2))
        try:  # a global module hook (a profiler's, a tracer's) sees every module call too
            run_linear(torch.nn.Linear(32, 64), x.float())
        finally:
            handle.remove()
        wrapped = torch.nn.Linear(32, 64)  # forward replaced on the instance, as Accelerate's offloading hooks do
        wrapped.forward = lambda hidden_states: seen.append(3) or torch.nn.Linear.forward(wrapped, hidden_states)
        run_linear(wrapped, x.float())
    assert seen == [1, 2, 3]


def _count_threaded_products(monkeypatch):
    from modeling_deepln.model import decode_deepln

    served = []
    original = decode_deepln.decode_linear

    def counting(linear, hidden_states):
        output = original(linear, hidden_states)
        served.append(output is not None)
        return output

    monkeypatch.setattr(decode_deepln, "decode_linear", counting)
    return served


@pytest.mark.parametrize("fuse_qkv", [True, False])
def test_generate_with_threaded_matvec_equals_the_f_linear_path(monkeypatch, fuse_qkv):
    """Greedy ``generate`` (batch 1 and 3) with ``threaded_matvec`` on: the same tokens, and scores within float32
    rounding, as with it off; the decode steps' products did go through it (and a prefill's did not)."""
    served = _count_threaded_products(monkeypatch)
    torch.manual_seed(0)
    model = DeepLNGPTForCausalLM(tiny_gpt_config(layers=2, fuse_qkv=fuse_qkv)).eval()
    assert model.config.threaded_matvec is True
    for prompt in (torch.randint(1, 97, (1, 5)), torch.randint(1, 97, (3, 4))):
        served.clear()
        got_ids, got_scores = _greedy_scores(model, prompt)
        # 9 decode steps through 2 layers (out_proj, fc1, fc2; q, k, v unfused) and the head; the prefill (5 or
        # 12 rows) through all but fc2 (more inputs than outputs: 4 rows at most) and the head (1 logit kept)
        per_layer = 3 if fuse_qkv else 6
        assert sum(served) == 9 * (2 * per_layer + 1) + 2 * (per_layer - 1) + 1
        assert served.count(False) == 2
        model.config.threaded_matvec = False
        served.clear()
        want_ids, want_scores = _greedy_scores(model, prompt)
        assert not served
        model.config.threaded_matvec = True
        assert torch.equal(got_ids, want_ids)
        _assert_scores_close(got_scores, want_scores)


def test_threaded_matvec_reads_weights_changed_between_calls():
    """Nothing is kept between calls: weights edited through ``.data`` (no version bump, as PEFT's LoRA merge does)
    or by an optimizer step change the next call's scores exactly as they change the ``F.linear`` path's."""
    torch.manual_seed(0)
    model = DeepLNGPTForCausalLM(tiny_gpt_config(layers=2)).eval()
    prompt = torch.randint(1, 97, (1, 5))
    with torch.inference_mode():
        _greedy_scores(model, prompt)
    with torch.no_grad():
        for layer in model.transformer.layers:
            layer.mlp.fc1.weight.data.mul_(-1.5)
        model.lm_head.weight.data.add_(torch.randn_like(model.lm_head.weight))
    ids = torch.randint(1, 97, (2, 7))
    model(ids, labels=ids).loss.backward()
    torch.optim.AdamW(model.parameters(), lr=0.05).step()
    got_ids, got_scores = _greedy_scores(model, prompt)
    model.config.threaded_matvec = False
    want_ids, want_scores = _greedy_scores(model, prompt)
    assert torch.equal(got_ids, want_ids)
    _assert_scores_close(got_scores, want_scores)


def test_pretrain_compile_flag_reaches_training_arguments(tmp_path):
    from modeling_deepln.cli import build_parser
    from modeling_deepln.training.args import PretrainArgs, resolve_pretrain_args
    from modeling_deepln.training.trainer_setup import training_arguments

    ns = build_parser().parse_args(["pretrain", "--compile", "--preset", "gpt-deep-small"])
    assert ns.compile is True
    resolved, _ = resolve_pretrain_args(PretrainArgs(preset="gpt-deep-small", compile=True))
    assert training_arguments(resolved, output_dir=str(tmp_path), world=1).torch_compile is True
    plain, _ = resolve_pretrain_args(PretrainArgs(preset="gpt-deep-small"))
    assert training_arguments(plain, output_dir=str(tmp_path), world=1).torch_compile is False


def test_fast_path_switches_are_saved_config_fields_and_old_configs_load(tmp_path):
    """``fuse_qkv``, ``fused_lm_loss`` and ``sparse_mlm_loss`` live in the config: saved, reloaded, carried into a
    model built from the config; a config.json written before the fields existed loads with the defaults."""
    from modeling_deepln import DeepLNBertConfig, DeepLNGPTConfig

    config = tiny_gpt_config(layers=1, fused_lm_loss=True, fuse_qkv=False, threaded_matvec=False)
    model = DeepLNGPTForCausalLM(config)
    assert model.fused_lm_loss is True  # the model attribute reads the config
    model.save_pretrained(tmp_path / "gpt")
    again = DeepLNGPTForCausalLM.from_pretrained(tmp_path / "gpt")
    assert again.config.fused_lm_loss is True and again.config.fuse_qkv is False
    assert again.config.threaded_matvec is False
    ids = torch.randint(0, 97, (2, 5))
    assert again.train()(ids, labels=ids).logits is None
    model.fused_lm_loss = False  # the old attribute spelling sets the config field
    assert model.config.fused_lm_loss is False
    fields = ("fused_lm_loss", "fuse_qkv", "threaded_matvec")
    old = {k: v for k, v in again.config.to_dict().items() if k not in fields}
    loaded = DeepLNGPTConfig.from_dict(old)
    assert loaded.fused_lm_loss is False and loaded.fuse_qkv is True and loaded.threaded_matvec is True
    bert = DeepLNBertConfig(num_hidden_layers=1, hidden_size=32, num_attention_heads=2, sparse_mlm_loss=True)
    assert DeepLNBertConfig.from_dict(bert.to_dict()).sparse_mlm_loss is True
    with pytest.raises(ValueError, match="fuse_qkv must be True or False"):
        DeepLNBertConfig(fuse_qkv="yes")
    with pytest.raises(ValueError, match="threaded_matvec must be True or False"):
        DeepLNGPTConfig(threaded_matvec=1)


def test_pretrain_model_turns_on_the_training_fast_paths_in_its_config():
    from types import SimpleNamespace

    from modeling_deepln.training.pretraining import build_lm_model

    tokenizer = SimpleNamespace(pad_token_id=0, eos_token_id=1, bos_token_id=1, cls_token_id=2, sep_token_id=3)
    for family, config, field in (
        ("gpt", tiny_gpt_config(layers=1), "fused_lm_loss"),
        ("bert", load_preset("bert-1k", num_hidden_layers=1, vocab_size=97), "sparse_mlm_loss"),
    ):
        run = SimpleNamespace(config=config, tokenizer=tokenizer, family=family, args=SimpleNamespace(seed=0))
        model = build_lm_model(run)
        assert getattr(model.config, field) is True and model.config.fuse_qkv is True


def test_pretrain_optimizer_is_fused_adamw_and_updates_like_foreach_adamw(tmp_path):
    from modeling_deepln.training.args import PretrainArgs, resolve_pretrain_args
    from modeling_deepln.training.trainer_setup import training_arguments

    resolved, _ = resolve_pretrain_args(PretrainArgs(preset="gpt-deep-small"))
    assert training_arguments(resolved, output_dir=str(tmp_path), world=1).optim == "adamw_torch_fused"
    torch.manual_seed(0)
    model = DeepLNGPTForCausalLM(tiny_gpt_config(layers=2))
    ids = torch.randint(0, 97, (2, 9))
    plain = [p.detach().clone().requires_grad_() for p in model.parameters()]
    fused = [p.detach().clone().requires_grad_() for p in model.parameters()]
    optimizers = [torch.optim.AdamW(plain, lr=1e-2, foreach=True), torch.optim.AdamW(fused, lr=1e-2, fused=True)]
    for _ in range(3):
        model.zero_grad()
        model(ids, labels=ids).loss.backward()
        for params, optimizer in zip((plain, fused), optimizers):
            for param, source in zip(params, model.parameters()):
                param.grad = source.grad.clone()
            optimizer.step()
    for got, want in zip(fused, plain):  # the same update up to float32 rounding of ~10 operations per element
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("family", ["gpt", "bert"])
def test_flex_attention_equals_sdpa_with_padding(family, monkeypatch):
    """``attn_implementation="flex_attention"`` (transformers' BlockMask from ``masking_utils``) gives the SDPA
    logits of a left-padded batch. transformers' ``torch.compile`` of flex attention is bypassed so it runs its
    reference implementation in seconds (the compiled kernel computes the same function; compiling it takes
    minutes on a loaded CPU)."""
    from torch.nn.attention.flex_attention import flex_attention
    from transformers.integrations.flex_attention import WrappedFlexAttention

    monkeypatch.setattr(WrappedFlexAttention, "__call__", lambda self: flex_attention)
    torch.manual_seed(0)
    if family == "gpt":
        model = DeepLNGPTForCausalLM(tiny_gpt_config(layers=2, pad_token_id=0))
    else:
        shape = dict(vocab_size=97, hidden_size=32, intermediate_size=64, num_attention_heads=2)
        model = DeepLNBertForMaskedLM(load_preset("bert-1k", num_hidden_layers=2, **shape))
    model.eval()
    ids = torch.randint(1, 97, (2, 9))
    mask = torch.ones_like(ids)
    mask[1, :3] = 0
    with torch.no_grad():
        sdpa = model(ids, attention_mask=mask).logits
        model.set_attn_implementation("flex_attention")
        flex = model(ids, attention_mask=mask).logits
    assert model.config._attn_implementation == "flex_attention"
    kept = mask.bool()  # padded query rows are not defined by either backend
    torch.testing.assert_close(flex[kept], sdpa[kept], rtol=1e-5, atol=1e-5)


def test_model_compile_with_the_training_fast_paths_equals_eager():
    """``model.compile()`` (what ``TrainingArguments(torch_compile=True)`` and ``deepln pretrain --compile`` do)
    with ``deepln pretrain``'s fast paths on: the eager loss and gradients, one graph for all blocks."""
    torch.manual_seed(0)
    model = DeepLNGPTForCausalLM(tiny_gpt_config(layers=3, fused_lm_loss=True)).train()
    ids = torch.randint(0, 97, (2, 9))
    eager = model(ids, labels=ids).loss
    eager.backward()
    eager_grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    counters = _compile_counters()
    model.compile(backend="aot_eager")
    compiled = model(ids, labels=ids).loss
    compiled.backward()
    assert counters["stats"]["unique_graphs"] == 1  # the block; the fused head runs eagerly (no unrolled chunks)
    torch.testing.assert_close(compiled, eager, rtol=1e-6, atol=1e-6)
    for got, want in zip((p.grad for p in model.parameters()), eager_grads):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-7)


def test_bert_compile_with_the_sparse_head_equals_eager_and_compiles_the_block_only():
    """Under ``torch.compile`` the BERT embeddings, the final scaling and the sparse MLM head run eagerly: the one
    graph is the block (for all layers), and a batch with another number of masked tokens compiles nothing new."""
    torch.manual_seed(0)
    shape = dict(vocab_size=97, hidden_size=32, intermediate_size=64, num_attention_heads=2, hidden_dropout_prob=0.0,
                 attention_probs_dropout_prob=0.0)  # fmt: skip
    model = DeepLNBertForMaskedLM(load_preset("bert-1k", num_hidden_layers=3, sparse_mlm_loss=True, **shape)).train()
    ids = torch.randint(5, 97, (2, 9))
    labels = torch.full_like(ids, -100)
    labels[0, 1], labels[1, 4] = ids[0, 1], ids[1, 4]
    eager = model(ids, labels=labels).loss
    eager.backward()
    eager_grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    counters = _compile_counters()
    compiled_model = torch.compile(model, backend="aot_eager")
    compiled = compiled_model(ids, labels=labels).loss
    compiled.backward()
    torch.testing.assert_close(compiled, eager, rtol=1e-6, atol=1e-6)
    for got, want in zip((p.grad for p in model.parameters()), eager_grads):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-7)
    assert counters["stats"]["unique_graphs"] == 1
    labels[1, 6] = ids[1, 6]  # three masked tokens instead of two
    compiled_model(ids, labels=labels).loss.backward()
    assert counters["stats"]["unique_graphs"] == 1


FLUSH_CHECK = """
import struct, sys, torch
subnormal = struct.pack("<f", 1e-39) * (1 << 22)  # bytes: no float arithmetic before the flag is set
x = torch.frombuffer(bytearray(subnormal), dtype=torch.float32)
import modeling_deepln.cli as cli
try:
    cli.main(["--help"])
except SystemExit:
    pass
torch.set_num_threads(2)
y = x * 1.0  # 4M elements: split over both threads
print("kept", int(y.view(torch.int32).ne(0).sum()), "of", x.numel())  # integer compare: no float flush
"""


@pytest.mark.parametrize("keep", [False, True])
def test_deepln_command_flushes_subnormals_on_every_torch_thread(keep):
    """``deepln`` sets flush-to-zero before torch's OpenMP threads exist, so every worker inherits it: a parallel
    multiply of 4M subnormals gives only zeros (with the flag set later, only the calling thread's half would be
    zero). ``DEEPLN_KEEP_DENORMALS=1`` keeps them."""
    probe = subprocess.run([sys.executable, "-c", "import torch; print(torch.set_flush_denormal(True))"],
                           capture_output=True, text=True, check=True)  # fmt: skip
    if probe.stdout.strip() != "True":
        pytest.skip("this CPU has no flush-to-zero control that torch can set")
    env = {**os.environ, "OMP_NUM_THREADS": "2"}
    env.pop("DEEPLN_KEEP_DENORMALS", None)
    if keep:
        env["DEEPLN_KEEP_DENORMALS"] = "1"
    out = subprocess.run([sys.executable, "-c", FLUSH_CHECK], env=env, capture_output=True, text=True, check=True)
    kept = int(out.stdout.split("kept ")[1].split()[0])
    assert kept == (1 << 22 if keep else 0), out.stdout


MALLOC_CHECK = """
import resource, torch
import modeling_deepln.cli as cli
try:
    cli.main(["--help"])  # what every deepln command does first
except SystemExit:
    pass
from modeling_deepln import DeepLNGPTConfig, DeepLNGPTForCausalLM
torch.manual_seed(0)
config = DeepLNGPTConfig(num_hidden_layers=1, hidden_size=64, num_attention_heads=2, intermediate_size=256)
model = DeepLNGPTForCausalLM(config)
ids = torch.randint(0, config.vocab_size, (4, 128))
faults = []
for _ in range(4):  # training steps: the [512, 50257] logits, their log-softmax and gradient, 103 MB each
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    model(input_ids=ids, labels=ids).loss.backward()
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print("faults", *faults)
"""


def test_deepln_command_keeps_freed_memory_for_the_next_step():
    """A ``deepln`` command keeps the memory it frees (glibc: no trimming, blocks up to 1 GiB from the heap), so the
    large tensors of a training step reuse the previous step's pages: steps 3-4 of a dense-head GPT step page-fault
    at most half as often as with glibc's defaults, which ``DEEPLN_KEEP_MALLOC=1`` keeps (measured: 25K against
    104-107K faults of 4 KiB a step)."""
    import platform

    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        pytest.skip("glibc's mallopt only")
    steady = {}
    for keep in ("0", "1"):
        env = {**os.environ, "DEEPLN_KEEP_MALLOC": keep}
        out = subprocess.run([sys.executable, "-c", MALLOC_CHECK], env=env, capture_output=True, text=True, check=True)
        faults = [int(n) for n in out.stdout.splitlines()[-1].split()[1:]]  # the last line, after the help text
        steady[keep] = faults[2:]
    assert max(steady["0"]) <= 0.5 * min(steady["1"]), steady
