"""Arguments of ``deepln pretrain`` / ``deepln finetune`` and the preset recipes that fill them.

:class:`PretrainArgs` and :class:`FinetuneArgs` are plain dataclasses; each field's docstring is also its ``--help``
text (:func:`field_docs`). Recipes (``configuration/recipes/<preset>.json``) hold each preset's training defaults (the
paper's for the 1k-layer presets); explicitly given arguments override them (:func:`resolve_pretrain_args`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from ..errors import DeepLNInputError  # also importable from here (its old home)
from ..presets import PRESETS_DIR

__all__ = [
    "DeepLNInputError",
    "PretrainArgs",
    "FinetuneArgs",
    "RECIPES_DIR",
    "load_recipe",
    "resolve_pretrain_args",
    "field_docs",
]

RECIPES_DIR = PRESETS_DIR / "recipes"
"""Folder of the training recipes ``<preset>.json`` (next to the preset configs)."""


@dataclass
class PretrainArgs:
    """Arguments of :func:`pretrain`. ``None`` means: take the preset's recipe value, else the built-in default."""

    preset: str = "gpt-deep-small"
    """Model preset name (``available_presets()``), a config JSON file or a model folder (its config, fresh weights)."""
    recipe: str | None = None
    """Which of the preset's recipes fills the unset arguments: ``None``, the preset's default
    (``configuration/recipes/<preset>.json``), or a named one (``configuration/recipes/<preset>.<recipe>.json``;
    ``paper``: the paper's recipe of the 1,000-layer presets, see the README section "1,000 layers")."""
    residual_norm: str | None = None
    """Override the residual-normalization scheme (``post_ln``, ``pre_ln``, ``deepnorm``, ``upscale_ln``, ...)."""
    post_norm_form: str | None = None
    """Post-LN family only: ``ln`` = ``LN(α·x + G(x))`` or ``alpha_plus_ln`` = ``α·s + LN(s)``, ``s = x + G(x)``
    (default: the preset's, or the scheme's default when ``--residual-norm`` changes the scheme)."""
    final_layer_norm: bool | None = None
    """A final LayerNorm before the head, whatever the scheme (default: the preset's, or the new scheme's when
    ``--residual-norm`` / ``--post-norm-form`` changes it: yes for the Pre-LN schemes only)."""
    final_hidden_scale: float | None = None
    """Multiply the last hidden state by this before the head (default: the preset's, 1 in every preset). The
    ablation of the README's "1,000 layers": ``0.026`` (``1 − α``) starts FoundationLayerNorm's ``α·s + LN(s)`` form
    at loss ``ln V`` and keeps it on the unigram plateau."""
    num_layers: int | None = None
    """Override ``num_hidden_layers``."""
    hidden_size: int | None = None
    """Override ``hidden_size`` (``intermediate_size`` becomes 4x unless given)."""
    num_heads: int | None = None
    """Override ``num_attention_heads``."""
    intermediate_size: int | None = None
    """Override the FFN width."""
    vocab_size: int | None = None
    """Override the model's vocabulary size (also the size of a tokenizer trained on the corpus)."""
    data: str | list[str] | None = None
    """``None``: the embedded English Wikipedia corpus; local text/jsonl/json/csv/parquet file(s), glob or folder; or a
    Hub dataset name (``"Salesforce/wikitext:wikitext-103-raw-v1"``)."""
    text_column: str = "text"
    """Column holding the text."""
    validation_fraction: float = 0.05
    """Share of the training rows held out for evaluation when the data has no validation split."""
    streaming: bool = False
    """Read ``data`` as a stream (``load_dataset(streaming=True)``), tokenizing and packing it on the fly: for corpora
    larger than memory or disk. Needs ``max_steps``; the held-out set is the first ``max_eval_samples`` (default 128)
    blocks of the validation split, else of the training stream (training starts after them)."""
    tokenizer: str | None = None
    """Hub name or local folder; ``None`` (recipe permitting) trains one on the training text with ``tokenizers``."""
    seq_len: int | None = None
    """Tokens per training example (texts are concatenated and cut into blocks)."""
    batch_size: int | None = None
    """Global batch per micro-step, over all processes (each of N processes gets batch_size / N)."""
    eval_batch_size: int | None = None
    """Global evaluation batch (default: 2 x batch_size)."""
    grad_accum: int | None = None
    """Gradient-accumulation steps."""
    max_steps: int | None = None
    """Optimizer steps; ``None`` or ``<= 0``: ``num_epochs`` epochs."""
    num_epochs: float | None = None
    """Epochs when ``max_steps`` is not set."""
    max_minutes: float | None = None
    """Stop training gracefully after this many minutes (then evaluate and save as usual)."""
    lr: float | None = None
    """Peak learning rate."""
    lr_schedule: str | None = None
    """``linear``, ``cosine`` or ``constant`` (after warmup)."""
    warmup_ratio: float | None = None
    """Share of the steps spent in linear warmup."""
    min_lr: float | None = None
    """Final learning rate of the linear / cosine decay (``cosine_with_min_lr``; linear: polynomial power 1)."""
    weight_decay: float | None = None
    """AdamW weight decay."""
    optim: str | None = None
    """``adamw_torch`` (= ``adamw_torch_fused``) or ``adam`` (AdamW with weight decay 0); every choice runs torch's
    fused AdamW (``trainer_setup.TORCH_OPTIMIZER``)."""
    adam_beta2: float | None = None
    """Adam's β2 (default 0.999; DeepNet trains with 0.98)."""
    block_lr_scale: float | str | None = None
    """Learning-rate multiplier of the residual blocks' parameters (the embeddings, the final LayerNorm and the head
    keep ``lr``): a positive number, or ``depth`` for 1/√N, N = number of layers (Depth-μP's Adam rule; what lets a
    1,000-layer Pre-LN stack learn, README "1,000 layers"). Default 1: every parameter at ``lr``."""
    precision: str | None = None
    """``fp32``, ``bf16`` or ``fp16`` (mixed precision; fp16 needs a GPU)."""
    gradient_checkpointing: bool | None = None
    """Recompute activations in the backward pass to save memory."""
    compile: bool = False
    """``torch.compile`` the model (``TrainingArguments(torch_compile=True)``): deepln compiles one block and
    reuses it for every layer, so compile time does not grow with depth."""
    mlm_probability: float | None = None
    """Masking rate of the BERT family's masked-LM objective in training."""
    eval_mlm_probability: float = 0.15
    """Masking rate of the held-out blocks, masked once with ``seed`` so that every evaluation scores the same
    positions (BERT's 15 % by default, comparable across training rates)."""
    seed: int = 42
    """Seed of initialisation, data order and masking."""
    output_dir: str | None = None
    """Run folder; default ``runs/<preset>-<timestamp>``."""
    resume: bool | str = False
    """``True``: continue from the last complete checkpoint in ``output_dir``; or a checkpoint path."""
    overwrite: bool = False
    """Allow an ``output_dir`` that already holds a model (its checkpoints and cached data are removed)."""
    report_to: str | list[str] | None = None
    """Trainer integrations: default ``tensorboard`` (+ ``trackio`` when installed); ``"none"`` for none."""
    logging_steps: int | None = None
    """Log the training loss every this many steps."""
    eval_steps: int | None = None
    """Evaluate every this many steps (``0``: only before and after training)."""
    save_steps: int | None = None
    """Save a checkpoint every this many steps."""
    save_total_limit: int | None = 2
    """Checkpoints kept (older ones are deleted)."""
    max_train_samples: int | None = None
    """Use only the first N training blocks (quick runs)."""
    max_eval_samples: int | None = None
    """Use only the first N validation blocks."""
    nan_policy: str = "stop"
    """On a NaN/inf loss or gradient: ``stop`` (raise, keeping the last good checkpoint) or ``skip`` the step."""
    num_samples: int | None = None
    """Continuations (GPT) / fill-mask predictions (BERT) printed after training; 0 for none."""
    use_cpu: bool = False
    """Train on the CPU even when a GPU is available."""
    disable_tqdm: bool = False
    """Hide the progress bar."""
    grow: str | None = None
    """CompoundGrow schedule (``compound``, ``stack`` or stages like ``depth=1/4,ffn_share=2,pool=2@0.2;...;depth=full``):
    start small and grow depth/FFN width/sequence length during training (see ``modeling_deepln.growth``)."""
    monitor_every: int | None = None
    """Record per-layer gradient norms, relative parameter updates ``‖ΔW‖/‖W‖``, stream norms, branch/skip ratios and
    position collapse every K steps (``modeling_deepln.stability.LayerMonitor``: TensorBoard, ``monitor.jsonl``,
    ``monitor_heatmaps.png``)."""
    fsdp_blocks_per_unit: int | None = None
    """Under an FSDP2 launcher config: shard K consecutive blocks as one FSDP unit (1: a unit per block; default
    automatic, about 4M parameters per unit; see ``modeling_deepln.training.sharding``)."""


