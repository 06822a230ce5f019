"""The experiment schema: one validated, immutable model loaded once from YAML.

Every error names the dotted field path, the value received and what is allowed. This module
imports neither torch nor ray, so `raytune-ft validate` is fast and can run before Ray starts.
"""

from raytune_ft.config._schedulers import (
    FIXED_IN_A_TRIAL,
    FIXED_IN_AN_EPOCH,
    SCHEDULER_CLASSES,
    SCHEDULER_CONFIGS,
    SCHEDULER_TYPES,
    AshaConfig,
    FifoConfig,
    HyperbandConfig,
    PbtConfig,
    SchedulerConfig,
)
from raytune_ft.config._schema import (
    DATA_SEARCH_PREFIX,
    GLUE_TASK_NAMES,
    INTEGER_DOMAINS,
    INTEGER_FIELDS,
    MODEL_SEARCH_KEYS,
    PER_EXPERIMENT,
    REPORTED_METRICS,
    SCHEDULES,
    TASK_ALIASES,
    BatchPhases,
    DataConfig,
    ExperimentConfig,
    ModelConfig,
    ResourcesConfig,
    RunConfig,
    SearchAlgConfig,
    TrainConfig,
    check_batch_phases,
    data_options,
    evaluation_count,
    per_experiment_settings,
)
from raytune_ft.config._space import DISTRIBUTIONS, LOG_SCALED, Domain, parse_domain
from raytune_ft.config._tracking import MlflowConfig, TrackingConfig, WandbConfig
from raytune_ft.config._validate import (
    apply_override,
    load_config,
    model_options,
    narrow_model_search,
    searches_model,
    tokenization_keys,
    trial_data,
    trial_hyperparameters,
    trial_model,
    validate_config,
)

__all__ = [
    "DATA_SEARCH_PREFIX", "DISTRIBUTIONS", "FIXED_IN_AN_EPOCH", "FIXED_IN_A_TRIAL",
    "GLUE_TASK_NAMES",
    "INTEGER_DOMAINS", "INTEGER_FIELDS", "LOG_SCALED", "MODEL_SEARCH_KEYS", "PER_EXPERIMENT",
    "REPORTED_METRICS",
    "SCHEDULER_CLASSES", "SCHEDULER_CONFIGS", "SCHEDULER_TYPES", "SCHEDULES", "TASK_ALIASES",
    "AshaConfig", "BatchPhases", "DataConfig",
    "Domain", "ExperimentConfig", "FifoConfig", "HyperbandConfig", "ModelConfig", "PbtConfig",
    "MlflowConfig", "ResourcesConfig", "RunConfig", "SchedulerConfig", "SearchAlgConfig",
    "TrackingConfig", "TrainConfig", "WandbConfig",
    "apply_override", "check_batch_phases", "data_options", "evaluation_count",
    "load_config", "parse_domain",
    "model_options", "narrow_model_search", "per_experiment_settings", "searches_model",
    "tokenization_keys", "trial_data", "trial_hyperparameters", "trial_model",
    "validate_config",
]
