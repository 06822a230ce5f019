"""Which MLflow store an experiment would log to, checked before Ray starts.

MLflow 3.17 refuses its file store (a `file://` URI or a plain folder, `./mlruns` among them:
`FileStore.__init__` raises "The filesystem tracking backend ... is in maintenance mode"
unless `MLFLOW_ALLOW_FILE_STORE=true`). Found at the first log, a run would go on for hours
with a warning and nothing tracked; here it is one line at `validate`, naming the fix. With
no URI set MLflow uses `$MLFLOW_TRACKING_URI`, else `sqlite:///mlflow.db` in the driver's
working folder, unless `./mlruns` there already holds runs: then its file store.

No Ray and no MLflow import for a configured URI (MLflow is imported, ~2 s, only to ask it
for its default when none is set).
"""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import urlparse

from raytune_ft.errors import ConfigError

_FIX = "use a database (sqlite:///{folder}/mlflow.db) or a tracking server (http://host:5000)"


def is_file_store(uri: str) -> bool:
    """MLflow's own test (`mlflow.utils.uri.get_uri_scheme` and its store registry): no
    scheme (a path; a Windows drive letter counts as none) or `file`."""
    scheme = urlparse(uri).scheme
    return scheme in ("", "file") or (len(scheme) == 1 and scheme.isalpha())


def _allowed() -> bool:
    """MLflow's own opt-out, read as MLflow reads it."""
    return os.environ.get("MLFLOW_ALLOW_FILE_STORE", "").lower() in ("true", "1")


def _folder(uri: str) -> Path:
    path = urlparse(uri).path if uri.startswith("file:") else uri
    return Path(path or ".").expanduser().resolve().parent


def _refusal() -> str:
    from importlib.metadata import version

    return f"which MLflow {version('mlflow')} refuses to log to (maintenance mode)"


def check_store(configured: str | None) -> None:
    """Raise ConfigError when the store the experiment would log to is a file store."""
    if _allowed():
        return
    if configured is not None:
        if is_file_store(configured):
            raise ConfigError(f"tracking.mlflow.tracking_uri: {configured!r} is an MLflow "
                              f"file store, {_refusal()}; "
                              + _FIX.format(folder=_folder(configured)))
        return
    from_env = os.environ.get("MLFLOW_TRACKING_URI")
    if from_env:
        if is_file_store(from_env):
            raise ConfigError(f"tracking.mlflow.tracking_uri is not set and "
                              f"MLFLOW_TRACKING_URI={from_env!r} is an MLflow file store, "
                              f"{_refusal()}; set tracking.mlflow.tracking_uri: "
                              + _FIX.format(folder=_folder(from_env)).removeprefix("use "))
        return
    import mlflow

    default = mlflow.get_tracking_uri()  # sqlite:///<cwd>/mlflow.db, or ./mlruns with runs
    if is_file_store(default):
        raise ConfigError(f"tracking.mlflow.tracking_uri is not set, and MLflow's default "
                          f"here is the file store {default} (it holds runs), {_refusal()}; "
                          "set tracking.mlflow.tracking_uri: "
                          + _FIX.format(folder=Path.cwd()).removeprefix("use "))
