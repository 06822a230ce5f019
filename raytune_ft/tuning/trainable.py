"""The Ray Tune function trainable: a thin adapter around `FineTuneLoop`.

It restores from Tune's checkpoint (a restart, a PBT exploit), puts the trial's own
hyperparameters in force, and reports one evaluation interval per Tune iteration.
"""

from __future__ import annotations

import tempfile
import time
import zlib
from pathlib import Path

import numpy as np
from ray import tune

from raytune_ft.config import ExperimentConfig, trial_hyperparameters
from raytune_ft.plan import TrialPlan
from raytune_ft.tasks import DataBundle, get_task
from raytune_ft.training.device import choose_device, limit_cpu_threads, out_of_memory_advice
from raytune_ft.training.loop import FineTuneLoop
from raytune_ft.training.model import resolve_model_path
from raytune_ft.tuning.schedulers import scheduler_spec


def node_model_path(model_path: str, name: str) -> str:
    """The driver resolved `model.name` on its own machine. A node without that folder (the
    packaged MiniLM installed under another prefix, a Ray Client driver's disk) resolves
    the name itself; a local folder missing there fails with the name in the message."""
    return model_path if Path(model_path).is_dir() else resolve_model_path(name)


def trial_dropout_seed(seed: int, population: bool, trial_id: str) -> int:
    """Under PBT a clone takes its donor's config and checkpoint, seed included: mixing in the
    trial's own index (the `_00003` of its id, the same in every run of the experiment; a
    hash of ids without one) gives it its own dropout masks; its data order stays the
    donor's. Other schedulers keep `seed`, so a trial depends on its config alone."""
    if not population:
        return seed
    suffix = trial_id.rsplit("_", 1)[-1]
    index = int(suffix) if suffix.isdigit() else zlib.crc32(trial_id.encode())
    return int(np.random.SeedSequence([seed, index]).generate_state(1)[0])


# Ray's progress table shows, after the iteration and wall time, the first four numbers of
# a trial's last result (ray.tune.experimental.output._infer_user_metrics): these.
CONSOLE_COLUMNS = ("samples_seen", "{metric}", "lr", "batch_size")


def console_order(metrics: dict, metric: str) -> dict:
    """`metrics` with the console's columns first: samples seen, the experiment's metric,
    the learning rate and the batch size in force."""
    first = [name.format(metric=metric) for name in CONSOLE_COLUMNS]
    return {**{key: metrics[key] for key in first if key in metrics}, **metrics}


def train_trial(config: dict, *, bundle: DataBundle, experiment: ExperimentConfig,
                model_path: str, plan: TrialPlan | None = None, presets: bool = False) -> None:
    started = time.perf_counter()
    hp = trial_hyperparameters(experiment, config)
    device = choose_device(experiment.resources.gpus_per_trial)
    limit_cpu_threads(experiment.resources.cpus_per_trial)
    model = get_task(bundle.kind).load_model(node_model_path(model_path, experiment.model.name),
                                             bundle.label_names, hp.seed)
    scheduler = scheduler_spec(experiment.scheduler)
    loop = FineTuneLoop(model, bundle, hp, experiment.metric, experiment.mode, device,
                        dropout_seed=trial_dropout_seed(hp.seed, scheduler.population,
                                                        tune.get_context().get_trial_id()),
                        keep_diverged=scheduler.keeps_diverged and not presets,
                        budget=plan.budget if plan is not None else None)
    checkpoint = tune.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as directory:
            loop.load(directory)
    startup_s = time.perf_counter() - started  # trial start to the first training step
    # A paused trial resumes from its last checkpoint: an older one would train again.
    every_iteration = scheduler.checkpoint_every_iteration or scheduler.pauses_trials
    every = 1 if every_iteration else experiment.run.checkpoint_every
    while not loop.finished:
        with out_of_memory_advice(loop):
            metrics = loop.run_interval()
        metrics = console_order(metrics, experiment.metric)
        metrics["startup_s"] = startup_s
        due = loop.finished or loop.evaluations_done % every == 0
        if due and not loop.state.diverged:  # non-finite weights are never checkpointed
            with tempfile.TemporaryDirectory() as directory:
                loop.save(directory)
                tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(directory))
        else:
            tune.report(metrics)
