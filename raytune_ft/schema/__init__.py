"""The experiment schema: `raytune_ft.config`'s shared sections assembled with each
component's own settings from the registries of tasks (`data:`), schedulers (`scheduler:`)
and trackers (`tracking:`), the checks across sections, loading, and one trial's settings.

Above the registries and below everything that runs an experiment: it imports no torch and no
Ray.
"""

from raytune_ft.schema._data_search import data_options
from raytune_ft.schema._experiment import (
    DEFAULT_METRICS,
    LOOP_REPORTED,
    REPORTED_METRICS,
    DataConfig,
    ExperimentConfig,
    SchedulerConfig,
    TrackingConfig,
    data_settings,
)
from raytune_ft.schema._load import load_config, validate_config, validate_record
from raytune_ft.schema._trial import (
    model_options,
    narrow_model_search,
    searches_model,
    tokenization_keys,
    trial_data,
    trial_hyperparameters,
    trial_model,
)

__all__ = ["DEFAULT_METRICS", "LOOP_REPORTED", "REPORTED_METRICS", "DataConfig",
           "ExperimentConfig", "SchedulerConfig", "TrackingConfig", "data_options",
           "data_settings", "load_config", "model_options", "narrow_model_search",
           "searches_model", "tokenization_keys", "trial_data", "trial_hyperparameters",
           "trial_model", "validate_config", "validate_record"]
