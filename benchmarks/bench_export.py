"""Benchmark export_experiment on a synthetic 10,000-trial x 50-iteration experiment.

The directory is written in Ray Tune 2.60's layout (trial folders with params.json and
result.json lines as Ray writes them, plus raytune_ft.json) in a temporary folder by a child
process, so the parent's peak RSS measures the export alone (ru_maxrss; it includes the
interpreter and the pandas/pyarrow imports, and Arrow's own allocations, which tracemalloc
would miss).

    python benchmarks/bench_export.py [--trials 10000] [--iterations 50] [--keep DIR]
"""

from __future__ import annotations

import argparse
import json
import logging
import multiprocessing as mp
import os
import random
import resource
import shutil
import tempfile
import time
from pathlib import Path

SAMPLES_PER_ITER = 1000


def _trial(exp: Path, i: int, iterations: int, rng: random.Random) -> None:
    cfg = {
        "learning_rate": 10 ** rng.uniform(-5.5, -3.5),
        "batch_size": rng.choice([16, 32, 64]),
        "warmup_ratio": rng.uniform(0, 0.2),
        "schedule": rng.choice(["linear", "cosine", "constant"]),
        "layer_decay": rng.uniform(0.7, 1.0),
    }
    tid = f"ab12c_{i:05d}"
    d = exp / (
        f"train_trial_{tid}_{i}_batch_size={cfg['batch_size']},"
        f"learning_rate={cfg['learning_rate']:.4f}_2026-11-28_13-00-00"
    )
    d.mkdir()
    (d / "params.json").write_text(json.dumps(cfg, indent=2))
    acc, total, lines = 0.5, 0.0, []
    for it in range(1, iterations + 1):
        acc = min(0.99, acc + rng.uniform(0, 0.01))
        dt = rng.uniform(8, 12)
        total += dt
        seen = it * SAMPLES_PER_ITER
        lines.append(
            json.dumps(
                {
                    "eval_accuracy": acc,
                    "eval_f1": acc - 0.01,
                    "eval_mcc": 2 * acc - 1,
                    "eval_loss": 1 - acc,
                    "train_loss": 1.1 - acc,
                    "lr": cfg["learning_rate"],
                    "lr_min_group": cfg["learning_rate"] * cfg["layer_decay"] ** 6,
                    "batch_size": cfg["batch_size"],
                    "epoch": it / 10,
                    "samples_seen": seen,
                    "step": seen // cfg["batch_size"],
                    "samples_per_s": SAMPLES_PER_ITER / dt,
                    "diverged": False,
                    "timestamp": 1795870000 + int(total),
                    "checkpoint_dir_name": f"checkpoint_{it - 1:06d}",
                    "should_checkpoint": True,
                    "done": it == iterations,
                    "training_iteration": it,
                    "trial_id": tid,
                    "date": "2026-11-28_13-00-00",
                    "time_this_iter_s": dt,
                    "time_total_s": total,
                    "pid": 1234,
                    "hostname": "node",
                    "node_ip": "10.0.0.1",
                    "config": cfg,
                    "time_since_restore": total,
                    "iterations_since_restore": it,
                }
            )
        )
    (d / "result.json").write_text("\n".join(lines) + "\n")


def build(exp: Path, trials: int, iterations: int) -> None:
    """Write the synthetic experiment (runs in a child process)."""
    exp.mkdir(parents=True)
    rng = random.Random(0)
    for i in range(trials):
        _trial(exp, i, iterations, rng)
    (exp / "raytune_ft.json").write_text(
        json.dumps(
            {
                "name": exp.name,
                "metric": "eval_accuracy",
                "mode": "max",
                "search": {
                    "learning_rate": {"loguniform": [3e-6, 3e-4]},
                    "batch_size": {"choice": [16, 32, 64]},
                    "warmup_ratio": {"uniform": [0, 0.2]},
                    "schedule": {"choice": ["linear", "cosine", "constant"]},
                    "layer_decay": {"uniform": [0.7, 1.0]},
                },
                "train": {"max_epochs": iterations / 10},
                "resources": {"cpus_per_trial": 1, "gpus_per_trial": 1},
                "scheduler": {"type": "fifo"},
                "budget_samples": iterations * SAMPLES_PER_ITER,
            }
        )
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--trials", type=int, default=10_000)
    p.add_argument("--iterations", type=int, default=50)
    p.add_argument("--keep", type=Path, default=None, help="build here and keep it")
    args = p.parse_args()
    root = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="bench_export_"))
    exp = root / "bench"
    try:
        if not exp.exists():
            t0 = time.perf_counter()
            child = mp.get_context("spawn").Process(
                target=build, args=(exp, args.trials, args.iterations)
            )
            child.start()
            child.join()
            print(
                f"built {args.trials} trials x {args.iterations} iterations "
                f"in {time.perf_counter() - t0:.1f} s at {exp}"
            )
        from raytune_ft.analysis import export_experiment

        logging.basicConfig(level=logging.ERROR)  # the synthetic dir has no experiment_state

        t0, c0 = time.perf_counter(), time.process_time()
        paths = export_experiment(exp)
        secs, cpu = time.perf_counter() - t0, time.process_time() - c0
        peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        for name, path in paths.items():
            print(f"{name}: {path.stat().st_size / 2**20:.1f} MiB")
        # wall time is what users wait; CPU time (all threads) is robust to a busy machine
        print(f"cpu: {cpu:.1f} s of CPU (all threads); load average {os.getloadavg()[0]:.1f}")
        print(f"export_{args.trials // 1000}k_trials: {secs:.1f} s, {peak_mib:.0f} MiB peak")
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
