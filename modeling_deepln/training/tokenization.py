"""Train (or load) the tokenizer a ``deepln`` model is trained with.

Why this exists
---------------
Real users load a tokenizer from the Hub (``AutoTokenizer.from_pretrained("gpt2")`` or
``"bert-base-uncased"``) or from a local folder; :func:`load_or_train_tokenizer` keeps that
path. Offline runs (tests, CI, the default run on the embedded corpus) cannot reach the
Hub, so they train a small tokenizer of the right *family* on the training text in a few
seconds with the ``tokenizers`` library:

* ``"bert"``: uncased WordPiece like ``bert-base-uncased`` (BertNormalizer lowercase,
  BertPreTokenizer, ``##`` WordPiece decoder), special tokens ``[PAD]=0 [UNK]=1 [CLS]=2
  [SEP]=3 [MASK]=4`` and a template post-processor, so ``tok(a)`` is ``[CLS] a [SEP]``
  and ``tok(a, b)`` is ``[CLS] a [SEP] b [SEP]`` with ``token_type_ids`` 0/1. This is
  what ``pipeline("fill-mask")``, ``DataCollatorForLanguageModeling`` and pair
  classification expect.
* ``"gpt"``: byte-level BPE like GPT-2 (ByteLevel pre-tokenizer without prefix space,
  ByteLevel decoder, so decoding gives back the exact input text), ``<|endoftext|>`` =
  id 0 is bos/eos/unk and, as is common GPT-2 practice, also the pad token. Padding
  side is left at the default (right); generation code that batches prompts should
  set ``tokenizer.padding_side = "left"`` itself.

The tokenizers are wrapped as ``transformers.PreTrainedTokenizerFast`` and, when an
``output_dir`` is given, saved with ``save_pretrained`` so that
``AutoTokenizer.from_pretrained(output_dir)`` gives back the same tokenizer. In a model folder or Hub repo
(``config.json`` with an ``auto_map``) loaded without deepln imported, pass ``trust_remote_code=True`` as well:
transformers 5.x reads the model config through ``AutoConfig`` before ``tokenizer_config.json`` and otherwise asks
"[y/N]" (see README, "Publishing"); the ``tokenizer_class`` saved in ``tokenizer_config.json`` does not prevent it.

Measured on the embedded corpus (2.87 M characters, 2 CPU cores): WordPiece or byte-level
BPE with an 8,000-token vocabulary train in ~1.0 s; at bert-base / GPT-2 sizes (30,522 /
50,257) in ~1.7 s (the small corpus still fills those vocabularies, with many rare tokens).
The WordPiece ids are renumbered after training (the trainer itself assigns them in hash
order); the learned token set can still differ in a few tokens between two trainings on the
same text (ties near the vocabulary's end are also broken in hash order: 2 of 8,192 measured).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Literal

from transformers import AutoTokenizer, PreTrainedTokenizerBase, PreTrainedTokenizerFast

__all__ = [
    "BERT_SPECIAL_TOKENS",
    "GPT_SPECIAL_TOKEN",
    "TOKENIZER_TRAINING_CHARS",
    "TokenizerVocabMismatchError",
    "check_tokenizer_fits",
    "load_or_train_tokenizer",
    "train_tokenizer",
]

Family = Literal["bert", "gpt"]

#: BERT special tokens, in id order ([PAD] must be id 0 like bert-base-uncased).
BERT_SPECIAL_TOKENS: tuple[str, ...] = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
#: GPT-2's single special token, used as bos, eos, unk and pad.
GPT_SPECIAL_TOKEN = "<|endoftext|>"

_FAMILIES = ("bert", "gpt")

#: Characters of training text a tokenizer is trained on by ``deepln pretrain`` (the leading texts of the training
#: split or stream): enough for the vocabularies deepln trains (8k-50k tokens), and it keeps the tokenizer's time and
#: memory independent of the corpus size. The embedded corpus (2.9M characters) is used whole.
TOKENIZER_TRAINING_CHARS = 20_000_000


class TokenizerVocabMismatchError(ValueError):
    """The tokenizer has more tokens than the model's embedding matrix has rows."""


