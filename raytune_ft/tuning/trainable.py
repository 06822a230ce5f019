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
import zlib
from pathlib import Path

import numpy as np
from ray import tune

from raytune_ft.config import ExperimentConfig, trial_hyperparameters, trial_model
from raytune_ft.plan import TrialPlan
from raytune_ft.tasks import DataBundle, get_task
from raytune_ft.training.deployment import deployment_figures
from raytune_ft.training.device import choose_device, limit_cpu_threads, out_of_memory_advice
from raytune_ft.training.distributed import SINGLE, World
from raytune_ft.training.loop import FineTuneLoop
from raytune_ft.training.lora import apply_lora
from raytune_ft.training.model import resolve_model_path
from raytune_ft.tuning.pbt_replay import DROPOUT_TRIAL_KEY
from raytune_ft.tuning.schedulers import scheduler_spec
from raytune_ft.tuning.workers import WorkerGroup


def node_model_path(model_path: str, name: str) -> str:
    """The driver resolved `model.name` on its own machine. A node without that folder (the
    packaged MiniLM installed under another prefix, a Ray Client driver's disk) resolves
    the name itself; a local folder missing there fails with the name in the message."""
    return model_path if Path(model_path).is_dir() else resolve_model_path(name)


def trial_dropout_seed(seed: int, population: bool, trial_id: str) -> int:
    """Under PBT a clone takes its donor's config and checkpoint, seed included: mixing in the
    trial's own index (the `_00003` of its id, the same in every run of the experiment; a
    hash of ids without one) gives it its own dropout masks; its data order stays the
    donor's. Other schedulers keep `seed`, so a trial depends on its config alone. `replay`
    gives each part of a schedule the id of the trial that trained it (DROPOUT_TRIAL_KEY)."""
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


def build_loop(config: dict, bundle: DataBundle, experiment: ExperimentConfig,
               model_path: str, plan: TrialPlan | None, presets: bool, trial_id: str,
               world: World = SINGLE) -> FineTuneLoop:
    """One worker's loop for the trial `trial_id` with the sampled `config`: the same on every
    rank of a data-parallel trial (rank 0's weights are broadcast when it starts)."""
    hp = trial_hyperparameters(experiment, config)
    resources = experiment.resources
    device = choose_device(resources.worker_gpus)
    limit_cpu_threads(resources.worker_cpus)
    name = trial_model(experiment, config).name  # model.name, or the trial's searched one
    model = get_task(bundle.kind).load_model(node_model_path(model_path, name),
                                             bundle.label_names, hp.seed)
    model = apply_lora(model, hp)  # unchanged without train.lora_r
    scheduler = scheduler_spec(experiment.scheduler)
    seeded_as = config.get(DROPOUT_TRIAL_KEY, trial_id)  # replay: the trial that trained this
    return FineTuneLoop(model, bundle, hp, experiment.metric, experiment.mode, device,
                        dropout_seed=trial_dropout_seed(hp.seed, scheduler.population,
                                                        seeded_as),
                        keep_diverged=scheduler.keeps_diverged and not presets,
                        budget=plan.budget_for(len(bundle.train)) if plan is not None
                        else None, world=world)


def train_trial(config: dict, *, bundle: DataBundle | None, experiment: ExperimentConfig,
                model_path: str, plan: TrialPlan | None = None, presets: bool = False,
                shared_bundle: tuple | None = None, models=None) -> None:
    """`shared_bundle`: (object ref of the bundle,) instead of `bundle` for data-parallel
    trials, whose other workers read the same copy from the object store. `models` (a
    `tuning.model_data.ModelData` of object references): the experiment searches model.name
    or model.max_length, and the trial takes its model's path and tokenization from it."""
    started = time.perf_counter()
    trial_id = tune.get_context().get_trial_id()
    if models is not None:
        model_path, reference = models.for_trial(experiment, config)
        shared_bundle = (reference,)
        if experiment.resources.workers_per_trial == 1:
            import ray

            bundle = ray.get(reference)
    with WorkerGroup(config, bundle, shared_bundle, experiment, model_path, plan, presets,
                     trial_id) as group:
        bundle = group.bundle
        loop = build_loop(config, bundle, experiment, model_path, plan, presets, trial_id,
                          group.world)
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
        deployment: dict = {}  # measured once, then reported with every result (deployment.py)
        while not loop.finished:
            with out_of_memory_advice(loop), group.interval():
                metrics = loop.run_interval()
            metrics = console_order(metrics, experiment.metric)
            metrics["startup_s"] = startup_s
            if models is not None:  # the longest training example of its tokenization
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
