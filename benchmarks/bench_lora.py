"""LoRA (r = 8, alpha 16, all-linear) vs full fine-tuning of the packaged MiniLM, side by side.

Part 1, one trial's settings (SST-2 sentences, batch 32, 1 thread like a 1-CPU trial, the same
stream positions for both): every round runs each variant in a fresh process, the order
alternating, and measures
  - training samples/s of `FineTuneLoop._step` over `--steps` steps,
  - peak resident memory of that process (ru_maxrss), and its growth from the model's
    loading to the end of training (gradients, Adam moments, activations),
  - the checkpoint the loop writes (model.safetensors + optimizer.pt + trainer_state.json).
Part 2, disk kept by a PBT experiment: `raytune-ft tune experiments/sst2_pbt.yaml` made small
(`--pbt-train` sentences, 1 epoch in 4 iterations, 4 trials: 16 checkpoints, every one kept as
under PBT), once as is and once with `train.lora_r=8` and a learning-rate range ten times
higher; the experiment folder's size on disk (du), and per checkpoint, which scales to the full
sst2_pbt.yaml (4 trials x 8 iterations = 32 checkpoints). The full run's folder is deleted
after it is measured.

    python benchmarks/bench_lora.py [--steps 16] [--rounds 2] [--pbt-train 400]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import _common

from raytune_ft.tasks import get_task

BATCH = 32
VARIANTS = {"full": {}, "lora": {"lora_r": 8, "lora_alpha": 16.0}}
SIZE_TARGET = 50.0  # checkpoint: full / LoRA


def rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def folder_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def one_trial(variant: str, steps: int, queue) -> None:
    """In a fresh process: build the variant's loop, train `steps` steps, checkpoint."""
    import torch

    from raytune_ft.config import TrainConfig
    from raytune_ft.tasks.sequence_classification import load_model
    from raytune_ft.training.loop import FineTuneLoop
    from raytune_ft.training.lora import apply_lora

    torch.set_num_threads(1)
    bundle = _common.bundle("sst2", max_train=steps * BATCH, max_eval=8)
    hp = TrainConfig(batch_size=BATCH, max_micro_batch=BATCH, max_epochs=1.0,
                     learning_rate=5e-4 if variant == "lora" else 5e-5, seed=0,
                     **VARIANTS[variant])
    before = rss_mib()
    model = apply_lora(load_model(_common.model_path(), bundle.label_names, 0), hp)
    loop = FineTuneLoop(model, bundle, hp, task=get_task(bundle.kind))
    loaded = rss_mib()
    trained = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    loop._set_group_hyperparameters()
    loop._step(loop.stream.take(0, BATCH))  # untimed: first-call allocations
    seconds = 0.0
    for step in range(1, steps):
        indices = loop.stream.take(step * BATCH, BATCH)
        loop._set_group_hyperparameters()
        started = time.perf_counter()
        loop._step(indices)
        seconds += time.perf_counter() - started
    with tempfile.TemporaryDirectory() as directory:
        loop.save(directory)
        files = {p.name: p.stat().st_size for p in Path(directory).iterdir()}
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    queue.put({"variant": variant, "samples_per_s": (steps - 1) * BATCH / seconds,
               "peak_rss_mib": peak, "growth_mib": peak - loaded, "model_mib": loaded - before,
               "checkpoint": files, "trained_params": trained, "params": total})


def run_in_process(variant: str, steps: int) -> dict:
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    process = context.Process(target=one_trial, args=(variant, steps, queue))
    process.start()
    result = queue.get()
    process.join()
    return result


def part_one(steps: int, rounds: int) -> dict:
    runs: dict[str, list[dict]] = {v: [] for v in VARIANTS}
    for index in range(rounds):
        order = list(VARIANTS) if index % 2 == 0 else list(VARIANTS)[::-1]
        for variant in order:
            result = run_in_process(variant, steps)
            runs[variant].append(result)
            print(f"round {index + 1}/{rounds} {variant}: {result['samples_per_s']:.1f} "
                  f"samples/s, peak RSS {result['peak_rss_mib']:.0f} MiB (+"
                  f"{result['growth_mib']:.0f} MiB training), checkpoint "
                  f"{sum(result['checkpoint'].values()) / 2**20:.2f} MiB "
                  f"{result['checkpoint']}, load {_common.load_average()}", flush=True)
    return runs