@dataclass
class FinetuneArgs:
    """Arguments of :func:`finetune` (sentence or sentence-pair classification; defaults: the paper's QQP recipe)."""

    model: str | None = None
    """A pretrained deepln folder (or Hub id) to fine-tune; or use ``preset`` to start from scratch."""
    preset: str | None = None
    """Preset to build a fresh model from when ``model`` is not given."""
    residual_norm: str | None = None
    """With ``preset``: override the residual-normalization scheme."""
    post_norm_form: str | None = None
    """With ``preset``: the Post-LN family's form, ``ln`` or ``alpha_plus_ln`` (default: as for ``pretrain``)."""
    final_layer_norm: bool | None = None
    """With ``preset``: a final LayerNorm before the head, on or off (default: as for ``pretrain``)."""
    final_hidden_scale: float | None = None
    """With ``preset``: the last hidden state's scale before the head (default: as for ``pretrain``)."""
    num_layers: int | None = None
    """With ``preset``: override ``num_hidden_layers``."""
    hidden_size: int | None = None
    """With ``preset``: override ``hidden_size``."""
    num_heads: int | None = None
    """With ``preset``: override ``num_attention_heads``."""
    vocab_size: int | None = None
    """With ``preset``: override the vocabulary size."""
    tokenizer: str | None = None
    """Tokenizer name/folder; default: the model folder's, or (``preset``) one trained on the task's training text."""
    data: str | None = None
    """``None`` with no files: GLUE QQP from the Hub (``nyu-mll/glue``, ``qqp``); a folder with ``train.*`` /
    ``validation.*``, a single training file, or a Hub name (``"nyu-mll/glue:mrpc"``)."""
    train_file: str | None = None
    """Local training file (csv/tsv/jsonl/json/parquet)."""
    validation_file: str | None = None
    """Local validation file."""
    text_columns: tuple[str, ...] = ("question1", "question2")
    """One (single sentence) or two (pair) text columns."""
    label_column: str = "label"
    """Column of the class labels."""
    num_labels: int | None = None
    """Number of classes (default: inferred from the training labels)."""
    max_seq_len: int = 128
    """Truncate examples to this many tokens."""
    num_epochs: float = 1.0
    """Training epochs (paper: 1)."""
    max_steps: int | None = None
    """Optimizer steps (overrides ``num_epochs``)."""
    max_minutes: float | None = None
    """Stop gracefully after this many minutes."""
    batch_size: int = 16
    """Global batch per micro-step (paper: 16)."""
    eval_batch_size: int | None = None
    """Global evaluation batch (default 2 x batch_size)."""
    grad_accum: int = 1
    """Gradient-accumulation steps."""
    lr: float = 1e-5
    """Peak learning rate (paper: 1e-5)."""
    lr_schedule: str = "linear"
    """``linear``, ``cosine`` or ``constant``."""
    warmup_ratio: float = 0.0
    """Share of steps in warmup."""
    min_lr: float | None = None
    """Final learning rate of the decay."""
    weight_decay: float = 0.01
    """AdamW weight decay."""
    optim: str = "adamw_torch"
    """``adamw_torch`` or ``adam`` (AdamW without weight decay); both run torch's fused AdamW kernel."""
    precision: str = "fp32"
    """``fp32``, ``bf16`` or ``fp16``."""
    gradient_checkpointing: bool = False
    """Recompute activations in backward."""
    compile: bool = False
    """``torch.compile`` the model (one block compiled for all layers)."""
    seed: int = 42
    """Seed."""
    output_dir: str | None = None
    """Run folder; default ``runs/finetune-<model>-<timestamp>``."""
    resume: bool | str = False
    """Continue from the last complete checkpoint (``True``) or a checkpoint path."""
    overwrite: bool = False
    """Allow an ``output_dir`` that already holds a model."""
    report_to: str | list[str] | None = None
    """Trainer integrations (default tensorboard, + trackio when installed)."""
    logging_steps: int = 50
    """Log every this many steps."""
    eval_steps: int | None = None
    """Evaluate every this many steps (default: at the end of each epoch)."""
    save_steps: int = 500
    """Checkpoint every this many steps."""
    save_total_limit: int | None = 2
    """Checkpoints kept."""
    max_train_samples: int | None = None
    """Use only the first N training examples."""
    max_eval_samples: int | None = None
    """Use only the first N validation examples."""
    nan_policy: str = "stop"
    """``stop`` or ``skip`` on a NaN/inf loss or gradient."""
    use_cpu: bool = False
    """Train on the CPU even when a GPU is available."""
    disable_tqdm: bool = False
    """Hide the progress bar."""
    monitor_every: int | None = None
    """Record per-layer gradient norms, relative parameter updates ``‖ΔW‖/‖W‖``, stream norms, branch/skip ratios and
    position collapse every K steps (``modeling_deepln.stability.LayerMonitor``: TensorBoard, ``monitor.jsonl``,
    ``monitor_heatmaps.png``)."""
    fsdp_blocks_per_unit: int | None = None
    """Under an FSDP2 launcher config: shard K consecutive blocks as one FSDP unit (1: a unit per block; default
    automatic, about 4M parameters per unit; see ``modeling_deepln.training.sharding``)."""


