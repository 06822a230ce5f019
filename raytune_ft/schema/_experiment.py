"""The experiment schema, assembled: the shared sections of `raytune_ft.config` with each
component's own section from its registry (a task's `data:`, the `scheduler:`, the trackers
under `tracking:`), and the checks across sections. One validated, immutable model, loaded
once (`load_config`); derived values are computed, never written back into it.
"""

from __future__ import annotations

import importlib.util
from typing import Any, Literal

from pydantic import Field, TypeAdapter, ValidationError, field_validator, model_validator

from raytune_ft import schedulers, tasks, tracking
from raytune_ft.config import (
    DATA_SEARCH_PREFIX,
    DISTRIBUTIONS,
    INTEGER_DOMAINS,
    INTEGER_FIELDS,
    MODEL_DOMAINS,
    MODEL_SEARCH_KEYS,
    OPTUNA_PIP,
    PER_EXPERIMENT,
    SAMPLER_PACKAGES,
    SINGLE_OBJECTIVE_SAMPLERS,
    BatchPhases,
    DataSettings,
    Domain,
    ModelConfig,
    Objective,
    ResourcesConfig,
    RunConfig,
    SearchAlgConfig,
    Strict,
    TrainConfig,
    check_batch_phases,
    check_objectives,
    did_you_mean,
    domain_contains,
    evaluation_count,
    is_integer_type,
    parse_domain,
    per_experiment_settings,
)
from raytune_ft.plan import TrialPlan, plan_experiment
from raytune_ft.schedulers import SCHEDULERS, scheduler_spec
from raytune_ft.schema._data_search import check_encodings
from raytune_ft.tasks import TASKS, default_metrics, get_task, task_for, task_metrics
from raytune_ft.training.metrics import DEPLOYMENT_METRICS, LOOP_METRICS

DataConfig = tasks.settings_union()  # `data:`: the settings class of the task data.kind names
SchedulerConfig = schedulers.settings_union()  # `scheduler:`: the one scheduler.type names
TrackingConfig = tracking.settings_model()  # `tracking:`: one optional entry per tracker
DEFAULT_METRICS = default_metrics()  # dataset -> metric tuned without `metric:`
# Metrics a trial can report (DESIGN.md): its task's, then the loop's own; a scheduler may
# only watch one of these. `_check_task_metrics` narrows them to the chosen task's.
LOOP_REPORTED = (*LOOP_METRICS, *DEPLOYMENT_METRICS)
REPORTED_METRICS = (*(metric.name for metric in task_metrics()), *LOOP_REPORTED)


