"""Makespan of 64 two-second trials through raytune_ft's Tune settings, and trial start-up time.

Part 1 runs 64 trials of a trainable that sleeps 2 s and reports once, (a) with the TuneConfig
and RunConfig raytune_ft builds (`runner.tune_settings`: reuse_actors=True, FIFO, the variant
generator, checkpoint and failure settings) and (b) with plain Ray Tune defaults
(reuse_actors=False). Ideal makespan = trials x seconds / concurrent slots (1 CPU per trial).
Part 2 runs the real trainable with the packaged MiniLM (data from the object store, actors
reused) and reads `startup_s` (trial function entry to first training step) per trial, then
profiles the same start-up steps in a fresh process.

    python benchmarks/bench_orchestration.py [--trials 64] [--seconds 2] [--startup-trials 6]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time

import _common

from raytune_ft.tasks import get_task

TARGET_MAKESPAN, TARGET_STARTUP = 1.15, 1.0


def sleeper(config: dict) -> None:
    from ray import tune

    time.sleep(config["seconds"])
    tune.report({"eval_accuracy": 0.5})  # the metric raytune_ft's TuneConfig watches


def experiment(storage: str, name: str, trials: int, **train):
    from raytune_ft.schema import validate_config

    return validate_config({
        "name": name, "model": {"name": _common.MODEL, "max_length": 128},
        "data": {"task": "sst2", "path": str(_common.GLUE_DIR), "max_train_samples": 64,
                 "max_eval_samples": 32},
        "train": {"max_epochs": 1, "eval_every_epochs": 1.0, "batch_size": 32, **train},
        "resources": {"cpus_per_trial": 1},
        "run": {"num_samples": trials, "storage_path": storage, "verbose": 0},
    })


def makespan(storage: str, trials: int, seconds: float, style: str) -> float:
    from ray import tune

    from raytune_ft.tuning.runner import tune_settings

    space = {"seconds": seconds}
    started = time.perf_counter()
    if style == "raytune_ft":
        config = experiment(storage, "orchestration_raytune_ft", trials)
        tune_config, run_config = tune_settings(config, f"{storage}/orchestration_raytune_ft",
                                                config.plan())
        trainable = tune.with_resources(sleeper, {"cpu": 1, "gpu": 0})
    else:
        tune_config = tune.TuneConfig(num_samples=trials)
        run_config = tune.RunConfig(name="orchestration_plain", storage_path=storage, verbose=0)
        trainable = sleeper
    results = tune.Tuner(trainable, param_space=space, tune_config=tune_config,
                         run_config=run_config).fit()
    elapsed = time.perf_counter() - started
    errors = sum(r.error is not None for r in results)
    if errors or len(results) != trials:
        raise RuntimeError(f"{style}: {len(results)} trials, {errors} failed")
    return elapsed


def startup_times(storage: str, trials: int) -> list[dict]:
    """startup_s of each trial of the real trainable; `pid` tells which actor ran it."""
    from raytune_ft.tuning.runner import build_tuner, prepare

    prepared = prepare(experiment(storage, "startup", trials), overwrite=True)
    results = build_tuner(prepared).fit()
    rows = []
    for result in results:
        if result.error is not None:
            raise RuntimeError(f"startup trial failed: {result.error}")
        first = result.metrics_dataframe.iloc[0]
        rows.append({"pid": int(first["pid"]), "start": float(first["timestamp"])
                     - float(first["time_total_s"]), "startup_s": float(first["startup_s"])})
    rows.sort(key=lambda r: r["start"])
    seen = set()
    for row in rows:
        row["actor"] = "reused" if row["pid"] in seen else "new"
        seen.add(row["pid"])
    return rows


def profile_startup() -> dict:
    """The steps of `train_trial` before its first step, timed in a fresh process (1 thread)."""
    timings = {}

    def timed(name, fn):
        started = time.perf_counter()
        value = fn()
        timings[name] = round(time.perf_counter() - started, 3)
        return value

    import torch

    torch.set_num_threads(1)
    timed("import transformers (first trial on an actor)",
          lambda: __import__("transformers.models.bert.modeling_bert"))
    from transformers import AutoConfig, AutoModelForSequenceClassification

    from raytune_ft.config import TrainConfig
    from raytune_ft.tasks.sequence_classification import load_model
    from raytune_ft.training.loop import FineTuneLoop

    path = _common.model_path()
    bundle = _common.bundle("sst2", max_train=64, max_eval=32)
    labels = bundle.label_names
    timed("load_model, first call in the process", lambda: load_model(path, labels, 0))
    model = timed("load_model (from_pretrained), warm", lambda: load_model(path, labels, 0))
    config = timed("AutoConfig.from_pretrained", lambda: AutoConfig.from_pretrained(
        path, num_labels=2))
    timed("model construction with random init (from_config)",
          lambda: AutoModelForSequenceClassification.from_config(config))
    timed("model.to('cpu')", lambda: model.to("cpu"))
    hp = TrainConfig(max_epochs=1, batch_size=32)
    timed("FineTuneLoop(...) (param groups, AdamW)", lambda: FineTuneLoop(model, bundle, hp,
                        task=get_task(bundle.kind)))
    return timings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=64)
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--startup-trials", type=int, default=6)
    parser.add_argument("--profile-startup", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.profile_startup:
        print(json.dumps(profile_startup()))
        return
    _common.header("bench_orchestration")
    import ray

    from raytune_ft.tuning.cluster import init_ray

    with tempfile.TemporaryDirectory() as storage:
        started = time.perf_counter()
        init_ray(None, experiment(storage, "x", 1))
        print(f"ray.init: {time.perf_counter() - started:.1f} s (not in the makespans)")
        slots = int(ray.cluster_resources().get("CPU", 1))
        ideal = args.trials * args.seconds / slots
        try:
            spans = {}
            for style in ("raytune_ft", "plain"):
                spans[style] = makespan(storage, args.trials, args.seconds, style)
                print(f"{style:10} makespan {spans[style]:.1f} s = {spans[style] / ideal:.3f} x "
                      f"ideal (load {_common.load_average()})", flush=True)
            rows = startup_times(storage, args.startup_trials)
        finally:
            ray.shutdown()
    print(f"ideal: {args.trials} trials x {args.seconds:g} s / {slots} slots = {ideal:.1f} s")
    speedup = spans["plain"] / spans["raytune_ft"]
    print(f"plain Ray Tune defaults / raytune_ft settings: {speedup:.2f}x")
    for row in rows:
        print(f"startup_s {row['startup_s']:.3f}  actor {row['actor']:6} pid {row['pid']}")
    reused = [r["startup_s"] for r in rows if r["actor"] == "reused"]
    fresh = [r["startup_s"] for r in rows if r["actor"] == "new"]
    startup = statistics.median(reused or fresh)
    print(f"startup_s median: reused actor {statistics.median(reused) if reused else 'n/a'}, "
          f"new actor {statistics.median(fresh):.3f}")
    profile = subprocess.run([sys.executable, __file__, "--profile-startup"], capture_output=True,
                             text=True, check=True).stdout.strip().splitlines()[-1]
    print("start-up profile (fresh process, 1 thread), seconds:")
    for name, seconds in json.loads(profile).items():
        print(f"  {seconds:7.3f}  {name}")
    ratio = spans["raytune_ft"] / ideal
    _common.final("orchestration", f"makespan {ratio:.3f}x ideal ({spans['raytune_ft']:.1f} s vs "
                  f"{ideal:.1f} s; plain Tune {spans['plain'] / ideal:.3f}x); startup_s "
                  f"{startup:.2f} s (median, {'reused' if reused else 'new'} actors)",
                  f"target <= {TARGET_MAKESPAN}x ideal, startup <= {TARGET_STARTUP} s",
                  ratio <= TARGET_MAKESPAN and startup <= TARGET_STARTUP)


if __name__ == "__main__":
    main()
