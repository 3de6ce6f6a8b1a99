"""``deepln pretrain``: masked-LM (BERT family) or causal-LM (GPT family) pre-training with ``transformers.Trainer``.

:func:`pretrain` is a short sequence of named steps, each a function a test can call on its own:

1. :func:`plan_pretrain` resolves the recipe and checks every input (preset, output folder, precision, sizes);
2. :func:`prepare_lm_data` builds (or reuses the cached) tokenizer and tokenized blocks;
3. :func:`build_lm_model` builds the model with the tokenizer's special tokens in its config;
4. :func:`build_lm_trainer` builds the ``Trainer`` with deepln's callbacks;
5. :func:`evaluate_before_training`, :func:`train_lm`, :func:`evaluate_after_training`;
6. :func:`save_and_report` saves the folder (safetensors, tokenizer, remote code, results, ``loss.png``, model
   card) and prints samples.

Reliability: the tokenizer and the tokenized data are built deterministically and cached in
``<output_dir>/prepared/``, so ``resume=True`` after a crash (even SIGKILL) reuses them, restarts from the last
*complete* checkpoint and reproduces the uninterrupted loss curve (Trainer restores optimizer, scheduler, RNG and data
order).
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch

from .args import DeepLNInputError, PretrainArgs, resolve_pretrain_args
from .callbacks import NonFiniteGuard, TimeLimitCallback
from .checks import check_positive, check_precision, check_probability, check_preset, input_errors_as_deepln
from .metrics import masked_unigram_perplexity, perplexity, unigram_perplexity, unigram_special_ids
from .model_config import build_config, config_overrides, model_family
from .output_dir import PREPARED_DIR, check_output_dir, clear_output_dir, resume_checkpoint
from .reporting import print_samples, report_pretraining
from .sharding import prepare_fsdp, save_model, unsharded_evaluation
from .trainer_setup import (
    default_output_dir,
    find_callback,
    param_count,
    pin_tensorboard_dir,
    process_world,
    resolve_use_cpu,
    run_callbacks,
    training_arguments,
    undo_eval_prepare,
)

__all__ = [
    "PretrainRun",
    "RunExtension",
    "pretrain",
    "plan_pretrain",
    "prepare_lm_data",
    "build_lm_model",
    "build_lm_trainer",
    "evaluate_before_training",
    "train_lm",
    "evaluate_after_training",
    "save_and_report",
]


@dataclass
class PretrainRun:
    """The state one :func:`pretrain` call passes from step to step."""

    args: PretrainArgs
    recipe: dict[str, Any]
    config: Any
    family: str
    output_dir: Path
    is_main: bool
    world: int
    training_args: Any
    resume_from: str | None = None
    tokenizer: Any = None
    train_dataset: Any = None
    eval_dataset: Any = None
    model: Any = None
    trainer: Any = None
    extra_callbacks: list[Any] = field(default_factory=list)
    """Callbacks added by optional features (the per-layer monitor, growth) before the Trainer is built."""
    card_notes: dict[str, str] = field(default_factory=dict)
    """Lines an optional feature adds to the model card's training section (e.g. a growth run that stopped early)."""

    def training_collator(self) -> Any:
        """The collator of the training batches: BERT's masking at the training rate, or the causal-LM stacking."""
        if self.family == "bert":
            return MaskedLMCollator(self.tokenizer, self.args.mlm_probability)
        return causal_lm_collator


class RunExtension(Protocol):
    """An optional feature that joins :func:`pretrain` at two fixed points, without pre-training importing it
    (CompoundGrow: ``modeling_deepln.growth.GrowthExtension``).

    ``option`` names the :class:`PretrainArgs` field that switches the feature on (``"grow"``).
    """

    option: str

    def after_model(self, run: PretrainRun) -> None:
        """After :func:`build_lm_model`, before the Trainer: may replace ``run.model``, add ``run.extra_callbacks``."""

    def after_training(self, run: PretrainRun) -> None:
        """After training, before the final evaluation and saving: may change ``run.model``, add ``run.card_notes``."""


