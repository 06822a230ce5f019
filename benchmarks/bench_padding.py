"""Length-grouped dynamic padding vs pad-to-128 and vs per-batch padding of random batches.

Training samples/s of the real `FineTuneLoop` on MRPC pairs and SST-2 sentences (batch 32,
packaged MiniLM, one thread like a 1-CPU trial), for three batchings of the same stream:

  grouped   raytune_ft.training.batching: shuffle, sort by length inside windows of 50
            batches, pad each batch to its longest example (train.length_group_window = 1600);
  random    per-batch padding of randomly ordered batches (window 1 = no sorting), which is what
            transformers' DataCollatorWithPadding gives behind a shuffling sampler;
  pad128    random order, every batch padded to 128 tokens (padding="max_length").

Each variant trains the same number of optimizer steps, interleaved in rounds so load drift
falls on all three. Padding fraction = token slots / real tokens over one full epoch.

    python benchmarks/bench_padding.py [--steps 20] [--rounds 4] [--threads 1]
"""

from __future__ import annotations

import argparse
import time

import _common
import numpy as np

BATCH, WINDOW_BATCHES, PAD_TO = 32, 50, 128
TARGETS = {"mrpc": (2.0, 1.3), "sst2": (4.0, 2.0)}  # speed-up over (pad128, random)
EXPECTED = {"mrpc": (2.40, 1.51, 1.02), "sst2": (9.56, 3.01, 1.05)}  # pad128, random, grouped
VARIANTS = ("grouped", "random", "pad128")


def slots_per_token(lengths: np.ndarray, window: int, pad_to: int | None, seed: int = 0) -> float:
    """Token slots per real token over epoch 0's batches of this batching."""
    from raytune_ft.training.batching import epoch_order

    order = epoch_order(lengths, 0, seed, window)
    batches = [order[i:i + BATCH] for i in range(0, len(order), BATCH)]
    slots = sum(len(b) * (pad_to or int(lengths[b].max())) for b in batches)
    return slots / float(lengths.sum())


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


def build_loops(bundle, path: str, steps_per_round: int):
    from raytune_ft.config import TrainConfig
    from raytune_ft.tasks.sequence_classification import load_model
    from raytune_ft.training.loop import FineTuneLoop

    n = len(bundle.train)
    loops = {}
    for variant in VARIANTS:
        window = WINDOW_BATCHES * BATCH if variant == "grouped" else 1
        # One interval = steps_per_round optimizer steps; the eval split is tiny on purpose.
        hp = TrainConfig(batch_size=BATCH, max_micro_batch=BATCH, max_epochs=1.0,
                         eval_every_epochs=steps_per_round * BATCH / n,
                         length_group_window=window, seed=0)
        loops[variant] = FineTuneLoop(load_model(path, bundle.label_names, 0), bundle, hp)
        # Build epoch 0's order now: with window 1 that is a Python loop over every sample,
        # which would otherwise land in the first timed interval.
        loops[variant].stream.take(0, 1)
    return loops


def run_task(task: str, steps: int, rounds: int) -> dict:
    import raytune_ft.tasks.sequence_classification as task_module

    bundle = _common.bundle(task, max_eval=8)
    lengths = bundle.train.lengths
    fractions = {"grouped": slots_per_token(lengths, WINDOW_BATCHES * BATCH, None),
                 "random": slots_per_token(lengths, 1, None),
                 "pad128": slots_per_token(lengths, 1, PAD_TO)}
    loops = build_loops(bundle, _common.model_path(), steps // rounds)
    plain = task_module.collate
    samples = dict.fromkeys(VARIANTS, 0)
    seconds = dict.fromkeys(VARIANTS, 0.0)
    for round_index in range(rounds):
        order = VARIANTS if round_index % 2 == 0 else VARIANTS[::-1]
        for variant in order:
            task_module.collate = pad_to_max_length(plain, PAD_TO) if variant == "pad128" \
                else plain
            try:
                before = loops[variant].state.samples_seen
                metrics = loops[variant].run_interval()
            finally:
                task_module.collate = plain
            trained = metrics["samples_seen"] - before
            samples[variant] += trained
            seconds[variant] += trained / metrics["samples_per_s"]
        print(f"{task} round {round_index + 1}/{rounds}: " + ", ".join(
            f"{v} {samples[v] / seconds[v]:.1f}" for v in VARIANTS)
            + f" samples/s (load {_common.load_average()})", flush=True)
    rates = {v: samples[v] / seconds[v] for v in VARIANTS}
    return {"fractions": fractions, "rates": rates, "steps": samples["grouped"] // BATCH,
            "mean_tokens": float(lengths.mean()), "n_train": len(lengths)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20, help="optimizer steps per variant")
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
    print(f"\n{'task':6} {'variant':8} {'slots/token':>11} {'expected':>8} {'samples/s':>10} "
          f"{'grouped speed-up':>16}")
    for task, result in results.items():
        expected = dict(zip(("pad128", "random", "grouped"), EXPECTED[task]))
        for variant in VARIANTS:
            speedup = result["rates"]["grouped"] / result["rates"][variant]
            print(f"{task:6} {variant:8} {result['fractions'][variant]:11.2f} "
                  f"{expected[variant]:8.2f} {result['rates'][variant]:10.1f} {speedup:15.2f}x")
        over_pad = result["rates"]["grouped"] / result["rates"]["pad128"]
        over_random = result["rates"]["grouped"] / result["rates"]["random"]
        need_pad, need_random = TARGETS[task]
        met = met and over_pad >= need_pad and over_random >= need_random
        figures.append(f"{task} {over_pad:.2f}x vs pad128, {over_random:.2f}x vs random")
    targets = "; ".join(f"{t} >= {a}x / >= {b}x" for t, (a, b) in TARGETS.items() if t in results)
    _common.final("padding", "; ".join(figures), f"target {targets}", met)


if __name__ == "__main__":
    main()
