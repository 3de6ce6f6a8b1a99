"""Integration tests of deepln with the Hugging Face stack: remote code, pipelines, generation, peft, Trainer.

Every test compares values against an independent reference (a saved forward pass, a step-by-step greedy
recompute, a softmax of the model's own logits, the base model's output, a manual loss...), on tiny models
(2-3 layers, hidden 32, vocabulary ~300), so the whole file runs in well under 90 s on 2 CPU cores.

The file runs under every supported transformers version (5.24 in the dev venv, 5.17 in ``/work/venvs/tf517``):
the parts that need an optional package (peft) skip with ``pytest.importorskip`` where it is absent, and nothing
here needs ``datasets``.

Remote code is tested in a fresh interpreter (``sys.executable``) with ``PYTHONPATH`` unset, the working
directory in a temporary folder and a meta-path finder that blocks ``import modeling_deepln``, so the child can
only use the code that ``save_pretrained`` copied next to the weights, whether or not the package is installed
into the venv. All the child's checks run in one subprocess (imports cost ~5 s); each check is reported back
and asserted by its own test below.
"""

from __future__ import annotations

import copy
import json
import os
import random
import subprocess
import sys
import textwrap
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest
import torch
import transformers

from modeling_deepln import (
    RESIDUAL_SCHEMES,
    DeepLNBertConfig,
    DeepLNBertForMaskedLM,
    DeepLNBertForSequenceClassification,
    DeepLNBertModel,
    DeepLNGPTConfig,
    DeepLNGPTForCausalLM,
    DeepLNGPTForSequenceClassification,
    DeepLNGPTModel,
)

# --------------------------------------------------------------------------------------------------------------
# Tiny configs and helpers
# --------------------------------------------------------------------------------------------------------------
VOCAB = 300
PAD, EOS = 0, 1

SCHEME_KWARGS = {
    "normformer": {"normformer_residual_scale": True},
}


TINY_SHAPE = dict(
    vocab_size=VOCAB,
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=4,
    intermediate_size=64,
    max_position_embeddings=64,
    hidden_dropout_prob=0.0,
    attention_probs_dropout_prob=0.0,
    pad_token_id=PAD,
    num_labels=3,
)


def gpt_config(scheme: str = "pre_ln", **overrides) -> DeepLNGPTConfig:
    fields = {**TINY_SHAPE, "residual_norm": scheme, "bos_token_id": EOS, "eos_token_id": EOS}
    return DeepLNGPTConfig(**{**fields, **SCHEME_KWARGS.get(scheme, {}), **overrides})


def bert_config(scheme: str = "post_ln", **overrides) -> DeepLNBertConfig:
    fields = {**TINY_SHAPE, "residual_norm": scheme}
    return DeepLNBertConfig(**{**fields, **SCHEME_KWARGS.get(scheme, {}), **overrides})


