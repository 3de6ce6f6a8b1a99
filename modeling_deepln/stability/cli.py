"""The ``stability`` subcommand of ``deepln``: the schemes × depth grid (:mod:`.grid`) and DeepNet's bound (:mod:`.bound`).

    deepln stability                                   # default grid (2-core CPU sized), tables + plots
    deepln stability --bound                           # also DeepNet's model-update table
    deepln stability --bound-only                      # only the bound table
    deepln stability --wide                            # the GPU grid: depths up to 1,000, 2 lrs, with/without warmup
    deepln stability --depth-1000                      # every scheme at 1,000 layers, GPT and BERT, on a CPU
"""

from __future__ import annotations

import argparse
import time
from dataclasses import fields, replace
from pathlib import Path

from ..commands import Subcommand, csv_list

__all__ = ["SUBCOMMANDS", "TABLE_COLUMNS"]

TABLE_COLUMNS = ("family", "scheme", "block_lr", "depth", "lr", "warmup", "steps", "eval_loss", "unigram_loss", "gap", "cosine",
                 "mode", "mode_step", "update_first", "update_last", "seconds", "cpu_seconds")  # fmt: skip
"""Columns of ``stability.csv`` / ``stability.md``."""

WIDE = {"depths": (6, 24, 48, 100, 200, 1000), "lrs": (5e-4, 2e-3), "warmups": (0.0, 0.1), "steps": 300,
        "seq_len": 128, "precision": "bf16"}  # fmt: skip
"""``--wide``: the GPU grid (flags given next to it still win)."""

DEPTH_1000 = {"families": ("gpt", "bert"),
              "schemes": ("post_ln", "pre_ln", "deepnorm", "upscale_ln", "foundation_ln:ln", "foundation_ln:alpha_plus_ln",
                          "foundation_ln:alpha_plus_ln:final_ln", "normformer"),
              "block_lr_scales": ("depth",), "depths": (1000,), "steps": 300, "hidden_size": 32, "num_heads": 2,
              "seq_len": 64, "batch_size": 32, "vocab_size": 8192, "eval_blocks": 64, "monitor_every": 20,
              "early_steps": 3, "progress_every": 20, "heatmaps": True, "from_presets": True, "lrs": (), "warmups": ()}  # fmt: skip
"""``--depth-1000``: every scheme at 1,000 layers, both families, in the model and recipe of the family's
1,000-layer CPU preset (``gpt-1k-cpu`` / ``bert-1k-cpu``: hidden 32, 2 heads, vocabulary 8,192 (the BERT preset's is
2,048 since the table was measured), σ/√(2N) output init, the residual blocks at lr/√N, lr 2e-3 (BERT 4e-3,
60 % masking) with 5 % warmup and cosine to a tenth),
32 × 64 tokens a step (a 1,000-layer step is mostly per-layer overhead, so 4× the tokens cost 2× the time),
300 steps: the GPT preset's budget (the BERT preset now trains 400), by which Pre-LN is 0.4 (GPT) and 0.1 (BERT)
nats below the unigram loss (α·s + LN(s), both presets' scheme: GPT 1.1, BERT 0.11), where at 100 steps Pre-LN is only leaving the plateau; the α·s + LN(s)
form with and without its final LayerNorm. Only the scheme changes from row to row. Flags given next to it still
win (e.g. ``--families gpt --steps 100``, ``--block-lr-scales 1,depth`` for the ablation with every parameter at the
learning rate, ``--lrs 1e-3``)."""


def _ints(value: str) -> tuple[int, ...]:
    return tuple(int(v) for v in csv_list(value))


def _floats(value: str) -> tuple[float, ...]:
    return tuple(float(v) for v in csv_list(value))


