"""Tokens/s and model FLOPs utilisation of one trial's training step on a GPU, and aggregate
throughput of 1, 2 and 4 MiniLM-sized trials sharing that GPU (one process per trial).

The step is raytune_ft's own (`FineTuneLoop._step`: collate, bf16 autocast forward, fp32 loss,
backward, gradient clipping, AdamW) on synthetic sequences of exactly `--seq` tokens, with
random weights from a `BertConfig` (bert-base: hidden 768, 12 layers, 12 heads, 3072
intermediate, vocab 30522; MiniLM-L6: hidden 384, 6 layers, 12 heads, 1536 intermediate).

Model FLOPs per trained token (forward + backward = 3 x forward):
    6 * N  +  12 * L * s * d
N = parameters that take part in matrix multiplies (all but the word/position/type embedding
tables, which are lookups), L layers, s sequence length, d hidden size; the second term is the
attention score (Q K^T) and attention x V products, 2 * 2 * s * d forward per token per layer.
MFU = model FLOPs per second / peak (989 TFLOP/s: H100 SXM and H200 bf16 dense, no sparsity).

    python benchmarks/gpu_throughput.py            # on a GPU machine
    python benchmarks/gpu_throughput.py --smoke    # tiny sizes, a few steps, runs on CPU
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import time

import _common
import numpy as np

from raytune_ft.tasks import get_task

PEAK_TFLOPS = 989.0  # H100 SXM / H200, bf16 dense
TARGET_MFU = 0.40
SIZES = {  # hidden, layers, heads, intermediate
    "bert-base": (768, 12, 12, 3072),
    "minilm": (384, 6, 12, 1536),
    "tiny": (64, 2, 2, 128),
}


def build(size: str, vocab: int, seq: int, batch: int, device: str, seed: int = 0):
    """A random-weight BERT classifier and a FineTuneLoop over synthetic fixed-length data."""
    import torch
    from transformers import BertConfig, BertForSequenceClassification

    from raytune_ft.config import TrainConfig
    from raytune_ft.tasks import DataBundle
    from raytune_ft.tasks.sequence_classification import TokenizedSplit
    from raytune_ft.training.loop import FineTuneLoop

    hidden, layers, heads, intermediate = SIZES[size]
    torch.manual_seed(seed)
    config = BertConfig(vocab_size=vocab, hidden_size=hidden, num_hidden_layers=layers,
                        num_attention_heads=heads, intermediate_size=intermediate,
                        max_position_embeddings=max(512, seq), num_labels=2)
    model = BertForSequenceClassification(config)
    n = 4096
    rng = np.random.default_rng(seed)
    split = TokenizedSplit(ids=rng.integers(1000, vocab, n * seq).astype(np.int32),
                           type_ids=np.zeros(n * seq, dtype=np.int8),
                           offsets=np.arange(0, (n + 1) * seq, seq, dtype=np.int64),
                           labels=rng.integers(0, 2, n).astype(np.int64))
    bundle = DataBundle(split, split, ["0", "1"], 0, "synthetic", [], "sequence_classification")
    hp = TrainConfig(batch_size=batch, max_micro_batch=batch, max_epochs=100,
                     eval_every_epochs=100, precision="bf16")
    loop = FineTuneLoop(model, bundle, hp, device=device, task=get_task(bundle.kind))
    return loop, config


def flops_per_token(model, config, seq: int) -> tuple[float, int]:
    matmul_params = sum(p.numel() for name, p in model.named_parameters()
                        if "embeddings" not in name)
    attention = 12 * config.num_hidden_layers * seq * config.hidden_size
    return 6.0 * matmul_params + attention, matmul_params


def sync(device: str) -> None:
    import torch

    if device == "cuda":
        torch.cuda.synchronize()


def timed_steps(loop, steps: int, device: str) -> float:
    sync(device)
    started = time.perf_counter()
    for _ in range(steps):
        loop._step(loop.stream.take(loop.state.samples_seen, loop.batch_size))
    sync(device)
    return time.perf_counter() - started


def single_trial(size: str, vocab: int, seq: int, batch: int, warmup: int, steps: int,
                 device: str, peak: float) -> dict:
    loop, config = build(size, vocab, seq, batch, device)
    per_token, params = flops_per_token(loop.model, config, seq)
    timed_steps(loop, warmup, device)
    seconds = timed_steps(loop, steps, device)
    tokens = steps * batch * seq
    achieved = per_token * tokens / seconds
    return {"size": size, "batch": batch, "seq": seq, "params_matmul": params,
            "tokens_per_s": tokens / seconds, "tflops": achieved / 1e12,
            "mfu": achieved / (peak * 1e12), "step_ms": 1000 * seconds / steps}


def _worker(rank, size, vocab, seq, batch, warmup, seconds, device, threads, barrier, queue):
    import torch

    torch.set_num_threads(threads)
    loop, _ = build(size, vocab, seq, batch, device, seed=rank)
    timed_steps(loop, warmup, device)
    barrier.wait()
    sync(device)
    started, steps = time.perf_counter(), 0
    while time.perf_counter() - started < seconds:
        loop._step(loop.stream.take(loop.state.samples_seen, loop.batch_size))
        steps += 1
    sync(device)
    queue.put((steps * batch * seq, started, time.perf_counter()))


def shared(trials: int, size: str, vocab: int, seq: int, batch: int, warmup: int,
           seconds: float, device: str, threads: int) -> float:
    """Aggregate tokens/s of `trials` processes training at once on one device."""
    context = mp.get_context("spawn")
    barrier, queue = context.Barrier(trials), context.Queue()
    workers = [context.Process(target=_worker, args=(rank, size, vocab, seq, batch, warmup,
                                                     seconds, device, threads, barrier, queue))
               for rank in range(trials)]
    for worker in workers:
        worker.start()
    results = [queue.get() for _ in workers]
    for worker in workers:
        worker.join()
    tokens = sum(r[0] for r in results)
    return tokens / (max(r[2] for r in results) - min(r[1] for r in results))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, a few steps, any device")
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--batches", default="32,128", help="per-step batch sizes to measure")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--shared-seconds", type=float, default=20.0)
    parser.add_argument("--shared-batch", type=int, default=32)
    parser.add_argument("--peak-tflops", type=float, default=PEAK_TFLOPS)
    args = parser.parse_args()
    _common.header("gpu_throughput")
    import torch

    device = "cuda" if torch.cuda.is_available() else "cpu"
    size, small, vocab, seq, batches = "bert-base", "minilm", 30522, args.seq, args.batches
    steps, warmup, seconds, shared_batch = args.steps, args.warmup, args.shared_seconds, \
        args.shared_batch
    if args.smoke:
        size, small, vocab, seq, batches = "tiny", "tiny", 1024, 32, "4"
        steps, warmup, seconds, shared_batch = 3, 1, 1.0, 4
    if device == "cpu":
        print("no GPU: fp32 on CPU (the loop autocasts to bf16 on CUDA only); MFU below is "
              f"against the {args.peak_tflops:g} TFLOP/s GPU peak and means nothing here")
    rows = [single_trial(size, vocab, seq, int(b), warmup, steps, device, args.peak_tflops)
            for b in batches.split(",")]
    for row in rows:
        print(f"{row['size']} batch {row['batch']} x seq {row['seq']}: {row['step_ms']:.1f} "
              f"ms/step, {row['tokens_per_s']:,.0f} tokens/s, {row['tflops']:.2f} TFLOP/s, "
              f"MFU {100 * row['mfu']:.1f}% ({row['params_matmul'] / 1e6:.1f}M matmul params)",
              flush=True)
    threads = 1 if device == "cpu" else 2
    aggregate = {}
    for trials in (1, 2, 4):
        aggregate[trials] = shared(trials, small, vocab, seq, shared_batch, warmup, seconds,
                                   device, threads)
        print(f"{trials} {small} trial(s) sharing the {device}: {aggregate[trials]:,.0f} "
              f"tokens/s aggregate ({aggregate[trials] / aggregate[1]:.2f}x one trial)",
              flush=True)
    best = max(rows, key=lambda r: r["mfu"])
    scaling = ", ".join(f"{t}: {aggregate[t] / aggregate[1]:.2f}x" for t in (2, 4))
    _common.final("gpu_throughput", f"{best['size']} MFU {100 * best['mfu']:.1f}% at batch "
                  f"{best['batch']} ({best['tokens_per_s']:,.0f} tokens/s on {device}); "
                  f"shared {small} trials aggregate {scaling}",
                  f"target >= {100 * TARGET_MFU:.0f}% MFU on H100/H200",
                  best["mfu"] >= TARGET_MFU if device == "cuda" else None)


if __name__ == "__main__":
    main()
