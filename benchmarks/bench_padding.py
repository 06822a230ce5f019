"""Length-grouped dynamic padding vs pad-to-128 and vs per-batch padding of random batches.

Training samples/s of the real `FineTuneLoop`'s optimizer step on MRPC pairs and SST-2
sentences (batch 32, packaged MiniLM, one thread like a 1-CPU trial), for three batchings of
the same data:

  grouped   raytune_ft.training.batching as shipped (train.length_group_window default,
            2,048): sorted windows cut into blocks of 64 similar lengths, the blocks in a
            balanced random order, each batch padded to its longest example;
  random    per-batch padding of randomly ordered batches (window 1 = no sorting), which is what
            transformers' DataCollatorWithPadding gives behind a shuffling sampler;
  pad128    random order, every batch padded to 128 tokens (padding="max_length").

Every variant trains the batches of 32 at the same `--steps` stream positions, evenly spaced
through epoch 0 (multiples of 32, as a run from position 0 takes them), so each is measured on
inputs representative of a whole epoch. (Until 2026-11-29 each variant trained its first 20
batches from position 0: for the grouped variant, whose windows were then consumed shortest
first, that was the shortest 40 % of its first window.) The positions are dealt to `--rounds`
interleaved rounds, the variants alternating order each round, so load drift falls on all
three. Only `FineTuneLoop._step` is timed. Padding = token slots / real tokens, over all of
epoch 0's batches, over epoch 1's (the same grid of 32, offset by len(train) mod 32 from the
epoch start) and over the measured batches; tokens/sample is the mean over the measured batches.

    python benchmarks/bench_padding.py [--steps 24] [--rounds 4] [--threads 1]
"""

from __future__ import annotations

import argparse
import time

import _common
import numpy as np

from raytune_ft.tasks import get_task

BATCH, PAD_TO = 32, 128
TARGETS = {"mrpc": (2.0, 1.3), "sst2": (4.0, 2.0)}  # speed-up over (pad128, random)
EXPECTED = {"mrpc": (2.40, 1.51, 1.02), "sst2": (9.56, 3.01, 1.05)}  # pad128, random, grouped
VARIANTS = ("grouped", "random", "pad128")


def measured_positions(n_train: int, steps: int) -> np.ndarray:
    """`steps` batch starts evenly spaced through epoch 0, on the grid of a run from 0."""
    last = (n_train - BATCH) // BATCH  # index of the last full batch of the epoch
    return BATCH * np.round(np.linspace(0, last, steps)).astype(np.int64)


def slots_per_token(lengths: np.ndarray, batches: list[np.ndarray], pad_to: int | None) -> float:
    """Token slots per real token over `batches`."""
    slots = sum(len(b) * (pad_to or int(lengths[b].max())) for b in batches)
    tokens = sum(int(lengths[b].sum()) for b in batches)
    return slots / float(tokens)


def pad_to_max_length(collate, width: int):
    """Wrap the task's `collate` so every training batch is padded to `width` tokens."""
    import torch

    def padded(split, indices, pad_token_id):
        batch = collate(split, indices, pad_token_id)
        extra = width - batch["input_ids"].shape[1]
        if extra > 0:
            for key in ("input_ids", "attention_mask", "token_type_ids"):
                if key in batch:
                    fill = pad_token_id if key == "input_ids" else 0
                    batch[key] = torch.nn.functional.pad(batch[key], (0, extra), value=fill)
        return batch

    return padded


def build_loops(bundle, path: str) -> dict:
    from raytune_ft.config import TrainConfig
    from raytune_ft.tasks.sequence_classification import load_model
    from raytune_ft.training.loop import FineTuneLoop

    loops = {}
    for variant in VARIANTS:
        window = TrainConfig().length_group_window if variant == "grouped" else 1
        hp = TrainConfig(batch_size=BATCH, max_micro_batch=BATCH, max_epochs=1.0,
                         length_group_window=window, seed=0)
        loops[variant] = FineTuneLoop(load_model(path, bundle.label_names, 0), bundle, hp,
                                      task=get_task(bundle.kind))
    return loops