def pretrain(args: PretrainArgs | None = None, extensions: Sequence[RunExtension] = ()) -> dict[str, Any]:
    """Pre-train a deepln model (MLM for BERT presets, CLM for GPT presets) with ``transformers.Trainer``.

    ``extensions`` add optional features (:class:`RunExtension`); ``args.grow`` needs
    ``modeling_deepln.growth.GrowthExtension()`` among them (``deepln pretrain --grow`` passes it).

    Saves the model folder with tokenizer, ``eval_results.json`` (``eval_loss``, ``perplexity``,
    ``eval_loss_before``, ``perplexity_before`` and, for GPT, ``perplexity_unigram``), ``train_results.json``,
    ``trainer_state.json``, ``loss.png`` and README.md, and prints samples.

    Returns:
        A dict with ``output_dir``, the evaluation metrics (as in eval_results.json), ``train_metrics``,
        ``tokens_per_second``, ``train_seconds``, ``wall_seconds``, ``global_step``, ``samples`` (list of strings).

    Raises:
        DeepLNInputError: bad input, before training starts.
        NonFiniteError: the loss/gradients went NaN/inf with ``nan_policy="stop"``.
    """
    wall_start = time.monotonic()
    args = args or PretrainArgs()
    if args.grow and not any(getattr(extension, "option", None) == "grow" for extension in extensions):
        raise DeepLNInputError(
            "PretrainArgs.grow needs the growth extension: pretrain(args, extensions=[GrowthExtension()]) with "
            "`from modeling_deepln.growth import GrowthExtension` (the deepln pretrain --grow command does this)."
        )
    run = plan_pretrain(args)
    if run.args.monitor_every:  # the per-layer monitor (deepln.stability), only when asked for
        from ..stability.monitor import monitor_callbacks

        run.extra_callbacks.extend(monitor_callbacks(run.args))
    prepare_lm_data(run)
    build_lm_model(run)
    for extension in extensions:
        extension.after_model(run)
    build_lm_trainer(run)
    before = evaluate_before_training(run)
    training = train_lm(run)
    for extension in extensions:
        extension.after_training(run)
    metrics = evaluate_after_training(run, before)
    samples = save_and_report(run, metrics, training)
    wall_seconds = time.monotonic() - wall_start
    if run.is_main:
        print(
            f"[deepln] trained {training['steps_done']} steps, {training['train_tokens']:,} tokens in "
            f"{training['train_seconds']:.1f} s: {training['tokens_per_second']:,.0f} tokens/s; wall time "
            f"{wall_seconds:.1f} s. Model saved in {run.output_dir}",
            flush=True,
        )
    time_limit = find_callback(run.trainer, TimeLimitCallback)
    guard = find_callback(run.trainer, NonFiniteGuard)
    return {
        "output_dir": str(run.output_dir),
        **metrics,
        "train_metrics": training["train_metrics"],
        "global_step": run.trainer.state.global_step,
        "tokens_per_second": training["tokens_per_second"],
        "train_seconds": training["train_seconds"],
        "wall_seconds": wall_seconds,
        "samples": samples,
        "skipped_steps": list(guard.skipped_steps) if guard else [],
        "stopped_by_time_limit": bool(time_limit and time_limit.stopped_at_step is not None),
    }


def plan_pretrain(args: PretrainArgs) -> PretrainRun:
    """Step 1: resolve the recipe and check every input; prepare the output folder. Raises DeepLNInputError."""
    a, recipe = resolve_pretrain_args(args)
    with input_errors_as_deepln():
        check_preset(a.preset)
        config = build_config(a.preset, {**recipe.get("config", {}), **config_overrides(a)})
        family = model_family(config)
        objective = recipe.get("objective")
        if objective and objective != ("mlm" if family == "bert" else "clm"):
            raise DeepLNInputError(f"Recipe of {a.preset!r} says objective {objective!r} but the model is {family}.")
        check_positive(seq_len=a.seq_len, grad_accum=a.grad_accum, lr=a.lr, max_minutes=a.max_minutes)
        check_positive(monitor_every=a.monitor_every)
        if a.streaming:
            check_streaming(a)
        if family == "bert":
            check_probability(mlm_probability=a.mlm_probability, eval_mlm_probability=a.eval_mlm_probability)
        check_precision(a.precision, resolve_use_cpu(a.use_cpu))
        check_block_lr_scale(a.block_lr_scale, config.num_hidden_layers)
        if a.seq_len > config.max_position_embeddings:
            config.max_position_embeddings = a.seq_len
        process_index, world = process_world(a.use_cpu)
        is_main = process_index == 0
        output_dir = Path(a.output_dir or default_output_dir(Path(str(a.preset)).stem, a.use_cpu))
        check_output_dir(output_dir, a.overwrite, a.resume)
        if a.overwrite and not a.resume and is_main and output_dir.is_dir():
            clear_output_dir(output_dir)
        targs = training_arguments(a, output_dir=str(output_dir), world=world)
    return PretrainRun(a, recipe, config, family, output_dir, is_main, world, targs)


