"""The embedded English corpus used by the default (offline) training run.

Why this exists
---------------
The default ``deepln`` run must train without the Hugging Face Hub (CI machines and
development boxes reach package registries only), yet it should train on real English
prose rather than on synthetic text. No wikitext / enwik8 / PTB package exists on PyPI,
but ``gensim`` installs a shortened English Wikipedia dump as test data::

    gensim/test/test_data/enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2

(206 pages, 1.7 MB bz2, text CC BY-SA). This module strips the MediaWiki markup with
``gensim.corpora.wikicorpus.extract_pages`` + ``filter_wiki``, applies a small clean-up
pass (bold/italic quotes, ``== headings ==``, bibliography / link sections, list
items that are mere references, table remnants) and returns plain prose articles.

The third-party text is never copied into this repository: it is read from the
installed ``gensim`` package (``pip install 'deepln[corpus]'``) and the cleaned result is
cached under ``$DEEPLN_CACHE`` (default ``~/.cache/deepln/``) so repeated runs are instant; a machine without gensim
uses a cache copied there from one with it.

Measured (gensim 4.4.0, 2 CPU cores)
------------------------------------
* ``wiki_articles()`` (``min_chars=500``): **104 articles, 2.87 M characters
  (0.45 M words)**; first build 4-9 s (decompress + parse + clean, incl. importing
  gensim), ~0.01 s from the cache afterwards.
* ``wiki_corpus_splits()``: 99 train / 5 validation articles. Tokenized and grouped
  into 512-token blocks: ~1,290 blocks (0.66 M tokens) with an 8k WordPiece vocabulary,
  ~1,390 blocks (0.71 M tokens) with an 8k byte-level BPE.

For comparison, the raw ``extract_pages`` + ``filter_wiki`` output keeps 105 articles
longer than 500 characters and 3.1 M characters, the difference being reference lists,
"External links" sections and markup that the clean-up removes.
"""

from __future__ import annotations

import bz2
import hashlib
import importlib.util
import json
import os
import random
import re
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover - typing only
    from datasets import DatasetDict

__all__ = [
    "CorpusNotAvailableError",
    "WIKI_DUMP_RELATIVE_PATH",
    "cache_dir",
    "clean_wiki_text",
    "wiki_articles",
    "wiki_corpus_splits",
    "wiki_dump_path",
]

#: Path of the Wikipedia test dump inside the installed ``gensim`` package.
WIKI_DUMP_RELATIVE_PATH = (
    "test/test_data/enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2"
)

#: Bump when the clean-up rules change so stale caches are not reused.
_CLEANUP_VERSION = 3

#: Sections that are lists of references or links rather than prose; everything from
#: such a heading to the next heading of the same or higher level is dropped.
_BOILERPLATE_SECTIONS = {
    "references",
    "notes",
    "footnotes",
    "citations",
    "sources",
    "bibliography",
    "further reading",
    "external links",
    "see also",
    "notes and references",
    "references and notes",
    "works cited",
    "selected bibliography",
    "primary sources",
    "secondary sources",
    "other sources",
    "online sources",
    "links",
    "reading",
    "general references",
}


class CorpusNotAvailableError(FileNotFoundError):
    """The embedded corpus cannot be built (``gensim`` or its test data is missing)."""


def cache_dir() -> Path:
    """Return the folder used for ``deepln`` caches.

    ``$DEEPLN_CACHE`` wins when set (useful for CI and read-only home directories);
    otherwise ``~/.cache/deepln``. The folder is created on demand by the writers.
    """
    env = os.environ.get("DEEPLN_CACHE")
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "deepln"


def wiki_dump_path() -> Path:
    """Locate gensim's shipped Wikipedia dump without importing ``gensim``.

    ``importlib.util.find_spec`` only resolves the package location; importing gensim
    (and with it scipy) is deferred until the dump actually has to be parsed.

    Raises:
        CorpusNotAvailableError: gensim is not installed, or its test data is missing.
    """
    spec = importlib.util.find_spec("gensim")
    if spec is None or not spec.origin:
        raise CorpusNotAvailableError(
            "The embedded English corpus needs the 'gensim' package, which ships the "
            "Wikipedia test dump it is built from, but gensim is not installed. "
            "Install it with: pip install 'deepln[corpus]' (or pip install gensim), "
            "or pass your own text data instead of using the default corpus (or copy the corpus cache, "
            "$DEEPLN_CACHE/wiki_articles-v*.jsonl, from a machine with gensim)."
        )
    path = Path(spec.origin).parent / WIKI_DUMP_RELATIVE_PATH
    if not path.is_file():
        raise CorpusNotAvailableError(
            f"gensim is installed at {Path(spec.origin).parent} but its test data file "
            f"{path} is missing (some distributions strip package test data). Reinstall "
            "gensim from PyPI (pip install --force-reinstall 'deepln[corpus]') or pass "
            "your own text data."
        )
    return path


