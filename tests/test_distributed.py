"""``deepln pretrain`` / ``deepln finetune`` under ``accelerate launch``: DDP and FSDP2 on 2 CPU processes (gloo).

Each launch uses a config from ``configuration/accelerate/`` on a free loopback port, tiny shapes (4 layers, hidden
32, no dropout, fixed seed) and a global batch of 8 (4 per process); the reference is the same command in one
process. Checked: per-step losses, the saved folder loaded as remote code in a fresh interpreter (the package
blocked), kill -9 and ``--resume`` from a sharded FSDP checkpoint, two "nodes" on one machine.

Tolerance: two processes average two half-batch gradients where one process averages the whole batch, so every
step's sums run in a different order (float32 rounding, ~1e-7 relative per operation); through a few Adam steps at
lr 3e-3 the losses (~6.5) then differ by ~1e-6 relative. ``rel=1e-4`` leaves room for that and for other CPUs'
kernels, and is far below what a wrong batch split or a missed gradient reduction moves (a different batch changes
the step's loss by ~1e-2).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest
from conftest import offline_env

from modeling_deepln.cli import main
from modeling_deepln.training import last_complete_checkpoint

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configuration" / "accelerate"
LAUNCH_CONFIGS = {"ddp": "cpu-2proc.yaml", "fsdp2": "cpu-2proc-fsdp2.yaml"}
TINY = [
    "--num-layers", "4", "--hidden-size", "32", "--num-heads", "2", "--seq-len", "32", "--vocab-size", "600",
    "--batch-size", "8", "--report-to", "none", "--no-progress", "--max-eval-samples", "32", "--seed", "7",
]  # fmt: skip
STEPS = 6
PRETRAIN = ["pretrain", *TINY, "--max-steps", str(STEPS), "--save-steps", "2", "--logging-steps", "1",
            "--eval-steps", "0", "--no-samples", "--lr", "3e-3"]  # fmt: skip
REL = 1e-4

pytestmark = pytest.mark.usefixtures("single_thread")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch_command(kind: str, port: int, program: list[str], *launch_args: str) -> list[str]:
    accelerate = Path(sys.executable).with_name("accelerate")
    launcher = [str(accelerate), "launch"]
    if not accelerate.exists():
        launcher = [sys.executable, "-m", "accelerate.commands.launch"]
    return [*launcher, "--config_file", str(CONFIGS / LAUNCH_CONFIGS[kind]), "--main_process_port", str(port),
            *launch_args, *program]  # fmt: skip


def _launch(kind: str, argv: list[str]) -> str:
    """``accelerate launch --config_file <kind's config> -m modeling_deepln.cli ARGV``; returns stdout."""
    cmd = _launch_command(kind, _free_port(), ["-m", "modeling_deepln.cli", *argv])
    result = subprocess.run(cmd, env=offline_env(), capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    assert "over 2 process(es)" in result.stdout or "fine-tuning" in result.stdout, result.stdout[-2000:]
    return result.stdout


def _losses(folder: Path) -> dict[int, float]:
    history = json.loads((folder / "trainer_state.json").read_text())["log_history"]
    return {entry["step"]: entry["loss"] for entry in history if "loss" in entry}


def _eval_results(folder: Path) -> dict:
    return json.loads((folder / "eval_results.json").read_text())


def _assert_same_losses(got: Path, want: Path, steps: int) -> None:
    got_losses, want_losses = _losses(got), _losses(want)
    assert sorted(got_losses) == sorted(want_losses) == list(range(1, steps + 1))
    for step, loss in want_losses.items():
        assert got_losses[step] == pytest.approx(loss, rel=REL), step


@pytest.fixture(scope="module")
def text_file(tmp_path_factory) -> Path:
    from modeling_deepln.training.corpus import wiki_articles

    lines = [line for text in wiki_articles()[:2] for line in text.split("\n") if line.strip()]
    path = tmp_path_factory.mktemp("text") / "wiki.txt"
    path.write_text("\n".join(lines), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def one_process(tmp_path_factory, text_file) -> Path:
    """The reference: the same pretraining command in one process."""
    out = tmp_path_factory.mktemp("one") / "run"
    main([*PRETRAIN, "--data", str(text_file), "--output-dir", str(out)])
    return out


@pytest.fixture(scope="module")
def launched(tmp_path_factory, text_file) -> dict[str, Path]:
    """The pretraining command under ``accelerate launch`` with DDP and with FSDP2 (2 blocks per unit)."""
    runs = {}
    for kind in LAUNCH_CONFIGS:
        out = tmp_path_factory.mktemp(kind) / "run"
        extra = ["--fsdp-blocks-per-unit", "2"] if kind == "fsdp2" else []
        printed = _launch(kind, [*PRETRAIN, "--data", str(text_file), "--output-dir", str(out), *extra])
        if kind == "fsdp2":  # Accelerate alone would have fallen back to DDP on the CPU
            assert "FSDP2: 4 blocks in 2 units of 2 block(s)" in printed, printed[-2000:]
        runs[kind] = out
    return runs


@pytest.mark.parametrize("kind", list(LAUNCH_CONFIGS))
def test_two_processes_match_one_process(kind, launched, one_process):
    _assert_same_losses(launched[kind], one_process, STEPS)
    got, want = _eval_results(launched[kind]), _eval_results(one_process)
    assert got["eval_loss"] == pytest.approx(want["eval_loss"], rel=REL)
    assert got["eval_loss_before"] == pytest.approx(want["eval_loss_before"], rel=REL)


def test_fsdp2_checkpoints_are_sharded(launched):
    """A checkpoint holds one shard per process (torch.distributed.checkpoint), not a gathered copy."""
    checkpoint = Path(last_complete_checkpoint(launched["fsdp2"]))
    shards = sorted(p.name for p in (checkpoint / "pytorch_model_fsdp_0").glob("*.distcp"))
    assert shards == ["__0_0.distcp", "__1_0.distcp"], shards
    assert (checkpoint / "optimizer_0").is_dir() and not (checkpoint / "model.safetensors").exists()


_REMOTE_CODE_CHILD = textwrap.dedent(
    r"""
    import importlib.abc, json, sys

    class _BlockDeepLN(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name == "modeling_deepln" or name.startswith("modeling_deepln."):
                raise ImportError(f"{name} is blocked: this process must use the saved remote code")

    sys.meta_path.insert(0, _BlockDeepLN())
    import torch
    from transformers import AutoModelForCausalLM

    ids = torch.arange(3, 35).reshape(2, 16)
    logits, classes = {}, {}
    for name, folder in json.loads(sys.argv[1]).items():
        model = AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True).eval()
        classes[name] = type(model).__module__ + "." + type(model).__name__
        with torch.no_grad():
            logits[name] = model(ids).logits
    reference = logits.pop("one")
    print(json.dumps({
        "classes": classes,
        "max_diff": {k: float((v - reference).abs().max()) for k, v in logits.items()},
        "scale": float(reference.abs().max()),
    }))
    """
)


def test_saved_folders_load_as_remote_code(launched, one_process, tmp_path):
    """DDP and FSDP2 folders are standard safetensors folders that a fresh interpreter without deepln loads
    (trust_remote_code) and that hold the weights the one-process run trained."""
    folders = {"one": str(one_process), **{k: str(v) for k, v in launched.items()}}
    for folder in folders.values():
        names = {p.name for p in Path(folder).iterdir()}
        assert {"model.safetensors", "config.json", "modeling_deepln_gpt.py", "tokenizer.json"} <= names, names
        assert not any(n.startswith("_fsdp") for n in names), names
        auto_map = json.loads((Path(folder) / "config.json").read_text())["auto_map"]
        assert auto_map["AutoModelForCausalLM"] == "modeling_deepln_gpt.DeepLNGPTForCausalLM"
    env = {k: v for k, v in offline_env().items() if k != "PYTHONPATH"}
    result = subprocess.run([sys.executable, "-c", _REMOTE_CODE_CHILD, json.dumps(folders)], env=env, cwd=tmp_path,
                            capture_output=True, text=True, timeout=180)  # fmt: skip
    assert result.returncode == 0, result.stderr[-4000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert all(name.endswith("modeling_deepln_gpt.DeepLNGPTForCausalLM") for name in report["classes"].values())
    assert all(not name.startswith("modeling_deepln.") for name in report["classes"].values()), report
    for kind, diff in report["max_diff"].items():  # same training within float32 (see the module docstring)
        assert diff <= REL * report["scale"], (kind, report)


_SLOW_CHILD = """
import sys, time
import modeling_deepln.model.layers_deepln as L
_forward = L.DeepLNBlock.forward
def forward(self, *args, **kwargs):
    time.sleep(0.05)  # slows training only (no numerical effect), so the kill lands mid-run
    return _forward(self, *args, **kwargs)
L.DeepLNBlock.forward = forward
from modeling_deepln.cli import main
main(sys.argv[1:])
"""


def _kill_tree(pid: int) -> None:
    """SIGKILL the launcher and every process under it (torchrun starts its workers in their own sessions)."""
    import psutil

    parent = psutil.Process(pid)
    processes = [*parent.children(recursive=True), parent]
    for process in processes:
        process.send_signal(signal.SIGKILL)
    psutil.wait_procs(processes, timeout=60)


@pytest.mark.slow
def test_fsdp2_resume_after_sigkill(tmp_path, text_file, one_process):
    """kill -9 of the launcher and both processes mid-run; ``--resume`` continues from the last complete (sharded)
    checkpoint and reproduces the uninterrupted losses and held-out loss."""
    script = tmp_path / "slow_deepln.py"
    script.write_text(_SLOW_CHILD)
    out = tmp_path / "killed"
    argv = [*PRETRAIN, "--data", str(text_file), "--output-dir", str(out)]
    proc = subprocess.Popen(_launch_command("fsdp2", _free_port(), [str(script), *argv]), env=offline_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        deadline = time.monotonic() + 600
        while last_complete_checkpoint(out) is None:
            assert proc.poll() is None, "the run ended before writing a checkpoint"
            assert time.monotonic() < deadline, "no checkpoint within 600 s"
            time.sleep(0.05)
        _kill_tree(proc.pid)
    finally:
        proc.wait(timeout=60)
    assert not (out / "eval_results.json").exists(), "the run finished before it was killed"
    resumed_from = int(Path(last_complete_checkpoint(out)).name.split("-")[1])
    assert resumed_from < STEPS

    printed = _launch("fsdp2", [*argv, "--resume"])
    assert f"(step {resumed_from})" in printed, printed[-2000:]
    _assert_same_losses(out, one_process, STEPS)
    assert _eval_results(out)["eval_loss"] == pytest.approx(_eval_results(one_process)["eval_loss"], rel=REL)


@pytest.mark.slow
def test_two_nodes_on_one_machine(tmp_path, text_file, one_process):
    """Two launcher invocations, ``--num_machines 2 --machine_rank 0/1``, one process each, meeting at a loopback
    rendezvous: the same losses as one process (FSDP2, so the shards live on different "nodes")."""
    out = tmp_path / "two-nodes"
    port = _free_port()
    program = ["-m", "modeling_deepln.cli", *PRETRAIN, "--data", str(text_file), "--output-dir", str(out)]
    nodes = [
        subprocess.Popen(
            _launch_command("fsdp2", port, program, "--num_machines", "2", "--machine_rank", str(rank),
                            "--num_processes", "2", "--main_process_ip", "127.0.0.1"),
            env=offline_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        for rank in (0, 1)
    ]
    outputs = [node.communicate(timeout=900) for node in nodes]
    for node, (stdout, stderr) in zip(nodes, outputs):
        assert node.returncode == 0, stdout[-2000:] + stderr[-4000:]
    assert "over 2 process(es)" in outputs[0][0]
    _assert_same_losses(out, one_process, STEPS)


def _write_sst(folder: Path) -> Path:
    rows = [(f"this film is {'great' if i % 2 else 'awful'} number {i}", i % 2) for i in range(64)]
    folder.mkdir()
    (folder / "train.csv").write_text("sentence,y\n" + "\n".join(f"{s},{y}" for s, y in rows[:48]))
    (folder / "dev.csv").write_text("sentence,y\n" + "\n".join(f"{s},{y}" for s, y in rows[48:]))
    return folder


@pytest.mark.slow
def test_finetune_under_ddp_and_fsdp2_matches_one_process(tmp_path):
    """Sequence classification (GPT preset with its own tokenizer): DDP and FSDP2 give the one-process losses."""
    data = _write_sst(tmp_path / "sst")
    argv = ["finetune", "--preset", "gpt-deep-small", "--num-layers", "4", "--hidden-size", "32", "--vocab-size",
            "400", "--data", str(data), "--text-columns", "sentence", "--label-column", "y", "--max-seq-len", "16",
            "--batch-size", "8", "--max-steps", "6", "--logging-steps", "1", "--save-steps", "3", "--lr", "1e-3",
            "--seed", "7", "--report-to", "none", "--no-progress"]  # fmt: skip
    main([*argv, "--output-dir", str(tmp_path / "one")])
    for kind in LAUNCH_CONFIGS:
        _launch(kind, [*argv, "--output-dir", str(tmp_path / kind)])
        _assert_same_losses(tmp_path / kind, tmp_path / "one", 6)
        got, want = _eval_results(tmp_path / kind), _eval_results(tmp_path / "one")
        assert got["eval_loss"] == pytest.approx(want["eval_loss"], rel=REL)
        assert (tmp_path / kind / "model.safetensors").is_file()


def test_launcher_configs():
    """Every config parses; the FSDP ones ask for FSDP2 with sharded checkpoints; the CPU ones stay on loopback."""
    from accelerate.commands.config.config_args import load_config_from_file

    configs = {path.name: load_config_from_file(str(path)) for path in CONFIGS.glob("*.yaml")}
    assert {"cpu-2proc.yaml", "cpu-2proc-fsdp2.yaml", "fsdp.yaml", "multi-node-ddp.yaml"} <= set(configs)
    for name in ("cpu-2proc-fsdp2.yaml", "fsdp.yaml"):
        fsdp = configs[name].fsdp_config
        assert fsdp["fsdp_version"] == 2 and fsdp["fsdp_state_dict_type"] == "SHARDED_STATE_DICT", name
    assert configs["multi-node-ddp.yaml"].num_machines == 2
    assert all(c.main_process_ip in (None, "127.0.0.1") for c in configs.values())


def test_blocks_per_unit_plan():
    """Automatic: about UNIT_PARAMETERS per unit (gpt-1k's 0.8M-parameter blocks: 5; bert-1k's 0.05M: 80)."""
    from modeling_deepln.training.args import DeepLNInputError
    from modeling_deepln.training.sharding import UNIT_PARAMETERS, plan_blocks_per_unit

    assert UNIT_PARAMETERS == 4_000_000
    assert plan_blocks_per_unit(800_000, None) == 5
    assert plan_blocks_per_unit(50_000, 0) == 80
    assert plan_blocks_per_unit(10_000_000, None) == 1
    assert plan_blocks_per_unit(800_000, 3) == 3
    with pytest.raises(DeepLNInputError, match="--fsdp-blocks-per-unit"):
        plan_blocks_per_unit(800_000, -1)
