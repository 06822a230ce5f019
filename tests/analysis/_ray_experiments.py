"""Build real Ray Tune experiment directories with a tiny function trainable.

Used by the analysis tests: every file the analysis reads is written by Ray itself.
"""

from __future__ import annotations

import json
import math
import tempfile
from pathlib import Path

from ray import tune
from ray.tune import Checkpoint, RunConfig, TuneConfig, Tuner
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler, PopulationBasedTraining

TRAIN_SAMPLES = 100  # samples in one epoch of the fake task
MAX_EPOCHS = 4  # one iteration per epoch
BUDGET = TRAIN_SAMPLES * MAX_EPOCHS
GRID = [2e-3, 1e-3, 3e-4, 1e-4, 3e-5, 1e-5]  # run in this order; 2e-3 crashes, 1e-3 diverges


def _metrics(config: dict, it: int, acc: float, diverged: bool = False) -> dict:
    """One iteration's report with every metric name raytune_ft reports; `windows` (if set)
    is the trial's own samples per epoch, as a searched question-answering encoding gives."""
    samples = it * int(config.get("windows") or TRAIN_SAMPLES)
    return {
        "eval_accuracy": acc,
        "eval_f1": acc - 0.01,
        "eval_mcc": 2 * acc - 1,
        "eval_loss": 1.0 - acc,
        "train_loss": 1.1 - acc,
        "lr": config["learning_rate"],
        "lr_min_group": config["learning_rate"] * 0.5,
        "batch_size": int(config["batch_size"]),
        "epoch": float(it),
        "samples_seen": samples,
        "step": samples // int(config["batch_size"]),
        "samples_per_s": 1000.0,
        "diverged": diverged,
    }


def fake_trainable(config: dict) -> None:
    """Accuracy grows fastest at lr 3e-4; `crash` raises, `diverge` diverges at iteration 2."""
    start, acc = 0, 0.5
    ckpt = tune.get_checkpoint()
    if ckpt is not None:
        with ckpt.as_directory() as d:
            state = json.loads(Path(d, "state.json").read_text())
            start, acc = state["it"], state["acc"]
    marker = config.get("fail_once")
    for it in range(start + 1, MAX_EPOCHS + 1):
        if config.get("crash") and it == 2:
            raise RuntimeError("boom: simulated CUDA OOM\nsecond line")
        gain = 0.1 - 0.02 * abs(math.log10(config["learning_rate"]) + 3.5)
        acc = min(0.99, acc + gain)
        diverged = bool(config.get("diverge")) and it == 2
        report = _metrics(config, it, 0.0 if diverged else acc, diverged)
        with tempfile.TemporaryDirectory() as d:
            Path(d, "state.json").write_text(json.dumps({"it": it, "acc": acc}))
            # the fail-once trial only checkpoints iteration 1, so its restore repeats iteration 2
            keep = not marker or it == 1
            tune.report(report, checkpoint=Checkpoint.from_directory(d) if keep else None)
        if diverged:
            return
        if marker and it == 2 and not Path(marker).exists():
            Path(marker).write_text("failed once")
            raise RuntimeError("transient failure")


def _write_cfg(exp_dir: Path, search: dict, scheduler: dict,
               windows: tuple[int, ...] = (TRAIN_SAMPLES,)) -> None:
    """The experiment record raytune_ft would have written for this search, whose trials
    train on `windows` samples per epoch (the first one's budget is `budget_samples`)."""
    from raytune_ft.experiment import write_record
    from raytune_ft.schema import validate_config

    config = validate_config({
        "name": exp_dir.name, "metric": "eval_accuracy", "mode": "max",
        "model": {"name": "fake"}, "data": {"task": "sst2"}, "search": search,
        "train": {"max_epochs": MAX_EPOCHS, "eval_every_epochs": 1.0},
        "resources": {"cpus_per_trial": 1.0, "gpus_per_trial": 0.0}, "scheduler": scheduler,
    })
    plan = config.plan(list(windows))
    write_record(str(exp_dir), config, {"budget_samples": plan.budget.total_samples,
                                        "plan": plan.record()})


