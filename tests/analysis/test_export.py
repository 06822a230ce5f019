"""export_experiment and the three tables, against experiment directories Ray really wrote."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest
from _ray_experiments import BUDGET, ENCODING_WINDOWS, GRID

from raytune_ft.analysis import (
    SCHEMA_VERSION,
    STATUSES,
    export_experiment,
    iterations_table,
    pbt_events_table,
    trials_table,
)
from raytune_ft.errors import ExperimentError


def raw_lines(exp: Path) -> dict[str, list[dict]]:
    """trial dir name -> parsed result.json lines, read independently of the package."""
    out = {}
    for f in exp.glob("*/result.json"):
        out[f.parent.name] = [json.loads(x) for x in f.read_text().splitlines() if x.strip()]
    return out


def by_lr(trials: pd.DataFrame) -> dict[float, pd.Series]:
    return {round(float(r.hp_learning_rate), 8): r for r in trials.itertuples()}


def test_export_writes_versioned_tables_atomically(experiments, tmp_path):
    paths = export_experiment(experiments["asha"], tmp_path / "out")
    assert set(paths) == {"trials", "iterations", "pbt_events"}
    for name, path in paths.items():
        meta = pq.read_schema(path).metadata
        assert meta[b"raytune_ft.schema_version"] == SCHEMA_VERSION.encode()
        assert meta[b"raytune_ft.table"] == name.encode()
    assert [p.name for p in (tmp_path / "out").iterdir() if p.suffix == ".tmp"] == []
    default = export_experiment(experiments["asha"])
    assert default["trials"] == experiments["asha"] / "analysis" / "trials.parquet"


def test_failed_write_keeps_the_old_file(experiments, tmp_path, monkeypatch):
    paths = export_experiment(experiments["asha"], tmp_path)
    before = paths["trials"].read_bytes()

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(pq, "write_table", broken)
    with pytest.raises(OSError, match="disk full"):
        export_experiment(experiments["asha"], tmp_path)
    assert paths["trials"].read_bytes() == before
    assert not list(tmp_path.glob("*.tmp"))


def test_asha_statuses_and_numbers(experiments):
    exp = experiments["asha"]
    trials = trials_table(exp)
    lines = raw_lines(exp)
    assert len(trials) == len(GRID) == len(lines)
    assert set(trials["status"]) <= set(STATUSES)
    t = by_lr(trials)
    assert t[2e-3].status == "errored" and "boom: simulated CUDA OOM" in t[2e-3].error
    assert t[1e-3].status == "diverged" and t[1e-3].last_metric == 0.0
    assert t[1e-5].status == "stopped" and t[1e-5].samples_seen < BUDGET
    assert t[3e-4].status == "terminated" and t[3e-4].samples_seen == BUDGET
    for row in trials.itertuples():
        rows = lines[row.trial_dir]
        assert row.iterations == len(rows)
        assert row.best_metric == pytest.approx(max(r["eval_accuracy"] for r in rows))
        assert row.wall_s == pytest.approx(sum(r["time_this_iter_s"] for r in rows))
        assert row.device_s == pytest.approx(row.wall_s * 1.0)  # cpus_per_trial
        assert row.device_kind == "cpu"
        assert (row.status == "errored") == (row.error is not None and row.error == row.error)


def test_trials_dtypes(experiments):
    trials = trials_table(experiments["asha"])
    assert trials["hp_learning_rate"].dtype == "float64"
    assert trials["hp_warmup_ratio"].dtype == "float64"
    assert str(trials["hp_batch_size"].dtype) == "Int64"
    assert pd.api.types.is_string_dtype(trials["hp_schedule"])
    assert str(trials["iterations"].dtype) == "Int64"
    assert trials["best_metric"].dtype == "float64"
    assert "hp_crash" not in trials  # not in raytune_ft.json's search: not a hyperparameter
    assert trials.attrs["raytune_ft.metric"] == "eval_accuracy"


def test_iterations_match_result_files(experiments):
    exp = experiments["asha"]
    its = iterations_table(exp)
    assert len(its) == sum(len(v) for v in raw_lines(exp).values())
    assert not its.duplicated(["trial_id", "iteration"]).any()
    assert str(its["iteration"].dtype) == "Int64"
    assert str(its["samples_seen"].dtype) == "Int64"
    assert str(its["diverged"].dtype) == "boolean"
    assert its["eval_accuracy"].dtype == "float64"
    assert (its["samples_seen"] == its["iteration"] * 100).all()
    assert (its["compute_samples"] == 100).all()


def test_restored_trial_is_deduplicated_and_charged(experiments):
    exp = experiments["restored"]
    its = iterations_table(exp)
    assert not its.duplicated(["trial_id", "iteration"]).any()
    trials = by_lr(trials_table(exp))
    failed = trials[1e-4]
    assert failed.status == "terminated" and failed.num_failures == 1
    assert "transient failure" in failed.error
    mine = its[its["trial_id"] == failed.trial_id]
    assert list(mine["iteration"]) == [1, 2, 3, 4]
    assert list(mine["n_reports"]) == [1, 2, 1, 1]
    assert failed.compute_samples == 500  # iteration 2 was trained twice
    assert failed.samples_seen == 400


def test_a_trial_with_fewer_windows_than_the_first_encoding_reached_its_budget(experiments):
    """A searched encoding gives each trial its own budget in samples; the record's
    `budget_samples` is the first one's. Both trials ran every evaluation: terminated."""
    exp = experiments["encodings"]
    record = json.loads((exp / "raytune_ft.json").read_text())
    assert record["budget_samples"] == 4 * ENCODING_WINDOWS[0]
    trials = trials_table(exp)
    assert sorted(trials["samples_seen"]) == sorted(4 * w for w in ENCODING_WINDOWS)
    assert list(trials["status"]) == ["terminated", "terminated"]
    assert list(trials["last_iteration"]) == [4, 4]


