"""Turn a Ray Tune experiment directory into Parquet tables, comparisons and an HTML report.

Reads the directory's files only: no running Ray, no torch. See docs/analysis_schema.md.
"""

from raytune_ft.analysis._export import (
    export_experiment,
    iterations_table,
    pbt_events_table,
    trials_table,
)
from raytune_ft.analysis._tables import SCHEMA_VERSION

__all__ = [
    "SCHEMA_VERSION",
    "export_experiment",
    "iterations_table",
    "pbt_events_table",
    "trials_table",
]
