"""The building blocks of an experiment file: the sections every component shares (model,
train, resources, run, search algorithm, objectives), the search-space syntax, the base
classes of a component's own settings, YAML reading and `--set` overrides, and one-line
validation errors that name the dotted path, the value received and what is allowed.

The bottom layer: it imports neither torch nor Ray nor anything of raytune_ft but `errors`.
The experiment itself, assembled from these and from the registries of tasks, schedulers and
trackers, is `raytune_ft.schema`.
"""

from raytune_ft.config._base import Strict, load_entries
from raytune_ft.config._components import (
    ComponentKind,
    DataSettings,
    SchedulerSettings,
    TrackerSettings,
    component_union,
)
from raytune_ft.config._errors import one_line
from raytune_ft.config._search import (
    OPTUNA_PIP,
    SAMPLER_PACKAGES,
    SAMPLERS,
    SINGLE_OBJECTIVE_SAMPLERS,
    Objective,
    PlateauConfig,
    StopConfig,
    check_objectives,
    domain_contains,
    on_grid,
)
from raytune_ft.config._sections import (
    DATA_SEARCH_PREFIX,
    INTEGER_DOMAINS,
    INTEGER_FIELDS,
    LORA_ALL_LINEAR,
    MODEL_DOMAINS,
    MODEL_SEARCH_KEYS,
    PER_EXPERIMENT,
    SCHEDULES,
    BatchPhases,
    ModelConfig,
    ResourcesConfig,
    RunConfig,
    SearchAlgConfig,
    TrainConfig,
    check_batch_phases,
    evaluation_count,
    is_integer_type,
    per_experiment_settings,
)
from raytune_ft.config._space import DISTRIBUTIONS, LOG_SCALED, Domain, did_you_mean, parse_domain
from raytune_ft.config._yaml import apply_override, read_yaml

__all__ = [
    "DATA_SEARCH_PREFIX", "DISTRIBUTIONS", "INTEGER_DOMAINS", "INTEGER_FIELDS", "LOG_SCALED",
    "LORA_ALL_LINEAR", "MODEL_DOMAINS", "MODEL_SEARCH_KEYS", "OPTUNA_PIP", "PER_EXPERIMENT",
    "SAMPLERS", "SAMPLER_PACKAGES", "SCHEDULES", "SINGLE_OBJECTIVE_SAMPLERS",
    "BatchPhases", "ComponentKind", "DataSettings", "Domain", "ModelConfig", "Objective",
    "PlateauConfig", "ResourcesConfig", "RunConfig", "SchedulerSettings", "SearchAlgConfig",
    "StopConfig", "Strict", "TrackerSettings", "TrainConfig",
    "apply_override", "check_batch_phases", "check_objectives", "component_union",
    "did_you_mean", "domain_contains", "evaluation_count", "is_integer_type", "load_entries",
    "on_grid", "one_line", "parse_domain", "per_experiment_settings", "read_yaml",
]