def _run(
    storage: Path,
    name: str,
    space: dict,
    scheduler,
    samples: int,
    concurrent: int = 0,
    reuse_actors: bool = False,
    **run_kw,
) -> Path:
    tuner = Tuner(
        tune.with_resources(fake_trainable, {"cpu": 1}),
        param_space=space,
        tune_config=TuneConfig(
            metric="eval_accuracy",
            mode="max",
            scheduler=scheduler,
            num_samples=samples,
            max_concurrent_trials=concurrent or None,
            reuse_actors=reuse_actors,
        ),
        run_config=RunConfig(name=name, storage_path=str(storage), verbose=0, **run_kw),
    )
    tuner.fit()
    return storage / name


def build_asha(storage: Path) -> Path:
    """Grid of 6 trials under ASHA: one crashes, one diverges, weak ones are stopped.

    Trials run one at a time in GRID order, so ASHA's decisions are deterministic: the crash
    and diverge trials pass the first rung, 3e-4 (the best) runs to the end, and the low
    learning rates fall below the first rung's median and are stopped.
    """
    space = {
        "learning_rate": tune.grid_search(GRID),
        "batch_size": tune.choice([16, 32]),
        "warmup_ratio": tune.uniform(0.0, 0.2),
        "schedule": tune.choice(["linear", "cosine"]),
        "crash": tune.sample_from(lambda s: s.config.learning_rate == 2e-3),
        "diverge": tune.sample_from(lambda s: s.config.learning_rate == 1e-3),
    }
    sched = ASHAScheduler(
        time_attr="training_iteration", max_t=MAX_EPOCHS, grace_period=1, reduction_factor=2
    )
    exp = _run(storage, "asha", space, sched, 1, concurrent=1, reuse_actors=True)
    search = {
        "learning_rate": {"grid": GRID},
        "batch_size": {"choice": [16, 32]},
        "warmup_ratio": {"uniform": [0.0, 0.2]},
        "schedule": {"choice": ["linear", "cosine"]},
    }
    _write_cfg(exp, search, {"type": "asha", "grace_period": 1, "reduction_factor": 2})
    return exp


def build_pbt(storage: Path) -> Path:
    """Two trials under synchronous PBT, perturbing every iteration.

    Synchronous PBT waits for both trials at each perturbation point, and with two trials
    the worse one is always the bottom half, so every iteration logs an exploit.
    """
    space = {"learning_rate": tune.loguniform(1e-5, 1e-3), "batch_size": tune.choice([16, 32])}
    sched = PopulationBasedTraining(
        time_attr="training_iteration",
        perturbation_interval=1,
        quantile_fraction=0.5,
        hyperparam_mutations={
            "learning_rate": tune.loguniform(1e-5, 1e-3),
            "batch_size": [16, 32],
        },
        synch=True,
    )
    exp = _run(storage, "pbt", space, sched, 2, concurrent=2, reuse_actors=True)
    search = {"learning_rate": {"loguniform": [1e-5, 1e-3]}, "batch_size": {"choice": [16, 32]}}
    _write_cfg(exp, search, {"type": "pbt", "perturbation_interval": 1, "synch": True,
                             "quantile_fraction": 0.5, "mutations": list(search)})
    return exp


def build_restored(storage: Path, marker_dir: Path) -> Path:
    """Two FIFO trials; one fails after iteration 2 once and is restored from iteration 1."""
    space = {
        "learning_rate": tune.grid_search([1e-4, 1e-3]),
        "batch_size": 16,
        "fail_once": tune.sample_from(
            lambda s: str(marker_dir / "failed") if s.config.learning_rate == 1e-4 else ""
        ),
    }
    from ray.tune import FailureConfig

    exp = _run(
        storage,
        "restored",
        space,
        FIFOScheduler(),
        1,
        failure_config=FailureConfig(max_failures=1),
    )
    _write_cfg(exp, {"learning_rate": {"grid": [1e-4, 1e-3]}}, {"type": "fifo"})
    return exp


ENCODING_WINDOWS = (110, 100)  # samples per epoch of the two encodings, the first one's more


def build_encodings(storage: Path) -> Path:
    """Two FIFO trials with their own training-set sizes, as a grid over data.doc_stride
    gives in question answering: the first-listed encoding has more windows, so its budget
    in samples (the record's `budget_samples`) is more than the second trial's whole budget."""
    space = {"learning_rate": 3e-4, "batch_size": 16,
             "windows": tune.grid_search(list(ENCODING_WINDOWS))}
    exp = _run(storage, "encodings", space, FIFOScheduler(), 1, concurrent=1)
    _write_cfg(exp, {"learning_rate": {"grid": [3e-4]}}, {"type": "fifo"}, ENCODING_WINDOWS)
    return exp
