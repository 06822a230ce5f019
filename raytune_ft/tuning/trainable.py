"""The Ray Tune function trainable: a thin adapter around `FineTuneLoop`.

It restores from Tune's checkpoint (a restart, a PBT exploit), puts the trial's own
hyperparameters in force, and reports one evaluation interval per Tune iteration. A
data-parallel trial (`resources.workers_per_trial` > 1) is this function as rank 0 plus
`tuning.workers` actors in the trial's placement group, training in lockstep; rank 0 reports
and writes the checkpoints, in the one-worker layout.
"""

from __future__ import annotations

import tempfile
import time

from ray import tune

from raytune_ft.schedulers import scheduler_spec
from raytune_ft.schema import searches_model
from raytune_ft.training.deployment import deployment_figures
from raytune_ft.training.device import out_of_memory_advice
from raytune_ft.training.loop import FineTuneLoop
from raytune_ft.tuning.trial import TrialSetup
from raytune_ft.tuning.workers import WorkerGroup

# Ray's progress table shows, after the iteration and wall time, the first four numbers of
# a trial's last result (ray.tune.experimental.output._infer_user_metrics): these.
CONSOLE_COLUMNS = ("samples_seen", "{metric}", "lr", "batch_size")


def console_order(metrics: dict, metric: str) -> dict:
    """`metrics` with the console's columns first: samples seen, the experiment's metric,
    the learning rate and the batch size in force."""
    first = [name.format(metric=metric) for name in CONSOLE_COLUMNS]
    return {**{key: metrics[key] for key in first if key in metrics}, **metrics}


def train_trial(config: dict, *, setup: TrialSetup) -> None:
    """One trial of `setup` with the config Tune sampled: rank 0 of its workers, which
    restores, trains, reports and checkpoints."""
    started = time.perf_counter()
    trial = setup.trial(config, tune.get_context().get_trial_id())
    experiment = setup.experiment
    with WorkerGroup(trial) as group:
        bundle = trial.bundle()
        loop = trial.build_loop(bundle, group.world)
        checkpoint = tune.get_checkpoint()
        if checkpoint is not None:
            with checkpoint.as_directory() as directory:
                loop.load(directory)
                group.load(directory)
        startup_s = time.perf_counter() - started  # trial start to the first training step
        scheduler = scheduler_spec(experiment.scheduler)
        # A paused trial resumes from its last checkpoint: an older one would train again.
        every_iteration = scheduler.checkpoint_every_iteration or scheduler.pauses_trials
        every = 1 if every_iteration else experiment.run.checkpoint_every
        searched = searches_model(experiment)
        deployment: dict = {}  # measured once, then reported with every result (deployment.py)
        while not loop.finished:
            with out_of_memory_advice(loop), group.interval():
                metrics = loop.run_interval()
            metrics = console_order(metrics, experiment.metric)
            metrics["startup_s"] = startup_s
            if searched:  # the longest training example of its tokenization
                metrics["max_tokens"] = int(bundle.train.lengths.max())
            due = loop.finished or loop.evaluations_done % every == 0
            if due and not loop.state.diverged:  # non-finite weights are never checkpointed
                with tempfile.TemporaryDirectory() as directory:
                    loop.save(directory)
                    deployment = deployment or measure_deployment(loop, directory)
                    tune.report({**metrics, **deployment},
                                checkpoint=tune.Checkpoint.from_directory(directory))
            else:
                deployment = deployment or measure_deployment(loop, None)
                tune.report({**metrics, **deployment})


def measure_deployment(loop: FineTuneLoop, checkpoint_dir: str | None) -> dict:
    """The deployment figures, with the size of the checkpoint just written to
    `checkpoint_dir`, else of one written for the purpose (None for diverged weights,
    which are never checkpointed)."""
    if checkpoint_dir is not None or loop.state.diverged:
        return deployment_figures(loop, checkpoint_dir)
    with tempfile.TemporaryDirectory() as directory:
        loop.save(directory)
        return deployment_figures(loop, directory)
