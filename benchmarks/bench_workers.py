"""Data-parallel trials: training samples/s of one trial on one worker and on two (gloo), and
the one-worker loop before and after data-parallel support, side by side in one run.

The packaged MiniLM on an SST-2 subset (`--samples`, default 512), batch 32, micro-batches of
at most 32, one whole epoch per measurement (`FineTuneLoop.run_interval`'s `samples_per_s`,
training time only: no evaluation, no process start-up). Variants:

  before 1x1   the loop of commit BEFORE (main before #19), one worker, 1 thread
  after  1x1   the loop as shipped, one worker, 1 thread (what each worker below gets)
  before 1x2   the loop of commit BEFORE, one worker, 2 threads
  after  1x2   the loop as shipped, one worker, 2 threads
  after  2x1   two workers of 1 thread each, gloo on this machine: the same 2 cores as 1x2

Every round runs every variant, in an order that alternates per round, so load drift falls
on all of them; the figures are the medians over `--rounds`. On this 2-core machine two
workers cannot beat one worker with both cores: each step all-reduces the whole gradient
(22.7M floats) between the processes, and the cores are the same. The benchmark reports the
ratio honestly; the GPU figure needs a multi-GPU machine.

    python benchmarks/bench_workers.py [--samples 512] [--rounds 3]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import socket
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import _common

BEFORE = "c7b8292"  # main before data-parallel trials (#19)
VARIANTS = ("before 1x1", "after 1x1", "before 1x2", "after 1x2", "after 2x1")


def old_loop_class():
    """FineTuneLoop as it was at BEFORE, imported from git beside the current package."""
    source = subprocess.run(["git", "show", f"{BEFORE}:raytune_ft/training/loop.py"],
                            cwd=_common.REPO, capture_output=True, text=True, check=True).stdout
    path = Path(tempfile.mkdtemp()) / "loop_before.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location("loop_before", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module.FineTuneLoop


def make_loop(loop_class, samples: int, threads: int, **kwargs):
    import torch

    from raytune_ft.config import TrainConfig
    from raytune_ft.schema import data_settings
    from raytune_ft.tasks.sequence_classification import build_bundle, load_model
    from raytune_ft.training.model import load_tokenizer

    torch.set_num_threads(threads)
    path = _common.model_path()
    bundle = build_bundle(data_settings(task="sst2", path=str(_common.GLUE_DIR),
                                     max_train_samples=samples, max_eval_samples=32),
                          load_tokenizer(path), max_length=128)
    hp = TrainConfig(max_epochs=1, eval_every_epochs=1, batch_size=32, max_micro_batch=32,
                     learning_rate=5e-5)
    return loop_class(load_model(path, bundle.label_names, seed=0), bundle, hp, **kwargs)


def one_worker(loop_class, samples: int, threads: int) -> float:
    return make_loop(loop_class, samples, threads).run_interval()["samples_per_s"]


def _rank(rank: int, size: int, port: int, samples: int, out: str) -> None:
    from raytune_ft.training.distributed import init_world, leave_world
    from raytune_ft.training.loop import FineTuneLoop

    world = init_world(rank, size, f"tcp://127.0.0.1:{port}", "gloo")
    try:
        speed = make_loop(FineTuneLoop, samples, 1, world=world).run_interval()["samples_per_s"]
        if rank == 0:
            Path(out).write_text(json.dumps(speed))
    finally:
        leave_world(world)


def two_workers(samples: int) -> float:
    import torch.multiprocessing as mp

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with tempfile.TemporaryDirectory() as directory:
        out = Path(directory) / "speed.json"
        mp.start_processes(_rank, args=(2, port, samples, str(out)), nprocs=2,
                           start_method="spawn")
        return json.loads(out.read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=512)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    _common.header("bench_workers")
    from raytune_ft.training.loop import FineTuneLoop

    before = old_loop_class()
    runs = {
        "before 1x1": lambda: one_worker(before, args.samples, 1),
        "before 1x2": lambda: one_worker(before, args.samples, 2),
        "after 1x2": lambda: one_worker(FineTuneLoop, args.samples, 2),
        "after 1x1": lambda: one_worker(FineTuneLoop, args.samples, 1),
        "after 2x1": lambda: two_workers(args.samples),
    }
    speeds: dict[str, list[float]] = {name: [] for name in VARIANTS}
    for round_ in range(args.rounds):
        order = VARIANTS if round_ % 2 == 0 else tuple(reversed(VARIANTS))
        for name in order:
            speeds[name].append(runs[name]())
            print(f"round {round_ + 1}  {name:<11} {speeds[name][-1]:7.2f} samples/s",
                  flush=True)
    median = {name: statistics.median(values) for name, values in speeds.items()}
    for name in VARIANTS:
        print(f"{name:<11} median {median[name]:7.2f} samples/s  "
              f"({', '.join(f'{v:.2f}' for v in speeds[name])})")
    same = median["after 1x1"] / median["before 1x1"]
    print(f"one worker, 1 thread, after / before: {same:.3f}")
    print(f"one worker, 2 threads, after / before: "
          f"{median['after 1x2'] / median['before 1x2']:.3f}")
    print(f"two workers x 1 thread / one worker x 1 thread: "
          f"{median['after 2x1'] / median['after 1x1']:.3f}")
    print(f"two workers x 1 thread / one worker x 2 threads (same cores): "
          f"{median['after 2x1'] / median['after 1x2']:.3f}")
    _common.final("bench_workers", f"one-worker speed after/before {same:.3f}",
                  "target: 1.00 within noise, 0.97-1.03", 0.97 <= same <= 1.03)


if __name__ == "__main__":
    main()
