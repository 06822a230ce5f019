"""Turn a Ray Tune experiment directory into Parquet tables, comparisons and an HTML report.

Reads the directory's files only: no running Ray, no torch. Plotting (plotly) and
scikit-learn are imported inside the functions that use them. See docs/analysis_schema.md.
"""

from raytune_ft.analysis._compare import compare_experiments
from raytune_ft.analysis._errors import AnalysisArgumentError
from raytune_ft.analysis._export import (
    export_experiment,
    iterations_table,
    pbt_events_table,
    trials_table,
)
from raytune_ft.analysis._importance import hyperparameter_importance
from raytune_ft.analysis._report import SECTION_IDS, export_with_report, write_report
from raytune_ft.analysis._tables import SCHEMA_VERSION
from raytune_ft.analysis._trials import STATUSES

__all__ = [
    "SCHEMA_VERSION",
    "SECTION_IDS",
    "STATUSES",
    "AnalysisArgumentError",
    "compare_experiments",
    "export_experiment",
    "export_with_report",
    "hyperparameter_importance",
    "iterations_table",
    "pbt_events_table",
    "trials_table",
    "write_report",
]
