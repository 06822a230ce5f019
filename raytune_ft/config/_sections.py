"""The sections of an experiment file that every component shares: the model, the train
settings (any of which can be searched), resources, the run, and the search algorithm.

A component's own section (`data:` of a task, `scheduler:`, `tracking:`) is that component's
settings class (`raytune_ft.config.DataSettings` and its siblings), assembled into the
experiment by `raytune_ft.schema`. No torch, no Ray, nothing of raytune_ft above config.
"""

from __future__ import annotations

import math
import re
from typing import Any, Literal, get_args

from pydantic import Field, field_validator, model_validator

from raytune_ft.config._base import Strict
from raytune_ft.config._search import SAMPLERS, StopConfig
from raytune_ft.config._space import Domain

LORA_ALL_LINEAR = "all-linear"  # train.lora_targets: every Linear inside the encoder layers
SCHEDULES = ("linear", "constant", "cosine", "step", "exponential", "plateau")


class ModelConfig(Strict):
    name: str  # hub id, local directory, or "all-MiniLM-L6-v2" (the packaged offline copy)
    max_length: int = Field(128, gt=0)  # tokens per example after truncation; batches pad less
    # an encoder-decoder warm-started from two checkpoints (Rothe et al. 2020): model.name
    # the encoder, this the decoder (its cross-attention new); None: model.name is one model
    decoder_name: str | None = None


BatchPhases = list[tuple[float, int]]


class TrainConfig(Strict):
    """Fixed training settings; any of them can be searched under `search:`."""

    learning_rate: float = Field(5e-5, gt=0)  # base lr of the task head, at the reference batch
    batch_size: int = Field(32, gt=0)  # effective batch: samples per optimizer step
    max_epochs: float = Field(3.0, gt=0)  # a trial's budget is max_epochs x len(train)
    eval_every_epochs: float = Field(1.0, gt=0)  # one Tune iteration; fractions allowed
    warmup_ratio: float = Field(0.0, ge=0, lt=1)  # fraction of the budget spent warming up
    weight_decay: float = Field(0.01, ge=0)  # AdamW; never on biases or LayerNorm weights
    schedule: Literal[SCHEDULES] = "linear"  # the classic BERT recipe: warmup, decay to 0
    lr_min: float = Field(0.0, ge=0)  # cosine floor of the head lr; a group floors at x scale
    gamma: float = Field(0.5, gt=0)  # step: factor per step_epochs; exponential: per epoch
    step_epochs: float = Field(1.0, gt=0)  # step schedule period, in epochs
    plateau_factor: float = Field(0.5, gt=0, lt=1)  # lr multiplier after a plateau
    plateau_patience: int = Field(2, gt=0)  # evaluations without improvement, then reduce
    plateau_threshold: float = Field(1e-4, ge=0)  # smaller changes do not count as improvement
    layer_decay: float = Field(1.0, gt=0, le=1)  # 1.0 = off; layer l of L gets lr*d^(L-l)
    freeze_embeddings: bool = False  # the embeddings take no updates
    freeze_layers: int = Field(0, ge=0)  # bottom k encoder layers take no updates
    batch_schedule: str | BatchPhases | None = None  # name in batch_schedules or phases
    max_micro_batch: int = Field(32, gt=0)  # most samples on the device at once
    lr_scaling: Literal["none", "linear", "sqrt"] = "none"  # lr rule when batch size moves
    reference_batch_size: int | None = Field(None, gt=0)  # default: the trial's first batch
    max_grad_norm: float | None = Field(1.0, gt=0)  # None disables clipping
    adam_epsilon: float = Field(1e-8, gt=0)  # AdamW's epsilon
    # AdamW's second-moment decay: torch's 0.999 for fine-tuning; 0.98 (Vaswani et al. 2017)
    # steadies a transformer trained from its config in its first thousand steps
    adam_beta2: float = Field(0.999, gt=0, lt=1)
    seed: int = Field(0, ge=0, lt=2**32)  # head init, data order, dropout (numpy: 0..2^32-1)
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"  # auto: bf16 on GPU, fp32 CPU
    eval_batch_size: int = Field(128, gt=0)  # examples per evaluation batch (no gradients)
    length_group_window: int = Field(2048, gt=0)  # samples sorted by length together
    label_smoothing: float = Field(0.0, ge=0, lt=1)  # training loss only; eval_loss is the NLL
    # BatchNorm: train (statistics per micro-batch and affine), eval (running statistics
    # frozen, affine trained; accumulation exact), frozen (statistics and affine frozen)
    batchnorm: Literal["train", "eval", "frozen"] = "train"
    bn_momentum: float = Field(0.1, gt=0, le=1)  # running-statistics update (PyTorch's 0.1)
    # LoRA (peft, the `lora` extra): adapters on the encoder, the base frozen, the head trained
    lora_r: int = Field(0, ge=0)  # adapter rank; 0 = off (full fine-tuning)
    lora_alpha: float = Field(16.0, gt=0)  # the update is (alpha / r) x B A
    lora_dropout: float = Field(0.0, ge=0, lt=1)  # dropout on the adapters' input
    lora_targets: str = LORA_ALL_LINEAR  # pretrained Linears but embeddings: or "query,value"

    @field_validator("lora_targets")
    @classmethod
    def _target_names(cls, value: str) -> str:
        names = [name.strip() for name in value.split(",")]
        value = ",".join(names)  # "query, value" as written in YAML is "query,value"
        if value != LORA_ALL_LINEAR and not all(re.fullmatch(r"[A-Za-z_]\w*", n) for n in names):
            raise ValueError(f"{value!r} is not {LORA_ALL_LINEAR!r} or comma-separated module "
                             "names (e.g. 'query,value')")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> TrainConfig:
        if self.eval_every_epochs > self.max_epochs:
            raise ValueError(f"train.eval_every_epochs ({self.eval_every_epochs}) must be <= "
                             f"train.max_epochs ({self.max_epochs})")
        if isinstance(self.batch_schedule, list):
            check_batch_phases(self.batch_schedule, "train.batch_schedule")
        return self


