"""The `tracking:` section: which experiment trackers receive every trial.

Each tracker is an optional extra; a tracker switched on without its package is refused here,
at validation, with the pip command. Credentials never appear in this section: MLflow reads
`MLFLOW_TRACKING_TOKEN` (or `MLFLOW_TRACKING_USERNAME`/`_PASSWORD`) and W&B `WANDB_API_KEY`
from the environment, so the experiment record holds none.
"""

from __future__ import annotations

import importlib.util
from typing import Literal
from urllib.parse import urlsplit

from pydantic import Field, field_validator, model_validator

from raytune_ft.config._base import _Strict

# tracker -> (the module it needs, the extra that installs it)
EXTRAS = {"tensorboard": ("tensorboard", "tensorboard"), "mlflow": ("mlflow", "mlflow"),
          "wandb": ("wandb", "wandb")}


class MlflowConfig(_Strict):
    tracking_uri: str | None = None  # http(s)://host:port or sqlite:///f.db (MLflow 3.17
    #   refuses a folder, its file store: tracking._mlflow_store); None: $MLFLOW_TRACKING_URI,
    #   else MLflow's default (sqlite:///mlflow.db in the working folder)
    experiment_name: str | None = Field(None, min_length=1)  # None: the experiment's `name`

    @field_validator("tracking_uri")
    @classmethod
    def _no_credentials(cls, value: str | None) -> str | None:
        if value is not None and "://" in value and urlsplit(value).password is not None:
            raise ValueError("tracking.mlflow.tracking_uri: a password in the URI is refused "
                             "(it would be saved with the experiment); set "
                             "MLFLOW_TRACKING_TOKEN or MLFLOW_TRACKING_USERNAME/PASSWORD in "
                             "the environment instead")
        return value


class WandbConfig(_Strict):
    project: str = Field(min_length=1)  # the W&B project; trials are grouped by experiment name
    mode: Literal["online", "offline"] = "online"  # offline: run files under $WANDB_DIR only
    entity: str | None = None  # team or user; None: the API key's default entity


class TrackingConfig(_Strict):
    tensorboard: bool = False  # event files per trial, x axis samples_seen, with HParams
    mlflow: MlflowConfig | None = None  # a parent run per experiment, a child run per trial
    wandb: WandbConfig | None = None  # a run per trial in a group named after the experiment

    @model_validator(mode="after")
    def _extras_installed(self) -> TrackingConfig:
        for name in self.enabled():
            module, extra = EXTRAS[name]
            if importlib.util.find_spec(module) is None:
                raise ValueError(f"tracking.{name}: the {module} package is not installed; "
                                 f"pip install 'raytune-ft[{extra}]'")
        return self

    def enabled(self) -> list[str]:
        """The trackers switched on, in the order they are set up."""
        on = {"tensorboard": self.tensorboard, "mlflow": self.mlflow is not None,
              "wandb": self.wandb is not None}
        return [name for name, active in on.items() if active]