def perturbed(model: torch.nn.Module, seed: int = 0, scale: float = 0.05) -> torch.nn.Module:
    """Add noise to every parameter, so LayerNorms, head scales, ResScale and biases are not at their init
    values: a checkpoint that loses any of them (or re-initialises it) then gives different outputs."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in model.parameters():
            param.add_(torch.randn(param.shape, generator=generator) * scale)
    return model.eval()


def build(model_class, config, seed: int = 0, scale: float = 0.05):
    torch.manual_seed(seed)
    return perturbed(model_class(config), seed=seed + 1, scale=scale)


def lively_lm(scheme: str, seed: int = 0, **overrides) -> DeepLNGPTForCausalLM:
    """A tiny causal LM with large random weights, so greedy decoding does not just repeat one token (a
    degenerate continuation would let a wrong cache or position handling go unnoticed)."""
    config = gpt_config(scheme, initializer_range=0.3, **overrides)
    return build(DeepLNGPTForCausalLM, config, seed=seed, scale=0.2)


def left_padded_batch():
    """Three prompts of lengths 4, 7 and 6, left-padded with PAD to 7; no EOS inside the prompts."""
    rows = [[17, 42, 99, 5], [3, 250, 8, 77, 12, 190, 64], [101, 7, 7, 33, 280, 11]]
    width = max(map(len, rows))
    input_ids = torch.tensor([[PAD] * (width - len(r)) + r for r in rows])
    attention_mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows])
    return rows, input_ids, attention_mask


def greedy_full_recompute(model, input_ids, attention_mask, max_new_tokens, eos_token_id, pad_token_id):
    """Greedy decoding the slow way: a full forward of the whole sequence at every step (no cache), with
    ``position_ids = cumsum(mask) - 1`` (0 on padding), finished rows continued with padding as ``generate``
    does, and an early stop when every row has produced EOS."""
    ids, mask = input_ids.clone(), attention_mask.clone()
    unfinished = torch.ones(ids.shape[0], dtype=torch.long)
    with torch.no_grad():
        for _ in range(max_new_tokens):
            position_ids = (mask.cumsum(-1) - 1).masked_fill(mask == 0, 0)
            logits = model(input_ids=ids, attention_mask=mask, position_ids=position_ids, use_cache=False).logits
            next_tokens = logits[:, -1].argmax(-1)
            next_tokens = next_tokens * unfinished + pad_token_id * (1 - unfinished)
            ids = torch.cat([ids, next_tokens[:, None]], dim=1)
            mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
            unfinished = unfinished & (next_tokens != eos_token_id).long()
            if not unfinished.any():
                break
    return ids


def make_texts(n: int = 300, seed: int = 0) -> list[str]:
    words = (
        "the a cat dog bird fish sat ran flew swam on under over near mat tree river house quick lazy brown "
        "red small big old young jumps sleeps eats sings and but then while because after before today"
    ).split()
    rng = random.Random(seed)
    return [" ".join(rng.choice(words) for _ in range(rng.randint(5, 12))) + "." for _ in range(n)]


# --------------------------------------------------------------------------------------------------------------
# 1. Remote code in a fresh process
# --------------------------------------------------------------------------------------------------------------
REMOTE_SCHEMES = ("foundation_ln", "normformer", "deepnorm")
HEADS = {
    # class name: (class, config factory, Auto class used to load it, output fields compared)
    "DeepLNGPTForCausalLM": (DeepLNGPTForCausalLM, gpt_config, "AutoModelForCausalLM", ("logits",)),
    "DeepLNGPTForSequenceClassification": (
        DeepLNGPTForSequenceClassification,
        gpt_config,
        "AutoModelForSequenceClassification",
        ("logits",),
    ),
    "DeepLNGPTModel": (DeepLNGPTModel, gpt_config, "AutoModel", ("last_hidden_state",)),
    "DeepLNBertForMaskedLM": (DeepLNBertForMaskedLM, bert_config, "AutoModelForMaskedLM", ("logits",)),
    "DeepLNBertForSequenceClassification": (
        DeepLNBertForSequenceClassification,
        bert_config,
        "AutoModelForSequenceClassification",
        ("logits",),
    ),
    "DeepLNBertModel": (DeepLNBertModel, bert_config, "AutoModel", ("last_hidden_state", "pooler_output")),
}

CHILD_CODE = textwrap.dedent(
    r'''
    import importlib.abc, importlib.util, json, os, sys, traceback

    # Would the package be found without the blocker? (informational: it must not matter)
    FOUND_WITHOUT_BLOCKER = importlib.util.find_spec("modeling_deepln") is not None

    class _BlockDeepLN(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name == "modeling_deepln" or name.startswith("modeling_deepln."):
                raise ImportError(f"{name} is blocked: this process must use the saved remote code")
            return None

    sys.meta_path.insert(0, _BlockDeepLN())

    manifest = json.load(open(sys.argv[1]))
    results = {"_found_without_blocker": FOUND_WITHOUT_BLOCKER}

    def check(name, fn):
        try:
            fn()
            results[name] = "ok"
        except BaseException:
            results[name] = traceback.format_exc()

    def isolation():
        try:
            import modeling_deepln  # noqa: F401
        except ImportError:
            pass
        else:
            raise AssertionError("import modeling_deepln succeeded in the child")
        try:
            spec = importlib.util.find_spec("modeling_deepln")
        except ImportError:
            spec = None
        assert spec is None, spec
        assert "modeling_deepln" not in sys.modules
        assert "PYTHONPATH" not in os.environ
        assert os.environ.get("HF_HUB_OFFLINE") == "1"

    check("isolation", isolation)

    import torch
    import transformers

    def same(got, want, what):
        assert got.shape == want.shape, (what, got.shape, want.shape)
        if not torch.equal(got, want):
            diff = (got - want).abs().max().item()
            assert diff <= 1e-6, f"{what}: max abs diff {diff}"

    def assert_remote(obj, class_name):
        cls = type(obj)
        assert cls.__name__ == class_name, (cls.__name__, class_name)
        assert cls.__module__.startswith("transformers_modules"), cls.__module__

    def load_and_compare(entry):
        auto = getattr(transformers, entry["auto_class"])
        model = auto.from_pretrained(entry["folder"], trust_remote_code=True).eval()
        assert_remote(model, entry["class_name"])
        ref = torch.load(entry["ref"])
        with torch.no_grad():
            out = model(**ref["inputs"])
        for field in entry["fields"]:
            same(getattr(out, field), ref[field], entry["name"] + "." + field)

    for entry in manifest["models"]:
        check("load/" + entry["name"], lambda entry=entry: load_and_compare(entry))

    def automodel_on_task_folder(entry):
        model = transformers.AutoModel.from_pretrained(entry["folder"], trust_remote_code=True).eval()
        assert_remote(model, entry["base_class_name"])
        ref = torch.load(entry["ref"])
        inputs = {k: v for k, v in ref["inputs"].items() if k != "labels"}
        with torch.no_grad():
            out = model(**inputs)
        same(out.last_hidden_state, ref["base_last_hidden_state"], entry["name"] + " via AutoModel")

    for entry in manifest["automodel"]:
        check("automodel/" + entry["name"], lambda entry=entry: automodel_on_task_folder(entry))

    def new_head_on_task_folder(entry):
        # A classification head on an LM checkpoint: the body loads, the missing head is initialised by the
        # remote code's _init_weights (N(0, initializer_range), zero biases), not left as uninitialised memory.
        model = transformers.AutoModelForSequenceClassification.from_pretrained(
            entry["folder"], trust_remote_code=True
        ).eval()
        is_gpt = entry["base_class_name"] == "DeepLNGPTModel"
        assert_remote(model, "DeepLNGPTForSequenceClassification" if is_gpt else "DeepLNBertForSequenceClassification")
        new = [model.score] if is_gpt else [model.classifier, model.bert.pooler.dense]
        std = model.config.initializer_range
        for linear in new:
            w = linear.weight
            assert torch.isfinite(w).all()
            assert 0.5 * std < w.std().item() < 1.5 * std, (w.std().item(), std)
            assert w.mean().abs().item() < 0.5 * std
            if linear.bias is not None:
                assert torch.equal(linear.bias, torch.zeros_like(linear.bias))
        ref = torch.load(entry["ref"])
        body = model.transformer if is_gpt else model.bert
        with torch.no_grad():
            out = body(**ref["inputs"])
        same(out.last_hidden_state, ref["base_last_hidden_state"], entry["name"] + " body under a new head")

    for entry in manifest["automodel"]:
        check("newhead/" + entry["name"], lambda entry=entry: new_head_on_task_folder(entry))

    def autoconfig_round_trip(entry):
        saved = json.load(open(os.path.join(entry["folder"], "config.json")))
        config = transformers.AutoConfig.from_pretrained(entry["folder"], trust_remote_code=True)
        assert_remote(config, entry["config_class_name"])
        assert config.model_type == saved["model_type"]
        assert config.residual_scheme.name == saved["residual_norm"]
        loaded = json.loads(json.dumps(config.to_dict()))  # as JSON: integer id2label keys become strings
        for key, value in saved.items():
            if key in ("transformers_version",):
                continue
            assert loaded.get(key) == value, (key, loaded.get(key), value)
        out_dir = os.path.join(manifest["scratch"], "config_" + entry["name"])
        config.save_pretrained(out_dir)
        again = transformers.AutoConfig.from_pretrained(out_dir, trust_remote_code=True)
        assert_remote(again, entry["config_class_name"])
        strip = lambda d: {k: v for k, v in d.items() if k != "_name_or_path"}
        assert strip(again.to_dict()) == strip(config.to_dict())
        assert again.residual_scheme.name == config.residual_scheme.name
        resaved = json.load(open(os.path.join(out_dir, "config.json")))
        assert resaved["auto_map"] == saved["auto_map"], (resaved["auto_map"], saved["auto_map"])

    for entry in manifest["autoconfig"]:
        check("autoconfig/" + entry["name"], lambda entry=entry: autoconfig_round_trip(entry))

    def generation(entry):
        model = transformers.AutoModelForCausalLM.from_pretrained(entry["folder"], trust_remote_code=True).eval()
        assert_remote(model, "DeepLNGPTForCausalLM")
        ref = torch.load(entry["ref"])
        kwargs = dict(ref["gen_inputs"], max_new_tokens=ref["max_new_tokens"], do_sample=False)
        with torch.no_grad():
            cached = model.generate(**kwargs, use_cache=True)
            uncached = model.generate(**kwargs, use_cache=False)
        assert torch.equal(cached, uncached), (cached, uncached)
        assert torch.equal(cached, ref["generated"]), (cached, ref["generated"])

    for entry in manifest["generate"]:
        check("generate/" + entry["name"], lambda entry=entry: generation(entry))

    json.dump(results, open(manifest["results"], "w"))
    '''
)


def _inputs_for(family: str) -> dict:
    input_ids = torch.tensor([[2, 17, 42, 99, 5, 250, 31], [2, 8, 77, 12, 190, PAD, PAD]])
    attention_mask = (input_ids != PAD).long()
    inputs = {"input_ids": input_ids, "attention_mask": attention_mask}
    if family == "bert":
        inputs["token_type_ids"] = torch.tensor([[0, 0, 0, 0, 1, 1, 1], [0, 0, 0, 1, 1, 0, 0]])
    return inputs


@pytest.fixture(scope="module")
def remote_results(tmp_path_factory):
    """Save every head for each scheme with reference outputs, then run ONE clean child process that loads
    them all through the Auto classes with trust_remote_code and reports each check."""
    root = tmp_path_factory.mktemp("remote")
    refs = root / "refs"
    refs.mkdir()
    manifest = {"models": [], "automodel": [], "autoconfig": [], "generate": []}
    for s_idx, scheme in enumerate(REMOTE_SCHEMES):
        for h_idx, (class_name, (model_class, make_config, auto_class, fields)) in enumerate(HEADS.items()):
            family = "gpt" if "GPT" in class_name else "bert"
            model = build(
                model_class, make_config(scheme, initializer_range=0.3), seed=10 * s_idx + h_idx, scale=0.2
            )
            name = f"{scheme}_{class_name}"
            folder = root / name
            model.save_pretrained(folder)
            inputs = _inputs_for(family)
            with torch.no_grad():
                out = model(**inputs)
            ref = {"inputs": inputs}
            for field in fields:
                ref[field] = getattr(out, field)
            base = getattr(model, "transformer", None) or getattr(model, "bert", None)
            if base is not None and class_name.endswith(("CausalLM", "MaskedLM")):
                with torch.no_grad():
                    ref["base_last_hidden_state"] = base(**inputs).last_hidden_state
                manifest["automodel"].append(
                    {
                        "name": name,
                        "folder": str(folder),
                        "ref": str(refs / f"{name}.pt"),
                        "base_class_name": "DeepLNGPTModel" if family == "gpt" else "DeepLNBertModel",
                    }
                )
            if class_name == "DeepLNGPTForCausalLM":
                _, gen_ids, gen_mask = left_padded_batch()
                gen_inputs = {"input_ids": gen_ids, "attention_mask": gen_mask}
                with torch.no_grad():
                    ref["generated"] = model.generate(**gen_inputs, max_new_tokens=6, do_sample=False)
                ref["gen_inputs"] = gen_inputs
                ref["max_new_tokens"] = 6
                manifest["generate"].append({"name": name, "folder": str(folder), "ref": str(refs / f"{name}.pt")})
            if class_name in ("DeepLNGPTForCausalLM", "DeepLNBertForMaskedLM"):
                manifest["autoconfig"].append(
                    {
                        "name": name,
                        "folder": str(folder),
                        "config_class_name": "DeepLNGPTConfig" if family == "gpt" else "DeepLNBertConfig",
                    }
                )
            torch.save(ref, refs / f"{name}.pt")
            manifest["models"].append(
                {
                    "name": name,
                    "folder": str(folder),
                    "ref": str(refs / f"{name}.pt"),
                    "auto_class": auto_class,
                    "class_name": class_name,
                    "fields": list(fields),
                }
            )
    manifest["results"] = str(root / "results.json")
    manifest["scratch"] = str(root / "scratch")
    (root / "manifest.json").write_text(json.dumps(manifest))

    env = {key: value for key, value in os.environ.items() if key not in ("PYTHONPATH", "PYTHONHOME")}
    env.update(
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        HF_HOME=str(root / "hf_home"),
        HF_MODULES_CACHE=str(root / "hf_modules"),
        TOKENIZERS_PARALLELISM="false",
    )
    workdir = root / "cwd"
    workdir.mkdir()
    proc = subprocess.run(
        [sys.executable, "-c", CHILD_CODE, str(root / "manifest.json")],
        cwd=workdir,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, f"child failed (rc {proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
    return json.loads(Path(manifest["results"]).read_text())


def _assert_child_ok(results: dict, name: str) -> None:
    assert name in results, f"the child did not run check {name!r}: {sorted(results)}"
    assert results[name] == "ok", f"child check {name} failed:\n{results[name]}"


def test_remote_child_is_isolated(remote_results):
    _assert_child_ok(remote_results, "isolation")


@pytest.mark.parametrize("class_name", list(HEADS))
@pytest.mark.parametrize("scheme", REMOTE_SCHEMES)
def test_remote_code_load_matches_reference(remote_results, scheme, class_name):
    _assert_child_ok(remote_results, f"load/{scheme}_{class_name}")


@pytest.mark.parametrize("class_name", ["DeepLNGPTForCausalLM", "DeepLNBertForMaskedLM"])
@pytest.mark.parametrize("scheme", REMOTE_SCHEMES)
def test_remote_automodel_loads_task_folder(remote_results, scheme, class_name):
    _assert_child_ok(remote_results, f"automodel/{scheme}_{class_name}")


@pytest.mark.parametrize("class_name", ["DeepLNGPTForCausalLM", "DeepLNBertForMaskedLM"])
@pytest.mark.parametrize("scheme", REMOTE_SCHEMES)
def test_remote_new_head_on_task_folder_is_initialised(remote_results, scheme, class_name):
    _assert_child_ok(remote_results, f"newhead/{scheme}_{class_name}")


@pytest.mark.parametrize("class_name", ["DeepLNGPTForCausalLM", "DeepLNBertForMaskedLM"])
@pytest.mark.parametrize("scheme", REMOTE_SCHEMES)
def test_remote_autoconfig_round_trip(remote_results, scheme, class_name):
    _assert_child_ok(remote_results, f"autoconfig/{scheme}_{class_name}")


@pytest.mark.parametrize("scheme", REMOTE_SCHEMES)
def test_remote_generate_cache_equals_no_cache(remote_results, scheme):
    _assert_child_ok(remote_results, f"generate/{scheme}_DeepLNGPTForCausalLM")


def test_saved_folder_is_self_contained(tmp_path):
    """What the child relies on: the flat .py files and a complete auto_map are in every saved folder."""
    for model, files, autos in (
        (
            DeepLNGPTForCausalLM(gpt_config("deepnorm")),
            {"configuration_deepln.py", "modeling_deepln_gpt.py", "layers_deepln.py", "residual_deepln.py"},
            {"AutoConfig", "AutoModel", "AutoModelForCausalLM", "AutoModelForSequenceClassification"},
        ),
        (
            DeepLNBertForSequenceClassification(bert_config("normformer")),
            {"configuration_deepln.py", "modeling_deepln_bert.py", "layers_deepln.py", "residual_deepln.py"},
            {"AutoConfig", "AutoModel", "AutoModelForMaskedLM", "AutoModelForSequenceClassification"},
        ),
    ):
        folder = tmp_path / type(model).__name__
        model.save_pretrained(folder)
        present = {p.name for p in folder.iterdir()}
        assert files <= present, files - present
        assert "__init__.py" not in present
        saved = json.loads((folder / "config.json").read_text())
        assert set(saved["auto_map"]) == autos
        for py in files:
            source = (folder / py).read_text()
            assert "modeling_deepln" not in "\n".join(
                line for line in source.splitlines() if line.startswith(("import ", "from "))
            ), f"{py} imports the package absolutely"


# --------------------------------------------------------------------------------------------------------------
# 2. Pipelines with trained tokenizers
# --------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("model_class, make_config", [(DeepLNGPTForCausalLM, gpt_config),
                                                       (DeepLNBertForMaskedLM, bert_config)])
def test_disk_offloaded_model_equals_the_loaded_one(tmp_path, model_class, make_config):
    """``from_pretrained(device_map="auto")`` with too little memory offloads the weights to disk (Accelerate's
    hooks move each module's arguments to its device and load its weights in its forward; on a GPU machine the
    same hooks offload to CPU RAM): the logits equal the model's in memory. The blocks once passed their attention
    and MLP modules as arguments, and the hook tried to move the offloaded module itself."""
    pytest.importorskip("accelerate")
    model = build(model_class, make_config("deepnorm"), seed=8).eval()
    model.save_pretrained(tmp_path / "model")
    offloaded = model_class.from_pretrained(
        tmp_path / "model", device_map="auto", max_memory={"cpu": "60KB"}, offload_folder=tmp_path / "offload"
    )
    assert "disk" in set(offloaded.hf_device_map.values())
    inputs = _inputs_for("gpt" if model_class is DeepLNGPTForCausalLM else "bert")
    with torch.no_grad():
        torch.testing.assert_close(offloaded(**inputs).logits, model(**inputs).logits, atol=0, rtol=0)


def test_executorch_static_cache_export_equals_the_plain_forward():
    """transformers' ExecuTorch recipe (``TorchExportableModuleForDecoderOnlyLM``, ``torch.export`` with a static
    cache, non-strict): the exported program fed one token at a time gives the plain forward's logits. The
    positions once started at the static cache's length, a tensor: an ``arange`` of data-dependent size."""
    from transformers.integrations.executorch import TorchExportableModuleForDecoderOnlyLM

    model = build(DeepLNGPTForCausalLM, gpt_config("foundation_ln"), seed=3).eval()
    model.generation_config.cache_implementation = "static"
    ids = torch.tensor([[5, 17, 42, 8]])
    exportable = TorchExportableModuleForDecoderOnlyLM(model, batch_size=1, max_cache_len=16)
    exported = exportable.export(input_ids=ids[:, :1], cache_position=torch.tensor([0]), strict=False).module()
    with torch.no_grad():
        want = model(ids).logits
    got = torch.cat([exported(input_ids=ids[:, i : i + 1], cache_position=torch.tensor([i])) for i in range(4)], 1)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


