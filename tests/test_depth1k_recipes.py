"""The 1,000-layer presets and their recipes resolve as the README section "1,000 layers" documents: by default the
scheme and recipe chosen by the 1,000-layer measurements (stable where the paper's form diverges), the paper's recipe behind ``--recipe paper``, schedules defined
by steps (never by a wall-clock limit), and the GPU depth check's dry run."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import pytest

from modeling_deepln.cli import build_parser
from modeling_deepln.training.args import DeepLNInputError, PretrainArgs, load_recipe, resolve_pretrain_args
from modeling_deepln.training.model_config import build_config, config_overrides
from modeling_deepln.training.trainer_setup import training_arguments

ROOT = Path(__file__).resolve().parents[1]


def resolve(argv: list[str]):
    """What ``deepln pretrain ARGV`` trains: the resolved arguments and the model config (as ``plan_pretrain``)."""
    ns = build_parser().parse_args(["pretrain", *argv])
    values = {k: v for k, v in vars(ns).items() if k in PretrainArgs.__dataclass_fields__}
    a, recipe = resolve_pretrain_args(PretrainArgs(**values))
    return a, build_config(a.preset, {**recipe.get("config", {}), **config_overrides(a)})


@pytest.mark.parametrize(
    "preset,lr,min_lr,steps",
    [("gpt-1k", 1e-3, 1e-4, None), ("bert-1k", 1e-3, 1e-4, None), ("gpt-1k-cpu", 2e-3, 2e-4, 300),
     ("bert-1k-cpu", 4e-3, 4e-4, 400)],
)
def test_default_recipe_resolves_as_documented(preset, lr, min_lr, steps):
    """The README's "1,000 layers" recipes: GPT-2's σ/√(2N) output init, 1,000 layers, the residual blocks at
    lr/√N, cosine decay with 5 % warmup over max_steps, fused AdamW; no time limit. The GPTs and ``bert-1k-cpu`` are
    FoundationLayerNorm ``α·s + LN(s)`` without a final LayerNorm (the one GPT scheme learning at 1,000 layers in the
    depth-1,000 table; ahead of Pre-LN in every paired BERT run), ``bert-1k`` Pre-LN with a final LayerNorm (the
    form is untested at its width). The CPU presets run the schedules of the measured 1,000-layer CPU runs (300
    steps for the GPT, 400 for the BERT; lr 2e-3 for the GPT, 4e-3 for the BERT, chosen at 48 layers)."""
    a, config = resolve(["--preset", preset])
    assert (config.num_hidden_layers, config.scale_output_init) == (1000, True)
    if preset != "bert-1k":
        scheme = (config.residual_norm, config.post_norm_form, config.final_layer_norm)
        assert scheme == ("foundation_ln", "alpha_plus_ln", False)
        assert config.residual_alpha is None  # the scheme's α, 0.974
    else:
        assert (config.residual_norm, config.final_layer_norm) == ("pre_ln", True)
    assert (a.lr, a.lr_schedule, a.min_lr, a.warmup_ratio, a.optim) == (lr, "cosine", min_lr, 0.05, "adamw_torch_fused")
    assert a.max_steps > 0 and a.max_minutes is None
    assert a.block_lr_scale == "depth"
    if steps is not None:
        assert a.max_steps == steps
    if preset.startswith("bert"):
        assert a.mlm_probability == 0.6 and config.position_embedding_init == "sinusoidal"
        assert config.hidden_dropout_prob == config.attention_probs_dropout_prob == 0.0


@pytest.mark.parametrize("preset, vocab_size", [("gpt-1k-cpu", 8192), ("bert-1k-cpu", 2048)])
def test_cpu_presets_train_on_the_embedded_corpus(preset, vocab_size):
    """The reproducible CPU run: narrow, a tokenizer trained on the embedded corpus (no Hub), fp32; the BERT's
    vocabulary is 2,048 (README "1,000 layers": its masked LM ends further below the unigram model than at 8,192)."""
    a, config = resolve(["--preset", preset])
    assert a.data is None and a.tokenizer is None and a.precision == "fp32"
    assert (config.hidden_size, config.vocab_size, a.seq_len, a.batch_size) == (32, vocab_size, 64, 32)


def test_gpt_1k_paper_recipe_is_one_flag_away():
    """``--recipe paper``: FoundationLayerNorm (α·s + LN(s)), Adam lr 1e-5, cosine, fp32, the gpt2 tokenizer."""
    a, config = resolve(["--preset", "gpt-1k", "--recipe", "paper"])
    assert (config.residual_norm, config.post_norm_form, config.scale_output_init) == ("foundation_ln", "alpha_plus_ln", False)
    assert (a.lr, a.lr_schedule, a.optim, a.weight_decay, a.precision) == (1e-5, "cosine", "adam", 0.0, "fp32")
    assert (a.tokenizer, a.seq_len, a.max_minutes) == ("gpt2", 1024, None)
    assert (config.num_hidden_layers, config.hidden_size) == (1000, 256)


def test_bert_1k_paper_recipe_is_one_flag_away():
    """``--recipe paper``: Upscale LN, dropout 0.1, normal position init, 15 % masking, lr 1e-4 linear, fp16."""
    a, config = resolve(["--preset", "bert-1k", "--recipe", "paper"])
    assert (config.residual_norm, config.scale_output_init, config.position_embedding_init) == ("upscale_ln", False, "normal")
    assert config.hidden_dropout_prob == config.attention_probs_dropout_prob == 0.1
    assert (a.lr, a.lr_schedule, a.min_lr, a.mlm_probability, a.precision) == (1e-4, "linear", 1e-5, 0.15, "fp16")
    assert a.tokenizer == "bert-base-uncased"


def test_command_line_wins_over_the_recipe():
    """Flags override a recipe's arguments and its model fields alike (the scheme switch resets the form)."""
    a, config = resolve(["--preset", "gpt-1k", "--recipe", "paper", "--lr", "3e-4", "--residual-norm", "deepnorm"])
    assert (a.lr, config.residual_norm, config.post_norm_form) == (3e-4, "deepnorm", "ln")
    a, config = resolve(["--preset", "gpt-1k", "--recipe", "paper", "--post-norm-form", "ln"])
    assert (config.residual_norm, config.post_norm_form) == ("foundation_ln", "ln")
    # the previous default, Pre-LN with its final LayerNorm, is one flag away from the GPT presets' α·s + LN(s)
    a, config = resolve(["--preset", "gpt-1k-cpu", "--residual-norm", "pre_ln"])
    assert (config.residual_norm, config.final_layer_norm, a.lr, a.block_lr_scale) == ("pre_ln", True, 2e-3, "depth")
    # and bert-1k-cpu's previous default the same way (the recipe, 400 steps at lr 4e-3, is kept)
    a, config = resolve(["--preset", "bert-1k-cpu", "--residual-norm", "pre_ln"])
    assert (config.residual_norm, config.final_layer_norm, a.lr, a.max_steps) == ("pre_ln", True, 4e-3, 400)


