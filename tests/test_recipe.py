"""The default run's scheme and recipe, the post-norm-form switch on the command line, the masked-LM unigram
reference and the stored benchmark rows (issue 9)."""

from __future__ import annotations

import json
import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from modeling_deepln import DeepLNGPTConfig, DeepLNGPTModel
from modeling_deepln.cli import build_parser
from modeling_deepln.training.args import PretrainArgs, resolve_pretrain_args
from modeling_deepln.training.checks import build_config, config_overrides
from modeling_deepln.training.metrics import masked_unigram_perplexity
from modeling_deepln.training.reporting import load_benchmark_rows, print_benchmark_rows


def parse_pretrain(argv: list[str]) -> PretrainArgs:
    ns = build_parser().parse_args(["pretrain", *argv])
    values = {k: v for k, v in vars(ns).items() if k in PretrainArgs.__dataclass_fields__}
    return PretrainArgs(**values)


def test_default_run_resolves_to_the_documented_scheme_and_recipe():
    """`deepln pretrain`: 48 layers, FoundationLayerNorm in the α·s + LN(s) form, lr 2e-3 with 10 % warmup for 300
    steps (methods.md §5.1), bounded by the time limit."""
    a, recipe = resolve_pretrain_args(PretrainArgs())
    config = build_config(a.preset, config_overrides(a))
    assert (config.num_hidden_layers, config.residual_norm, config.post_norm_form) == (48, "foundation_ln", "alpha_plus_ln")
    assert (a.lr, a.warmup_ratio, a.max_steps, a.lr_schedule, a.batch_size, a.seq_len) == (2e-3, 0.1, 300, "cosine", 16, 128)
    assert a.max_minutes <= 8.0
    assert config.residual_scheme.alpha(config) == 0.974


def test_bert_main_job_resolves_to_the_documented_recipe():
    """`deepln pretrain --preset bert-deep-small`: 48-layer Upscale-LN BERT, the paper's BERT scheme (with this recipe
    it learns as well as Pre-LN; FoundationLayerNorm's α·s + LN(s) diverges there), 60 % masking scored on held-out blocks masked at 15 %, no dropout, sinusoidal initial positions, a
    600-step schedule of lr 2e-3 with 10 % warmup that the time limit ends on a 2-core CPU."""
    a, recipe = resolve_pretrain_args(PretrainArgs(preset="bert-deep-small"))
    config = build_config(a.preset, config_overrides(a))
    assert (config.num_hidden_layers, config.residual_norm, config.position_embedding_init) == (48, "upscale_ln", "sinusoidal")
    assert (config.post_norm_form, config.residual_scheme.alpha(config)) == ("ln", 96**0.25)
    assert config.hidden_dropout_prob == config.attention_probs_dropout_prob == 0.0
    assert (a.mlm_probability, a.eval_mlm_probability) == (0.6, 0.15)
    assert (a.lr, a.warmup_ratio, a.max_steps, a.lr_schedule, a.batch_size, a.seq_len) == (2e-3, 0.1, 600, "cosine", 16, 128)
    assert a.max_minutes <= 9.0


def test_default_block_computes_alpha_s_plus_ln_s():
    """The default form, checked in a block of the default preset's shape against the formula written out."""
    config = build_config("gpt-deep-small", {"num_hidden_layers": 2})
    residual = DeepLNGPTModel(config).layers[1].mlp_residual
    x, branch = torch.randn(2, 5, 64), torch.randn(2, 5, 64)
    s = x + branch
    want = 0.974 * s + F.layer_norm(s, (64,), residual.norm.weight, residual.norm.bias, config.layer_norm_eps)
    got, _ = residual(x, lambda h: branch)
    torch.testing.assert_close(got, want)


def test_post_norm_form_flag_and_scheme_switch_from_a_preset_that_names_a_form():
    """The preset names alpha_plus_ln; --residual-norm pre_ln resets the form, --post-norm-form ln switches it."""
    assert build_config("gpt-deep-small", config_overrides(parse_pretrain(["--residual-norm", "pre_ln"]))).post_norm_form == "ln"
    config = build_config("gpt-deep-small", config_overrides(parse_pretrain(["--post-norm-form", "ln"])))
    assert (config.residual_norm, config.post_norm_form) == ("foundation_ln", "ln")
    config = build_config("gpt-deep-small", config_overrides(parse_pretrain(["--residual-norm", "post_ln"])))
    assert config.post_norm_form == "ln"  # post_ln's own default, not the preset's alpha_plus_ln
    config = build_config(
        "gpt-deep-small", config_overrides(parse_pretrain(["--residual-norm", "post_ln", "--post-norm-form", "alpha_plus_ln"]))
    )
    assert config.post_norm_form == "alpha_plus_ln"
    with pytest.raises(SystemExit):
        parse_pretrain(["--post-norm-form", "alpha"])
    from modeling_deepln import load_preset  # the library path resets the form the same way

    assert load_preset("gpt-deep-small", residual_norm="pre_ln").post_norm_form == "ln"
    assert load_preset("gpt-deep-small", num_hidden_layers=4).post_norm_form == "alpha_plus_ln"


def test_config_saved_before_the_form_existed_loads_with_the_ln_form(tmp_path):
    """Old checkpoints (no post_norm_form in config.json) were trained with LN(α·x + G(x)) and must keep it."""
    config = DeepLNGPTConfig(num_hidden_layers=2, hidden_size=32, num_attention_heads=2, residual_norm="foundation_ln")
    assert config.post_norm_form == "alpha_plus_ln"
    config.save_pretrained(tmp_path)
    data = json.loads((tmp_path / "config.json").read_text())
    del data["post_norm_form"]
    (tmp_path / "config.json").write_text(json.dumps(data))
    assert DeepLNGPTConfig.from_pretrained(tmp_path).post_norm_form == "ln"


