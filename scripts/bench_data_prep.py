"""Scaling of ``deepln pretrain``'s data preparation (non-streaming path): time, peak memory and disk use.

Two subcommands::

    python scripts/bench_data_prep.py corpus --size-mb 100 --out /tmp/corpus-100mb.txt
    /usr/bin/time -v python scripts/bench_data_prep.py prepare --data /tmp/corpus-100mb.txt --work /tmp/prep-100

``corpus`` writes a text file of the requested size from the embedded Wikipedia articles
(:func:`modeling_deepln.training.corpus.wiki_articles`): their paragraphs, one per line, repeated, each repetition in
a different seeded order. Write it outside the repository (``/tmp``) and delete it afterwards.

``prepare`` runs what ``deepln pretrain --data FILE`` runs before training (:func:`load_text_data`, a tokenizer
trained on the training text, :func:`tokenize_and_group` with ``seq_len`` 512) with a fresh ``datasets`` cache in
``--work`` and prints one JSON line: wall seconds, the peak of the summed RSS and of the summed unique (private)
memory of the process and its children (sampled every 0.25 s with ``psutil``), of their anonymous and of their
file-backed resident memory (``RssAnon`` / ``RssFile`` of ``/proc/PID/status``), the cache size and the number of
blocks. ``/usr/bin/time -v`` around it reports the largest single process's peak RSS ("Maximum resident set size",
which for the children counts the largest one only).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import threading
import time
from pathlib import Path


def write_corpus(size_mb: float, out: Path, seed: int = 0) -> int:
    """Write about ``size_mb`` MB of English paragraphs (one per line) to ``out``; returns the bytes written."""
    from modeling_deepln.training.corpus import wiki_articles

    paragraphs = [p.strip() for text in wiki_articles() for p in text.split("\n") if p.strip()]
    target, written, rng = int(size_mb * 1e6), 0, random.Random(seed)
    with open(out, "wb") as f:
        while written < target:
            rng.shuffle(paragraphs)
            chunk = ("\n".join(paragraphs) + "\n").encode("utf-8")[: target - written]
            f.write(chunk)
            written += len(chunk)
    return written


def rss_parts(pid: int) -> tuple[int, int]:
    """``(RssAnon, RssFile)`` of a process in bytes, from ``/proc/PID/status`` (Linux): the anonymous memory the
    process allocated, and the resident pages of files it maps (here mostly the memory-mapped Arrow cache, clean page
    cache that the kernel drops under memory pressure). ``(0, 0)`` where the file is unreadable."""
    parts = {"RssAnon:": 0, "RssFile:": 0}
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                key, *value = line.split()
                if key in parts:
                    parts[key] = int(value[0]) * 1024
    except OSError:
        pass
    return parts["RssAnon:"], parts["RssFile:"]


class TreeMemory:
    """Samples, summed over this process and its children in a background thread: RSS, USS, and RSS split into
    anonymous and file-backed (:func:`rss_parts`)."""

    def __init__(self, interval: float = 0.25):
        import psutil

        self.root, self.interval = psutil.Process(), interval
        self.peak_rss = self.peak_uss = self.peak_anon = self.peak_file = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        import psutil

        while not self._stop.is_set():
            rss = uss = anon = file = 0
            for proc in [self.root, *self.root.children(recursive=True)]:
                try:
                    info = proc.memory_full_info()
                except (psutil.NoSuchProcess, psutil.AccessDenied):
                    continue
                proc_anon, proc_file = rss_parts(proc.pid)
                rss, uss, anon, file = rss + info.rss, uss + info.uss, anon + proc_anon, file + proc_file
            self.peak_rss, self.peak_uss = max(self.peak_rss, rss), max(self.peak_uss, uss)
            self.peak_anon, self.peak_file = max(self.peak_anon, anon), max(self.peak_file, file)
            self._stop.wait(self.interval)

    def __enter__(self) -> TreeMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def folder_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def prepare(data: str, work: Path, seq_len: int, vocab_size: int, num_proc: int | None) -> dict:
    from datasets import DatasetDict

    from modeling_deepln.training.data import load_text_data, tokenize_and_group
    from modeling_deepln.training.tokenization import TOKENIZER_TRAINING_CHARS, load_or_train_tokenizer

    cache = work / "hf-cache"
    shutil.rmtree(cache, ignore_errors=True)
    start = time.monotonic()
    with TreeMemory() as memory:
        raw = load_text_data(data, cache_dir=str(cache))
        loaded = time.monotonic()
        tokenizer = load_or_train_tokenizer(
            None, "gpt", raw["train"]["text"], vocab_size=vocab_size, max_chars=TOKENIZER_TRAINING_CHARS
        )
        trained = time.monotonic()
        blocks = tokenize_and_group(
            DatasetDict({"train": raw["train"], "validation": raw["validation"]}), tokenizer, seq_len, num_proc=num_proc
        )
    end = time.monotonic()
    return {
        "corpus_mb": round(os.path.getsize(data) / 1e6, 1),
        "seconds": round(end - start, 1),
        "load_seconds": round(loaded - start, 1),
        "tokenizer_seconds": round(trained - loaded, 1),
        "tokenize_group_seconds": round(end - trained, 1),
        "peak_tree_rss_mb": round(memory.peak_rss / 1e6),
        "peak_tree_uss_mb": round(memory.peak_uss / 1e6),
        "peak_tree_anon_mb": round(memory.peak_anon / 1e6),
        "peak_tree_file_mb": round(memory.peak_file / 1e6),
        "cache_mb": round(folder_bytes(cache) / 1e6),
        "train_blocks": len(blocks["train"]),
        "num_proc": num_proc,
        "cpus": os.cpu_count(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    corpus = sub.add_parser("corpus", help="write a generated corpus")
    corpus.add_argument("--size-mb", type=float, required=True)
    corpus.add_argument("--out", type=Path, required=True)
    prep = sub.add_parser("prepare", help="time the preparation of a corpus")
    prep.add_argument("--data", required=True)
    prep.add_argument("--work", type=Path, required=True, help="folder for the fresh datasets cache (emptied)")
    prep.add_argument("--seq-len", type=int, default=512)
    prep.add_argument("--vocab-size", type=int, default=8000)
    prep.add_argument("--num-proc", type=int, default=None)
    prep.add_argument("--keep-cache", action="store_true", help="keep the cache (default: delete it afterwards)")
    args = parser.parse_args()
    if args.command == "corpus":
        print(json.dumps({"out": str(args.out), "bytes": write_corpus(args.size_mb, args.out)}))
        return
    result = prepare(args.data, args.work, args.seq_len, args.vocab_size, args.num_proc)
    print(json.dumps(result), flush=True)
    if not args.keep_cache:
        shutil.rmtree(args.work / "hf-cache", ignore_errors=True)


if __name__ == "__main__":
    main()
