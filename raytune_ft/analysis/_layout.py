"""Read what Ray Tune and raytune_ft left in an experiment directory, without Ray.

Only plain JSON is parsed: `experiment_state-*.json` embeds cloudpickle payloads for some fields,
which we never unpickle (the trial status, tag and folder are plain JSON strings).
"""

from __future__ import annotations

import json
import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from raytune_ft.errors import ExperimentError
from raytune_ft.experiment import CONFIG_FILE, ERROR_FILE, PARAMS_FILE, RESULT_FILE, read_record

logger = logging.getLogger(__name__)

DEFAULT_METRIC = "eval_accuracy"
DEFAULT_MODE = "max"
ERROR_LINES = 20  # lines of error.txt kept in trials.parquet: enough for the exception

# `<trainable>_<trial_id>_<index>_<tag>_<date>`; trial ids are `<5 hex>_<5 digits>`
_DIRNAME = re.compile(r"^(?P<trainable>.+?)_(?P<tid>[0-9a-f]{5}_\d{5})(?:_(?P<idx>\d+))?(?:_|$)")


@dataclass(frozen=True)
class ExperimentMeta:
    """The settings analysis needs, from raytune_ft.json or fallbacks when it is absent."""

    name: str
    metric: str = DEFAULT_METRIC
    mode: str = DEFAULT_MODE
    hyperparameters: tuple[str, ...] = ()
    log_scale: frozenset[str] = frozenset()  # hyperparameters searched on a log scale
    # evaluations of a full-budget trial (the plan's): the same for every tokenization a
    # search can give, where the budget in samples is not (question answering's windows)
    iterations: int | None = None
    cpus_per_trial: float = 1.0
    gpus_per_trial: float = 0.0
    scheduler: str | None = None
    has_config: bool = False
    objectives: tuple[tuple[str, str], ...] = ()  # (metric, mode); () = (metric, mode) alone

    @property
    def goals(self) -> tuple[tuple[str, str], ...]:
        """Every objective: the configured ones, else the experiment metric."""
        return self.objectives or ((self.metric, self.mode),)


@dataclass
class TrialInfo:
    """One trial folder plus what experiment_state says about it."""

    trial_id: str
    dir_name: str
    path: Path
    params: dict[str, Any] = field(default_factory=dict)
    state_status: str | None = None  # Ray's status: TERMINATED, ERROR, RUNNING, PENDING, PAUSED
    orig_tag: str | None = None  # the experiment tag before any PBT perturbation
    num_failures: int = 0
    error: str | None = None


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested dicts become dotted keys, so a nested train setting is still one column."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def read_meta(exp_dir: Path, params_keys: list[str]) -> ExperimentMeta:
    """The experiment's settings from its record (`experiment.read_record`, validated as
    everything else reads it); without a record (a plain Ray Tune experiment),
    eval_accuracy/max and every params.json key."""
    if not (exp_dir / CONFIG_FILE).is_file():
        logger.warning("%s not found; assuming metric %s/%s", exp_dir / CONFIG_FILE,
                       DEFAULT_METRIC, DEFAULT_MODE)
        return ExperimentMeta(name=exp_dir.name, hyperparameters=tuple(params_keys))
    config, _ = read_record(str(exp_dir))
    plan = config.plan()
    resources = config.resources
    workers = resources.workers_per_trial
    return ExperimentMeta(
        name=config.name, metric=config.metric, mode=config.mode,
        hyperparameters=tuple(config.search) or tuple(params_keys),
        log_scale=frozenset(plan.log_scaled),
        iterations=plan.iterations,
        cpus_per_trial=float(workers * resources.worker_cpus),
        gpus_per_trial=float(workers * resources.worker_gpus),
        scheduler=config.scheduler.type, has_config=True,
        objectives=tuple((o.metric, o.mode) for o in config.objectives),
    )


def read_state(exp_dir: Path) -> dict[str, dict[str, Any]]:
    """Trial id -> {status, tag, logdir, num_failures} from the newest experiment_state file."""
    files = sorted(exp_dir.glob("experiment_state-*.json"), key=lambda p: p.name)
    if not files:
        logger.warning("%s: no experiment_state-*.json; statuses come from result files", exp_dir)
        return {}
    try:
        state = json.loads(files[-1].read_text())
    except (OSError, json.JSONDecodeError) as e:
        logger.warning("%s: unreadable (%s); statuses come from result files", files[-1], e)
        return {}
    out: dict[str, dict[str, Any]] = {}
    for trial_json, meta_json in state.get("trial_data", []):
        trial = json.loads(trial_json)
        meta = json.loads(meta_json) if meta_json else {}
        out[trial["trial_id"]] = {
            "status": trial.get("status"),
            "tag": str(trial.get("experiment_tag") or "").split("@perturbed")[0],
            "logdir": trial.get("relative_logdir"),
            "num_failures": int(meta.get("num_failures") or 0),
        }
    return out


def _read_error(path: Path) -> str | None:
    lines = path.read_text(errors="replace").splitlines()
    return "\n".join(lines[:ERROR_LINES]).strip() or None


def list_trials(exp_dir: Path) -> list[TrialInfo]:
    """Every trial folder (one holding params.json or result.json), with its Ray state."""
    if not exp_dir.is_dir():
        raise ExperimentError(f"experiment directory {exp_dir} does not exist")
    state = read_state(exp_dir)
    by_dir = {s["logdir"]: tid for tid, s in state.items() if s.get("logdir")}
    trials = []
    with os.scandir(exp_dir) as entries:
        dirs = sorted(e.name for e in entries if e.is_dir())
    for name in dirs:
        path = exp_dir / name
        files = set(os.listdir(path))  # one listing instead of a stat per file we look for
        if not ({PARAMS_FILE, RESULT_FILE} & files):
            continue
        m = _DIRNAME.match(path.name)
        tid = by_dir.get(path.name) or (m.group("tid") if m else path.name)
        info = TrialInfo(trial_id=tid, dir_name=path.name, path=path)
        if PARAMS_FILE in files:
            try:
                info.params = flatten(json.loads((path / PARAMS_FILE).read_text()))
            except (OSError, json.JSONDecodeError) as e:
                logger.warning("%s: unreadable params.json (%s)", path, e)
        s = state.get(tid, {})
        info.state_status = s.get("status")
        info.orig_tag = s.get("tag") or (f"{m.group('idx')}_" if m and m.group("idx") else None)
        info.num_failures = s.get("num_failures", 0)
        info.error = _read_error(path / ERROR_FILE) if ERROR_FILE in files else None
        trials.append(info)
    if not trials:
        raise ExperimentError(f"{exp_dir}: no trial folders (with params.json or result.json)")
    return trials