# The budget and evaluation points are shared by every trial and the scheduler's time axis.
PER_EXPERIMENT = ("max_epochs", "eval_every_epochs")
# Domains an integer setting may be searched with (choice and grid of integer values).
INTEGER_DOMAINS = ("randint", "choice", "grid")
# model settings a search may vary, trial by trial (`search: {model.name: {choice: [...]}}`):
# the driver tokenizes the data once per distinct tokenizer and length, so only listed values
# (choice, grid, a constant) are allowed, never a range.
MODEL_SEARCH_KEYS = ("model.name", "model.max_length")
MODEL_DOMAINS = ("constant", "choice", "grid")
# Data settings a search may vary the same way: `data.<field>` for the fields a task's
# encoding depends on (`Task.tokenization_fields`; question answering: data.doc_stride).
DATA_SEARCH_PREFIX = "data."


def is_integer_type(annotation: Any) -> bool:
    """`int` or `int | None`; `bool` is its own annotation, and batch phases are lists."""
    return annotation is int or int in get_args(annotation)


# Settings counted in whole units: a searched one must be an integer in every trial.
INTEGER_FIELDS = tuple(name for name, field in TrainConfig.model_fields.items()
                       if is_integer_type(field.annotation))


def evaluation_count(max_epochs: float, eval_every_epochs: float) -> int:
    """Evaluations (Tune iterations) of a full-budget trial; the last may be a short one."""
    return math.ceil(round(max_epochs / eval_every_epochs, 9))


def per_experiment_settings(train: TrainConfig, space: dict[str, Domain]) -> tuple[float, float]:
    """(max_epochs, eval_every_epochs) as every trial trains with them: train's, or a constant
    under `search:` (trial_hyperparameters puts it in force; a distribution is refused)."""
    max_epochs, every = (float(space[key].args[0]) if key in space else getattr(train, key)
                         for key in PER_EXPERIMENT)
    return max_epochs, every


def check_batch_phases(phases: BatchPhases, where: str) -> None:
    if not phases:
        raise ValueError(f"{where}: empty; give [[progress, batch_size], ...] starting at 0.0")
    starts = [p for p, _ in phases]
    if starts[0] != 0.0:
        raise ValueError(f"{where}: first phase starts at {starts[0]}, must start at 0.0")
    if any(b <= a for a, b in zip(starts, starts[1:])) or starts[-1] >= 1.0:
        raise ValueError(f"{where}: phase starts {starts} must increase within [0, 1)")
    if any(bs <= 0 for _, bs in phases):
        raise ValueError(f"{where}: batch sizes must be > 0")