# --------------------------------------------------------------------------- clean-up

_HEADING_RE = re.compile(r"^(=+)\s*(.*?)\s*\1\s*$")
_LIST_MARKER_RE = re.compile(r"^[*#:;]+\s*")
_BOLD_ITALIC_RE = re.compile(r"'{2,}")
_EMPTY_PARENS_RE = re.compile(r"\(\s*[,;:]?\s*\)")
_SPACE_BEFORE_PUNCT_RE = re.compile(r"\s+([,.;:!?)])")
_OPEN_PAREN_SPACE_RE = re.compile(r"\(\s+")
_MULTI_SPACE_RE = re.compile(r"[ \t\u00a0]+")
_LEFTOVER_MARKUP_RE = re.compile(r"\[\[|\]\]|\{\{|\}\}|\{\||\|\}")
_REFERENCE_HINT_RE = re.compile(r"\bISBN\b|\bISSN\b|\bdoi\b|\bpp?\.\s*\d|https?://|www\.", re.I)


def _letter_fraction(line: str) -> float:
    """Fraction of characters in ``line`` that are letters (markup lines score low)."""
    if not line:
        return 0.0
    return sum(ch.isalpha() for ch in line) / len(line)


def _clean_line(line: str) -> str:
    """Remove inline markup leftovers from one line of ``filter_wiki`` output."""
    line = _BOLD_ITALIC_RE.sub("", line)
    line = _LEFTOVER_MARKUP_RE.sub("", line)
    line = _EMPTY_PARENS_RE.sub("", line)
    line = _OPEN_PAREN_SPACE_RE.sub("(", line)
    line = _MULTI_SPACE_RE.sub(" ", line)
    line = _SPACE_BEFORE_PUNCT_RE.sub(r"\1", line)
    return line.strip()


def clean_wiki_text(text: str) -> str:
    """Turn ``filter_wiki`` output into plain prose.

    Rules (kept deliberately small and predictable):

    * ``'''bold'''`` / ``''italic''`` quotes, stray ``[[ ]]`` / ``{{ }}`` are removed;
    * ``== Heading ==`` lines become the bare heading text on their own line, except
      reference/link sections ("References", "External links", "See also", ...),
      which are dropped together with their content;
    * list items (``*``, ``#``, ``:``, ``;``) are kept, without the marker, only when
      they read like a sentence (>= 8 words, no ISBN/URL/page reference);
    * table remnants (lines starting with ``|``, ``!``, ``{``) and lines that are
      mostly non-letters are dropped;
    * whitespace is collapsed and blank lines removed (one paragraph per line);
    * a heading that ends up with no content under it is dropped.
    """
    out: list[str] = []
    pending_heading: str | None = None
    skip_level: int | None = None  # heading level of a dropped boilerplate section

    for raw in text.splitlines():
        stripped = raw.strip()
        if not stripped:
            continue
        heading = _HEADING_RE.match(stripped)
        if heading:
            level = len(heading.group(1))
            title = _clean_line(heading.group(2))
            if skip_level is not None and level > skip_level:
                continue  # subsection of a dropped section
            skip_level = None
            if title.lower().strip(" :") in _BOILERPLATE_SECTIONS:
                skip_level = level
                pending_heading = None
                continue
            pending_heading = title or None
            continue
        if skip_level is not None:
            continue
        if stripped[0] in "|!{}":
            continue  # table remnants
        is_list_item = bool(_LIST_MARKER_RE.match(stripped))
        line = _clean_line(_LIST_MARKER_RE.sub("", stripped))
        if not line:
            continue
        if is_list_item and (len(line.split()) < 8 or _REFERENCE_HINT_RE.search(line)):
            continue
        if _REFERENCE_HINT_RE.search(line) and len(line.split()) < 25:
            continue  # short citation-like line
        if _letter_fraction(line) < 0.5:
            continue
        if pending_heading is not None:
            out.append(pending_heading)
            pending_heading = None
        out.append(line)
    return "\n".join(out)


# --------------------------------------------------------------------------- building + cache


def _cache_file(dump: Path) -> Path:
    """Cache file name: depends on the dump (size + mtime) and the clean-up version."""
    stat = dump.stat()
    key = f"{dump}:{stat.st_size}:{int(stat.st_mtime)}:v{_CLEANUP_VERSION}"
    digest = hashlib.sha1(key.encode()).hexdigest()[:12]
    return cache_dir() / f"wiki_articles-v{_CLEANUP_VERSION}-{digest}.jsonl"