def check_block_lr_scale(value: float | str | None, num_layers: int) -> None:
    """A bad ``--block-lr-scale`` fails before any work (:func:`.depth_lr.block_lr_multiplier` says why)."""
    from .depth_lr import block_lr_multiplier

    block_lr_multiplier(value, num_layers)


def check_streaming(a: PretrainArgs) -> None:
    """``--streaming`` needs a corpus to stream and a step count (a stream has no length to count epochs in)."""
    if a.data is None:
        raise DeepLNInputError(
            "--streaming reads --data as a stream; without --data the embedded corpus (2.9M characters) is used, "
            "which fits in memory. Pass --data FILES_OR_HUB_NAME, or drop --streaming."
        )
    if not a.max_steps or a.max_steps <= 0:
        raise DeepLNInputError(
            "--streaming needs --max-steps N: a streamed corpus has no known length, so the Trainer cannot turn "
            "--epochs into a number of steps (and the learning-rate schedule needs one). Each step trains "
            "batch_size x grad_accum blocks of seq_len tokens."
        )


def prepare_lm_data(run: PretrainRun) -> None:
    """Step 2: the tokenizer and tokenized blocks, built once (main process first) and cached in ``prepared/``.

    Checks the tokenizer against the model's vocabulary when it builds it (a cached one passed that check) and finds
    the checkpoint to resume from. Sets ``run.tokenizer``, ``run.train_dataset``, ``run.eval_dataset``,
    ``run.resume_from``.
    """
    from datasets import load_from_disk
    from transformers import AutoTokenizer

    a, config = run.args, run.config
    prepared = run.output_dir / PREPARED_DIR
    tok_dir, data_dir, fp_file = prepared / "tokenizer", prepared / "lm_data", prepared / "fingerprint.json"
    fingerprint = json.dumps(
        {
            "data": a.data,
            "text_column": a.text_column,
            "validation_fraction": a.validation_fraction,
            "tokenizer": a.tokenizer,
            "vocab_size": config.vocab_size,
            "seq_len": a.seq_len,
            "family": run.family,
            "seed": a.seed,
            **({"streaming": True} if a.streaming else {}),
        },
        sort_keys=True,
        default=str,
    )
    if a.streaming:
        return _prepare_streamed_lm_data(run, prepared, fingerprint)
    cached = fp_file.is_file() and fp_file.read_text() == fingerprint and tok_dir.is_dir() and data_dir.is_dir()
    with input_errors_as_deepln(), run.training_args.main_process_first(desc="preparing tokenizer and data"):
        if cached:
            tokenizer = AutoTokenizer.from_pretrained(str(tok_dir))
            lm_data = load_from_disk(str(data_dir))
            if run.is_main:
                print(f"[deepln] reusing the tokenizer and tokenized data cached in {prepared}", flush=True)
        else:
            tokenizer, lm_data = _tokenize_corpus(run)
            if run.is_main:
                shutil.rmtree(prepared, ignore_errors=True)
                prepared.mkdir(parents=True, exist_ok=True)
                tokenizer.save_pretrained(str(tok_dir))
                lm_data.save_to_disk(str(data_dir))
                fp_file.write_text(fingerprint)
        run.resume_from = resume_checkpoint(a.resume, run.output_dir, run.is_main)
    train_ds, eval_ds = lm_data["train"], lm_data["validation"]
    if a.max_train_samples:
        train_ds = train_ds.select(range(min(a.max_train_samples, len(train_ds))))
    if a.max_eval_samples:
        eval_ds = eval_ds.select(range(min(a.max_eval_samples, len(eval_ds))))
    run.tokenizer, run.train_dataset, run.eval_dataset = tokenizer, train_ds, eval_ds