def pbt_folder_size(lora: bool, train: int, root: Path) -> tuple[int, int, float]:
    """(bytes on disk, checkpoints, wall seconds) of the small sst2_pbt run."""
    name = "bench_pbt_lora" if lora else "bench_pbt_full"
    sets = [f"name={name}", f"run.storage_path={root}", f"data.max_train_samples={train}",
            "data.max_eval_samples=200", "train.max_epochs=1", "train.eval_every_epochs=0.25",
            "scheduler.perturbation_interval=1"]
    if lora:
        sets += ["train.lora_r=8", "train.lora_alpha=16",
                 "search.learning_rate={loguniform: [3.0e-4, 3.0e-3]}"]
    command = [sys.executable, "-m", "raytune_ft", "tune", str(_common.REPO / "experiments" /
                                                               "sst2_pbt.yaml")]
    for value in sets:
        command += ["--set", value]
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, cwd=_common.REPO)
    wall = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"{name} failed:\n{done.stderr[-3000:]}")
    folder = root / name
    checkpoints = len(list(folder.glob("*/checkpoint_*")))
    du = int(subprocess.run(["du", "-sb", str(folder)], capture_output=True, text=True
                            ).stdout.split()[0])
    return du, checkpoints, wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--pbt-train", type=int, default=400)
    parser.add_argument("--skip-pbt", action="store_true")
    args = parser.parse_args()
    _common.header("bench_lora")
    runs = part_one(args.steps, args.rounds)

    def median(variant: str, key: str) -> float:
        values = sorted(r[key] for r in runs[variant])
        return values[len(values) // 2] if len(values) % 2 else \
            (values[len(values) // 2 - 1] + values[len(values) // 2]) / 2

    sizes = {v: sum(runs[v][0]["checkpoint"].values()) for v in VARIANTS}
    ratio = sizes["full"] / sizes["lora"]
    summary = {v: {"samples_per_s": median(v, "samples_per_s"),
                   "peak_rss_mib": median(v, "peak_rss_mib"),
                   "growth_mib": median(v, "growth_mib"), "checkpoint_bytes": sizes[v],
                   "trained_params": runs[v][0]["trained_params"],
                   "params": runs[v][0]["params"]} for v in VARIANTS}
    print(json.dumps(summary, indent=1))
    print(f"checkpoint: full {sizes['full'] / 2**20:.1f} MiB, LoRA r=8 "
          f"{sizes['lora'] / 2**20:.2f} MiB: {ratio:.1f}x smaller")
    print(f"samples/s (median): full {summary['full']['samples_per_s']:.1f}, LoRA "
          f"{summary['lora']['samples_per_s']:.1f} "
          f"({summary['lora']['samples_per_s'] / summary['full']['samples_per_s']:.2f}x)")
    print(f"peak RSS (median): full {summary['full']['peak_rss_mib']:.0f} MiB, LoRA "
          f"{summary['lora']['peak_rss_mib']:.0f} MiB; training growth full "
          f"{summary['full']['growth_mib']:.0f} MiB, LoRA {summary['lora']['growth_mib']:.0f}"
          " MiB", flush=True)
    if not args.skip_pbt:
        root = Path(tempfile.mkdtemp(prefix="bench_lora_", dir=_common.REPO / "results"))
        for lora in (False, True):
            du, count, wall = pbt_folder_size(lora, args.pbt_train, root)
            label = "LoRA r=8" if lora else "full"
            print(f"PBT {label}: {du / 2**20:.1f} MiB on disk, {count} checkpoints "
                  f"({du / max(count, 1) / 2**20:.2f} MiB each; x32 for sst2_pbt.yaml = "
                  f"{32 * du / max(count, 1) / 2**30:.2f} GiB), {wall:.0f} s, load "
                  f"{_common.load_average()}", flush=True)
        shutil.rmtree(root / "bench_pbt_full", ignore_errors=True)
    _common.final("bench_lora", f"LoRA r=8 checkpoint {ratio:.1f}x smaller than full",
                  f">= {SIZE_TARGET:g}x", ratio >= SIZE_TARGET)


if __name__ == "__main__":
    main()
