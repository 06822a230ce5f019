"""Samples/s of one trial inside Ray Tune vs the same FineTuneLoop run bare in this process.

The Ray side is raytune_ft's own trainable (`train_trial` under `tune.with_parameters`, built by
`runner.build_tuner`, one CPU per trial); the bare side builds the same model, data and
hyperparameters and calls `FineTuneLoop.run_interval` directly with `torch.set_num_threads(1)`,
in a fresh process at the niceness Ray gives its workers (RAY_worker_niceness, 15 by default:
on a shared machine a nice-0 bare run would otherwise out-compete the trial for CPU).
Runs alternate bare, Ray, bare, Ray ... so drift in machine load falls on both. The figure is the
loop's own `samples_per_s` (training time only), pooled over the intervals of each run.

    python benchmarks/bench_trainable_overhead.py [--pairs 3] [--train-samples 1024]
        [--bare-niceness 15]
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import statistics
import tempfile
import time

import _common

from raytune_ft.tasks import get_task

TARGET = 0.97


def experiment(storage: str, train_samples: int, task: str):
    from raytune_ft.schema import validate_config

    return validate_config({
        "name": "overhead", "model": {"name": _common.MODEL, "max_length": 128},
        "data": {"task": task, "path": str(_common.GLUE_DIR), "max_train_samples": train_samples,
                 "max_eval_samples": 64},
        "train": {"max_epochs": 1, "eval_every_epochs": 0.5, "batch_size": 32},
        "resources": {"cpus_per_trial": 1},
        "run": {"num_samples": 1, "storage_path": storage, "verbose": 0},
    })


def pooled_rate(rows: list[tuple[float, float]]) -> float:
    """Samples/s over several intervals: total samples / total training seconds."""
    samples = sum(n for n, _ in rows)
    return samples / sum(n / rate for n, rate in rows)


def bare_run(prepared, niceness: int) -> float:
    """`_bare_loop` in a fresh process (spawned, like a Ray worker) at `niceness`."""
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(1, mp_context=mp.get_context("spawn"),
                             initializer=os.nice, initargs=(niceness,)) as pool:
        return pool.submit(_bare_loop, prepared).result()


def _bare_loop(prepared) -> float:
    import torch

    from raytune_ft.schema import trial_hyperparameters
    from raytune_ft.tasks.sequence_classification import load_model
    from raytune_ft.training.loop import FineTuneLoop

    config = prepared.config
    torch.set_num_threads(1)  # what train_trial sets for cpus_per_trial = 1
    hp = trial_hyperparameters(config, {})
    loop = FineTuneLoop(load_model(prepared.model_path, prepared.bundle.label_names, hp.seed),
                        prepared.bundle, hp, config.metric, config.mode, "cpu",
                        task=get_task(prepared.bundle.kind))
    rows, seen = [], 0
    while not loop.finished:
        metrics = loop.run_interval()
        rows.append((metrics["samples_seen"] - seen, metrics["samples_per_s"]))
        seen = metrics["samples_seen"]
    return pooled_rate(rows)


def ray_run(prepared) -> float:
    from raytune_ft.tuning.runner import build_tuner

    results = build_tuner(prepared).fit()
    frame = results[0].metrics_dataframe
    if results[0].error is not None:
        raise RuntimeError(f"trial failed: {results[0].error}")
    seen = frame["samples_seen"].diff().fillna(frame["samples_seen"].iloc[0])
    return pooled_rate(list(zip(seen, frame["samples_per_s"])))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=3, help="bare/Ray pairs (A B A B ...)")
    parser.add_argument("--train-samples", type=int, default=1024,
                        help="SST-2 training subset; one epoch per run, two intervals")
    parser.add_argument("--task", default="sst2")
    parser.add_argument("--bare-niceness", type=int,
                        default=int(os.environ.get("RAY_worker_niceness", 15)),
                        help="nice value of the bare process (Ray's worker niceness by default)")
    args = parser.parse_args()
    _common.header("bench_trainable_overhead")

    import ray

    from raytune_ft.tuning.cluster import init_ray
    from raytune_ft.tuning.runner import prepare

    with tempfile.TemporaryDirectory() as storage:
        prepared = prepare(experiment(storage, args.train_samples, args.task), overwrite=True)
        init_ray(None, prepared.config)
        bare, inside = [], []
        try:
            for pair in range(args.pairs):
                started = time.perf_counter()
                bare.append(bare_run(prepared, args.bare_niceness))
                middle = time.perf_counter()
                inside.append(ray_run(prepared))
                print(f"pair {pair + 1}: bare {bare[-1]:.1f} samples/s, Ray {inside[-1]:.1f} "
                      f"samples/s, ratio {inside[-1] / bare[-1]:.3f}  (wall {middle - started:.0f}"
                      f" s + {time.perf_counter() - middle:.0f} s; load {_common.load_average()})",
                      flush=True)
        finally:
            ray.shutdown()
    ratios = [r / b for b, r in zip(bare, inside)]
    ratio = statistics.median(ratios)
    print(f"bare samples/s  median {statistics.median(bare):.1f}  runs {bare}")
    print(f"Ray  samples/s  median {statistics.median(inside):.1f}  runs {inside}")
    print(f"pairwise ratios {[round(r, 3) for r in ratios]}; "
          f"ratio of medians {statistics.median(inside) / statistics.median(bare):.3f}")
    _common.final("trainable_overhead", f"Ray/bare samples/s ratio {ratio:.3f} (median of "
                  f"{len(ratios)} pairs)", f"target >= {TARGET}", ratio >= TARGET)


if __name__ == "__main__":
    main()
