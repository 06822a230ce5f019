"""Build the trials, iterations and pbt_events tables of one experiment directory.

Column meanings, types and the status rule are documented in docs/analysis_schema.md;
bump SCHEMA_VERSION there and here when a column changes meaning or type.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa

from raytune_ft.analysis._layout import ExperimentMeta, TrialInfo, list_trials, read_meta
from raytune_ft.analysis._results import (
    METRIC_COLUMNS,
    RAY_COLUMNS,
    coerce,
    infer_type,
    line_schema,
    read_results,
)
from raytune_ft.experiment import HP, RESULT_FILE

logger = logging.getLogger(__name__)

SCHEMA_VERSION = "2"


@dataclass
class Experiment:
    """One experiment directory, parsed: the inputs every table is built from."""

    path: Path
    meta: ExperimentMeta
    trials: list[TrialInfo]
    hp_types: dict[str, pa.DataType | None]  # None: non-scalar, stored as JSON text
    raw: pd.DataFrame  # every result line (before dedupe), `_trial` = index into trials


def arrow_type(t: pa.DataType | None) -> pa.DataType:
    return pa.string() if t is None else t


def to_pandas(table: pa.Table) -> pd.DataFrame:
    """Arrow to pandas keeping ints and bools nullable (Int64, boolean) instead of float/object."""
    mapping = {pa.int64(): pd.Int64Dtype(), pa.bool_(): pd.BooleanDtype()}
    return table.to_pandas(types_mapper=mapping.get)


def load_experiment(exp_dir: str | Path) -> Experiment:
    """Read the directory once: config, trial folders, Ray's state, every result line."""
    exp_dir = Path(exp_dir)
    trials = list_trials(exp_dir)
    keys = list(dict.fromkeys(k for t in trials for k in t.params))
    meta = read_meta(exp_dir, keys)
    hp_types = {h: infer_type([t.params.get(h) for t in trials]) for h in meta.hyperparameters}
    schema = line_schema(meta.metric, hp_types)
    table = read_results([t.path / RESULT_FILE for t in trials], schema)
    if "config" in table.column_names:
        table = table.flatten()
    raw = to_pandas(table)
    raw["_line"] = np.arange(len(raw))
    return Experiment(exp_dir, meta, trials, hp_types, raw)


def _metric_columns(meta: ExperimentMeta) -> dict[str, pa.DataType]:
    cols = dict(METRIC_COLUMNS)
    cols.setdefault(meta.metric, pa.float64())
    return cols


def iterations_schema(exp: Experiment) -> pa.Schema:
    fields = [
        ("trial_id", pa.string()),
        ("iteration", pa.int64()),
        *((k, RAY_COLUMNS[k]) for k in ("timestamp", "time_this_iter_s", "time_total_s")),
        ("compute_s", pa.float64()),
        ("compute_samples", pa.float64()),
        ("n_reports", pa.int64()),
        *_metric_columns(exp.meta).items(),
        *((HP + h, arrow_type(t)) for h, t in exp.hp_types.items()),
    ]
    return pa.schema(fields)


def _compute_cost(raw: pd.DataFrame) -> pd.DataFrame:
    """Per line: samples trained = samples_seen minus that of the iteration it resumed from.

    After a restore the same iteration is reported twice and both runs cost compute. A PBT
    clone resumes from another trial's checkpoint, so its previous iteration is not its own:
    there we charge samples_seen / iteration, the trial's average per iteration.
    """
    last = raw.drop_duplicates(["_trial", "training_iteration"], keep="last")
    prev = last[["_trial", "training_iteration", "samples_seen"]].rename(
        columns={"samples_seen": "_prev"}
    )
    prev["training_iteration"] = prev["training_iteration"] + 1
    out = raw.merge(prev, on=["_trial", "training_iteration"], how="left", sort=False)
    seen = out["samples_seen"].astype("Float64")
    it = out["training_iteration"].astype("Float64")
    avg = seen / it.where(it > 0)
    first = out["training_iteration"] == 1
    cost = (seen - out["_prev"].astype("Float64")).where(out["_prev"].notna(), avg)
    cost = cost.where(~first.fillna(False), seen).clip(lower=0)
    out["compute_samples"] = cost.astype("float64")
    out["compute_s"] = out["time_this_iter_s"].astype("float64")
    return out.sort_values("_line", kind="stable")


def iterations_frame(exp: Experiment) -> pd.DataFrame:
    """One row per trial and iteration: the last report wins; compute sums all reports."""
    raw = _compute_cost(exp.raw)
    keys = ["_trial", "training_iteration"]
    agg = raw.groupby(keys, sort=False).agg(
        compute_s=("compute_s", "sum"),
        compute_samples=("compute_samples", "sum"),
        n_reports=("_line", "size"),
    )
    df = raw.drop_duplicates(keys, keep="last").drop(columns=["compute_s", "compute_samples"])
    df = df.join(agg, on=keys).sort_values(keys, kind="stable").reset_index(drop=True)
    ids = np.array([t.trial_id for t in exp.trials], dtype=object)
    df["trial_id"] = ids[df["_trial"].to_numpy()]
    df = df.rename(columns={"training_iteration": "iteration"})
    for h, t in exp.hp_types.items():
        col = f"config.{h}"
        if col in df.columns:
            df[HP + h] = df[col]
        else:  # not reported per iteration: constant from params.json
            vals = [coerce(tr.params.get(h), t) for tr in exp.trials]
            df[HP + h] = pd.Series(vals, dtype=object).iloc[df["_trial"].to_numpy()].to_numpy()
    schema = iterations_schema(exp)
    return df[[f.name for f in schema]]


def frame_to_table(df: pd.DataFrame, schema: pa.Schema, name: str, exp: Experiment) -> pa.Table:
    """A typed Arrow table with the schema version and experiment metric in its metadata."""
    cols = []
    for f in schema:
        col = df[f.name]
        try:
            cols.append(pa.Array.from_pandas(col, type=f.type))
        except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, ValueError):
            vals = col.astype(object).where(col.notna(), None).tolist()
            cols.append(pa.array([coerce(v, f.type) for v in vals], type=f.type))
    meta = {
        "raytune_ft.schema_version": SCHEMA_VERSION,
        "raytune_ft.table": name,
        "raytune_ft.metric": exp.meta.metric,
        "raytune_ft.mode": exp.meta.mode,
        "raytune_ft.scheduler": exp.meta.scheduler or "",
        "raytune_ft.hyperparameters": json.dumps(list(exp.hp_types)),
        "raytune_ft.log_scale": json.dumps(sorted(exp.meta.log_scale)),
        "raytune_ft.objectives": json.dumps([list(goal) for goal in exp.meta.goals]),
    }
    return pa.Table.from_arrays(cols, schema=schema.with_metadata(meta))