BUILTIN_PRETRAIN_DEFAULTS: dict[str, Any] = {
    "tokenizer": None,
    "vocab_size": None,
    "seq_len": 128,
    "batch_size": 16,
    "eval_batch_size": None,
    "grad_accum": 1,
    "max_steps": None,
    "num_epochs": 1.0,
    "max_minutes": None,
    "lr": 5e-4,
    "lr_schedule": "cosine",
    "warmup_ratio": 0.01,
    "min_lr": None,
    "weight_decay": 0.01,
    "optim": "adamw_torch",
    "adam_beta2": 0.999,
    "block_lr_scale": 1.0,
    "precision": "fp32",
    "gradient_checkpointing": False,
    "mlm_probability": 0.15,
    "logging_steps": 10,
    "eval_steps": 0,
    "save_steps": 500,
    "num_samples": 3,
}
"""Defaults for presets without a recipe file (e.g. a config given as a path)."""

_RECIPE_META_KEYS = ("objective", "description", "source", "config")
LR_SCHEDULES = ("linear", "cosine", "constant")
OPTIMIZERS = ("adamw_torch", "adamw_torch_fused", "adam")
PRECISIONS = ("fp32", "bf16", "fp16")


def recipe_path(preset: str, recipe: str | None = None) -> Path | None:
    """The file of a preset's recipe: ``recipes/<preset>.json``, or ``recipes/<preset>.<recipe>.json`` for a named
    one; ``None`` when the preset (a path, or a name without a recipe file) has no default recipe.

    Raises:
        DeepLNInputError: a named recipe that the preset does not have (the message lists the ones it has).
    """
    name = Path(str(preset)).name
    if recipe is None:
        path = RECIPES_DIR / f"{name}.json"
        return None if Path(str(preset)).suffix or not path.is_file() else path
    path = RECIPES_DIR / f"{name}.{recipe}.json"
    if not path.is_file():
        named = sorted(p.name[len(name) + 1 : -len(".json")] for p in RECIPES_DIR.glob(f"{name}.*.json"))
        raise DeepLNInputError(
            f"Preset {preset!r} has no recipe {recipe!r}; its named recipes: {', '.join(named) or 'none'} "
            "(leave --recipe out for the default one)."
        )
    return path


