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
# URIs MLflow's store registry takes as a scheme of their own (`mlflow.tracking.registry`):
# Databricks and Unity Catalog, though they parse as plain names
_NAMED_STORES = ("databricks", "databricks-uc", "uc")


def is_file_store(uri: str) -> bool:
    """MLflow's own test (`mlflow.utils.uri.get_uri_scheme` and its store registry): no
    scheme (a path; a Windows drive letter counts as none) or `file`, the names of
    Databricks' stores aside."""
    if uri in _NAMED_STORES:
        return False
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


def check_store(configured: str | None, record: str | None = None) -> None:
    """Raise ConfigError when the store the experiment would log to is a file store.

    `record`: the experiment record a resume read its settings from. A resumed experiment's
    tracker is the one pickled when it started (Tune's `tuner.pkl`), so editing the URI in
    the record would not move it: the fix named is then what the resumed driver's
    environment can change."""
    if _allowed():
        return
    found = _file_store(configured)
    if found is not None:
        what, folder = found
        raise ConfigError(f"{what}, {_refusal()}; {_fix(configured, folder, record)}")


def _file_store(configured: str | None) -> tuple[str, Path] | None:
    """What says the experiment would log to a file store, and that store's folder; None
    where it would not. With no URI configured, where MLflow would log."""
    if configured is not None:
        if is_file_store(configured):
            return (f"tracking.mlflow.tracking_uri: {configured!r} is an MLflow file store",
                    _folder(configured))
        return None
    from_env = os.environ.get("MLFLOW_TRACKING_URI")
    if from_env:
        if is_file_store(from_env):
            return (f"tracking.mlflow.tracking_uri is not set and "
                    f"MLFLOW_TRACKING_URI={from_env!r} is an MLflow file store",
                    _folder(from_env))
        return None
    import mlflow

    default = mlflow.get_tracking_uri()  # sqlite:///<cwd>/mlflow.db, or ./mlruns with runs
    if is_file_store(default):
        return (f"tracking.mlflow.tracking_uri is not set, and MLflow's default here is the "
                f"file store {default} (it holds runs)", Path.cwd())
    return None


def _fix(configured: str | None, folder: Path, record: str | None) -> str:
    store = _FIX.format(folder=folder).removeprefix("use ")
    if record is None:
        return f"use {store}" if configured is not None else \
            f"set tracking.mlflow.tracking_uri: {store}"
    if configured is not None:  # the tracker keeps it; only MLflow's opt-out makes it work
        return (f"a resumed experiment logs to the store it started with ({record}), so "
                "resume it with MLFLOW_ALLOW_FILE_STORE=true in the environment")
    # none configured: MLflow picks the store again in the resumed driver
    return (f"resume it with MLFLOW_TRACKING_URI set to {store}, or with "
            "MLFLOW_ALLOW_FILE_STORE=true, in the environment")