def test_masked_unigram_perplexity_by_hand():
    """Counts of the non-special training tokens (+1 each), scored on the non-special eval tokens."""
    special = [0, 1]  # e.g. [CLS]=0, [SEP]=1
    train = np.array([[0, 2, 2, 3, 1], [0, 2, 4, 4, 1]])
    evaluation = np.array([[0, 2, 3, 4, 1]])
    # counts+1 over ids 2..5 (ids 0, 1 get no mass): 2->4, 3->2, 4->3, 5->1; total 10
    want = math.exp(-(math.log(4 / 10) + math.log(2 / 10) + math.log(3 / 10)) / 3)
    assert masked_unigram_perplexity(train, evaluation, vocab_size=6, special_ids=special) == pytest.approx(want)


def test_benchmark_rows_name_a_flag_that_switches_the_default_scheme(capsys):
    for preset in ("gpt-deep-small", "bert-deep-small"):
        rows = load_benchmark_rows(preset)
        assert rows, preset
        default = build_config(preset, config_overrides(PretrainArgs(preset=preset)))
        for row in rows:
            switched = build_config(preset, config_overrides(parse_pretrain(["--preset", preset, *row["flag"].split()])))
            assert (switched.residual_norm, switched.post_norm_form) != (default.residual_norm, default.post_norm_form)
    run = SimpleNamespace(args=PretrainArgs())
    lines = print_benchmark_rows(run, {"eval_loss": 6.5})
    assert lines and "--post-norm-form ln" in capsys.readouterr().out
    assert print_benchmark_rows(SimpleNamespace(args=PretrainArgs(post_norm_form="ln")), {"eval_loss": 7.4}) == []
    bert = print_benchmark_rows(SimpleNamespace(args=PretrainArgs(preset="bert-deep-small")), {"eval_loss": 7.3})
    printed = capsys.readouterr().out
    assert len(bert) == 2 and "--residual-norm foundation_ln" in printed and "--residual-norm pre_ln" in printed
    assert "stopped after 102 steps" in printed  # the diverged run has no held-out loss to print


@pytest.mark.parametrize("flags, differs", [
    (["--data", "my.txt"], "--data the embedded corpus (this run: ['my.txt'])"),
    (["--max-steps", "50"], "--max-steps 300 (this run: 50)"),
    (["--hidden-size", "32"], "--hidden-size 64 (this run: 32)"),
    (["--vocab-size", "4000"], "--vocab-size 8192 (this run: 4000)"),
])  # fmt: skip
def test_benchmark_rows_only_beside_a_run_with_their_settings(flags, differs, capsys):
    """A run that differs from the stored rows' settings gets one line naming what differs, not the rows."""
    lines = print_benchmark_rows(SimpleNamespace(args=parse_pretrain(flags)), {"eval_loss": 6.5})
    assert len(lines) == 1 and differs in lines[0] and "not shown" in lines[0]
    assert "stored benchmark:" not in capsys.readouterr().out


def test_final_hidden_scale_flag_reaches_the_config_and_bad_values_are_input_errors():
    """--final-hidden-scale C sets config.final_hidden_scale (the alpha*s + LN(s) ablation); C <= 0 is a clear error."""
    from modeling_deepln.errors import DeepLNInputError

    config = build_config("gpt-1k-cpu", config_overrides(parse_pretrain(["--final-hidden-scale", "0.026"])))
    assert config.final_hidden_scale == 0.026
    assert build_config("gpt-1k-cpu", config_overrides(parse_pretrain([]))).final_hidden_scale == 1.0
    with pytest.raises(DeepLNInputError, match="final_hidden_scale must be a positive number"):
        build_config("gpt-1k-cpu", config_overrides(parse_pretrain(["--final-hidden-scale", "0"])))


def test_a_smaller_vocabulary_drops_the_presets_special_ids_outside_it():
    """gpt-1k names GPT-2's 50,256 as bos/eos; with --vocab-size 8192 (a trained tokenizer) they become None (the run
    takes them from its tokenizer) instead of out-of-range ids that transformers warns about."""
    import logging

    def warnings_of(build):
        records: list[logging.LogRecord] = []
        handler = logging.Handler()
        handler.emit = records.append
        logger = logging.getLogger("transformers")  # it does not propagate to the root logger (caplog)
        logger.addHandler(handler)
        try:
            return build(), [r.getMessage() for r in records if "within the vocabulary" in r.getMessage()]
        finally:
            logger.removeHandler(handler)

    assert build_config("gpt-1k", {}).bos_token_id == 50256
    # sizes no other test uses: transformers logs each distinct message once per process
    args = config_overrides(parse_pretrain(["--preset", "gpt-1k", "--vocab-size", "8189"]))
    config, warned = warnings_of(lambda: build_config("gpt-1k", args))
    assert (config.vocab_size, config.bos_token_id, config.eos_token_id) == (8189, None, None)
    assert warned == []
    _, warned = warnings_of(lambda: DeepLNGPTConfig(vocab_size=8187, bos_token_id=50255))  # what it was
    assert warned, "the check above would not see the warning"
    assert build_config("gpt-1k-cpu", {"vocab_size": 4096}).eos_token_id == 0  # ids inside the vocabulary stay
    assert build_config("gpt-1k", {"vocab_size": 8192, "eos_token_id": 3}).eos_token_id == 3  # given ones stay
