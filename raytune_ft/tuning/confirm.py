"""Confirm the winners of a search: re-train the K best configurations with N new seeds.

A search picks its best trial out of many noisy ones, so its best metric is optimistic. Here
the K best configurations (for PBT/PB2: the K best trials' schedules, replayed) are trained
again for the full budget with N seeds none of the search used, as one Ray Tune run in
`<name>-confirm` beside the experiment; `analysis/confirm.parquet` gets one row per
configuration and seed, and the summary gives mean, sample sd, min and max per configuration.

Which trials count and their order: the experiment folder's ranking rule
(`experiment.rank_trials`) over the trials Ray ended without error (`terminated`, or `stopped`
early by a scheduler; the analysis status rule): by the best metric over a trial's
iterations, as `raytune-ft tune` prints its best; under PBT/PB2 by the last one (the final
population).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from raytune_ft.config import SearchAlgConfig
from raytune_ft.errors import ConfigError, ExperimentError
from raytune_ft.experiment import (
    ANALYSIS_DIR,
    CONFIRM_FILE,
    CONFIRM_SUFFIX,
    HP,
    PARAMS_FILE,
    PLAN_FILE,
    RESULT_FILE,
    confirm_summary,
    open_experiment,
    pbt_policy_file,
    rank_trials,
    trial_results,
)
from raytune_ft.schedulers import SCHEDULERS, scheduler_spec
from raytune_ft.schema import ExperimentConfig, narrow_model_search
from raytune_ft.storage import atomic_write

log = logging.getLogger(__name__)
FIXED_KEYS = ("confirm_rank", "confirm_source", "seed")  # a confirm trial's own config keys


# ---------------------------------------------------------------------------- the experiment


def finished_trials(directory: Path, config: ExperimentConfig) -> pd.DataFrame:
    """The analysis trials table, finished trials only, ranked best first (column `rank`)."""
    from raytune_ft.analysis import trials_table

    if not any((p / RESULT_FILE).is_file() for p in directory.iterdir() if p.is_dir()):
        raise ExperimentError(f"{directory}: no finished trial (no trial has reported)")
    trials = trials_table(directory)
    ranked = rank_trials(trials, config, finished_only=True)
    if ranked.empty:
        counts = trials["status"].value_counts().to_dict()
        seen = ", ".join(f"{n} {status}" for status, n in counts.items()) or "none"
        raise ExperimentError(f"{directory}: no finished trial (trials: {seen}); a trial must "
                              "end without error to be confirmed or exported")
    return ranked


def hp_columns(frame: pd.DataFrame) -> list[str]:
    return [c for c in frame.columns if c.startswith(HP)]


def source_schedule(directory: Path, trial: pd.Series, pbt: bool):
    """What a source trial trained with: its config, or under PBT its replayable schedule."""
    from raytune_ft.tuning.pbt_replay import Schedule, load_policy

    policy = pbt_policy_file(directory, str(trial["trial_id"]))
    if pbt and policy.is_file():  # changed by exploits: replay the schedule
        return load_policy(policy)
    params = directory / str(trial["trial_dir"]) / PARAMS_FILE
    try:
        return Schedule(json.loads(params.read_text()))
    except (OSError, json.JSONDecodeError) as error:
        raise ExperimentError(f"{params}: cannot read the trial's config ({error})") from None


def used_seeds(config: ExperimentConfig, schedules: list) -> set[int]:
    """Seeds the search trained with: train.seed and any searched or scheduled `seed`."""
    used = {config.train.seed}
    domain = config.space().get("seed")
    if domain is not None and domain.kind in ("constant", "choice", "grid"):
        used |= {int(v) for v in domain.args}
    for schedule in schedules:
        for values in (schedule.initial, *(c for _, c in schedule.changes)):
            if isinstance(values.get("seed"), int):
                used.add(values["seed"])
    return used


def new_seeds(used: set[int], count: int) -> list[int]:
    """The `count` smallest positive integers not in `used`: small, readable, reproducible."""
    seeds, candidate = [], 1
    while len(seeds) < count:
        if candidate not in used:
            seeds.append(candidate)
        candidate += 1
    return seeds


# ---------------------------------------------------------------------------- the run


@dataclass
class Confirmation:
    metric: str
    rows: pd.DataFrame  # one row per configuration and seed (confirm.parquet)
    summary: pd.DataFrame  # one row per configuration, best mean first
    confirm_dir: str
    parquet: Path | None  # None when the run was interrupted
    interrupted: bool
    results: Any  # Tune's ResultGrid


def confirm_experiment(experiment_dir: str | Path, top: int = 3, seeds: int = 3,
                       address: str | None = None) -> Confirmation:
    """Re-train the `top` best configurations with `seeds` new seeds each; one Tune run."""
    if top < 1:
        raise ConfigError(f"--top: {top}, but must be >= 1")
    if seeds < 2:
        raise ConfigError(f"--seeds: {seeds}, but must be >= 2 (a standard deviation needs "
                          "two runs)")
    directory, config, _ = open_experiment(experiment_dir)
    ranked = finished_trials(directory, config)
    chosen = ranked.head(top)
    if len(chosen) < top:
        log.warning("only %d finished trials; confirming %d configurations, not %d",
                    len(chosen), len(chosen), top)
    pbt = scheduler_spec(config.scheduler).population
    schedules = {int(t["rank"]): source_schedule(directory, t, pbt) for _, t in chosen.iterrows()}
    seed_list = iter(new_seeds(used_seeds(config, list(schedules.values())),
                               len(chosen) * seeds))
    plan = [{"confirm_rank": int(t["rank"]), "confirm_source": str(t["trial_id"]),
             "seed": next(seed_list)} for _, t in chosen.iterrows() for _ in range(seeds)]
    results, prepared, interrupted = _run(directory, config, schedules, plan, pbt, address)
    rows = confirm_rows(Path(prepared.experiment_dir), plan, chosen, config.metric,
                        prepared.plan.iterations)
    summary = confirm_summary(rows, config.mode)
    parquet = None
    if not interrupted:
        parquet = directory / ANALYSIS_DIR / CONFIRM_FILE
        write_rows(rows, parquet, config)
    _finish_trackers(prepared, interrupted)
    return Confirmation(config.metric, rows, summary, prepared.experiment_dir, parquet,
                        interrupted, results)


def _finish_trackers(prepared, interrupted: bool) -> None:
    """Close the confirm run's tracker runs (MLflow's parent of `<name>-confirm`); a tracker
    that failed has warned already."""
    from raytune_ft.tracking import End, TrackingContext, finish_tracking

    if prepared.config.tracking.enabled():
        finish_tracking(TrackingContext(prepared.config, prepared.experiment_dir,
                                        prepared.plan.iterations),
                        End(None, None, interrupted))


def _run(directory: Path, config: ExperimentConfig, schedules: dict, plan: list[dict],
         pbt: bool, address: str | None):
    """One Tune run of every (configuration, seed) in `plan`, in `<name>-confirm`."""
    from ray.tune.schedulers import FIFOScheduler

    from raytune_ft.tuning.pbt_replay import MultiScheduleReplay
    from raytune_ft.tuning.runner import prepare, run_presets

    run = config.run.model_copy(update={"num_samples": len(plan), "time_budget_s": None,
                                        "storage_path": str(directory.parent)})
    update = {"name": f"{config.name}{CONFIRM_SUFFIX}", "run": run,
              "search_alg": SearchAlgConfig(type="random", seed=0),
              "data": config.data.for_final_model()}  # e.g. beam search where set
    if not pbt:  # under PBT the trainable must checkpoint every iteration, as in the search
        update["scheduler"] = SCHEDULERS["fifo"].settings()
    points = [{**schedules[p["confirm_rank"]].initial, **p} for p in plan]
    # the models and lengths of these configurations only: one tokenization each
    changes = [c for schedule in schedules.values() for _, c in schedule.changes]
    confirm_config = narrow_model_search(config.model_copy(update=update), points + changes)
    prepared = prepare(confirm_config, overwrite=True, address=address)
    # A previous confirm run goes, and its table, which would name deleted trials if this
    # run is interrupted.
    (directory / ANALYSIS_DIR / CONFIRM_FILE).unlink(missing_ok=True)
    plan_file = json.dumps(
        {"source": str(directory), "plan": plan,
         "schedules": {rank: dataclasses.asdict(s) for rank, s in schedules.items()}},
        indent=1, default=str)
    scheduler = MultiScheduleReplay(schedules, FIXED_KEYS) if pbt else FIFOScheduler()
    outcome = run_presets(prepared, points, scheduler, address, files={PLAN_FILE: plan_file})
    return outcome.results, prepared, outcome.interrupted


# ---------------------------------------------------------------------------- the rows


def confirm_rows(confirm_dir: Path, plan: list[dict], chosen: pd.DataFrame, metric: str,
                 iterations: int) -> pd.DataFrame:
    """One row per planned (configuration, seed): the metric at the end of the budget.

    `status`: `finished` (reached the budget: reported its last, `iterations`-th, evaluation;
    budgets in samples may differ by configuration where a searched encoding changes the
    training split's size), `diverged` (its worst finite metric, as
    reported to the schedulers) or `incomplete` (failed or interrupted: metric NaN).
    `hp_*` are the source trial's columns of the analysis trials table (under PBT: the config
    in force at its end; the replayed schedule is in the confirm folder's PLAN_FILE).
    """
    runs = {}
    for trial_id, (folder, reports) in trial_results(confirm_dir).items():
        config = reports[-1].get("config", {})
        runs[(config.get("confirm_rank"), config.get("seed"))] = (trial_id, folder, reports[-1])
    source = chosen.set_index("rank")
    records = []
    for entry in plan:
        rank, seed = entry["confirm_rank"], entry["seed"]
        trial_id, folder, last = runs.get((rank, seed), (None, None, {}))
        if last.get("diverged"):
            status, value = "diverged", last.get(metric)
        elif last.get("training_iteration", 0) >= iterations:
            status, value = "finished", last.get(metric)
        else:
            status, value = "incomplete", math.nan
        records.append({
            "config_rank": rank, "trial_id": entry["confirm_source"], "seed": seed,
            "metric": float(value) if value is not None else math.nan,
            "confirm_trial_id": trial_id, "confirm_trial_dir": folder.name if folder else None,
            "status": status, "samples_seen": last.get("samples_seen"),
            "search_metric": float(source.loc[rank, "search_metric"]),
            **{c: source.loc[rank, c] for c in hp_columns(chosen)},
        })
    rows = pd.DataFrame.from_records(records)
    dtypes = {"config_rank": "int64", "seed": "int64", "metric": "float64",
              "confirm_trial_id": "string", "confirm_trial_dir": "string", "status": "string",
              "samples_seen": "Int64", "trial_id": "string", "search_metric": "float64",
              **{c: chosen[c].dtype for c in hp_columns(chosen)}}
    return rows.astype(dtypes)


def write_rows(rows: pd.DataFrame, path: Path, config: ExperimentConfig) -> None:
    """confirm.parquet, written atomically (`atomic_write`)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.Table.from_pandas(rows, preserve_index=False)
    table = table.cast(pa.schema([  # plain `string`, as the analysis tables
        f.with_type(pa.string()) if pa.types.is_large_string(f.type) else f
        for f in table.schema]))
    metadata = {**(table.schema.metadata or {}), b"raytune_ft.table": b"confirm",
                b"raytune_ft.metric": config.metric.encode(),
                b"raytune_ft.mode": config.mode.encode()}
    table = table.replace_schema_metadata(metadata)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(path) as staging:
        pq.write_table(table, staging)