@pytest.fixture(scope="module")
def tokenizer_training():
    return pytest.importorskip("modeling_deepln.training.tokenization")


def test_text_generation_pipeline_matches_generate(tmp_path, tokenizer_training):
    folder = tmp_path / "gpt"
    tokenizer = tokenizer_training.train_tokenizer(make_texts(), family="gpt", vocab_size=400, output_dir=folder)
    eos = tokenizer.eos_token_id
    model = lively_lm(
        "foundation_ln", seed=3, vocab_size=len(tokenizer), pad_token_id=eos, bos_token_id=eos, eos_token_id=eos
    )
    model.save_pretrained(folder)

    prompt = "the quick brown cat sat on the"
    generator = transformers.pipeline(
        "text-generation", model=str(folder), tokenizer=str(folder), trust_remote_code=True, device="cpu"
    )
    assert generator.model.dtype == torch.float32
    out = generator(prompt, max_new_tokens=8, do_sample=False)
    tensors = generator(prompt, max_new_tokens=8, do_sample=False, return_tensors=True)

    encoded = tokenizer(prompt, return_tensors="pt")
    with torch.no_grad():
        reference = model.generate(**encoded, max_new_tokens=8, do_sample=False)
    prompt_length = encoded["input_ids"].shape[1]
    assert reference.shape[1] > prompt_length  # something was generated
    assert tensors[0]["generated_token_ids"] == reference[0].tolist()
    expected_text = prompt + tokenizer.decode(reference[0, prompt_length:], skip_special_tokens=True)
    assert out == [{"generated_text": expected_text}]