def padding_figures(loops: dict, lengths: np.ndarray, positions: np.ndarray) -> dict:
    """Slots per token of each variant: the measured batches, all of epoch 0's batches, and
    epoch 1's batches on the same grid of 32 (offset from the epoch start by n mod 32, so a
    batch can straddle two blocks of the grouped order)."""
    n = len(lengths)
    figures = {}
    for variant, loop in loops.items():
        pad_to = PAD_TO if variant == "pad128" else None
        epoch = [loop.stream.take(p, min(BATCH, n - p)) for p in range(0, n, BATCH)]
        second = [loop.stream.take(p, BATCH) for p in range(-(-n // BATCH) * BATCH,
                                                            2 * n - BATCH, BATCH)]
        measured = [loop.stream.take(int(p), BATCH) for p in positions]
        figures[variant] = {"epoch": slots_per_token(lengths, epoch, pad_to),
                            "epoch1": slots_per_token(lengths, second, pad_to),
                            "measured": slots_per_token(lengths, measured, pad_to),
                            "mean_tokens": float(np.mean([lengths[b].mean() for b in measured]))}
    return figures


def timed_steps(loop, positions, pad128: bool) -> float:
    """Seconds of `loop._step` over the batches at `positions` (the collate swap untimed)."""
    import raytune_ft.tasks.sequence_classification as task_module

    plain = task_module.collate
    task_module.collate = pad_to_max_length(plain, PAD_TO) if pad128 else plain
    seconds = 0.0
    try:
        for position in positions:
            indices = loop.stream.take(int(position), BATCH)
            loop._set_group_hyperparameters()
            started = time.perf_counter()
            loop._step(indices)
            seconds += time.perf_counter() - started
    finally:
        task_module.collate = plain
    return seconds


def run_task(task: str, steps: int, rounds: int) -> dict:
    bundle = _common.bundle(task, max_eval=8)
    lengths = bundle.train.lengths
    positions = measured_positions(len(lengths), steps)
    loops = build_loops(bundle, _common.model_path())
    fractions = padding_figures(loops, lengths, positions)
    for variant, loop in loops.items():  # one untimed step each: first-call allocations
        timed_steps(loop, positions[:1], variant == "pad128")
    samples = dict.fromkeys(VARIANTS, 0)
    seconds = dict.fromkeys(VARIANTS, 0.0)
    for round_index in range(rounds):
        share = positions[round_index::rounds]
        order = VARIANTS if round_index % 2 == 0 else VARIANTS[::-1]
        for variant in order:
            seconds[variant] += timed_steps(loops[variant], share, variant == "pad128")
            samples[variant] += BATCH * len(share)
        print(f"{task} round {round_index + 1}/{rounds}: " + ", ".join(
            f"{v} {samples[v] / seconds[v]:.1f}" for v in VARIANTS)
            + f" samples/s (load {_common.load_average()})", flush=True)
    rates = {v: samples[v] / seconds[v] for v in VARIANTS}
    return {"fractions": fractions, "rates": rates, "steps": len(positions),
            "mean_tokens": float(lengths.mean()), "n_train": len(lengths)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=24,
                        help="optimizer steps per variant, at evenly spaced epoch-0 positions")
    parser.add_argument("--rounds", type=int, default=4, help="interleaved rounds")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (a 1-CPU trial)")
    parser.add_argument("--tasks", default="mrpc,sst2")
    args = parser.parse_args()
    _common.header("bench_padding")
    import torch

    torch.set_num_threads(args.threads)
    results, met, figures = {}, True, []
    for task in args.tasks.split(","):
        started = time.perf_counter()
        results[task] = run_task(task, args.steps, args.rounds)
        print(f"{task}: {time.perf_counter() - started:.0f} s", flush=True)
    print(f"\n{'task':6} {'variant':8} {'slots/token':>11} {'(epoch 1)':>9} {'(measured)':>10} "
          f"{'expected':>8} {'tokens/sample':>13} {'samples/s':>10} {'grouped speed-up':>16}")
    for task, result in results.items():
        expected = dict(zip(("pad128", "random", "grouped"), EXPECTED[task]))
        for variant in VARIANTS:
            fraction = result["fractions"][variant]
            speedup = result["rates"]["grouped"] / result["rates"][variant]
            print(f"{task:6} {variant:8} {fraction['epoch']:11.2f} {fraction['epoch1']:9.2f} "
                  f"{fraction['measured']:10.2f} "
                  f"{expected[variant]:8.2f} {fraction['mean_tokens']:13.1f} "
                  f"{result['rates'][variant]:10.1f} {speedup:15.2f}x")
        print(f"{task:6} epoch 0: {result['n_train']} samples, {result['mean_tokens']:.1f} "
              f"tokens/sample; measured: {result['steps']} batches of {BATCH} per variant")
        over_pad = result["rates"]["grouped"] / result["rates"]["pad128"]
        over_random = result["rates"]["grouped"] / result["rates"]["random"]
        need_pad, need_random = TARGETS[task]
        met = met and over_pad >= need_pad and over_random >= need_random
        figures.append(f"{task} {over_pad:.2f}x vs pad128, {over_random:.2f}x vs random")
    targets = "; ".join(f"{t} >= {a}x / >= {b}x" for t, (a, b) in TARGETS.items() if t in results)
    _common.final("padding", "; ".join(figures), f"target {targets}", met)


if __name__ == "__main__":
    main()