def add_stability_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``deepln stability`` (unset: :class:`~.grid.GridSettings`' defaults)."""
    s = argparse.SUPPRESS
    parser.add_argument("--families", type=lambda v: tuple(csv_list(v)), default=s, help="gpt,bert (default gpt)")
    parser.add_argument("--schemes", type=lambda v: tuple(csv_list(v)), default=s,
                        help="Comma-separated residual_norm[:post_norm_form] (default: all six, foundation_ln in "
                        "both forms: foundation_ln:ln and foundation_ln:alpha_plus_ln).")  # fmt: skip
    parser.add_argument("--depths", type=_ints, default=s, help="Comma-separated layer counts (default 6,12).")
    parser.add_argument("--lrs", type=_floats, default=s, help="Comma-separated peak learning rates (default 2e-3).")
    parser.add_argument("--warmups", type=_floats, default=s, help="Comma-separated warmup ratios (default 0.1).")
    parser.add_argument("--block-lr-scales", type=lambda v: tuple(csv_list(v)), default=s,
                        help="Comma-separated learning-rate multipliers of the residual blocks, each a number or "
                        "'depth' (1/sqrt(layers)), as deepln pretrain --block-lr-scale (default 1).")  # fmt: skip
    for flag, kind in (("steps", int), ("hidden-size", int), ("num-heads", int), ("seq-len", int),
                       ("batch-size", int), ("vocab-size", int), ("eval-blocks", int), ("monitor-every", int),
                       ("early-steps", int), ("margin", float), ("seed", int), ("max-minutes", float),
                       ("progress-every", int), ("min-lr-ratio", float), ("mlm-probability", float)):  # fmt: skip
        parser.add_argument(f"--{flag}", dest=flag.replace("-", "_"), type=kind, default=s)
    parser.add_argument("--precision", choices=["fp32", "bf16"], default=s, help="bf16 applies on a GPU only.")
    parser.add_argument("--wide", action="store_true", help="The GPU grid: " + str(WIDE).replace("%", "%%"))
    parser.add_argument("--depth-1000", dest="depth_1000", action="store_true",
                        help="Every scheme at 1,000 layers, GPT and BERT, narrow (hidden 32) for a CPU: "
                        + str(DEPTH_1000).replace("%", "%%"))  # fmt: skip
    parser.add_argument("--output-dir", default=None, help="Default runs/stability-<timestamp>.")
    parser.add_argument("--merge", type=lambda v: tuple(csv_list(v)), default=None, metavar="DIR,DIR",
                        help="Train nothing: join the stability.csv of earlier grids (e.g. the GPT and the BERT half "
                        "run as two processes) into one table and gap_by_scheme.png in --output-dir.")  # fmt: skip
    parser.add_argument("--bound", action="store_true", help="Also print DeepNet's model-update table.")
    parser.add_argument("--bound-only", action="store_true", help="Only the model-update table (no grid).")
    parser.add_argument("--bound-depths", type=_ints, default=(6, 12, 24, 48, 96))


def _settings(values: dict):
    from ..errors import DeepLNInputError
    from .grid import GridSettings, split_scheme

    names = {f.name for f in fields(GridSettings)}
    wide = dict(WIDE) if values.pop("wide", False) else {}
    if values.pop("depth_1000", False):
        if wide:
            raise DeepLNInputError("--wide and --depth-1000 are two different grids; pick one.")
        wide = dict(DEPTH_1000)
    settings = replace(GridSettings(), **{**wide, **{k: v for k, v in values.items() if k in names}})
    try:
        for scheme in settings.schemes:
            split_scheme(scheme)
    except ValueError as exc:
        raise DeepLNInputError(str(exc)) from None
    if not settings.from_presets and not (settings.lrs and settings.warmups):
        raise DeepLNInputError("--lrs and --warmups need at least one value each.")
    unknown = set(settings.families) - {"gpt", "bert"}
    if unknown or not settings.families:
        raise DeepLNInputError(f"--families takes gpt and/or bert, got {','.join(settings.families)}.")
    for name in ("steps", "hidden_size", "num_heads", "seq_len", "batch_size", "vocab_size", "monitor_every"):
        if getattr(settings, name) <= 0:
            raise DeepLNInputError(f"--{name.replace('_', '-')} must be positive, got {getattr(settings, name)}.")
    from ..training.depth_lr import block_lr_multiplier

    for scale in settings.block_lr_scales:
        block_lr_multiplier(scale, max(settings.depths))
    if settings.hidden_size % settings.num_heads:
        raise DeepLNInputError(f"--hidden-size {settings.hidden_size} is not a multiple of --num-heads.")
    return settings


def run_stability(ns: argparse.Namespace) -> int:
    import torch

    from .grid import grid_cells, run_grid
    from .report import (
        markdown_table,
        plot_early_updates,
        plot_gap_by_scheme,
        plot_grid_heatmaps,
        plot_loss_vs_depth,
        run_label,
        write_table,
    )

    values = dict(vars(ns))
    output_dir = Path(values.pop("output_dir") or f"runs/stability-{time.strftime('%Y%m%d-%H%M%S')}")
    merge = values.pop("merge")
    if merge:
        return merge_tables(merge, output_dir)
    bound, bound_only = values.pop("bound"), values.pop("bound_only")
    bound_depths = values.pop("bound_depths")
    settings = _settings(values)
    if not torch.cuda.is_available():
        torch.set_num_threads(min(torch.get_num_threads(), 2))
    output_dir.mkdir(parents=True, exist_ok=True)
    start = time.monotonic()
    if not bound_only:
        table = output_dir / "stability"
        rows = run_grid(settings, output_dir, on_row=lambda done: write_table(done, TABLE_COLUMNS, table))
        csv_path, _ = write_table(rows, TABLE_COLUMNS, output_dir / "stability")
        plot_loss_vs_depth(rows, output_dir / "loss_vs_depth.png")
        deepest = max(settings.depths)
        first = {family: grid_cells(settings, family)[0] for family in settings.families}
        early = [{"label": f"{r['family']} {run_label(r)} L{r['depth']}", **r["_early"]} for r in rows
                 if r["depth"] == deepest and r["lr"] == first[r["family"]].lr
                 and r["warmup"] == first[r["family"]].warmup]
        plot_early_updates(early, output_dir / "early_updates.png")
        plot_gap_by_scheme([r for r in rows if r["depth"] == deepest], output_dir / "gap_by_scheme.png")
        if settings.heatmaps:
            for quantity in ("grad_norm", "position_cosine"):
                plot_grid_heatmaps(rows, quantity, output_dir / f"heatmaps_{quantity}.png")
        print("\n" + markdown_table(rows, TABLE_COLUMNS[:-2] + ("seconds",)))
        print(f"\n[deepln] stability grid: {len(rows)} runs in {time.monotonic() - start:.0f} s; table {csv_path} "
              f"(+ .md), plots loss_vs_depth.png, gap_by_scheme.png and early_updates.png in {output_dir}")  # fmt: skip
    if bound or bound_only:
        print_bound_tables(bound_depths, output_dir)
    return 0


def merge_tables(folders: tuple[str, ...], output_dir: Path) -> int:
    """``--merge``: the rows of each folder's ``stability.csv``, in the order given, as one table and plot."""
    from ..errors import DeepLNInputError
    from .report import markdown_table, plot_gap_by_scheme, read_table, write_table

    rows = []
    for folder in folders:
        path = Path(folder) / "stability.csv"
        if not path.is_file():
            raise DeepLNInputError(f"--merge: {path} does not exist; give folders that a deepln stability run wrote.")
        rows += read_table(path)
    output_dir.mkdir(parents=True, exist_ok=True)
    csv_path, _ = write_table(rows, TABLE_COLUMNS, output_dir / "stability")
    deepest = max(r["depth"] for r in rows)
    plot_gap_by_scheme([r for r in rows if r["depth"] == deepest], output_dir / "gap_by_scheme.png")
    print(markdown_table(rows, TABLE_COLUMNS[:-2] + ("seconds", "cpu_seconds")))
    print(f"\n[deepln] stability: {len(rows)} rows from {len(folders)} grids in {csv_path} (+ .md) and "
          f"{output_dir / 'gap_by_scheme.png'}")  # fmt: skip
    return 0


def print_bound_tables(depths: tuple[int, ...], output_dir: Path) -> None:
    """DeepNet's model update for Post-LN and DeepNorm at ``depths``, for the theorem's step and the training step."""
    from .bound import SETTINGS, bound_table
    from .report import markdown_table, write_table

    start = time.monotonic()
    columns = ("depth", "post_ln", "deepnorm", "post_ln / deepnorm")
    for name, step in SETTINGS.items():
        rows = bound_table(("post_ln", "deepnorm"), depths, **step)
        for row in rows:
            row["post_ln / deepnorm"] = row["post_ln"] / row["deepnorm"]
        write_table(rows, columns, output_dir / f"bound_{name}")
        print(f"\nModel update ‖F(x; θ+Δθ) − F(x; θ)‖ per position after one {step['optimizer']} step, lr {step['lr']:g}, "
              f"{step['parameters']} updated ({name}):\n" + markdown_table(rows, columns), flush=True)  # fmt: skip
    print(f"[deepln] bound tables in {time.monotonic() - start:.0f} s: {output_dir}/bound_*.md", flush=True)


SUBCOMMANDS: dict[str, Subcommand] = {
    "stability": Subcommand(
        "Train a grid of small models (residual schemes x depths x learning rates x warmup, GPT and BERT) and "
        "tabulate how each fails or learns against the unigram loss; --bound checks DeepNet's model-update bound.",
        add_stability_arguments,
        run_stability,
    ),
}
"""Stability subcommands: name -> (help, add_arguments, run)."""
