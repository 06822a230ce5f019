"""MLflow: a parent run per experiment (its settings as params, the record and, at the end,
the analysis tables and report.html as artifacts), a nested child run per trial, all on a
background thread of the driver (`_mlflow`). Credentials never appear in the settings:
MLflow reads MLFLOW_TRACKING_TOKEN (or MLFLOW_TRACKING_USERNAME/_PASSWORD) from the
environment, so the experiment record holds none."""

from __future__ import annotations

from urllib.parse import urlsplit

from pydantic import Field, field_validator

from raytune_ft.config import TrackerSettings
from raytune_ft.tracking._base import End, Tracker, TrackingContext


class MlflowSettings(TrackerSettings):
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


def callbacks(context: TrackingContext) -> list:
    from raytune_ft.tracking._common import flat_params
    from raytune_ft.tracking._mlflow import MlflowTracker, tracking_uri

    settings = context.settings
    return [MlflowTracker(tracking_uri(settings.tracking_uri),
                          settings.experiment_name or context.name, context.experiment_dir,
                          context.group, context.iterations, flat_params(context.record),
                          record_file=context.record_file)]


def finish(context: TrackingContext, end: End) -> None:
    from raytune_ft.tracking._mlflow import finish as finish_runs

    finish_runs(context.experiment_dir, end.analysis_dir, end.best, end.interrupted)


def check(settings: MlflowSettings, record: str | None) -> None:
    from raytune_ft.tracking._mlflow_store import check_store

    check_store(settings.tracking_uri, record)


def header(settings: MlflowSettings) -> str:
    uri = settings.tracking_uri or "$MLFLOW_TRACKING_URI or MLflow's default"
    return f"mlflow ({uri})"


TRACKER = Tracker(MlflowSettings, "mlflow", "mlflow", callbacks, header, finish,
                  example={"tracking_uri": "sqlite:///mlflow.db"}, check=check)
