"""The Ray Tune function trainable: a thin adapter around `FineTuneLoop`.

It restores from Tune's checkpoint (a restart, a PBT exploit), puts the trial's own
hyperparameters in force, and reports one evaluation interval per Tune iteration.
"""

from __future__ import annotations

import os
import tempfile
import time
import zlib
from pathlib import Path

import numpy as np
import torch
from ray import tune

from raytune_ft.config import ExperimentConfig, trial_hyperparameters
from raytune_ft.data import DataBundle
from raytune_ft.plan import TrialPlan
from raytune_ft.training.loop import FineTuneLoop
from raytune_ft.training.model import load_model, resolve_model_path
from raytune_ft.tuning.schedulers import scheduler_spec

FAULT_HOOK = "RAYTUNE_FT_TEST_FAIL_SEED"  # tests only: the trial with this seed raises


def node_model_path(model_path: str, name: str) -> str:
    """The driver resolved `model.name` on its own machine. A node without that folder (the
    packaged MiniLM installed under another prefix, a Ray Client driver's disk) resolves
    the name itself; a local folder missing there fails with the name in the message."""
    return model_path if Path(model_path).is_dir() else resolve_model_path(name)


def trial_dropout_seed(seed: int, population: bool) -> int:
    """Under PBT a clone takes its donor's config and checkpoint, seed included: mixing in the
    trial's own id gives it its own dropout masks (its data order stays the donor's).
    Other schedulers keep `seed`, so a trial depends on its config alone."""
    if not population:
        return seed
    trial = zlib.crc32(tune.get_context().get_trial_id().encode())
    return int(np.random.SeedSequence([seed, trial]).generate_state(1)[0])


def train_trial(config: dict, *, bundle: DataBundle, experiment: ExperimentConfig,
                model_path: str, plan: TrialPlan | None = None) -> None:
    started = time.perf_counter()
    hp = trial_hyperparameters(experiment, config)
    gpus = experiment.resources.gpus_per_trial
    device = "cuda" if gpus > 0 and torch.cuda.is_available() else "cpu"
    torch.set_num_threads(max(1, int(experiment.resources.cpus_per_trial)))
    model = load_model(node_model_path(model_path, experiment.model.name), bundle.label_names,
                       hp.seed)
    scheduler = scheduler_spec(experiment.scheduler)
    loop = FineTuneLoop(model, bundle, hp, experiment.metric, experiment.mode, device,
                        dropout_seed=trial_dropout_seed(hp.seed, scheduler.population),
                        keep_diverged=scheduler.keeps_diverged,
                        budget=plan.budget if plan is not None else None)
    checkpoint = tune.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as directory:
            loop.load(directory)
    startup_s = time.perf_counter() - started  # trial start to the first training step
    every = 1 if scheduler.checkpoint_every_iteration else experiment.run.checkpoint_every
    while not loop.finished:
        if os.environ.get(FAULT_HOOK) == str(hp.seed):
            raise RuntimeError(f"fault hook {FAULT_HOOK}={hp.seed}: this trial raises")
        try:
            metrics = loop.run_interval()
        except torch.OutOfMemoryError:
            raise RuntimeError(
                f"device out of memory with train.max_micro_batch={hp.max_micro_batch} "
                f"(batch_size {loop.batch_size}); lower train.max_micro_batch, gradient "
                "accumulation keeps the effective batch") from None
        metrics["startup_s"] = startup_s
        due = loop.finished or loop.evaluations_done % every == 0
        if due and not loop.state.diverged:  # non-finite weights are never checkpointed
            with tempfile.TemporaryDirectory() as directory:
                loop.save(directory)
                tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(directory))
        else:
            tune.report(metrics)
