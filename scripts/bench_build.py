"""Build (construct + init) and train-step time of the seed presets, against transformers' own GPT-2 / BERT
of the same shapes, measured in the same run.

    python scripts/bench_build.py [--presets bert-1k gpt-1k] [--steps 2] [--seq-len 128] [--batch-size 2]

Prints a table: preset, parameters, deepln build seconds, peer build seconds, ratio, and the time of one
forward+backward training step (batch x seq tokens) for both. CPU or GPU (whatever torch picks).
"""

from __future__ import annotations

import argparse
import gc
import time

import torch
from transformers import BertConfig, BertForMaskedLM, GPT2Config, GPT2LMHeadModel

import modeling_deepln
from modeling_deepln import DeepLNBertForMaskedLM, DeepLNGPTForCausalLM, load_preset


def peer_for(config):
    """transformers' own model with the same shapes (the scheme aside): GPT2LMHeadModel / BertForMaskedLM."""
    if config.model_type == "deepln_gpt":
        return GPT2LMHeadModel, GPT2Config(
            vocab_size=config.vocab_size, n_embd=config.hidden_size, n_layer=config.num_hidden_layers,
            n_head=config.num_attention_heads, n_inner=config.intermediate_size,
            n_positions=config.max_position_embeddings, tie_word_embeddings=config.tie_word_embeddings,
        )
    return BertForMaskedLM, BertConfig(
        vocab_size=config.vocab_size, hidden_size=config.hidden_size, num_hidden_layers=config.num_hidden_layers,
        num_attention_heads=config.num_attention_heads, intermediate_size=config.intermediate_size,
        max_position_embeddings=config.max_position_embeddings,
    )


def timed_build(cls, config, device):
    gc.collect()
    start = time.perf_counter()
    model = cls(config).to(device)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return model, time.perf_counter() - start


def timed_step(model, config, batch_size, seq_len, steps, device):
    ids = torch.randint(0, config.vocab_size, (batch_size, seq_len), device=device)
    model.train()
    times = []
    for _ in range(steps + 1):  # the first step warms up
        start = time.perf_counter()
        model(input_ids=ids, labels=ids).loss.backward()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
        model.zero_grad(set_to_none=True)
    return min(times[1:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--presets", nargs="+", default=["bert-1k", "gpt-1k"])
    parser.add_argument("--steps", type=int, default=2, help="timed training steps (after one warm-up); 0 skips")
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=2)
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    print(f"deepln {modeling_deepln.__version__}, torch {torch.__version__}, device {device}, "
          f"{torch.get_num_threads()} threads")
    header = f"{'preset':<16}{'params':>14}{'build s':>10}{'peer':>18}{'peer s':>9}{'ratio':>7}"
    if args.steps:
        header += f"{'step s':>9}{'peer step s':>13}{'ratio':>7}"
    print(header)
    for name in args.presets:
        config = load_preset(name)
        cls = DeepLNGPTForCausalLM if config.model_type == "deepln_gpt" else DeepLNBertForMaskedLM
        model, build = timed_build(cls, config, device)
        params = sum(p.numel() for p in model.parameters())
        step = timed_step(model, config, args.batch_size, args.seq_len, args.steps, device) if args.steps else 0.0
        del model
        peer_cls, peer_config = peer_for(config)
        peer, peer_build = timed_build(peer_cls, peer_config, device)
        peer_step = timed_step(peer, peer_config, args.batch_size, args.seq_len, args.steps, device) if args.steps else 0.0
        del peer
        line = f"{name:<16}{params:>14,}{build:>10.2f}{peer_cls.__name__:>18}{peer_build:>9.2f}{build / peer_build:>7.2f}"
        if args.steps:
            line += f"{step:>9.2f}{peer_step:>13.2f}{step / peer_step:>7.2f}"
        print(line, flush=True)


if __name__ == "__main__":
    main()