def _prepare_streamed_lm_data(run: PretrainRun, prepared: Path, fingerprint: str) -> None:
    """Step 2 with ``--streaming``: the tokenizer (trained on the stream's leading text, cached in ``prepared/``),
    the held-out blocks read from the stream, and the training stream (:mod:`.streaming`)."""
    from transformers import AutoTokenizer

    from .streaming import (
        STREAMING_EVAL_BLOCKS,
        ResumableBlocks,
        StreamPosition,
        load_text_stream,
        split_held_out,
        stream_blocks,
    )

    a = run.args
    tok_dir, fp_file = prepared / "tokenizer", prepared / "fingerprint.json"
    with input_errors_as_deepln(), run.training_args.main_process_first(desc="preparing tokenizer and stream"):
        streams = load_text_stream(a.data, text_column=a.text_column)
        if fp_file.is_file() and fp_file.read_text() == fingerprint and tok_dir.is_dir():
            tokenizer = AutoTokenizer.from_pretrained(str(tok_dir))
        else:
            tokenizer = _lm_tokenizer(run, (row[a.text_column] for row in streams["train"]))
            if run.is_main:
                shutil.rmtree(prepared, ignore_errors=True)
                tokenizer.save_pretrained(str(tok_dir))
                fp_file.write_text(fingerprint)
        blocks = {name: stream_blocks(s, tokenizer, a.seq_len, a.text_column, family=run.family) for name, s in streams.items()}
        train, run.eval_dataset = split_held_out(
            blocks["train"], blocks.get("validation"), a.max_eval_samples or STREAMING_EVAL_BLOCKS
        )
        run.resume_from = resume_checkpoint(a.resume, run.output_dir, run.is_main)
    if a.max_train_samples:
        train = train.take(a.max_train_samples)
    run.tokenizer = tokenizer
    run.train_dataset = ResumableBlocks(train, batch_examples=a.batch_size)
    run.extra_callbacks.append(StreamPosition(run.train_dataset, examples_per_step=a.batch_size * a.grad_accum))


def _lm_tokenizer(run: PretrainRun, texts: Any):
    """``--tokenizer``, or one trained on the leading ``TOKENIZER_TRAINING_CHARS`` characters of ``texts``; checked
    against the model's vocabulary."""
    from .tokenization import TOKENIZER_TRAINING_CHARS, check_tokenizer_fits, load_or_train_tokenizer

    a, config = run.args, run.config
    tokenizer = load_or_train_tokenizer(
        a.tokenizer,
        run.family,
        texts if not a.tokenizer else None,
        vocab_size=config.vocab_size,
        output_dir=None,
        model_max_length=config.max_position_embeddings,
        max_chars=TOKENIZER_TRAINING_CHARS,
    )
    check_tokenizer_fits(tokenizer, config.vocab_size)
    return tokenizer


def _tokenize_corpus(run: PretrainRun):
    """Load the text, train (or load) the tokenizer, check it against the vocabulary, pack the text into blocks."""
    from datasets import DatasetDict

    from .data import load_text_data, tokenize_and_group

    a = run.args
    raw = load_text_data(a.data, text_column=a.text_column, validation_fraction=a.validation_fraction, seed=a.seed)
    tokenizer = _lm_tokenizer(run, raw["train"][a.text_column])
    lm_data = tokenize_and_group(
        DatasetDict({"train": raw["train"], "validation": raw["validation"]}),
        tokenizer,
        block_size=a.seq_len,
        text_column=a.text_column,
        family=run.family,
    )
    return tokenizer, lm_data


def build_lm_model(run: PretrainRun) -> torch.nn.Module:
    """Step 3: copy the tokenizer's special tokens into the config (hence generation_config), build the model."""
    from transformers import AutoModelForCausalLM, AutoModelForMaskedLM, set_seed

    config, tokenizer = run.config, run.tokenizer
    if tokenizer.pad_token_id is not None:
        config.pad_token_id = tokenizer.pad_token_id
    if run.family == "gpt":
        if tokenizer.eos_token_id is not None:
            config.eos_token_id = tokenizer.eos_token_id
        config.bos_token_id = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else config.eos_token_id
    else:
        config.bos_token_id = tokenizer.cls_token_id
        config.eos_token_id = tokenizer.sep_token_id
    if run.family == "gpt":  # chunked LM head + loss in training (no [tokens, vocab] logits); saved in config.json
        config.fused_lm_loss = True
    else:  # the MLM head only on the masked positions in training; saved in config.json
        config.sparse_mlm_loss = True
    set_seed(run.args.seed)
    auto_class = AutoModelForMaskedLM if run.family == "bert" else AutoModelForCausalLM
    run.model = auto_class.from_config(config)
    return run.model