def test_fill_mask_pipeline_scores_are_softmax_of_logits(tmp_path, tokenizer_training):
    folder = tmp_path / "bert"
    tokenizer = tokenizer_training.train_tokenizer(make_texts(), family="bert", vocab_size=300, output_dir=folder)
    config = bert_config("normformer", vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id)
    model = build(DeepLNBertForMaskedLM, config, seed=4)
    model.save_pretrained(folder)

    fill = transformers.pipeline(
        "fill-mask", model=str(folder), tokenizer=str(folder), trust_remote_code=True, device="cpu"
    )
    text = f"the quick brown {tokenizer.mask_token} jumps over the lazy dog."
    results = fill(text, top_k=5)

    encoded = tokenizer(text, return_tensors="pt")
    assert "token_type_ids" in encoded
    with torch.no_grad():
        logits = model(**encoded).logits
    position = (encoded["input_ids"][0] == tokenizer.mask_token_id).nonzero().item()
    probs = logits[0, position].softmax(-1)
    top = probs.topk(5)
    assert [r["token"] for r in results] == top.indices.tolist()
    torch.testing.assert_close(
        torch.tensor([r["score"] for r in results]), top.values, atol=1e-6, rtol=0
    )
    for result in results:
        assert result["token_str"] == tokenizer.decode([result["token"]])
        assert result["sequence"] == tokenizer.decode(
            [result["token"] if i == position else t for i, t in enumerate(encoded["input_ids"][0].tolist())],
            skip_special_tokens=True,
        )


