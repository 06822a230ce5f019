"""Export an experiment directory to Parquet, and the same tables as pandas DataFrames."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from raytune_ft.analysis._pbt import pbt_frame, pbt_schema
from raytune_ft.analysis._tables import (
    Experiment,
    frame_to_table,
    iterations_frame,
    iterations_schema,
    load_experiment,
    to_pandas,
)
from raytune_ft.analysis._trials import trials_frame, trials_schema
from raytune_ft.experiment import ANALYSIS_DIR
from raytune_ft.storage import atomic_write

logger = logging.getLogger(__name__)

TABLES = ("trials", "iterations", "pbt_events")


def build_tables(exp: Experiment) -> dict[str, pa.Table]:
    """All three typed Arrow tables of one parsed experiment."""
    it = iterations_frame(exp)
    return {
        "trials": frame_to_table(trials_frame(exp, it), trials_schema(exp), "trials", exp),
        "iterations": frame_to_table(it, iterations_schema(exp), "iterations", exp),
        "pbt_events": frame_to_table(pbt_frame(exp, it), pbt_schema(exp), "pbt_events", exp),
    }


def write_atomic(table: pa.Table, path: Path) -> None:
    """Write a Parquet file that readers never see half-written (see `atomic_write`)."""
    with atomic_write(path) as staging:
        pq.write_table(table, staging, compression="zstd")


def export_experiment(
    experiment_dir: str | os.PathLike, out_dir: str | os.PathLike | None = None
) -> dict[str, Path]:
    """Write trials/iterations/pbt_events.parquet (default `<experiment_dir>/analysis`).

    Returns table name -> written path. Reads only files; no Ray needed.
    """
    exp = load_experiment(experiment_dir)
    return write_tables(build_tables(exp), Path(out_dir) if out_dir else exp.path / ANALYSIS_DIR)


def write_tables(tables: dict[str, pa.Table], out: Path) -> dict[str, Path]:
    out.mkdir(parents=True, exist_ok=True)
    paths = {}
    for name, table in tables.items():
        paths[name] = out / f"{name}.parquet"
        write_atomic(table, paths[name])
    logger.info("exported %d trials to %s", tables["trials"].num_rows, out)
    return paths


def frames(tables: dict[str, pa.Table]) -> dict[str, pd.DataFrame]:
    """Arrow tables as DataFrames, with the schema metadata in `df.attrs`."""
    out = {}
    for name, table in tables.items():
        df = to_pandas(table)
        df.attrs.update({k.decode(): v.decode() for k, v in (table.schema.metadata or {}).items()})
        out[name] = df
    return out


def _table(experiment_dir: str | os.PathLike, name: str) -> pd.DataFrame:
    tables = build_tables(load_experiment(experiment_dir))
    return frames({name: tables[name]})[name]


def trials_table(experiment_dir: str | os.PathLike) -> pd.DataFrame:
    """One row per trial (see docs/analysis_schema.md); metadata in `df.attrs`."""
    return _table(experiment_dir, "trials")


def iterations_table(experiment_dir: str | os.PathLike) -> pd.DataFrame:
    """One row per trial and iteration, deduplicated after restores."""
    return _table(experiment_dir, "iterations")


def pbt_events_table(experiment_dir: str | os.PathLike) -> pd.DataFrame:
    """One row per PBT exploit; empty when the experiment did not use PBT."""
    return _table(experiment_dir, "pbt_events")


def read_tables(experiment_dir: str | os.PathLike) -> dict[str, pd.DataFrame]:
    """All three tables in one pass (the report and comparison need several)."""
    return frames(build_tables(load_experiment(experiment_dir)))