def test_truncated_last_line_is_skipped_with_warning(copy_experiment, caplog):
    exp = copy_experiment("restored")
    f = next(exp.glob("*_1_learning_rate=0.0010*/result.json"))
    data = f.read_bytes().rstrip(b"\n")
    f.write_bytes(data[: len(data) - 40])  # the crash cut the last line short
    with caplog.at_level(logging.WARNING, logger="raytune_ft.analysis"):
        its = iterations_table(exp)
    assert any(str(f) in r.getMessage() and "truncated" in r.getMessage() for r in caplog.records)
    trials = trials_table(exp).set_index("trial_dir")
    tid = trials.loc[f.parent.name, "trial_id"]
    assert list(its.loc[its["trial_id"] == tid, "iteration"]) == [1, 2, 3]
    assert trials.loc[f.parent.name, "status"] == "stopped"  # Ray says TERMINATED, budget short
    assert len(its) == 4 + 3


def test_corrupt_middle_line_falls_back_and_warns(copy_experiment, caplog):
    exp = copy_experiment("asha")
    f = sorted(exp.glob("*/result.json"), key=lambda p: -p.stat().st_size)[0]
    lines = f.read_text().splitlines()
    lines[1] = lines[1][:30]
    f.write_text("\n".join(lines) + "\n")
    with caplog.at_level(logging.WARNING, logger="raytune_ft.analysis"):
        its = iterations_table(exp)
    assert any(str(f) in r.getMessage() and "line 2" in r.getMessage() for r in caplog.records)
    assert len(its) == sum(len(v) for v in raw_lines_lenient(exp).values())


def raw_lines_lenient(exp: Path) -> dict[str, list[dict]]:
    out = {}
    for f in exp.glob("*/result.json"):
        ok = []
        for x in f.read_text().splitlines():
            try:
                ok.append(json.loads(x))
            except ValueError:
                pass
        out[f.parent.name] = ok
    return out


def test_without_raytune_json_or_state(copy_experiment, caplog):
    exp = copy_experiment("asha")
    (exp / "raytune_ft.json").unlink()
    for f in exp.glob("experiment_state-*.json"):
        f.unlink()
    with caplog.at_level(logging.WARNING, logger="raytune_ft.analysis"):
        trials = trials_table(exp)
    assert trials.attrs["raytune_ft.metric"] == "eval_accuracy"
    assert str(trials["hp_crash"].dtype) == "boolean"  # every params.json key is a column
    t = by_lr(trials)
    assert t[2e-3].status == "errored"
    assert t[1e-3].status == "diverged"
    assert t[3e-4].status in ("terminated", "running")


def test_pbt_events(experiments):
    exp = experiments["pbt"]
    events = pbt_events_table(exp)
    logged = [json.loads(x) for x in (exp / "pbt_global.txt").read_text().splitlines()]
    assert len(events) == len(logged) > 0
    ids = set(trials_table(exp)["trial_id"])
    assert set(events["target_trial_id"]) <= ids and set(events["donor_trial_id"]) <= ids
    assert events["new_hp_learning_rate"].dtype == "float64"
    assert str(events["new_hp_batch_size"].dtype) == "Int64"
    for ev, raw in zip(events.itertuples(), logged, strict=True):
        assert ev.new_hp_learning_rate == pytest.approx(raw[5]["learning_rate"])
        assert ev.donor_hp_batch_size == raw[4]["batch_size"]
        assert ev.target_iteration == raw[2] and ev.donor_iteration == raw[3]
    its = iterations_table(exp)
    assert not its.duplicated(["trial_id", "iteration"]).any()
    assert its.groupby("trial_id")["hp_learning_rate"].nunique().max() > 1  # config over time


def test_no_pbt_gives_empty_typed_table(experiments):
    events = pbt_events_table(experiments["asha"])
    assert events.empty and "new_hp_learning_rate" in events


def test_missing_directory_is_an_experiment_error(tmp_path):
    with pytest.raises(ExperimentError, match="does not exist"):
        export_experiment(tmp_path / "nope")
    with pytest.raises(ExperimentError, match="no trial folders"):
        export_experiment(tmp_path)
