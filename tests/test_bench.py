"""The benchmark's own logic and the build/generation paths it measures, on tiny shapes (seconds):

* the parallel normal init draws every weight from the scheme's distribution (std within sampling error of the
  formula), reproducibly under ``torch.manual_seed`` and independently of the thread count;
* greedy generation through the decode path gives the plain forward's tokens;
* ``deepln bench`` rows: equal-work and shortcut rows labelled apart, every ratio against a named peer;
* the ``--profile`` view groups torch.profiler op names into matmul / attention / elementwise / optimizer.
"""

from __future__ import annotations

import math

import pytest
import torch

from modeling_deepln import DeepLNBertForMaskedLM, DeepLNGPTForCausalLM, load_preset


def tiny_gpt_config(layers: int = 3, **overrides):
    shape = dict(
        num_hidden_layers=layers, vocab_size=97, hidden_size=32, intermediate_size=64, num_attention_heads=2,
        max_position_embeddings=64, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, bos_token_id=0,
        eos_token_id=0,
    )  # fmt: skip
    return load_preset("gpt-1k", **{"residual_norm": "foundation_ln", **shape, **overrides})  # own scheme != peer's


def _assert_normal(weight: torch.Tensor, std: float, name: str) -> None:
    """Sample mean and std of ``weight`` against N(0, std²): 6 standard errors (mean: std/√n; std: std/√(2n))."""
    n = weight.numel()
    mean, sample_std = weight.double().mean().item(), weight.double().std().item()
    assert abs(mean) < 6 * std / math.sqrt(n), (name, mean)
    assert abs(sample_std - std) < 6 * std / math.sqrt(2 * n), (name, sample_std, std)


@pytest.mark.parametrize("scheme, scale_output", [("pre_ln", True), ("deepnorm", False), ("foundation_ln", False)])
def test_init_statistics_follow_the_scheme_formulas(scheme, scale_output):
    layers, d, ff = 4, 64, 256
    config = tiny_gpt_config(layers, residual_norm=scheme, hidden_size=d, intermediate_size=ff, vocab_size=4096,
                             scale_output_init=scale_output)  # fmt: skip
    torch.manual_seed(0)
    model = DeepLNGPTForCausalLM(config)
    sigma, beta = config.initializer_range, config.residual_scheme.beta(config)
    for name, param in model.named_parameters():
        if name.endswith("bias"):
            assert torch.all(param == 0), name
        elif "norm" in name:
            assert torch.all(param == 1), name
        elif name.endswith(("q_proj.weight", "k_proj.weight", "v_proj.weight", "out_proj.weight", "fc1.weight",
                            "fc2.weight")):  # fmt: skip
            fan_in, fan_out = param.shape[1], param.shape[0]
            if beta is not None:
                gain = 1.0 if name.endswith(("q_proj.weight", "k_proj.weight")) else beta
                _assert_normal(param, gain * math.sqrt(2 / (fan_in + fan_out)), name)
            elif scale_output and name.endswith(("out_proj.weight", "fc2.weight")):
                _assert_normal(param, sigma / math.sqrt(2 * layers), name)
            else:
                _assert_normal(param, sigma, name)
        else:  # embeddings, LM head
            _assert_normal(param, sigma, name)


def test_parallel_init_is_reproducible_and_independent_of_threads(monkeypatch):
    from modeling_deepln.model import init_deepln

    monkeypatch.setattr(init_deepln, "CHUNK_ELEMENTS", 1 << 12)  # many chunks even at this size
    config = tiny_gpt_config(layers=3, vocab_size=512)
    threads = torch.get_num_threads()
    weights = []
    try:
        for n in (1, 2, 1):
            torch.set_num_threads(n)
            torch.manual_seed(3)
            weights.append(DeepLNGPTForCausalLM(config).state_dict())
    finally:
        torch.set_num_threads(threads)
    for key in weights[0]:
        torch.testing.assert_close(weights[1][key], weights[0][key], rtol=0, atol=0, msg=key)
    embedding = weights[0]["transformer.token_embeddings.weight"].view(-1)
    first, second = embedding[: 1 << 12], embedding[1 << 12 : 2 << 12]  # two chunks: different streams
    assert not torch.equal(first, second)
    torch.manual_seed(4)
    other = DeepLNGPTForCausalLM(config).state_dict()["transformer.token_embeddings.weight"]
    assert not torch.equal(other, weights[0]["transformer.token_embeddings.weight"])


def test_bert_padding_row_stays_zero_after_parallel_init():
    config = load_preset("bert-1k", num_hidden_layers=2, hidden_size=32, intermediate_size=64, num_attention_heads=2,
                         vocab_size=97, max_position_embeddings=64, pad_token_id=0)  # fmt: skip
    model = DeepLNBertForMaskedLM(config)
    for module in model.modules():
        if isinstance(module, torch.nn.Embedding) and module.padding_idx is not None:
            assert torch.all(module.weight[module.padding_idx] == 0)


