"""The experiment schema: pydantic models for every section and the checks across them."""

from __future__ import annotations

import importlib.util
import math
import re
from typing import Any, Literal, get_args

from pydantic import (
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from raytune_ft.config._base import _Strict
from raytune_ft.config._schedulers import (
    FifoConfig,
    SchedulerConfig,
)
from raytune_ft.config._search import (
    SAMPLERS,
    Objective,
    StopConfig,
    check_objectives,
    check_search,
)
from raytune_ft.config._space import DISTRIBUTIONS, Domain, did_you_mean, parse_domain
from raytune_ft.config._tracking import TrackingConfig
from raytune_ft.tasks import (
    TASKS,
    all_tasks,
    canonical_dataset,
    dataset_aliases,
    dataset_names,
    default_metrics,
    get_task,
    task_for,
    task_metrics,
)
from raytune_ft.training.metrics import DEPLOYMENT_METRICS, LOOP_METRICS

LORA_ALL_LINEAR = "all-linear"  # train.lora_targets: every Linear inside the encoder layers
SCHEDULES = ("linear", "constant", "cosine", "step", "exponential", "plateau")
# Datasets the registered tasks read by name (GLUE's); aliases map to these names.
GLUE_TASK_NAMES = dataset_names()
TASK_ALIASES = dataset_aliases()
DEFAULT_METRICS = default_metrics()  # dataset -> metric tuned without `metric:`
# Metrics a trial can report (DESIGN.md): its task's, then the loop's own; a scheduler may
# only watch one of these.
REPORTED_METRICS = (*(metric.name for metric in task_metrics()), *LOOP_METRICS,
                    *DEPLOYMENT_METRICS)


class ModelConfig(_Strict):
    name: str  # hub id, local directory, or "all-MiniLM-L6-v2" (the packaged offline copy)
    max_length: int = Field(128, gt=0)  # tokens per example after truncation; batches pad less
    # seq2seq: an encoder-decoder warm-started from two checkpoints (Rothe et al. 2020):
    # model.name the encoder, this the decoder (cross-attention new); None: model.name is one
    decoder_name: str | None = None


class ParallelFiles(_Strict):
    """Two line-aligned text files: line i of `target` translates line i of `source`."""

    source: str
    target: str


class GenerationConfig(_Strict):
    """How a seq2seq model generates at evaluation (data.kind seq2seq)."""

    num_beams: int = Field(1, gt=0)  # 1: greedy, the cheap default while searching
    max_new_tokens: int = Field(128, gt=0)  # generated tokens per example at most
    length_penalty: float = 1.0  # beam search ranks by score / length^this (> 1: longer)
    final_num_beams: int | None = Field(None, gt=0)  # confirm runs and export; None: num_beams


class DataConfig(_Strict):
    kind: str | None = None  # the task (a TASKS key); None: the one reading data.task, else text
    task: str | None = None  # GLUE task (mrpc, sst2, rte, cola, qnli, qqp, mnli); None = files
    path: str | None = None  # folder of GLUE TSVs; default $RAYTUNE_FT_DATA_DIR, else the hub
    train_file: str | ParallelFiles | None = None  # CSV/TSV/JSONL/Parquet with text and
    eval_file: str | ParallelFiles | None = None  # label columns (seq2seq: see below)
    text_columns: list[str] | None = None  # one column (single sentence) or two (pairs)
    label_column: str | None = None
    # token classification (data.kind token_classification): tagged sentences
    format: Literal["conllu", "conll", "table"] | None = None  # None: by suffix (.conllu,
    #   .jsonl/.json/.parquet: table; others: conll = CoNLL-2003 columns, tag last)
    tag_column: str | None = None  # conllu: upos (default), xpos, misc:KEY; table: tag lists
    tokens_column: str | None = None  # table: the column of word lists
    label_names: list[str] | None = None  # the tag set in id order; None: train's, sorted
    label_all_subtokens: bool = False  # False: a word's first sub-token carries its tag
    max_train_samples: int | None = Field(None, gt=0)  # fixed random subset, seeded below
    max_eval_samples: int | None = Field(None, gt=0)
    subset_seed: int = Field(0, ge=0)  # the subset is the same for every trial and every run
    # images (data.kind image_classification): train_file/eval_file are ImageFolder trees
    # (<class>/<image>) or tables whose image_column holds a path (relative to the file) or
    # the encoded bytes; label_column names the class.
    image_column: str | None = None
    random_crop_scale: float | None = Field(None, gt=0, le=1)  # least area of a random crop
    horizontal_flip: bool = False  # flip half the training images (off for digits, text)
    max_object_store_mb: float = Field(2048, gt=0)  # refuse encoded splits larger than this
    # sequence to sequence (data.kind seq2seq: translation, summarisation). train_file and
    # eval_file: {source: ..., target: ...} text files (one sentence per line, aligned), a
    # stem whose suffixes are the languages (train -> train.de + train.en), or a table
    # (JSONL/JSON/Parquet/CSV/TSV) with source and target columns or the Hugging Face
    # `translation: {de: ..., en: ...}` column.
    source_lang: str | None = None  # text files' suffix, the translation column's key
    target_lang: str | None = None
    source_column: str | None = None  # table: default "source"
    target_column: str | None = None  # table: default "target"
    source_prefix: str = ""  # before every source (T5: "translate German to English: ")
    max_target_length: int = Field(128, gt=0)  # target tokens after truncation (eos counted)
    metrics: list[Literal["bleu", "chrf", "rouge"]] = Field(  # what a trial scores
        default_factory=lambda: ["bleu", "chrf"], min_length=1)  # summarisation: [rouge]
    lowercase: bool = False  # sacreBLEU BLEU and chrF case-insensitive (-lc)
    drop_bad_pairs: bool = True  # drop and count pairs with an empty or markup-only side
    eval_subset: Literal["random", "first"] = "random"  # max_eval_samples: seeded or first n
    generation: GenerationConfig = GenerationConfig()  # greedy while searching

    def for_final_model(self) -> DataConfig:
        """These settings as confirm runs and export use them: `generation.final_num_beams`
        in force (beam search for the final figure, greedy while searching)."""
        final = self.generation.final_num_beams
        if final is None or final == self.generation.num_beams:
            return self
        generation = self.generation.model_copy(update={"num_beams": final})
        return self.model_copy(update={"generation": generation})

    @field_validator("kind")
    @classmethod
    def _known_kind(cls, value: str | None) -> str | None:
        if value is not None and value not in TASKS:
            raise ValueError(f"{value!r} is not a task{did_you_mean(value, tuple(TASKS))}; "
                             f"allowed: {', '.join(TASKS)}")
        return value

    @field_validator("task")
    @classmethod
    def _known_task(cls, value: str | None) -> str | None:
        if value is None or TASK_ALIASES.get(value.lower(), value.lower()) in GLUE_TASK_NAMES:
            return value
        hint = did_you_mean(value.lower(), GLUE_TASK_NAMES)
        regression = " (a regression task, not supported yet)" if value.lower() in (
            "stsb", "sts-b") else ""
        raise ValueError(f"{value!r} is not a supported GLUE task{regression}{hint}; allowed: "
                         f"{', '.join(GLUE_TASK_NAMES)}")

    @model_validator(mode="after")
    def _task_or_files(self) -> DataConfig:
        if self.task is None and self.train_file is None:
            raise ValueError("set data.task (a named dataset) or data.train_file (the user's "
                             "training data)")
        if self.train_file is not None and self.eval_file is None:
            raise ValueError("data.eval_file is required with data.train_file")
        task = task_for(self)
        pairs = [f for f in ("train_file", "eval_file")
                 if isinstance(getattr(self, f), ParallelFiles)]
        if pairs and not task.file_pairs:
            raise ValueError(f"data.{pairs[0]}: {{source, target}} file pairs are read only by "
                             f"data.kind seq2seq (this data is read by {task.name}); give a "
                             "path")
        if self.task is not None and canonical_dataset(self.task) not in task.datasets:
            raise ValueError(f"data.task {self.task!r} is not a {task.name} dataset; "
                             f"data.kind {self.kind!r} reads data.train_file")
        for other in all_tasks():  # a field another kind of task reads would be ignored
            ignored = [f for f in other.data_fields if f not in task.data_fields and getattr(
                self, f) != type(self).model_fields[f].get_default(call_default_factory=True)]
            if ignored:
                raise ValueError(f"data.{ignored[0]}: read only by data.kind {other.name} "
                                 f"(this data is read by {task.name})")
        task.check_data(self)  # what this kind of task needs of its files (ValueError)
        return self


BatchPhases = list[tuple[float, int]]


class TrainConfig(_Strict):
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
    freeze_embeddings: bool = False
    freeze_layers: int = Field(0, ge=0)  # bottom k encoder layers take no updates
    batch_schedule: str | BatchPhases | None = None  # name in batch_schedules or phases
    max_micro_batch: int = Field(32, gt=0)  # most samples on the device at once
    lr_scaling: Literal["none", "linear", "sqrt"] = "none"  # lr rule when batch size moves
    reference_batch_size: int | None = Field(None, gt=0)  # default: the trial's first batch
    max_grad_norm: float | None = Field(1.0, gt=0)  # None disables clipping
    adam_epsilon: float = Field(1e-8, gt=0)
    # AdamW's second-moment decay: torch's 0.999 for fine-tuning; 0.98 (Vaswani et al. 2017)
    # steadies a transformer trained from its config in its first thousand steps
    adam_beta2: float = Field(0.999, gt=0, lt=1)
    seed: int = Field(0, ge=0, lt=2**32)  # head init, data order, dropout (numpy: 0..2^32-1)
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"  # auto: bf16 on GPU, fp32 CPU
    eval_batch_size: int = Field(128, gt=0)
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


def _is_integer(annotation: Any) -> bool:
    """`int` or `int | None`; `bool` is its own annotation, and batch phases are lists."""
    return annotation is int or int in get_args(annotation)


# Settings counted in whole units: a searched one must be an integer in every trial.
INTEGER_FIELDS = tuple(name for name, field in TrainConfig.model_fields.items()
                       if _is_integer(field.annotation))


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


class SearchAlgConfig(_Strict):
    type: Literal["tpe", "random", "grid", "optuna"] = "random"  # tpe: hyperopt's
    n_initial_points: int = Field(4, gt=0)  # TPE: random trials before the model takes over
    seed: int | None = Field(0, ge=0, lt=2**32)  # numpy RandomState seeds; None: not seeded
    sampler: Literal[SAMPLERS] | None = None  # optuna's sampler (None: tpe); see _search.py
    multivariate: bool | None = None  # optuna tpe: model parameters jointly (None: true)
    points_to_evaluate: list[dict[str, Any]] = []  # tried first, e.g. a paper's recipe


class ResourcesConfig(_Strict):
    cpus_per_trial: float = Field(1.0, gt=0)
    gpus_per_trial: float = Field(0.0, ge=0)  # fractions put several trials on one GPU
    custom: dict[str, float] = {}  # Ray custom resources per trial (per worker), e.g. {spot: 1}
    # Data-parallel trials: N workers (torch DDP: gloo on CPU, NCCL on GPU), each with its
    # own CPUs and GPUs (default: cpus_per_trial and gpus_per_trial), in one placement group.
    workers_per_trial: int = Field(1, gt=0)
    cpus_per_worker: float | None = Field(None, gt=0)
    gpus_per_worker: float | None = Field(None, ge=0)
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


class RunConfig(_Strict):
    num_samples: int = Field(8, gt=0)  # trials (with grid search: repeats of the grid)
    storage_path: str = "~/raytune_ft_results"  # local path or a pyarrow URI (s3://, gs://)
    max_concurrent_trials: int | None = Field(None, gt=0)
    time_budget_s: float | None = Field(None, gt=0)
    checkpoints_to_keep: int = Field(1, gt=0)
    checkpoint_every: int = Field(1, gt=0)  # iterations; PBT always checkpoints every one
    max_failures: int = Field(0, ge=0)  # retries of a failed trial from its last checkpoint
    verbose: int = Field(1, ge=0, le=3)
    stop: StopConfig = StopConfig()  # rules that end the whole search early


class ExperimentConfig(_Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    metric: str = "eval_accuracy"
    mode: Literal["max", "min"] = "max"
    objectives: list[Objective] = []  # several goals; the first is metric/mode
    model: ModelConfig
    data: DataConfig
    train: TrainConfig = TrainConfig()
    batch_schedules: dict[str, BatchPhases] = {}
    search: dict[str, Any] = {}
    scheduler: SchedulerConfig = FifoConfig(type="fifo")
    search_alg: SearchAlgConfig = SearchAlgConfig()
    resources: ResourcesConfig = ResourcesConfig()
    run: RunConfig = RunConfig()
    tracking: TrackingConfig = TrackingConfig()  # TensorBoard, MLflow, W&B (config/_tracking)

    @model_validator(mode="before")
    @classmethod
    def _model_name_from_search(cls, values: Any) -> Any:
        """With `model.name` searched, `model:` may leave the name out: the first listed
        name stands in for it (the run header and the record show it). A fixed name must be
        one of the searched names (checked after the names): any other would never be
        trained, yet shown as the model."""
        if not isinstance(values, dict) or not isinstance(values.get("search"), dict):
            return values
        model, search = values.get("model", {}), values["search"]
        nested = search.get("model") if isinstance(search.get("model"), dict) else {}
        spec = nested.get("name", search.get("model.name"))  # nested wins: _dotted_model_keys
        if not isinstance(model, dict) or "name" in model or spec is None:
            return values
        domain = parse_domain("search.model.name", spec)
        return {**values, "model": {**model, "name": domain.values[0]}}

    @model_validator(mode="before")
    @classmethod
    def _task_default_metric(cls, values: Any) -> Any:
        """A dataset's own default metric, where its task names one: GLUE scores CoLA by
        Matthews correlation, so without `metric:` CoLA tunes eval_mcc."""
        if not isinstance(values, dict) or "metric" in values:
            return values
        objectives = values.get("objectives")
        if isinstance(objectives, list) and objectives and isinstance(objectives[0], dict):
            first = objectives[0]  # metric and mode default to the first objective
            if first.get("metric") in REPORTED_METRICS:  # else objectives.0 says it is not
                # a missing or unknown mode: objectives.0.mode says so, not the top-level mode
                mode = {"mode": first["mode"]} if first.get("mode") in ("max", "min") else {}
                return {**values, "metric": first["metric"], **mode}
            return values
        data = values.get("data")
        task = data.get("task") if isinstance(data, dict) else getattr(data, "task", None)
        if isinstance(task, str) and task.lower() in DEFAULT_METRICS:
            return {**values, "metric": DEFAULT_METRICS[task.lower()]}
        kind = data.get("kind") if isinstance(data, dict) else getattr(data, "kind", None)
        if isinstance(kind, str) and kind in TASKS:  # a tagger scores eval_token_accuracy
            return {**values, "metric": get_task(kind).primary_metric}
        return values

    @field_validator("search", mode="before")
    @classmethod
    def _dotted_model_keys(cls, value: Any) -> Any:
        """`search: {model: {name: ...}}` (and `--set search.model.name=...`) is the dotted
        `model.name` key. Given both ways, the nested spelling wins, whatever the order:
        `--set search.model.name=...` writes the nested one, so it overrides a file's
        dotted key."""
        if not (isinstance(value, dict) and isinstance(value.get("model"), dict)):
            return value
        nested = value["model"]
        if len(nested) == 1 and next(iter(nested)) in DISTRIBUTIONS:
            return value  # `search.model: {choice: ...}`: refused as not a train setting
        flat = {k: v for k, v in value.items() if k != "model"}
        return {**flat, **{f"model.{key}": spec for key, spec in nested.items()}}

    @field_validator("metric")
    @classmethod
    def _known_metric(cls, value: str) -> str:
        if value not in REPORTED_METRICS:
            allowed = ", ".join(REPORTED_METRICS)
            raise ValueError(f"{value!r} is never reported; allowed: {allowed}")
        return value

    @model_validator(mode="after")
    def _cross_checks(self) -> ExperimentConfig:
        for name, phases in self.batch_schedules.items():
            check_batch_phases(phases, f"batch_schedules.{name}")
        space = self.space()
        for key, domain in space.items():
            _check_domain_values(self, key, domain)
        _check_decoder_name(self, space)
        if "model.name" in space and self.model.name not in space["model.name"].values:
            raise ValueError(f"model.name: {self.model.name!r} is not among search.model.name "
                             f"{space['model.name'].values}; leave model.name out or list it")
        schedule = self.train.batch_schedule
        if isinstance(schedule, str) and schedule not in (*self.batch_schedules, "none"):
            raise ValueError(f"train.batch_schedule: {schedule!r} is not in batch_schedules "
                             f"(defined: {', '.join(self.batch_schedules) or 'none'})")
        _check_scheduler(self, space)
        if self.search_alg.type == "tpe" and any(d.kind == "grid" for d in space.values()):
            raise ValueError("search_alg.type: 'tpe' cannot take grid dimensions; use "
                             "search_alg.type: grid, or choice instead of grid")
        _check_grid_search(self.search_alg.type, space)
        _check_lora_installed(self.train, space)
        check_objectives(self.objectives, self.metric, self.mode, REPORTED_METRICS)
        check_search(self)
        return self

    def objective_list(self) -> list[tuple[str, str]]:
        """(metric, mode) of every objective; without `objectives:`, the experiment metric."""
        return ([(o.metric, o.mode) for o in self.objectives] if self.objectives
                else [(self.metric, self.mode)])

    @property
    def iterations(self) -> int:
        """Tune iterations of a full-budget trial (one per evaluation interval), without data:
        the schedulers' time axis. With the data sizes, `raytune_ft.plan` holds it."""
        return evaluation_count(*per_experiment_settings(self.train, self.space()))

    def space(self) -> dict[str, Domain]:
        """The parsed `search:` section; `raytune_ft.plan` parses it once per experiment."""
        return {key: parse_domain(f"search.{key}", spec) for key, spec in self.search.items()}


def _check_domain_values(config: ExperimentConfig, key: str, domain: Domain) -> None:
    """Every value a search dimension can produce must be a valid train setting."""
    if key.startswith("model."):
        _check_model_domain(key, domain)
        return
    if key not in TrainConfig.model_fields:
        hint = did_you_mean(key, TrainConfig.model_fields)
        raise ValueError(f"search.{key}: not a train setting{hint}")
    if key in PER_EXPERIMENT and domain.kind != "constant":
        raise ValueError(f"search.{key}: cannot be searched; it sets the budget and the "
                         "evaluation points every trial and scheduler share (set train."
                         f"{key})")
    if key in INTEGER_FIELDS:
        _check_integer_domain(key, domain)
    for value in domain.values:
        if key == "batch_schedule" and isinstance(value, str) and value != "none":
            if value not in config.batch_schedules:
                raise ValueError(f"search.batch_schedule: {value!r} is not in batch_schedules "
                                 f"(defined: {', '.join(config.batch_schedules) or 'none'})")
        try:
            TrainConfig.model_validate({**config.train.model_dump(), key: value})
        except ValidationError as error:
            detail = error.errors()[0]["msg"]
            raise ValueError(f"search.{key}: value {value!r} is invalid: {detail}") from None


def _check_decoder_name(config: ExperimentConfig, space: dict[str, Domain]) -> None:
    """`model.decoder_name` warm-starts an encoder-decoder: only a generating task reads
    it, and only beside one fixed encoder."""
    if config.model.decoder_name is None:
        return
    task = task_for(config.data)
    if task.auto_class != "AutoModelForSeq2SeqLM":
        raise ValueError(f"model.decoder_name: read only by data.kind seq2seq (an "
                         f"encoder-decoder; this data is read by {task.name})")
    if "model.name" in space:
        raise ValueError("model.decoder_name: set with search.model.name; the encoder of a "
                         "warm-started encoder-decoder is one fixed model.name")


def _check_model_domain(key: str, domain: Domain) -> None:
    """`model.name` and `model.max_length` searched: listed values only, each one valid as
    the fixed field (the position limit of each model is checked with the model, in
    `runner.prepare`)."""
    if key not in MODEL_SEARCH_KEYS:
        raise ValueError(f"search.{key}: not searchable; allowed model keys: "
                         f"{', '.join(MODEL_SEARCH_KEYS)}")
    if domain.kind not in MODEL_DOMAINS:
        raise ValueError(f"search.{key}: {domain.kind} {list(domain.args)} is a range, but "
                         "each distinct value costs one tokenization of the data; allowed: "
                         "choice or grid of listed values, or a constant")
    for value in domain.values:
        if key == "model.name" and not (isinstance(value, str) and value.strip()):
            raise ValueError(f"search.model.name: value {value!r} is not a model name; "
                             "allowed: hub ids, local directories or 'all-MiniLM-L6-v2'")
        if key == "model.max_length" and (isinstance(value, bool) or not isinstance(
                value, int) or value <= 0):
            raise ValueError(f"search.model.max_length: value {value!r} is not a positive "
                             "integer; allowed: whole numbers of tokens > 0")


def _check_integer_domain(key: str, domain: Domain) -> None:
    """An integer setting searched with a continuous domain would train with a fractional
    value (or one rounded behind the user's back): refuse it, and any non-integer value."""
    if domain.kind not in ("constant", *INTEGER_DOMAINS):
        raise ValueError(f"search.{key}: {domain.kind} {list(domain.args)} draws fractional "
                         f"values, but {key} is an integer; allowed: randint, choice or grid "
                         "of integers, or an integer constant")
    for value in domain.values:
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
            raise ValueError(f"search.{key}: value {value!r} is not an integer; {key} takes "
                             "whole numbers (write it without a decimal point)")


def _check_lora_installed(train: TrainConfig, space: dict[str, Domain]) -> None:
    """LoRA needs the `lora` extra; say so at validation, not in a trial."""
    ranks = space["lora_r"].values if "lora_r" in space else [train.lora_r]
    if any(rank for rank in ranks) and importlib.util.find_spec("peft") is None:
        raise ValueError("train.lora_r: LoRA needs peft, which is not installed: pip install "
                         "'raytune-ft[lora]'")


def _check_grid_search(search_alg: str, space: dict[str, Domain]) -> None:
    """Under grid search a `choice` still draws one value per trial; the user meant a grid."""
    choices = [key for key, domain in space.items() if domain.kind == "choice"]
    if search_alg == "grid" and choices:
        key = choices[0]
        raise ValueError(f"search.{key}: choice {list(space[key].args)} draws one value per "
                         f"trial, not a grid axis, under search_alg.type: grid; write "
                         f"{{grid: {list(space[key].args)}}} to try every value")


def _check_scheduler(config: ExperimentConfig, space: dict[str, Domain]) -> None:
    iterations = evaluation_count(*per_experiment_settings(config.train, space))
    config.scheduler.check_against(iterations, space)