def _cache_without_gensim() -> Path | None:
    """The newest cache of this clean-up version, for a machine without gensim whose ``$DEEPLN_CACHE`` was copied
    from one with it (a GPU machine that has no package index, say); ``None`` if there is none."""
    try:
        files = sorted(cache_dir().glob(f"wiki_articles-v{_CLEANUP_VERSION}-*.jsonl"), key=lambda p: p.stat().st_mtime)
    except OSError:
        return None
    return files[-1] if files else None


def _read_cache(path: Path) -> list[dict[str, str]]:
    with path.open(encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


def _build_articles(dump: Path) -> list[dict[str, str]]:
    """Parse and clean every main-namespace page of the dump (no length filter)."""
    try:
        from gensim.corpora.wikicorpus import extract_pages, filter_wiki
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise CorpusNotAvailableError(
            f"Could not import gensim.corpora.wikicorpus ({exc}). Install the corpus "
            "extra with: pip install 'deepln[corpus]'."
        ) from exc

    articles: list[dict[str, str]] = []
    with bz2.open(dump, "rb") as fh:
        for title, text, _page_id in extract_pages(fh):
            if not text or text.lstrip().lower().startswith("#redirect"):
                continue
            cleaned = clean_wiki_text(filter_wiki(text))
            if cleaned:
                articles.append({"title": title, "text": cleaned})
    return articles


def _load_or_build(refresh: bool = False) -> list[dict[str, str]]:
    """Return all cleaned articles, from the cache when it is valid (without gensim: from a copied cache)."""
    try:
        dump = wiki_dump_path()
    except CorpusNotAvailableError:
        cached = None if refresh else _cache_without_gensim()
        if cached is None:
            raise
        articles = _read_cache(cached)
        print(f"[deepln] gensim is not installed: using the embedded corpus cached in {cached}", flush=True)
        return articles
    path = _cache_file(dump)
    if path.is_file() and not refresh:
        try:
            return _read_cache(path)
        except (OSError, json.JSONDecodeError):
            pass  # corrupt cache: rebuild below
    articles = _build_articles(dump)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        # Write atomically so a concurrent or interrupted run never sees half a file.
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            for art in articles:
                fh.write(json.dumps(art, ensure_ascii=False) + "\n")
        os.replace(tmp, path)
    except OSError:
        pass  # an unwritable cache only costs speed, never correctness
    return articles


def wiki_articles(min_chars: int = 500, *, refresh: bool = False) -> list[str]:
    """Return the cleaned English Wikipedia articles shipped with gensim.

    Args:
        min_chars: keep only articles whose cleaned text has at least this many
            characters (drops stubs and near-empty pages).
        refresh: rebuild the cache even if a valid one exists.

    Returns:
        Article texts in dump order; each starts with the article title on its own
        line, followed by one paragraph / heading per line.

    Raises:
        CorpusNotAvailableError: gensim (``pip install 'deepln[corpus]'``) is missing.
        ValueError: ``min_chars`` is negative.
    """
    if min_chars < 0:
        raise ValueError(f"min_chars must be >= 0, got {min_chars}.")
    return [
        f"{art['title']}\n{art['text']}"
        for art in _load_or_build(refresh=refresh)
        if len(art["text"]) >= min_chars
    ]


def wiki_corpus_splits(
    validation_fraction: float = 0.05, seed: int = 0, min_chars: int = 500
) -> "DatasetDict":
    """The embedded corpus as a ``DatasetDict`` with ``train``/``validation`` splits.

    The split is by *article* (no article contributes text to both splits) and is
    deterministic for a given ``seed``. Both splits have a single ``text`` column.

    Raises:
        ValueError: ``validation_fraction`` is not in (0, 1).
        CorpusNotAvailableError: gensim is missing.
    """
    if not 0.0 < validation_fraction < 1.0:
        raise ValueError(
            f"validation_fraction must be between 0 and 1 (exclusive), got {validation_fraction}."
        )
    from datasets import Dataset, DatasetDict

    articles = wiki_articles(min_chars=min_chars)
    if len(articles) < 2:
        raise ValueError(
            f"The embedded corpus has only {len(articles)} article(s) of >= {min_chars} "
            "characters; cannot make train and validation splits. Lower min_chars."
        )
    order = list(range(len(articles)))
    random.Random(seed).shuffle(order)
    n_val = min(len(articles) - 1, max(1, round(validation_fraction * len(articles))))
    val_idx = sorted(order[:n_val])
    train_idx = sorted(order[n_val:])
    return DatasetDict(
        {
            "train": Dataset.from_dict({"text": [articles[i] for i in train_idx]}),
            "validation": Dataset.from_dict({"text": [articles[i] for i in val_idx]}),
        }
    )
