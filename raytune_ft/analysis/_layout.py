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

from raytune_ft.config import LOG_SCALED, parse_domain
from raytune_ft.errors import ExperimentError
from raytune_ft.experiment import CONFIG_FILE, ERROR_FILE, PARAMS_FILE, RESULT_FILE

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
    budget_samples: int | None = None
    max_epochs: float | None = None
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
    """Load raytune_ft.json; fall back to eval_accuracy/max and all params.json keys."""
    path = exp_dir / CONFIG_FILE
    if not path.is_file():
        logger.warning("%s not found; assuming metric %s/%s", path, DEFAULT_METRIC, DEFAULT_MODE)
        return ExperimentMeta(name=exp_dir.name, hyperparameters=tuple(params_keys))
    try:
        cfg = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ExperimentError(f"{path}: not valid JSON ({e})") from e
    mode = cfg.get("mode", DEFAULT_MODE)
    if mode not in ("max", "min"):
        raise ExperimentError(f"{path}: mode is {mode!r}, but must be 'max' or 'min'")
    search = cfg.get("search") or {}
    hps = tuple(search.keys())
    res = cfg.get("resources") or {}
    train = cfg.get("train") or {}
    plan = cfg.get("plan")  # the trial plan; records written before it existed have none
    if isinstance(plan, dict):
        log_scale = frozenset(plan.get("log_scaled") or ())
        budget = (plan.get("budget") or {}).get("total_samples", cfg.get("budget_samples"))
        max_epochs = plan.get("max_epochs", train.get("max_epochs"))
    else:
        log_scale = _log_scaled(search)
        budget, max_epochs = cfg.get("budget_samples"), train.get("max_epochs")
    return ExperimentMeta(
        name=str(cfg.get("name", exp_dir.name)),
        metric=str(cfg.get("metric", DEFAULT_METRIC)),
        mode=mode,
        hyperparameters=hps or tuple(params_keys),
        log_scale=log_scale,
        budget_samples=budget,
        max_epochs=max_epochs,
        cpus_per_trial=_per_trial(res, "cpus", 1.0),
        gpus_per_trial=_per_trial(res, "gpus", 0.0),
        scheduler=(cfg.get("scheduler") or {}).get("type"),
        has_config=True,
        objectives=tuple((str(o["metric"]), str(o["mode"])) for o in cfg.get("objectives") or ()
                         if isinstance(o, dict) and o.get("mode") in ("max", "min")),
    )


def _log_scaled(search: dict[str, Any]) -> frozenset[str]:
    """Keys of a record without a plan searched on a log scale, read with the config's own
    parser; an entry it rejects counts as linear."""
    keys = set()
    for key, spec in search.items():
        try:
            if parse_domain(f"search.{key}", spec).kind in LOG_SCALED:
                keys.add(key)
        except ValueError:
            pass
    return frozenset(keys)


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


def _per_trial(resources: dict, kind: str, default: float) -> float:
    """A trial's CPUs or GPUs: all its workers' (`workers_per_trial` x per worker)."""
    one = resources.get(f"{kind}_per_trial", default)
    workers = int(resources.get("workers_per_trial") or 1)
    per_worker = resources.get(f"{kind}_per_worker")
    return float(workers * (one if per_worker is None else per_worker))