class ExperimentConfig(Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")  # the experiment folder's name
    metric: str = "eval_accuracy"  # what schedulers and the ranking watch (a task's default)
    mode: Literal["max", "min"] = "max"  # whether a higher or a lower metric is better
    objectives: list[Objective] = []  # several goals; the first is metric/mode
    model: ModelConfig
    data: DataConfig  # the task's own settings (tasks/<kind>.py), chosen by data.kind
    train: TrainConfig = TrainConfig()
    batch_schedules: dict[str, BatchPhases] = {}  # name -> [[progress, batch_size], ...]
    search: dict[str, Any] = {}  # train setting (model.name/max_length, data.*) -> domain
    scheduler: SchedulerConfig = Field(default_factory=lambda: SCHEDULERS["fifo"].settings())
    search_alg: SearchAlgConfig = SearchAlgConfig()
    resources: ResourcesConfig = ResourcesConfig()
    run: RunConfig = RunConfig()
    tracking: TrackingConfig = TrackingConfig()  # one entry per tracker (tracking/<name>.py)

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
        kind = tasks.kind_of(data) if isinstance(data, dict) else getattr(data, "kind", None)
        if isinstance(kind, str) and kind in TASKS:  # a tagger scores eval_token_accuracy
            return {**values, "metric": get_task(kind).primary_metric}
        return values

    @field_validator("search", mode="before")
    @classmethod
    def _dotted_model_keys(cls, value: Any) -> Any:
        """`search: {model: {name: ...}}` (and `--set search.model.name=...`) is the dotted
        `model.name` key, and `search: {data: {doc_stride: ...}}` `data.doc_stride`. Given
        both ways, the nested spelling wins, whatever the order: `--set
        search.model.name=...` writes the nested one, so it overrides a file's dotted key."""
        for section in ("model", "data"):
            if not (isinstance(value, dict) and isinstance(value.get(section), dict)):
                continue
            nested = value[section]
            if len(nested) == 1 and next(iter(nested)) in DISTRIBUTIONS:
                continue  # `search.model: {choice: ...}`: refused as not a train setting
            flat = {k: v for k, v in value.items() if k != section}
            value = {**flat, **{f"{section}.{key}": spec for key, spec in nested.items()}}
        return value

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
        check_encodings(self.data, self.model.max_length, space)
        _check_lora_installed(self.train, space)
        check_objectives(self.objectives, self.metric, self.mode, REPORTED_METRICS)
        _check_task_metrics(self)  # a metric some task reports, but not the chosen one
        check_search(self)
        return self

    def plan(self, n_train: int | list[int] | None = None) -> TrialPlan:
        """The trial plan (`raytune_ft.plan`); with `n_train` (a size per tokenization where
        they differ) it holds the budgets too."""
        return plan_experiment(self.train, self.space(), self.batch_schedules, n_train)

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
    if key.startswith(DATA_SEARCH_PREFIX):
        _check_data_domain(config, key, domain)
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
    if not task.encoder_decoder:
        readers = [name for name, other in TASKS.items() if other.encoder_decoder]
        raise ValueError(f"model.decoder_name: read only by data.kind {', '.join(readers)} "
                         f"(an encoder-decoder; this data is read by {task.name})")
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
    _check_listed(key, domain, "tokenization")
    for value in domain.values:
        if key == "model.name" and not (isinstance(value, str) and value.strip()):
            raise ValueError(f"search.model.name: value {value!r} is not a model name; "
                             "allowed: hub ids, local directories or 'all-MiniLM-L6-v2'")
        if key == "model.max_length" and (isinstance(value, bool) or not isinstance(
                value, int) or value <= 0):
            raise ValueError(f"search.model.max_length: value {value!r} is not a positive "
                             "integer; allowed: whole numbers of tokens > 0")


def _check_listed(key: str, domain: Domain, cost: str) -> None:
    """A key whose every distinct value costs the driver one `cost` of the data (a
    tokenization, an encoding) takes listed values only, never a range."""
    if domain.kind not in MODEL_DOMAINS:
        raise ValueError(f"search.{key}: {domain.kind} {list(domain.args)} is a range, but "
                         f"each distinct value costs one {cost} of the data; allowed: "
                         "choice or grid of listed values, or a constant")


def _check_data_domain(config: ExperimentConfig, key: str, domain: Domain) -> None:
    """`data.<field>` searched: a field the task's encoding depends on, listed values only,
    each one valid as the fixed field (`check_encodings` checks each against every length)."""
    task, name = task_for(config.data), key.removeprefix(DATA_SEARCH_PREFIX)
    if name not in task.tokenization_fields:
        allowed = ", ".join(DATA_SEARCH_PREFIX + f for f in task.tokenization_fields) or "none"
        raise ValueError(f"search.{key}: not searchable; allowed data keys for data.kind "
                         f"{task.name}: {allowed}")
    _check_listed(key, domain, "encoding")
    settings = type(config.data)
    if is_integer_type(settings.model_fields[name].annotation):
        _check_integer_domain(key, domain)
    for value in domain.values:
        try:
            settings.model_validate({**config.data.model_dump(), name: value})
        except ValidationError as error:
            detail = error.errors()[0]["msg"].removeprefix("Value error, ")
            raise ValueError(f"search.{key}: value {value!r} is invalid: {detail}") from None


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


def _check_task_metrics(config: ExperimentConfig) -> None:
    """Every objective is a metric the chosen task reports (or the loop's own): a task's
    metric under another task (eval_top5 on text) would never arrive."""
    task = task_for(config.data)
    allowed = (*(metric.name for metric in task.metrics), *LOOP_REPORTED)
    named = [("metric", config.metric)] + [(f"objectives.{i}.metric", objective.metric)
                                           for i, objective in enumerate(config.objectives)]
    for where, metric in named:
        if metric not in allowed:
            raise ValueError(f"{where}: {metric!r} is not reported by data.kind {task.name}; "
                             f"allowed: {', '.join(allowed)}")


def check_search(config: ExperimentConfig) -> None:
    """The searcher's settings against the objectives and the search space."""
    alg = config.search_alg
    if alg.type != "optuna":
        for key in ("sampler", "multivariate"):
            if getattr(alg, key) is not None:
                raise ValueError(f"search_alg.{key}: only with search_alg.type: optuna "
                                 f"(got type {alg.type!r})")
    _check_population(config)
    objectives = config.objective_list()
    if len(objectives) > 1 and alg.type == "tpe":
        raise ValueError(f"objectives: {len(objectives)} objectives, but search_alg.type "
                         "'tpe' (hyperopt) optimises one metric; use search_alg.type: optuna "
                         "(sampler tpe, gp, nsga2, random or qmc), or a single objective")
    if alg.type == "optuna":
        _check_optuna(config, len(objectives))
    for i, point in enumerate(alg.points_to_evaluate):
        _check_point(config, i, point)


def _check_population(config: ExperimentConfig) -> None:
    """PBT and PB2 choose and mutate configurations themselves: Ray's
    `PopulationBasedTraining` refuses a searcher when the first trial is added (a
    traceback after the experiment folder is laid out), so refuse it here."""
    alg = config.search_alg
    if scheduler_spec(config.scheduler).population and alg.type in ("tpe", "optuna"):
        raise ValueError(f"search_alg.type: {alg.type!r} cannot drive scheduler.type "
                         f"{config.scheduler.type!r}, which picks and mutates its own "
                         "configurations; use search_alg.type random or grid with it")


def _check_optuna(config: ExperimentConfig, n_objectives: int) -> None:
    alg = config.search_alg
    if importlib.util.find_spec("optuna") is None:
        raise ValueError(f"search_alg.type: optuna needs the optuna package: {OPTUNA_PIP}")
    sampler = alg.sampler or "tpe"
    if sampler in SAMPLER_PACKAGES:
        module, pip = SAMPLER_PACKAGES[sampler]
        if importlib.util.find_spec(module) is None:
            raise ValueError(f"search_alg.sampler: {sampler} needs the {module} package: "
                             f"{pip}")
    if n_objectives > 1 and sampler in SINGLE_OBJECTIVE_SAMPLERS:
        raise ValueError(f"search_alg.sampler: {sampler} optimises one objective, but "
                         f"{n_objectives} are set; use tpe, gp, nsga2, random or qmc")
    if alg.multivariate is not None and sampler != "tpe":
        raise ValueError(f"search_alg.multivariate: only with sampler tpe (got sampler "
                         f"{sampler!r})")
    logq = [key for key, domain in config.space().items() if domain.kind == "qloguniform"]
    if logq:  # Optuna's FloatDistribution cannot combine log and step (Ray drops the q)
        raise ValueError(f"search.{logq[0]}: qloguniform cannot be searched by Optuna (its "
                         "log-scale distributions take no step q); use loguniform, or "
                         "quniform")
    grids = [key for key, domain in config.space().items() if domain.kind == "grid"]
    if grids:
        raise ValueError(f"search.{grids[0]}: grid cannot be searched by Optuna; use choice, "
                         "or search_alg.type: grid")


def _check_point(config: ExperimentConfig, i: int, point: dict[str, Any]) -> None:
    """A starting point sets every searched key to a value its domain can produce."""
    space = config.space()
    where = f"search_alg.points_to_evaluate.{i}"
    for key in point:
        if key not in space:
            raise ValueError(f"{where}.{key}: not searched; searched keys: "
                             f"{', '.join(space) or 'none'}")
    for key, domain in space.items():
        if domain.kind == "constant":
            continue
        if key not in point:
            raise ValueError(f"{where}: {key} is missing; a point sets every searched key "
                             f"({', '.join(k for k, d in space.items() if d.kind != 'constant')})")
        if not domain_contains(domain, point[key]):
            raise ValueError(f"{where}.{key}: {point[key]!r} is outside search.{key} "
                             f"({domain.kind} {list(domain.args)})")




_DATA = TypeAdapter(DataConfig)


def data_settings(**fields: Any) -> DataSettings:
    """A `data:` section validated as an experiment validates it: the settings class of the
    task `kind` names (or the one reading a named dataset, else the first registered)."""
    return _DATA.validate_python(fields)