# --------------------------------------------------------------------------------------------------------------
# 3. Greedy generation: cache == no cache == step-by-step full recompute, left-padded batch
# --------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("attn_implementation", ["eager", "sdpa"])
@pytest.mark.parametrize("scheme", list(RESIDUAL_SCHEMES))
def test_greedy_generation_left_padded(scheme, attn_implementation):
    rows, input_ids, attention_mask = left_padded_batch()
    n_new = 8
    kwargs = dict(input_ids=input_ids, attention_mask=attention_mask, max_new_tokens=n_new, do_sample=False)
    for seed in range(7, 17):  # the first random model whose continuation is not a degenerate repeat
        model = lively_lm(scheme, seed=seed)
        model.set_attn_implementation(attn_implementation)
        with torch.no_grad():
            cached = model.generate(**kwargs, use_cache=True)
        if len(set(cached[:, input_ids.shape[1]:].flatten().tolist())) > 3:
            break
    assert model.config._attn_implementation == attn_implementation
    with torch.no_grad():
        uncached = model.generate(**kwargs, use_cache=False)
    reference = greedy_full_recompute(model, input_ids, attention_mask, n_new, EOS, PAD)

    assert cached.shape[1] > input_ids.shape[1]
    assert len(set(cached[:, input_ids.shape[1]:].flatten().tolist())) > 3, cached  # not a degenerate repeat
    assert torch.equal(cached, uncached), (cached, uncached)
    assert torch.equal(cached, reference), (cached, reference)

    # Independent of padding altogether: each prompt decoded alone, unpadded, gives the same continuation.
    width = input_ids.shape[1]
    for i, row in enumerate(rows):
        alone_ids = torch.tensor([row])
        alone = greedy_full_recompute(model, alone_ids, torch.ones_like(alone_ids), n_new, EOS, PAD)
        new_alone = alone[0, len(row):].tolist()
        new_batch = cached[i, width:].tolist()
        assert new_batch[: len(new_alone)] == new_alone, (i, new_batch, new_alone)
        assert all(t == PAD for t in new_batch[len(new_alone):])


