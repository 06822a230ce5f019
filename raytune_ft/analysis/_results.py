"""Parse every trial's result.json (one JSON object per reported iteration) into one Arrow table.

Fast path: the files of a chunk are concatenated and parsed by pyarrow's multithreaded JSON
reader against an explicit schema (unknown keys ignored). If pyarrow rejects a chunk (a corrupt
line in the middle, a value of an unexpected type) that chunk is parsed line by line with
`json.loads`, skipping bad lines with a warning. A truncated last line, which a crashed run
leaves behind, is detected per file before parsing and skipped with a warning naming the file.
"""

from __future__ import annotations

import io
import json
import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.json as pj

from raytune_ft.experiment import result_lines
from raytune_ft.tasks import task_metrics
from raytune_ft.training.metrics import (
    DEPLOYMENT_INFO,
    DEPLOYMENT_METRICS,
    LOOP_FLAGS,
    LOOP_METRICS,
)

logger = logging.getLogger(__name__)

CHUNK_FILES = 512  # files parsed per pyarrow call: bounds memory to one chunk's bytes

RAY_COLUMNS: dict[str, pa.DataType] = {
    "training_iteration": pa.int64(),
    "timestamp": pa.float64(),  # Ray writes int seconds; float keeps sub-second writers too
    "time_this_iter_s": pa.float64(),
    "time_total_s": pa.float64(),
    "done": pa.bool_(),
}
_ARROW = {float: pa.float64(), int: pa.int64(), bool: pa.bool_(), str: pa.string()}
# What a trial reports: every registered task's metrics, then the loop's own.
METRIC_COLUMNS: dict[str, pa.DataType] = {
    **{metric.name: pa.float64() for metric in task_metrics()},
    **{name: _ARROW[kind] for name, kind in {**LOOP_METRICS, **LOOP_FLAGS}.items()},
    **{name: _ARROW[kind] for name, kind in {**DEPLOYMENT_METRICS, **DEPLOYMENT_INFO}.items()},
}


def infer_type(values: Sequence[Any]) -> pa.DataType | None:
    """Arrow type for a hyperparameter's values; None for non-scalars (stored as JSON text)."""
    present = [v for v in values if v is not None]
    if not present:
        return pa.string()
    if all(isinstance(v, bool) for v in present):
        return pa.bool_()
    if all(isinstance(v, int) and not isinstance(v, bool) for v in present):
        return pa.int64()
    if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in present):
        return pa.float64()
    if all(isinstance(v, str) for v in present):
        return pa.string()
    return None


def coerce(value: Any, typ: pa.DataType | None) -> Any:
    """One Python value as `typ` can hold it (None where it cannot); JSON text for non-scalars."""
    if value is None:
        return None
    if typ is None:  # already JSON text when it went through here once
        return value if isinstance(value, str) else json.dumps(value, sort_keys=True, default=str)
    try:
        if pa.types.is_boolean(typ):
            return value if isinstance(value, bool) else None
        if pa.types.is_integer(typ):
            f = float(value)
            return int(f) if math.isfinite(f) and f.is_integer() else None
        if pa.types.is_floating(typ):
            return float(value)
    except (TypeError, ValueError):
        return None
    return value if isinstance(value, str) else json.dumps(value, default=str)


def line_schema(metric: str, hp_types: dict[str, pa.DataType | None]) -> pa.Schema:
    """Columns read from each result line; `config` holds the scalar hyperparameters in force."""
    cols = {**RAY_COLUMNS, **METRIC_COLUMNS}
    cols.setdefault(metric, pa.float64())
    fields = [pa.field(k, t) for k, t in cols.items()]
    cfg = [pa.field(k, t) for k, t in hp_types.items() if t is not None and "." not in k]
    if cfg:
        fields.append(pa.field("config", pa.struct(cfg)))
    return pa.schema(fields)


def _parse_slow(data: bytes, path: Path, schema: pa.Schema) -> pa.Table:
    """Parse one file line by line, skipping (with a warning) lines that are not JSON objects."""
    rows = []
    for n, line in enumerate(data.splitlines(), start=1):
        try:
            obj = json.loads(line)
            if not isinstance(obj, dict):
                raise ValueError("not a JSON object")
        except ValueError as e:
            logger.warning("%s: skipping corrupt line %d (%s)", path, n, e)
            continue
        rows.append(obj)
    cols = {}
    for f in schema:
        if pa.types.is_struct(f.type):
            sub = {
                sf.name: pa.array(
                    [coerce((r.get(f.name) or {}).get(sf.name), sf.type) for r in rows],
                    type=sf.type,
                )
                for sf in f.type
            }
            cols[f.name] = pa.StructArray.from_arrays(list(sub.values()), names=list(sub))
        else:
            cols[f.name] = pa.array([coerce(r.get(f.name), f.type) for r in rows], type=f.type)
    return pa.table(cols, schema=schema)


def _parse_chunk(paths: list[Path], schema: pa.Schema) -> tuple[pa.Table, np.ndarray]:
    """Parse one chunk of files; returns the table and each row's index within `paths`."""
    blobs = [result_lines(p) for p in paths]
    counts = np.array([b.count(b"\n") for b in blobs], dtype=np.int64)
    opts = pj.ParseOptions(explicit_schema=schema, unexpected_field_behavior="ignore")
    try:
        table = pj.read_json(io.BytesIO(b"".join(blobs)), parse_options=opts)
        if table.num_rows == counts.sum():
            return table, np.repeat(np.arange(len(paths)), counts)
    except pa.ArrowInvalid as e:
        logger.debug("fast JSON parse failed (%s); parsing line by line", e)
    tables = [_parse_slow(b, p, schema) for b, p in zip(blobs, paths, strict=True)]
    owner = np.repeat(np.arange(len(paths)), [t.num_rows for t in tables])
    return pa.concat_tables(tables), owner


def read_results(paths: Sequence[Path], schema: pa.Schema) -> pa.Table:
    """Every line of every file, in file then line order, plus `_trial` (index into paths)."""
    tables = []
    for start in range(0, len(paths), CHUNK_FILES):
        chunk = [Path(p) for p in paths[start : start + CHUNK_FILES]]
        table, owner = _parse_chunk(chunk, schema)
        tables.append(table.append_column("_trial", pa.array(owner + start, type=pa.int64())))
    if not tables:
        empty = schema.append(pa.field("_trial", pa.int64()))
        return empty.empty_table()
    return pa.concat_tables(tables)
