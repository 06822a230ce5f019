"""raytune_ft: tune the hyperparameters of transformer fine-tuning on a Ray cluster."""

from raytune_ft.errors import (
    ConfigError,
    DataError,
    ExperimentError,
    ModelError,
    RaytuneFtError,
    ResourceError,
)

__version__ = "0.1.0"
__all__ = ["ConfigError", "DataError", "ExperimentError", "ModelError", "RaytuneFtError",
           "ResourceError", "__version__"]