def test_generation_uses_kv_cache():
    """The cached path really feeds one token per step (else cache == no-cache would be vacuous)."""
    model = build(DeepLNGPTForCausalLM, gpt_config("pre_ln"), seed=8)
    lengths = []
    hook = model.transformer.register_forward_pre_hook(
        lambda module, args, kwargs: lengths.append((args[0] if args else kwargs["input_ids"]).shape[1]),
        with_kwargs=True,
    )
    _, input_ids, attention_mask = left_padded_batch()
    try:
        with torch.no_grad():
            model.generate(
                input_ids=input_ids, attention_mask=attention_mask, max_new_tokens=4, min_new_tokens=4,
                do_sample=False, use_cache=True,
            )
    finally:
        hook.remove()
    assert lengths == [input_ids.shape[1], 1, 1, 1], lengths


# --------------------------------------------------------------------------------------------------------------
# 4. peft / LoRA
# --------------------------------------------------------------------------------------------------------------
def _peft():
    return pytest.importorskip("peft")


PEFT_CASES = {
    "causal_lm": (DeepLNGPTForCausalLM, gpt_config, "CAUSAL_LM"),
    "seq_cls": (DeepLNBertForSequenceClassification, bert_config, "SEQ_CLS"),
}


def _peft_batch(task):
    inputs = _inputs_for("gpt" if task == "causal_lm" else "bert")
    if task == "causal_lm":
        labels = inputs["input_ids"].masked_fill(inputs["attention_mask"] == 0, -100)
    else:
        labels = torch.tensor([0, 2])
    return inputs, labels


@pytest.mark.parametrize("task", list(PEFT_CASES))
def test_lora_train_save_reload(tmp_path, task):
    peft = _peft()
    model_class, make_config, task_type = PEFT_CASES[task]
    scheme = "foundation_ln" if task == "causal_lm" else "deepnorm"
    base = build(model_class, make_config(scheme), seed=11)
    base.save_pretrained(tmp_path / "base")
    inputs, labels = _peft_batch(task)
    with torch.no_grad():
        base_logits = base(**inputs).logits

    lora = peft.LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], task_type=task_type)
    model = peft.get_peft_model(base, lora)

    trainable = [name for name, p in model.named_parameters() if p.requires_grad]
    assert trainable
    for name in trainable:
        is_lora = "lora_A" in name or "lora_B" in name
        is_head = task == "seq_cls" and "modules_to_save" in name and ".classifier." in name
        assert is_lora or is_head, f"unexpected trainable parameter {name}"
    n_layers = base.config.num_hidden_layers
    assert sum("lora_A" in n for n in trainable) == 2 * n_layers  # q_proj and v_proj of every layer
    if task == "seq_cls":
        assert any("modules_to_save" in n for n in trainable)

    # LoRA B = 0 at init: same output as the base model.
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(model(**inputs).logits, base_logits, atol=0, rtol=0)

    # forward + backward + a few steps (lora_B becomes non-zero)
    model.train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    frozen_before = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    for _ in range(3):
        loss = model(**inputs, labels=labels).loss
        assert torch.isfinite(loss)
        loss.backward()
        grads = {n: p.grad for n, p in model.named_parameters() if p.requires_grad}
        assert all(g is not None for g in grads.values())
        assert any(g.abs().sum() > 0 for n, g in grads.items() if "lora_B" in n)
        optimizer.step()
        optimizer.zero_grad()
    for n, p in model.named_parameters():
        if not p.requires_grad:
            assert torch.equal(p, frozen_before[n]), f"frozen parameter {n} changed"
    model.eval()
    with torch.no_grad():
        trained_logits = model(**inputs).logits
    assert not torch.allclose(trained_logits, base_logits)

    model.save_pretrained(tmp_path / "adapter")
    fresh_base = model_class.from_pretrained(tmp_path / "base")
    reloaded = peft.PeftModel.from_pretrained(fresh_base, tmp_path / "adapter").eval()
    with torch.no_grad():
        torch.testing.assert_close(reloaded(**inputs).logits, trained_logits, atol=1e-6, rtol=0)

    # merge_and_unload gives a plain deepln model with the same outputs
    merged = reloaded.merge_and_unload()
    assert type(merged) is model_class
    with torch.no_grad():
        torch.testing.assert_close(merged(**inputs).logits, trained_logits, atol=1e-5, rtol=1e-5)