def causal_lm_collator(features: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
    """Stack fixed-length blocks; ``labels`` = ``input_ids`` (the model shifts them).

    Not ``DataCollatorForLanguageModeling(mlm=False)``: GPT tokenizers pad with eos, and that collator would drop
    every eos (the document separator) from the loss. Blocks are full length, so nothing needs padding.
    """
    from transformers import default_data_collator

    batch = default_data_collator(features)
    batch["labels"] = batch["input_ids"].clone()
    return batch


class MaskedLMCollator:
    """Masks training blocks with ``DataCollatorForLanguageModeling`` (BERT's 80/10/10 rule) at the training rate;
    rows that arrive masked already (with ``labels``: the held-out set, see :func:`mask_once`) are only stacked."""

    def __init__(self, tokenizer: Any, mlm_probability: float):
        from transformers import DataCollatorForLanguageModeling

        self.masking = DataCollatorForLanguageModeling(tokenizer, mlm=True, mlm_probability=mlm_probability)

    def __call__(self, rows: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        from transformers import default_data_collator

        return default_data_collator(rows) if "labels" in rows[0] else self.masking(rows)


def mask_once(blocks: Any, tokenizer: Any, mlm_probability: float, seed: int) -> Any:
    """The held-out blocks masked once, with a fixed seed: every evaluation (before, during, after training, and a
    resumed run's) scores the same positions, so the numbers differ only by the model."""
    from datasets import Dataset

    rows = [{"input_ids": ids} for ids in blocks["input_ids"]]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        batch = MaskedLMCollator(tokenizer, mlm_probability).masking(rows)
    return Dataset.from_dict({key: value.tolist() for key, value in batch.items()})


def build_lm_trainer(run: PretrainRun):
    """Step 4: the ``Trainer`` with the MLM / CLM collator, the NaN guard, the time limit and ``extra_callbacks``; the
    residual blocks train at ``lr × block_lr_scale`` (:mod:`.depth_lr`).
    A masked LM is evaluated on the held-out blocks masked once (:func:`mask_once`)."""
    from .depth_lr import BlockLRTrainer, block_lr_multiplier

    a = run.args
    collator = run.training_collator()
    if run.family == "bert":
        eval_dataset = mask_once(run.eval_dataset, run.tokenizer, a.eval_mlm_probability, a.seed)
    else:
        eval_dataset = run.eval_dataset
    run.trainer = BlockLRTrainer(
        block_lr_multiplier=block_lr_multiplier(a.block_lr_scale, run.config.num_hidden_layers),
        model=run.model,
        args=run.training_args,
        train_dataset=run.train_dataset,
        eval_dataset=eval_dataset,
        data_collator=collator,
        processing_class=run.tokenizer,
        callbacks=run_callbacks(a, str(run.output_dir), run.model) + list(run.extra_callbacks),
    )
    pin_tensorboard_dir(run.trainer, run.output_dir)
    if run.is_main:
        config = run.config
        print(
            f"[deepln] {a.preset}: {run.family.upper()} {'masked' if run.family == 'bert' else 'causal'}-LM, "
            f"{config.num_hidden_layers} layers, hidden {config.hidden_size}, residual_norm={config.residual_norm}, "
            f"{param_count(run.model) / 1e6:.2f}M parameters; {_train_blocks_text(run)} training / "
            f"{len(run.eval_dataset)} validation blocks of {a.seq_len} tokens; global batch {a.batch_size} x "
            f"{a.grad_accum} accumulation over {run.world} process(es); output {run.output_dir}",
            flush=True,
        )
    return run.trainer


def _train_blocks_text(run: PretrainRun) -> str:
    return "streamed" if run.args.streaming else str(len(run.train_dataset))


def evaluate_before_training(run: PretrainRun) -> dict[str, float]:
    """Step 5a: held-out loss of the fresh model (cached, so that a resumed run reports the fresh model's numbers)."""
    before_file = run.output_dir / PREPARED_DIR / "eval_before.json"
    if run.resume_from and before_file.is_file():
        before = json.loads(before_file.read_text())
    else:
        with unsharded_evaluation(run.trainer):
            metrics = run.trainer.evaluate()
        undo_eval_prepare(run.model)
        before = {"eval_loss_before": metrics["eval_loss"], "perplexity_before": perplexity(metrics["eval_loss"])}
        if run.is_main:
            before_file.parent.mkdir(parents=True, exist_ok=True)
            before_file.write_text(json.dumps(before))
    if run.is_main:
        print(
            f"[deepln] before training: eval_loss {before['eval_loss_before']:.4f}, "
            f"perplexity {before['perplexity_before']:.2f}",
            flush=True,
        )
    return before


def train_lm(run: PretrainRun) -> dict[str, Any]:
    """Step 5b: ``trainer.train`` (resuming if asked); returns the train metrics, tokens and throughput."""
    a = run.args
    start_step = 0
    if run.resume_from:
        start_step = json.loads((Path(run.resume_from) / "trainer_state.json").read_text()).get("global_step", 0)
        if run.is_main:
            print(f"[deepln] resuming from {run.resume_from} (step {start_step})", flush=True)
        if a.streaming:
            _resume_stream(run)
    prepare_fsdp(run.trainer, run.model, a.fsdp_blocks_per_unit, run.is_main)
    start = time.monotonic()
    output = run.trainer.train(resume_from_checkpoint=run.resume_from)
    seconds = time.monotonic() - start
    guard = find_callback(run.trainer, NonFiniteGuard)
    if guard:
        guard.detach()
    steps_done = run.trainer.state.global_step - start_step
    tokens = steps_done * a.batch_size * a.grad_accum * a.seq_len
    tokens_per_second = tokens / seconds if seconds > 0 else float("nan")
    train_metrics = dict(output.metrics)
    train_metrics.update(
        {
            "train_samples": steps_done * a.batch_size * a.grad_accum if a.streaming else len(run.train_dataset),
            "train_tokens": tokens,
            "train_tokens_per_second": tokens_per_second,
        }
    )
    return {
        "train_metrics": train_metrics,
        "steps_done": steps_done,
        "train_tokens": tokens,
        "train_seconds": seconds,
        "tokens_per_second": tokens_per_second,
    }


def _resume_stream(run: PretrainRun) -> None:
    """Continue the training stream where the checkpoint left it (its saved position), instead of letting the Trainer
    replay the stream up to the checkpoint's step; a checkpoint without a saved position is replayed."""
    from .streaming import saved_stream_position

    position = saved_stream_position(run.resume_from)
    if position is None:
        if run.is_main:
            print(f"[deepln] {run.resume_from} holds no stream position: replaying the stream up to it", flush=True)
        return
    run.train_dataset.resume_at(position)
    run.trainer.args.ignore_data_skip = True
    if run.is_main:
        print(f"[deepln] the stream continues after block {position['examples']:,}", flush=True)


def evaluate_after_training(run: PretrainRun, before: dict[str, float]) -> dict[str, float]:
    """Step 5c: held-out loss and perplexity, and ``perplexity_unigram``: what a model that learned only the token
    frequencies scores on the same targets (GPT: every next token; BERT: the masked held-out positions), as defined
    by :func:`~.metrics.unigram_loss`."""
    metrics = run.trainer.evaluate()
    metrics["perplexity"] = perplexity(metrics["eval_loss"])
    metrics.update(before)
    if run.args.streaming:  # the leading blocks of the stream stand for the training text
        from .streaming import UNIGRAM_SAMPLE_BLOCKS, leading_token_ids

        train_ids = leading_token_ids(run.train_dataset, UNIGRAM_SAMPLE_BLOCKS)
    else:
        train_ids = run.train_dataset.with_format("numpy")["input_ids"]
    special = unigram_special_ids(run.tokenizer, run.family)
    if run.family == "gpt":
        eval_ids = run.eval_dataset.with_format("numpy")["input_ids"]
        metrics["perplexity_unigram"] = unigram_perplexity(train_ids, eval_ids, run.config.vocab_size, special)
    else:  # the masked positions the held-out loss scores (masked once, see mask_once)
        labels = run.trainer.eval_dataset.with_format("numpy")["labels"]
        metrics["perplexity_unigram"] = masked_unigram_perplexity(train_ids, labels, run.config.vocab_size, special)
    metrics["eval_samples"] = len(run.eval_dataset)
    return metrics


def save_and_report(run: PretrainRun, metrics: dict[str, float], training: dict[str, Any]) -> list[str]:
    """Step 6: save model, tokenizer, metrics and state; write ``loss.png`` and the model card; print samples."""
    trainer = run.trainer
    save_model(trainer, str(run.output_dir))
    trainer.log_metrics("eval", metrics)
    trainer.save_metrics("train", training["train_metrics"])
    trainer.save_metrics("eval", metrics)
    trainer.save_state()
    if not run.is_main:
        return []
    report_pretraining(run, metrics, training["train_tokens"])
    if run.args.num_samples:
        return print_samples(run.output_dir, run.family, run.args.num_samples, run.args.seed)
    return []
