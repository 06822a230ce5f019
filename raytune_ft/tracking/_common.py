"""What every tracker logs of a Tune result, and how it names a trial's end, the same way as the
experiment folder's analysis (`analysis/_trials.py`)."""

from __future__ import annotations

import json
import math
from pathlib import PurePosixPath
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


def clone_source(trial) -> str | None:
    """Where a (re)starting trial's checkpoint comes from when another trial wrote it (its
    `<trial folder>/checkpoint_<n>`): a PBT/PB2 exploit. None for a first start, a resume, a
    retry or an unpause, which restore the trial's own checkpoint.

    An exploit is recognised by the restore itself, not by a config change: PBT may leave
    the config as it was (a choice re-drawn to the same value, a value clipped at its bound)
    and still replace the trial's weights and position with the donor's. Tune calls
    `on_trial_start` whenever a trial's actor (re)starts, just before it restores
    `trial.checkpoint`; after an exploit that is the donor's checkpoint, and Ray keeps a
    checkpoint in the folder of the trial that reported it. A flag the trainable reported
    would arrive with the first result only, and would need the trainable to know whose
    checkpoint it loaded; the folder says it in the driver, for every kind of restart."""
    checkpoint = trial.checkpoint
    if checkpoint is None:
        return None
    path = PurePosixPath(checkpoint.path)
    if path.parent.name == trial.storage.trial_dir_name:
        return None
    return f"{path.parent.name}/{path.name}"


class Clones:
    """Which results of each trial a tracker logs, given its restarts: a point at or before
    the last one logged is a restore re-reporting it (a resume), unless the trial was just
    cloned (an exploit), whose points continue from the donor's position, before or after
    the trial's own. `known` is the trial's entry in the tracker record (`_runs`):
    `last_step`, `exploits`, and `clone_of`, the checkpoint of its last exploit logged.

    Driver-side, on the tracker's worker thread; what is pending lives in this driver only.
    """

    def __init__(self) -> None:
        self._pending: dict[str, str] = {}  # trial id -> the checkpoint it restarts from
        self._started: set[str] = set()  # trials started in this driver

    def started(self, known: dict, trial_id: str, source: str | None) -> None:
        """The trial (re)starts from `source` (`clone_source`)."""
        first = trial_id not in self._started
        self._started.add(trial_id)
        if source is None:
            self._pending.pop(trial_id, None)
        elif not (first and source == known.get("clone_of")):
            # (a resume restarting a clone from the checkpoint of the exploit logged already
            # is not a new exploit)
            self._pending[trial_id] = source

    def result(self, known: dict, trial_id: str, step: int) -> tuple[bool, str | None]:
        """Whether to log a result at `step` (`known["last_step"]` then moves to it), and
        the donor's checkpoint when it is the clone's first result (else None)."""
        source = self._pending.pop(trial_id, None)
        if source is not None:
            known["exploits"] = known.get("exploits", 0) + 1
            known["clone_of"] = source
        log = source is not None or step > known["last_step"]
        if log:
            known["last_step"] = step
        return log, source