def test_fused_lm_loss_goes_through_a_lora_lm_head():
    """``fused_lm_loss`` (on in every ``deepln pretrain`` checkpoint) with LoRA on ``lm_head``: the training loss and
    the LoRA gradients equal the plain path's, so the wrapped head is not bypassed (it once read the base weight
    directly: the LoRA head got no gradient and the loss was the base model's)."""
    peft = _peft()
    inputs, labels = _peft_batch("causal_lm")
    results = {}
    for fused in (False, True):
        base = build(DeepLNGPTForCausalLM, gpt_config(tie_word_embeddings=False), seed=4)
        base.fused_lm_loss = fused
        lora = peft.LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "lm_head"], init_lora_weights=False)
        model = peft.get_peft_model(base, lora).train()
        loss = model(**inputs, labels=labels).loss
        loss.backward()
        grads = {n: p.grad for n, p in model.named_parameters() if p.requires_grad}
        assert any("lm_head" in n for n in grads) and all(g is not None for g in grads.values())
        results[fused] = loss.detach(), grads
    torch.testing.assert_close(results[True][0], results[False][0], atol=0, rtol=0)
    for name, grad in results[False][1].items():
        torch.testing.assert_close(results[True][1][name], grad, atol=0, rtol=0)


def test_generate_after_lora_training_and_merge_reads_the_merged_weights():
    """``generate`` before LoRA, with the adapter after training steps, and after ``merge_and_unload`` (PEFT adds the
    update to the base weights in place, through ``.data``, with no version bump): each time the greedy tokens and
    scores of the same model with ``threaded_matvec=False`` (``F.linear``), so the decode products read the current
    weights (the LoRA layers themselves run as PEFT's modules)."""
    peft = _peft()
    model = lively_lm("pre_ln", seed=5).eval()
    prompt = torch.tensor([[17, 42, 99, 5]])

    def greedy(m):
        results = []
        plain = copy.deepcopy(m)  # the reference: its own config, switched off
        plain.config.threaded_matvec = False
        for each in (m, plain):
            out = each.generate(input_ids=prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=10,
                                do_sample=False, output_scores=True, return_dict_in_generate=True, pad_token_id=PAD)
            results.append((out.sequences, torch.stack(out.scores)))  # fmt: skip
        assert m.config.threaded_matvec is True
        (got_ids, got), (want_ids, want) = results
        assert torch.equal(got_ids, want_ids)
        torch.testing.assert_close(got, want, rtol=0, atol=1e-5 * float(want.abs().max()))
        return got

    before = greedy(model)
    lora = peft.LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "fc1"], task_type="CAUSAL_LM")
    wrapped = peft.get_peft_model(model, lora)
    optimizer = torch.optim.AdamW([p for p in wrapped.parameters() if p.requires_grad], lr=0.05)
    ids = torch.randint(1, 300, (2, 9), generator=torch.Generator().manual_seed(0))
    for _ in range(3):
        wrapped(input_ids=ids, labels=ids).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    adapted = greedy(wrapped)
    merged = wrapped.merge_and_unload()
    after = greedy(merged)
    torch.testing.assert_close(after, adapted, rtol=0, atol=1e-4 * float(adapted.abs().max()))
    assert (after - before).abs().max() > 0.1 * before.abs().max()  # the merge changed the weights


@pytest.mark.parametrize(
    "model_class,make_config,task_type",
    [
        (DeepLNGPTForCausalLM, gpt_config, "CAUSAL_LM"),
        (DeepLNBertForSequenceClassification, bert_config, "SEQ_CLS"),
    ],
)
def test_lora_default_target_modules(model_class, make_config, task_type):
    peft = _peft()
    from peft.utils import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING as mapping

    model_type = make_config().model_type
    assert mapping.get(model_type) == ["q_proj", "v_proj"], mapping.get(model_type)
    model = peft.get_peft_model(build(model_class, make_config(), seed=12), peft.LoraConfig(r=4, task_type=task_type))
    wrapped = {name.rsplit(".", 1)[0] for name, _ in model.named_modules() if name.endswith("lora_A")}
    n_layers = make_config().num_hidden_layers
    assert len(wrapped) == 2 * n_layers
    assert {name.rsplit(".", 1)[1] for name in wrapped} == {"q_proj", "v_proj"}


# --------------------------------------------------------------------------------------------------------------
# 5. Trainer and gradient checkpointing
# --------------------------------------------------------------------------------------------------------------
def _lm_examples(n: int, seed: int, length: int = 12):
    generator = torch.Generator().manual_seed(seed)
    examples = []
    for _ in range(n):
        ids = torch.randint(2, VOCAB, (length,), generator=generator)
        examples.append({"input_ids": ids, "labels": ids.clone()})
    return examples