@pytest.mark.parametrize("scheme", ["pre_ln", "foundation_ln"])
def test_greedy_generation_equals_the_plain_forward_loop(scheme):
    """``generate`` (dynamic and static KV cache) picks, at every step, the argmax of a full forward pass over the
    whole sequence without a cache: the decode path changes no token."""
    torch.manual_seed(0)
    model = DeepLNGPTForCausalLM(tiny_gpt_config(layers=3, residual_norm=scheme)).eval()
    prompt = torch.randint(1, 97, (1, 5))
    with torch.inference_mode():
        ids = prompt
        for _ in range(8):
            logits = model(ids, use_cache=False).logits[:, -1]
            logits[:, 0] = -math.inf  # the end-of-text id, held back by min_new_tokens in generate
            ids = torch.cat([ids, logits.argmax(-1, keepdim=True)], dim=1)
        for cache in ({}, {"cache_implementation": "static"}):
            out = model.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=8, min_new_tokens=8,
                                 do_sample=False, pad_token_id=0, **cache)  # fmt: skip
            assert out.tolist() == ids.tolist(), cache


def test_contestants_label_equal_work_and_shortcuts_and_name_their_peer():
    from modeling_deepln.bench.models import EQUAL_WORK, OWN_SCHEME, PEER, SHORTCUTS, contestants_for

    gpt = {c.name: c for c in contestants_for(tiny_gpt_config(), torchscale=False)}
    assert {name: (c.work, c.peer) for name, c in gpt.items()} == {
        "deepln pre_ln": (EQUAL_WORK, "GPT2LMHeadModel"),
        "deepln pre_ln + fused LM head": (SHORTCUTS, "GPT2LMHeadModel"),
        "deepln foundation_ln + fused LM head": (OWN_SCHEME, "GPT2LMHeadModel"),
        "GPT2LMHeadModel": (PEER, None),
    }
    assert gpt["deepln pre_ln"].build().fused_lm_loss is False
    assert gpt["deepln pre_ln + fused LM head"].build().fused_lm_loss is True
    bert_config = load_preset("bert-1k", residual_norm="upscale_ln", num_hidden_layers=2, hidden_size=32, intermediate_size=64,
                              num_attention_heads=2, vocab_size=97, max_position_embeddings=64)  # fmt: skip
    bert = {c.name: c for c in contestants_for(bert_config, torchscale=False)}
    assert bert["deepln post_ln"].peer == "BertForMaskedLM" and bert["deepln post_ln"].work == EQUAL_WORK
    assert bert["deepln post_ln + sparse MLM head"].build().sparse_mlm_loss is True
    assert bert["deepln post_ln"].build().sparse_mlm_loss is False


def test_ratios_are_against_the_named_peer_not_any_other_row():
    from modeling_deepln.bench.run import Row, add_ratios

    rows = [
        Row("c", "train tok/s", "GPT2LMHeadModel", 100.0, "tok/s"),
        Row("c", "train tok/s", "torchscale deepnorm", 50.0, "tok/s", peer="GPT2LMHeadModel"),
        Row("c", "train tok/s", "GPT2LMHeadModel torch.compile", 200.0, "tok/s"),
        Row("c", "train tok/s", "deepln pre_ln", 150.0, "tok/s", peer="GPT2LMHeadModel"),
        Row("c", "train tok/s", "deepln pre_ln torch.compile", 300.0, "tok/s", peer="GPT2LMHeadModel torch.compile"),
        Row("c", "build s", "GPT2LMHeadModel", 4.0, "s"),
        Row("c", "build s", "deepln pre_ln", 2.0, "s", peer="GPT2LMHeadModel"),
        Row("c", "inference tok/s", "deepln pre_ln", 9.0, "tok/s", peer="GPT2LMHeadModel"),  # peer row missing
    ]
    add_ratios(rows)
    ratios = {(r.metric, r.contestant): r.ratio for r in rows}
    assert ratios[("train tok/s", "deepln pre_ln")] == pytest.approx(1.5)
    assert ratios[("train tok/s", "deepln pre_ln torch.compile")] == pytest.approx(1.5)
    assert ratios[("train tok/s", "torchscale deepnorm")] == pytest.approx(0.5)
    assert ratios[("build s", "deepln pre_ln")] == pytest.approx(2.0)  # time: peer / value
    assert ratios[("inference tok/s", "deepln pre_ln")] is None
    assert ratios[("train tok/s", "GPT2LMHeadModel")] is None


def test_compiled_contestants_name_the_compiled_peer():
    from modeling_deepln.bench.models import contestants_for
    from modeling_deepln.bench.run import _compiled

    deepln, _, _, peer = contestants_for(tiny_gpt_config(), torchscale=False)
    assert _compiled(deepln, 48).peer == _compiled(peer, 48).name == "GPT2LMHeadModel torch.compile"
    assert _compiled(deepln, 1000).peer == _compiled(peer, 1000).name == "GPT2LMHeadModel compile_regions"