def load_recipe(preset: str, recipe: str | None = None) -> dict[str, Any]:
    """A training recipe of a preset (:func:`recipe_path`), or ``{}`` when it has none.

    Keys are :class:`PretrainArgs` field names plus ``objective`` (``"mlm"``/``"clm"``, checked against the preset's
    family), free-text ``description``/``source``, and ``config``: model-config fields the recipe was measured with
    (applied over the preset, under the command line's); keys starting with ``_`` are comments.

    Raises:
        DeepLNInputError: the file is not valid JSON or has a key that is not a PretrainArgs field.
    """
    path = recipe_path(preset, recipe)
    if path is None:
        return {}
    try:
        values = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise DeepLNInputError(f"Recipe {path} is not valid JSON: {exc}") from exc
    names = {f.name for f in fields(PretrainArgs)} - {"preset", "recipe"}
    values = {k: v for k, v in values.items() if not k.startswith("_")}
    unknown = sorted(set(values) - names - set(_RECIPE_META_KEYS))
    if unknown:
        raise DeepLNInputError(f"Recipe {path} has unknown keys {unknown}; valid keys are PretrainArgs fields.")
    return values


def resolve_pretrain_args(args: PretrainArgs) -> tuple[PretrainArgs, dict[str, Any]]:
    """Fill every ``None`` field from the preset's recipe (``args.recipe``), then the built-in defaults.

    Returns ``(resolved_args, recipe)``; explicitly set fields always win.
    """
    recipe = load_recipe(args.preset, args.recipe)
    values = {}
    for f in fields(PretrainArgs):
        value = getattr(args, f.name)
        if value is None and f.name in recipe:
            value = recipe[f.name]
        if value is None and f.name in BUILTIN_PRETRAIN_DEFAULTS:
            value = BUILTIN_PRETRAIN_DEFAULTS[f.name]
        values[f.name] = value
    return PretrainArgs(**values), recipe


def field_docs(cls: type) -> dict[str, str]:
    """Attribute docstrings of a dataclass (used by the CLI for ``--help``)."""
    import ast
    import inspect

    try:
        tree = ast.parse(inspect.getsource(cls))
    except (OSError, TypeError):  # pragma: no cover
        return {}
    docs: dict[str, str] = {}
    body = tree.body[0].body  # type: ignore[attr-defined]
    for node, nxt in zip(body, body[1:]):
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            if isinstance(nxt, ast.Expr) and isinstance(getattr(nxt, "value", None), ast.Constant):
                docs[node.target.id] = " ".join(str(nxt.value.value).split())
    return docs
