"""A trial's construction in one value: what every trial of a run is built from (`TrialSetup`,
made once in the driver and handed to every trial by `tune.with_parameters`), and one trial
of it (`Trial`: its sampled config and id), which builds the loop on every worker of the
trial alike.

The data a trial trains on is always in Ray's object store, one copy per tokenization
(`ModelData`: one for a fixed model, one per distinct tokenizer and length for a search over
`model.name` / `model.max_length`); a trial fetches only its own.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from raytune_ft.config import TrainConfig
from raytune_ft.plan import TrialPlan
from raytune_ft.schedulers import scheduler_spec
from raytune_ft.schema import ExperimentConfig, trial_hyperparameters, trial_model
from raytune_ft.tasks import DataBundle, get_task
from raytune_ft.training.distributed import SINGLE, World
from raytune_ft.training.loop import FineTuneLoop
from raytune_ft.tuning.model_data import ModelData
from raytune_ft.tuning.pbt_replay import DROPOUT_TRIAL_KEY


@dataclass(frozen=True)
class TrialSetup:
    """What every trial of one run shares, built once in the driver."""

    experiment: ExperimentConfig
    plan: TrialPlan  # evaluation points, batches, a budget per training split size
    data: ModelData  # model paths and one object reference per tokenization
    presets: bool = False  # fixed configurations (replay, confirm): no population rescues

    def trial(self, config: dict, trial_id: str) -> Trial:
        return Trial(self, dict(config), trial_id)


@dataclass(frozen=True)
class Trial:
    """One trial: the setup, the config Tune sampled (or a preset) and Tune's trial id."""

    setup: TrialSetup
    config: dict
    trial_id: str

    @property
    def hyperparameters(self) -> TrainConfig:
        """The train settings in force: the fixed ones with the sampled ones on top."""
        return trial_hyperparameters(self.setup.experiment, self.config)

    @property
    def model_path(self) -> str:
        """The trial's model folder on this node (see `node_model_path`)."""
        name = trial_model(self.setup.experiment, self.config).name
        return node_model_path(self.setup.data.for_trial(self.setup.experiment,
                                                         self.config)[0], name)

    def bundle(self) -> DataBundle:
        """The trial's tokenized data, from the object store (zero-copy arrays)."""
        import ray

        reference = self.setup.data.for_trial(self.setup.experiment, self.config)[1]
        return ray.get(reference)

    def build_loop(self, bundle: DataBundle, world: World = SINGLE) -> FineTuneLoop:
        """One worker's loop: the same on every rank of a data-parallel trial (rank 0's
        weights are broadcast when it starts)."""
        from raytune_ft.training.device import choose_device, limit_cpu_threads
        from raytune_ft.training.lora import apply_lora

        experiment, hp = self.setup.experiment, self.hyperparameters
        resources = experiment.resources
        device = choose_device(resources.worker_gpus)
        limit_cpu_threads(resources.worker_cpus)
        task = get_task(bundle.kind)
        model = apply_lora(task.load_model(self.model_path, bundle.label_names, hp.seed), hp)
        scheduler = scheduler_spec(experiment.scheduler)
        seeded_as = self.config.get(DROPOUT_TRIAL_KEY, self.trial_id)  # replay: who trained it
        return FineTuneLoop(model, bundle, hp, experiment.metric, experiment.mode, device,
                            dropout_seed=trial_dropout_seed(hp.seed, scheduler.population,
                                                            seeded_as),
                            keep_diverged=scheduler.keeps_diverged and not self.setup.presets,
                            budget=self.setup.plan.budget_for(len(bundle.train)),
                            world=world, task=task)


def node_model_path(model_path: str, name: str) -> str:
    """The driver resolved `model.name` on its own machine. A node without that folder (the
    packaged MiniLM installed under another prefix, a Ray Client driver's disk) resolves
    the name itself; a local folder missing there fails with the name in the message."""
    from raytune_ft.training.model import resolve_model_path

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