def _check_family(family: str) -> None:
    if family not in _FAMILIES:
        raise ValueError(f"family must be one of {_FAMILIES}, got {family!r}.")


def _batched(texts: Iterable[str], batch_size: int = 1000) -> Iterator[list[str]]:
    """Yield lists of strings (``train_from_iterator`` is fastest with batches)."""
    batch: list[str] = []
    for text in texts:
        if not isinstance(text, str):
            raise TypeError(
                f"train_tokenizer expects an iterable of str, got an item of type "
                f"{type(text).__name__}. Pass e.g. dataset['train']['text']."
            )
        batch.append(text)
        if len(batch) >= batch_size:
            yield batch
            batch = []
    if batch:
        yield batch


def _bert_tokenizer(vocab_size: int, model_max_length: int, texts: Iterable[str]):
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.WordPiece(unk_token="[UNK]", max_input_chars_per_word=100))
    tok.normalizer = normalizers.BertNormalizer(
        clean_text=True, handle_chinese_chars=True, strip_accents=None, lowercase=True
    )
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece(prefix="##")
    trainer = trainers.WordPieceTrainer(
        vocab_size=vocab_size,
        special_tokens=list(BERT_SPECIAL_TOKENS),
        continuing_subword_prefix="##",
        show_progress=False,
    )
    tok.train_from_iterator(_batched(texts), trainer=trainer)
    # The WordPiece trainer assigns ids in hash-map order, so two trainings on the same text
    # disagree on ids. WordPiece encoding is greedy longest-match and does not depend on id
    # order, so renumber: special tokens first (ids 0..4), then the rest sorted. The token
    # *set* is nearly but not always the same: ties between equally frequent merges near the
    # vocabulary's end are also broken in hash order (measured: 2 of 8,192 tokens differed
    # between two trainings on the embedded corpus), so ids are reproducible only up to that.
    learned = tok.get_vocab()
    specials = [t for t in BERT_SPECIAL_TOKENS if t in learned]
    rest = sorted(t for t in learned if t not in BERT_SPECIAL_TOKENS)
    tok.model = models.WordPiece(
        vocab={t: i for i, t in enumerate(specials + rest)},
        unk_token="[UNK]",
        max_input_chars_per_word=100,
        continuing_subword_prefix="##",
    )
    cls_id, sep_id = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A:0 [SEP]:0",
        pair="[CLS]:0 $A:0 [SEP]:0 $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)],
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        unk_token="[UNK]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
        do_lower_case=True,
        model_max_length=model_max_length,
        model_input_names=["input_ids", "token_type_ids", "attention_mask"],
    )


def _gpt_tokenizer(vocab_size: int, model_max_length: int, texts: Iterable[str]):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    # trim_offsets=False keeps offsets exact; the post-processor adds no tokens.
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[GPT_SPECIAL_TOKEN],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_batched(texts), trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=GPT_SPECIAL_TOKEN,
        eos_token=GPT_SPECIAL_TOKEN,
        unk_token=GPT_SPECIAL_TOKEN,
        pad_token=GPT_SPECIAL_TOKEN,
        model_max_length=model_max_length,
        model_input_names=["input_ids", "attention_mask"],
    )