def test_unknown_recipe_names_the_ones_there_are():
    with pytest.raises(DeepLNInputError, match=r"no recipe 'papr'.*paper"):
        load_recipe("gpt-1k", "papr")
    with pytest.raises(DeepLNInputError, match=r"no recipe 'paper'.*none"):
        load_recipe("gpt-deep-small", "paper")


def test_adam_beta2_and_fused_adamw_reach_the_trainer(tmp_path):
    a, _ = resolve(["--preset", "gpt-1k-cpu", "--adam-beta2", "0.98"])
    targs = training_arguments(a, output_dir=str(tmp_path), world=1)
    assert (targs.adam_beta2, str(targs.optim.value)) == (0.98, "adamw_torch_fused")
    a, _ = resolve(["--preset", "gpt-1k", "--recipe", "paper"])  # the paper's Adam: AdamW without weight decay
    targs = training_arguments(a, output_dir=str(tmp_path), world=1)
    assert (str(targs.optim.value), targs.weight_decay, targs.adam_beta2) == ("adamw_torch_fused", 0.0, 0.999)


def test_gpu_depth_check_dry_run_on_the_cpu(tmp_path):
    """The GPU script's whole path (both presets through ``deepln pretrain``, rows against the unigram model) at a
    stand-in depth of 2 layers and 2 steps on the CPU."""
    spec = importlib.util.spec_from_file_location("gpu_depth_check", ROOT / "scripts" / "gpu_depth_check.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    results = tmp_path / "rows.jsonl"
    rows = script.main(
        ["--num-layers", "2", "--steps", "2", "--use-cpu", "--precision", "fp32", "--batch-size", "4", "--seq-len", "32",
         "--output-root", str(tmp_path / "runs"), "--results", str(results)]
    )  # fmt: skip
    assert [row["preset"] for row in rows] == ["gpt-1k", "bert-1k"]
    assert [json.loads(line) for line in results.read_text().splitlines()] == rows
    for row in rows:
        assert row["steps"] == 2 and row["num_layers"] == 2
        assert math.isclose(row["perplexity_ratio"], math.exp(row["eval_loss"] - row["unigram_loss"]))
        assert math.isclose(row["nats_below_unigram"], row["unigram_loss"] - row["eval_loss"])


def test_gpu_depth_check_trains_another_scheme_when_asked(tmp_path):
    """``--residual-norm`` replaces the preset's scheme (bert-1k-cpu's α·s + LN(s) on bert-1k at full width, on a GPU);
    the trained model's saved config and the row say which."""
    spec = importlib.util.spec_from_file_location("gpu_depth_check", ROOT / "scripts" / "gpu_depth_check.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    rows = script.main(
        ["--presets", "bert-1k", "--residual-norm", "foundation_ln", "--num-layers", "2", "--steps", "1", "--use-cpu",
         "--precision", "fp32", "--batch-size", "4", "--seq-len", "32", "--output-root", str(tmp_path / "runs"),
         "--results", str(tmp_path / "rows.jsonl")]
    )  # fmt: skip
    assert rows[0]["residual_norm"] == "foundation_ln"
    saved = json.loads((tmp_path / "runs" / "bert-1k-default-foundation_ln" / "config.json").read_text())
    assert (saved["residual_norm"], saved["post_norm_form"]) == ("foundation_ln", "alpha_plus_ln")
