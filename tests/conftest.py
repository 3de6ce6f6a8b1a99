"""Shared pytest fixtures."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(scope="module")
def single_thread():
    """One torch thread for a module's end-to-end runs (they start several processes; 2 cores in CI)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# ---------------------------------------------------------------- subprocess runs killed with SIGKILL mid-training

import json  # noqa: E402
import os  # noqa: E402
import signal  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

REPO = Path(__file__).resolve().parents[1]

SLOW_CLI_CHILD = """
import sys, time, torch
torch.set_num_threads(1)
import modeling_deepln.model.layers_deepln as L
_forward = L.DeepLNBlock.forward
def forward(self, *args, **kwargs):
    time.sleep(0.03)  # slows training only (no numerical effect), so the kill lands mid-run
    return _forward(self, *args, **kwargs)
L.DeepLNBlock.forward = forward
from modeling_deepln.cli import main
main(sys.argv[1:])
"""
"""``python -c`` program: the ``deepln`` CLI with every block slowed down, so a SIGKILL lands mid-run."""


def offline_env() -> dict[str, str]:
    """The environment of a child process: this checkout importable, one thread, nothing from the Hub."""
    env = dict(os.environ)
    env.update(
        PYTHONPATH=os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]).rstrip(os.pathsep),
        OMP_NUM_THREADS="1",
        MKL_NUM_THREADS="1",
        HF_HUB_OFFLINE="1",
        HF_DATASETS_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        TOKENIZERS_PARALLELISM="false",
    )
    return env


def logged_losses(state_file: Path) -> dict[int, float]:
    """Training loss per step from a Trainer ``trainer_state.json``."""
    history = json.loads(state_file.read_text())["log_history"]
    return {entry["step"]: entry["loss"] for entry in history if "loss" in entry}


def kill_at_first_checkpoint(cli_args: list[str], output_dir: Path, timeout: float = 240) -> Path:
    """Run ``deepln *cli_args --output-dir output_dir`` in a child process, SIGKILL it as soon as it has written a
    complete checkpoint, check it really died mid-run, and return that checkpoint's folder."""
    from modeling_deepln.training import last_complete_checkpoint

    proc = subprocess.Popen(
        [sys.executable, "-c", SLOW_CLI_CHILD, *cli_args, "--output-dir", str(output_dir)],
        env=offline_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + timeout
        while last_complete_checkpoint(output_dir) is None:
            assert proc.poll() is None, "the run ended before writing a checkpoint"
            assert time.monotonic() < deadline, f"no checkpoint within {timeout:.0f} s"
            time.sleep(0.02)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    assert not (output_dir / "eval_results.json").exists(), "the run finished before it was killed"
    return Path(last_complete_checkpoint(output_dir))