def train_tokenizer(
    texts: Iterable[str],
    family: Family,
    vocab_size: int,
    output_dir: str | Path | None = None,
    model_max_length: int = 512,
    max_chars: int | None = None,
) -> PreTrainedTokenizerFast:
    """Train a BERT-style WordPiece or GPT-2-style byte-level BPE tokenizer.

    Args:
        texts: training text (any iterable of strings, consumed once).
        family: ``"bert"`` (uncased WordPiece with [CLS]/[SEP] templates) or ``"gpt"``
            (byte-level BPE with ``<|endoftext|>``).
        vocab_size: target vocabulary size including special tokens. For ``"gpt"`` it
            must be at least 257 (256 byte symbols + ``<|endoftext|>``). The trained
            vocabulary can be smaller when the text is small.
        output_dir: if given, ``save_pretrained`` the tokenizer there.
        model_max_length: the longest sequence the model accepts (stored in the
            tokenizer so truncation warnings are correct).
        max_chars: train on the leading texts only, stopping after the text that reaches
            this many characters (``None``: all of ``texts``).

    Returns:
        A ``PreTrainedTokenizerFast``; ``len(tokenizer) <= vocab_size``.

    Raises:
        ValueError: unknown family, too small a vocab_size, or no training text.
    """
    _check_family(family)
    minimum = 257 if family == "gpt" else len(BERT_SPECIAL_TOKENS) + 1
    if vocab_size < minimum:
        raise ValueError(
            f"vocab_size={vocab_size} is too small for a {family!r} tokenizer; use at least "
            f"{minimum}" + (" (256 byte symbols + <|endoftext|>)." if family == "gpt" else ".")
        )
    if model_max_length < 1:
        raise ValueError(f"model_max_length must be >= 1, got {model_max_length}.")

    seen = {"chars": 0}

    def counting(it: Iterable[str]) -> Iterator[str]:
        for text in it:
            seen["chars"] += len(text) if isinstance(text, str) else 0
            yield text
            if max_chars is not None and seen["chars"] >= max_chars:
                return

    builder = _bert_tokenizer if family == "bert" else _gpt_tokenizer
    tokenizer = builder(vocab_size, model_max_length, counting(texts))
    if seen["chars"] == 0:
        raise ValueError(
            "train_tokenizer got no text (the iterable was empty or held only empty "
            "strings). Pass the training corpus, e.g. dataset['train']['text']."
        )
    if output_dir is not None:
        Path(output_dir).mkdir(parents=True, exist_ok=True)
        tokenizer.save_pretrained(str(output_dir))
    return tokenizer


def load_or_train_tokenizer(
    name_or_path: str | None,
    family: Family,
    texts: Iterable[str] | None,
    vocab_size: int,
    output_dir: str | Path | None = None,
    model_max_length: int = 512,
    max_chars: int | None = None,
) -> PreTrainedTokenizerBase:
    """Load a tokenizer by Hub name / local folder, or train one when none is given.

    This is the single entry point training scripts use: real users pass
    ``--tokenizer gpt2`` (downloaded from the Hub) or a local folder; offline runs pass
    ``None`` and get a tokenizer trained on ``texts`` (the leading ``max_chars`` characters). A loaded tokenizer is also saved
    to ``output_dir`` when given, so the run folder always holds its tokenizer.

    Raises:
        ValueError: unknown family, or ``name_or_path`` is None and no ``texts``.
        OSError: the name is neither a local folder nor reachable on the Hub (the
            message from ``transformers`` says which).
    """
    _check_family(family)
    if name_or_path:
        tokenizer = AutoTokenizer.from_pretrained(name_or_path)
        if family == "gpt" and tokenizer.pad_token is None and tokenizer.eos_token is not None:
            # GPT-2 ships without a pad token; padding with eos is the common practice.
            tokenizer.pad_token = tokenizer.eos_token
        if output_dir is not None:
            Path(output_dir).mkdir(parents=True, exist_ok=True)
            tokenizer.save_pretrained(str(output_dir))
        return tokenizer
    if texts is None:
        raise ValueError(
            "No tokenizer given and no texts to train one on: pass a Hub name or a local "
            "folder (e.g. --tokenizer gpt2) or the training texts."
        )
    return train_tokenizer(texts, family, vocab_size, output_dir, model_max_length, max_chars)


def check_tokenizer_fits(tokenizer: PreTrainedTokenizerBase, vocab_size: int) -> None:
    """Raise if the tokenizer can produce ids the model's embeddings do not have.

    ``len(tokenizer)`` counts added tokens too, so it is the number of distinct ids
    the tokenizer may emit; every id must be ``< vocab_size``.

    Raises:
        TokenizerVocabMismatchError: ``len(tokenizer) > vocab_size``.
    """
    n = len(tokenizer)
    if n > vocab_size:
        raise TokenizerVocabMismatchError(
            f"The tokenizer has {n} tokens but the model's vocab_size is {vocab_size}; "
            f"token ids up to {n - 1} would index past the embedding matrix. Pass "
            f"--vocab-size {n} (or larger) or resize the model's embeddings with "
            f"model.resize_token_embeddings({n})."
        )
