"""The same training step in several fresh processes: how much one process's draw moves a CPU measurement.

Each process builds the same model (fixed seeds), runs a bert-1k-shaped training step (forward, backward, fused
AdamW; 8 x 128 tokens by default) three times to warm up, then prints the median of five and the page faults per
step. On the 2-core AMD EPYC development machine the medians split into two groups ~20 % apart (README, "Where the
targets stand"); ``--no-aslr`` runs the processes under ``setarch -R`` (address-space randomisation off).

    python scripts/step_variance.py [--processes 8] [--layers 100] [--no-aslr]
"""

from __future__ import annotations

import argparse
import platform
import subprocess
import sys

CHILD = r"""
import resource, statistics, sys, time
from modeling_deepln.cli import flush_denormals, keep_freed_memory
flush_denormals(); keep_freed_memory()
import torch
from modeling_deepln import DeepLNBertForMaskedLM, load_preset
layers, batch, seq = (int(a) for a in sys.argv[1:4])
torch.manual_seed(0)
model = DeepLNBertForMaskedLM(load_preset("bert-1k", num_hidden_layers=layers, residual_norm="post_ln")).train()
ids = torch.randint(5, model.config.vocab_size, (batch, seq))
optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5, fused=True)
def step():
    model(input_ids=ids, labels=ids).loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
for _ in range(3):
    step()
faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
times = []
for _ in range(5):
    start = time.perf_counter(); step(); times.append(time.perf_counter() - start)
faults = (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults) // 5
print(f"{statistics.median(times) * 1e3:.0f} {faults}")
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--processes", type=int, default=8)
    parser.add_argument("--layers", type=int, default=100)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--no-aslr", action="store_true", help="run each process under setarch -R")
    args = parser.parse_args()
    prefix = ["setarch", platform.machine(), "-R"] if args.no_aslr else []
    medians = []
    for index in range(args.processes):
        command = [*prefix, sys.executable, "-c", CHILD, str(args.layers), str(args.batch_size), str(args.seq_len)]
        result = subprocess.run(command, capture_output=True, text=True, check=True)
        median_ms, faults = result.stdout.split()[-2:]
        medians.append(float(median_ms))
        print(f"process {index + 1}: median step {median_ms} ms, {faults} page faults a step", flush=True)
    print(f"{args.layers} layers, {args.batch_size}x{args.seq_len}: fastest {min(medians):.0f} ms, "
          f"slowest {max(medians):.0f} ms ({max(medians) / min(medians):.2f}x)")  # fmt: skip


if __name__ == "__main__":
    main()