def test_profile_groups_op_names_into_classes():
    from types import SimpleNamespace

    from modeling_deepln.bench.profile import CLASSES, class_times, format_profile, op_class

    assert op_class("aten::addmm") == op_class("aten::mm") == op_class("aten::bmm") == "matmul"
    assert op_class("aten::_scaled_dot_product_flash_attention_for_cpu") == "attention"
    assert op_class("aten::_scaled_dot_product_flash_attention_for_cpu_backward") == "attention"
    assert op_class("aten::_softmax") == "attention"
    assert op_class("aten::native_layer_norm") == op_class("aten::add_") == op_class("aten::gelu") == "elementwise"
    assert op_class("aten::add_", in_optimizer=True) == "optimizer"
    assert op_class("autograd::engine::evaluate_function: AddmmBackward0") is None

    def event(name, self_us, parent=None):
        return SimpleNamespace(name=name, self_cpu_time_total=self_us, self_device_time_total=0, cpu_parent=parent)

    step = event("Optimizer.step#AdamW.step", 5)
    events = [event("aten::addmm", 3000), event("aten::mul", 1000), event("aten::_softmax", 500),
              step, event("aten::_foreach_add_", 700, step), event("aten::addcdiv_", 300, step)]  # fmt: skip
    totals = class_times(events, wall_seconds=0.006)
    assert totals["matmul"] == pytest.approx(0.003) and totals["elementwise"] == pytest.approx(0.001)
    assert totals["attention"] == pytest.approx(0.0005) and totals["optimizer"] == pytest.approx(0.001)
    assert totals["Python / dispatch"] == pytest.approx(0.0005)
    table = format_profile(totals, layers=2)
    assert all(kind in table for kind in CLASSES) and "ms / layer" in table


def test_profile_of_a_real_step_has_every_class():
    from modeling_deepln.bench.profile import profile_by_class

    torch.manual_seed(0)
    model = DeepLNGPTForCausalLM(tiny_gpt_config(layers=2))
    ids = torch.randint(0, 97, (2, 8))
    table = profile_by_class(model, {"input_ids": ids, "labels": ids}, torch.device("cpu"), torch.float32, 2)
    values = {line[:18].strip(): float(line.split()[-3]) for line in table.splitlines()[2:]}
    assert values["matmul"] > 0 and values["attention"] > 0 and values["elementwise"] > 0
    assert values["optimizer"] > 0


def test_fresh_compile_cache_points_inductor_at_an_empty_folder_and_restores(monkeypatch):
    """``deepln bench --compile`` times a cold compile: inside the block inductor's cache folder is a new empty one
    (what ``torch._inductor`` reads at each use), afterwards the previous setting is back and the folder is gone."""
    import os

    from torch._inductor.runtime.cache_dir_utils import cache_dir

    from modeling_deepln.bench.measure import fresh_compile_cache

    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", "/tmp/some-user-cache")
    kernel = torch.compile(lambda x: x.sin() + 1.0)
    with fresh_compile_cache():
        kernel(torch.zeros(8))
    from torch._inductor.codecache import CppPythonBindingsCodeCache as kernels

    assert kernels.cache  # the kernel just compiled is held in memory ...
    with fresh_compile_cache() as folder:
        assert not kernels.cache  # ... and forgotten in the next block: a cold compile there compiles again
        assert cache_dir() == folder and os.listdir(folder) == []
    assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == "/tmp/some-user-cache" and not os.path.exists(folder)


def test_compile_seconds_runs_one_eager_step_before_a_first_compile(tmp_path):
    """A cold-compile measurement first runs the step eagerly (a first step's allocations are no compile time),
    then compiles it once, in the contestant's own cache folder."""
    import os

    import torch._dynamo.utils as dynamo_utils

    from modeling_deepln.bench.run import _compile_seconds

    function = torch.compile(lambda x: x * 2.0 + 1.0, backend="eager")
    calls = []

    def step():
        calls.append(os.environ.get("TORCHINDUCTOR_CACHE_DIR"))
        function(torch.ones(4))

    torch._dynamo.reset()
    dynamo_utils.counters.clear()
    seconds = _compile_seconds({"m": step}, {"m": str(tmp_path)}, torch.device("cpu"), first=True)
    assert len(calls) == 2 and calls[1] == str(tmp_path) and seconds["m"] > 0
    assert dynamo_utils.counters["stats"]["unique_graphs"] == 1  # the eager step compiled nothing


def test_every_contestant_trains_with_the_optimizer_trainer_builds(tmp_path):
    """The bench's AdamW is the one ``Trainer`` builds by default (and ``deepln pretrain`` runs): torch's fused
    kernel, not torch's per-tensor CPU default, with the same parameter tensors."""
    from transformers import Trainer, TrainingArguments

    from modeling_deepln.bench.measure import training_optimizer

    model = DeepLNGPTForCausalLM(tiny_gpt_config())
    trainer_optimizer = Trainer(model=model, args=TrainingArguments(tmp_path, report_to=[])).create_optimizer()
    bench_optimizer = training_optimizer(model)
    assert type(bench_optimizer) is type(trainer_optimizer) is torch.optim.AdamW
    assert bench_optimizer.defaults["fused"] is trainer_optimizer.defaults["fused"] is True
    trainer_params = {id(p) for group in trainer_optimizer.param_groups for p in group["params"]}
    assert {id(p) for group in bench_optimizer.param_groups for p in group["params"]} == trainer_params
