"""What every tracker logs of a Tune result, and how it names a trial's end, the same way as the
experiment folder's analysis (`analysis/_trials.py`)."""

from __future__ import annotations

import json
import math
from typing import Any

# Ray's own bookkeeping in a result; of it trackers keep the iteration and the wall time.
_RAY_KEYS = {"time_this_iter_s", "timestamp", "time_since_restore", "timesteps_since_restore",
             "iterations_since_restore", "timesteps_total", "episodes_total", "pid", "done",
             "should_checkpoint", "node_ip", "hostname", "date", "config",
             "checkpoint_dir_name", "trial_id", "experiment_tag"}
STEP = "samples_seen"  # every tracker's x axis: curves of different batch sizes line up


def metrics_of(result: dict) -> dict[str, float]:
    """Every finite number the trial reported (flags as 0/1), plus `training_iteration`."""
    out = {}
    for key, value in result.items():
        if key in _RAY_KEYS or isinstance(value, str) or value is None:
            continue
        if isinstance(value, bool):
            value = float(value)
        if isinstance(value, (int, float)) and math.isfinite(value):
            out[key] = float(value)
    return out


def step_of(result: dict) -> int:
    return int(result.get(STEP, 0))


def end_status(result: dict | None, iterations: int, errored: bool = False) -> str:
    """terminated (ran its budget), stopped (a scheduler ended it early), diverged, errored."""
    if errored:
        return "errored"
    result = result or {}
    if result.get("diverged"):
        return "diverged"
    if int(result.get("training_iteration", 0)) >= iterations:
        return "terminated"
    return "stopped"


def flat_params(values: dict[str, Any], prefix: str = "") -> dict[str, str]:
    """A nested mapping as `a.b` -> text (lists and None as JSON), for tracker params."""
    out = {}
    for key, value in values.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            out.update(flat_params(value, f"{name}."))
        else:
            out[name] = value if isinstance(value, str) else json.dumps(value)
    return out


def hparam_values(config: dict[str, Any]) -> dict[str, float | int | str | bool]:
    """A trial's hyperparameters as scalars (a batch schedule's phases as text)."""
    return {key: value if isinstance(value, (int, float, str, bool)) else json.dumps(value)
            for key, value in config.items()}


def exploited(known: dict, trained: dict) -> bool:
    """Whether a trial's result trained with another config than its previous result: PBT
    replaced the trial in between (an exploit), whether it decided on the trial's own result
    (asynchronous) or on another trial's (`synch: true`). Keeps `trained` in `known`."""
    trained = json.loads(json.dumps(trained))  # as `known` holds it after a resume
    previous = known.get("config")
    known["config"] = trained
    return previous is not None and previous != trained