def test_trainer_trains_and_evaluates(tmp_path):
    torch.manual_seed(0)
    model = DeepLNGPTForCausalLM(gpt_config("foundation_ln"))
    train = _lm_examples(8, seed=1)
    evaluation = _lm_examples(4, seed=2)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}

    # Independent reference for eval_loss: one forward of the whole eval set (a single eval batch).
    model.eval()
    with torch.no_grad():
        expected_eval_loss = model(
            input_ids=torch.stack([e["input_ids"] for e in evaluation]),
            labels=torch.stack([e["labels"] for e in evaluation]),
        ).loss.item()

    args = transformers.TrainingArguments(
        output_dir=str(tmp_path / "out"),
        max_steps=3,
        per_device_train_batch_size=4,
        per_device_eval_batch_size=4,
        learning_rate=1e-2,
        report_to="none",
        use_cpu=True,
        save_strategy="no",
        logging_steps=1,
        dataloader_num_workers=0,
        disable_tqdm=True,
        seed=0,
    )
    trainer = transformers.Trainer(model=model, args=args, train_dataset=train, eval_dataset=evaluation)
    assert trainer.label_names == ["labels"]

    pre_train = trainer.evaluate()
    assert pre_train["eval_loss"] == pytest.approx(expected_eval_loss, rel=1e-5)

    result = trainer.train()
    assert trainer.state.global_step == 3
    losses = [log["loss"] for log in trainer.state.log_history if "loss" in log]
    assert len(losses) == 3 and all(torch.isfinite(torch.tensor(losses)))
    assert result.training_loss == pytest.approx(sum(losses) / 3, rel=1e-3)
    changed = [n for n, p in model.named_parameters() if not torch.equal(p.detach().cpu(), before[n])]
    assert len(changed) == len(before)

    metrics = trainer.evaluate()
    assert "eval_loss" in metrics
    model.eval()
    with torch.no_grad():
        after = model(
            input_ids=torch.stack([e["input_ids"] for e in evaluation]),
            labels=torch.stack([e["labels"] for e in evaluation]),
        ).loss.item()
    assert metrics["eval_loss"] == pytest.approx(after, rel=1e-5)
    assert metrics["eval_loss"] != pytest.approx(pre_train["eval_loss"], abs=1e-6)


def _loss_and_grads(model, inputs):
    model.zero_grad(set_to_none=True)
    loss = model(**inputs).loss
    loss.backward()
    return loss.detach().clone(), {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize(
    "model_class,make_config,scheme",
    [
        (DeepLNGPTForCausalLM, gpt_config, "normformer"),
        (DeepLNGPTForCausalLM, gpt_config, "deepnorm"),
        (DeepLNBertForMaskedLM, bert_config, "foundation_ln"),
    ],
)
def test_gradient_checkpointing_is_bit_identical(model_class, make_config, scheme):
    model = build(model_class, make_config(scheme, num_hidden_layers=3), seed=13)
    model.train()
    family = "gpt" if model_class is DeepLNGPTForCausalLM else "bert"
    inputs = dict(_inputs_for(family))
    inputs["labels"] = inputs["input_ids"].masked_fill(inputs["attention_mask"] == 0, -100)

    calls = []
    hooks = [
        layer.attention.register_forward_hook(lambda *_: calls.append(1))
        for layer in (model.transformer if family == "gpt" else model.bert).layers
    ]
    try:
        loss_plain, grads_plain = _loss_and_grads(model, inputs)
        plain_calls = len(calls)
        model.gradient_checkpointing_enable()
        assert all(layer.gradient_checkpointing for layer in (model.transformer if family == "gpt" else model.bert).layers)
        calls.clear()
        loss_ckpt, grads_ckpt = _loss_and_grads(model, inputs)
        ckpt_calls = len(calls)
    finally:
        for hook in hooks:
            hook.remove()
    n_layers = model.config.num_hidden_layers
    assert plain_calls == n_layers
    assert ckpt_calls == 2 * n_layers  # every block recomputed in backward: checkpointing is really on
    assert torch.equal(loss_plain, loss_ckpt)
    assert grads_plain.keys() == grads_ckpt.keys()
    assert len(grads_plain) == len(list(model.parameters()))
    for name in grads_plain:
        assert torch.equal(grads_plain[name], grads_ckpt[name]), name


# --------------------------------------------------------------------------------------------------------------
# 6. Version compatibility (this file also runs under /work/venvs/tf517 with transformers 5.17)
# --------------------------------------------------------------------------------------------------------------
def test_cache_field_matches_installed_transformers():
    """The model returns the KV cache under the name the installed transformers' generate reads."""
    from transformers.modeling_outputs import CausalLMOutputWithPast

    expected = "cache" if "cache" in CausalLMOutputWithPast.__dataclass_fields__ else "past_key_values"
    model = build(DeepLNGPTForCausalLM, gpt_config("pre_ln"), seed=14)
    _, input_ids, attention_mask = left_padded_batch()
    prompt_positions = (attention_mask.cumsum(-1) - 1).masked_fill(attention_mask == 0, 0)
    with torch.no_grad():
        out = model(input_ids=input_ids, attention_mask=attention_mask, position_ids=prompt_positions, use_cache=True)
    cache = out[expected] if expected in out else getattr(out, expected)
    assert cache is not None and cache.get_seq_length() == input_ids.shape[1]
    # Feeding the cache back under the installed name continues exactly like a full forward.
    next_ids = torch.tensor([[5], [6], [7]])
    full_ids = torch.cat([input_ids, next_ids], 1)
    full_mask = torch.cat([attention_mask, torch.ones_like(next_ids)], 1)
    positions = (full_mask.cumsum(-1) - 1).masked_fill(full_mask == 0, 0)
    with torch.no_grad():
        step = model(
            input_ids=next_ids, attention_mask=full_mask, position_ids=positions[:, -1:], use_cache=True,
            **{expected: cache},
        ).logits
        full = model(input_ids=full_ids, attention_mask=full_mask, position_ids=positions, use_cache=False).logits
    torch.testing.assert_close(step[:, -1], full[:, -1], atol=1e-5, rtol=1e-5)
    assert transformers.__version__.startswith("5.")