class SearchAlgConfig(Strict):
    type: Literal["tpe", "random", "grid", "optuna"] = "random"  # tpe: hyperopt's
    n_initial_points: int = Field(4, gt=0)  # TPE: random trials before the model takes over
    seed: int | None = Field(0, ge=0, lt=2**32)  # numpy RandomState seeds; None: not seeded
    sampler: Literal[SAMPLERS] | None = None  # optuna's sampler (None: tpe); see _search.py
    multivariate: bool | None = None  # optuna tpe: model parameters jointly (None: true)
    points_to_evaluate: list[dict[str, Any]] = []  # tried first, e.g. a paper's recipe


class ResourcesConfig(Strict):
    cpus_per_trial: float = Field(1.0, gt=0)  # CPUs of a one-worker trial (torch threads)
    gpus_per_trial: float = Field(0.0, ge=0)  # fractions put several trials on one GPU
    custom: dict[str, float] = {}  # Ray custom resources per trial (per worker), e.g. {spot: 1}
    # Data-parallel trials: N workers (torch DDP: gloo on CPU, NCCL on GPU), each with its
    # own CPUs and GPUs (default: cpus_per_trial and gpus_per_trial), in one placement group.
    workers_per_trial: int = Field(1, gt=0)
    cpus_per_worker: float | None = Field(None, gt=0)  # None: cpus_per_trial
    gpus_per_worker: float | None = Field(None, ge=0)  # None: gpus_per_trial
    placement: Literal["pack", "spread"] = "pack"  # the group's workers on few nodes, or many

    @property
    def worker_cpus(self) -> float:
        return self.cpus_per_trial if self.cpus_per_worker is None else self.cpus_per_worker

    @property
    def worker_gpus(self) -> float:
        return self.gpus_per_trial if self.gpus_per_worker is None else self.gpus_per_worker

    @model_validator(mode="after")
    def _workers(self) -> ResourcesConfig:
        gpus = self.worker_gpus
        if self.workers_per_trial > 1 and gpus and gpus != int(gpus):
            field = "gpus_per_trial" if self.gpus_per_worker is None else "gpus_per_worker"
            raise ValueError(f"resources.{field}: {gpus:g} is a fraction of a GPU, "
                             "but NCCL needs each worker of a trial on its own GPU; allowed: 0 "
                             "or a whole number")
        if self.workers_per_trial == 1 and (self.cpus_per_worker or self.gpus_per_worker):
            raise ValueError("resources.cpus_per_worker and gpus_per_worker apply with "
                             "resources.workers_per_trial > 1; one worker uses "
                             "cpus_per_trial and gpus_per_trial")
        return self

    @field_validator("custom")
    @classmethod
    def _custom_resources(cls, value: dict[str, float]) -> dict[str, float]:
        for name, amount in value.items():
            if name.upper() in ("CPU", "GPU", "MEMORY", "OBJECT_STORE_MEMORY"):
                raise ValueError(f"resources.custom.{name}: a built-in resource; set "
                                 "resources.cpus_per_trial or gpus_per_trial instead")
            if not amount > 0:
                raise ValueError(f"resources.custom.{name}: amount {amount:g} must be > 0")
        return value


class RunConfig(Strict):
    num_samples: int = Field(8, gt=0)  # trials (with grid search: repeats of the grid)
    storage_path: str = "~/raytune_ft_results"  # local path or a pyarrow URI (s3://, gs://)
    max_concurrent_trials: int | None = Field(None, gt=0)  # None: as many as resources allow
    time_budget_s: float | None = Field(None, gt=0)  # end the search after this many seconds
    checkpoints_to_keep: int = Field(1, gt=0)  # per trial (PBT keeps what a clone may need)
    checkpoint_every: int = Field(1, gt=0)  # iterations; PBT always checkpoints every one
    max_failures: int = Field(0, ge=0)  # retries of a failed trial from its last checkpoint;
    #   unset, 2 on a cluster (--address / RAY_ADDRESS: a lost node fails its trials)
    verbose: int = Field(1, ge=0, le=3)  # Ray Tune's console output: 0 quiet ... 3 detail
    stop: StopConfig = StopConfig()  # rules that end the whole search early


