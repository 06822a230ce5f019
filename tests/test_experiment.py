"""The experiment folder module: the ranking rule, the confirm summary, atomic writes and the
experiment record. No Ray, no model."""

from __future__ import annotations

import json
import math

import pandas as pd
import pytest

from raytune_ft.errors import ExperimentError
from raytune_ft.experiment import (
    CONFIG_FILE,
    confirm_summary,
    open_experiment,
    rank_trials,
    read_confirm_rows,
    read_record,
    write_record,
)
from raytune_ft.schema import validate_config
from raytune_ft.storage import atomic_write

ASHA = {"type": "asha", "grace_period": 1, "reduction_factor": 2}
PBT = {"type": "pbt", "perturbation_interval": 1, "mutations": ["learning_rate"]}


def config(scheduler: dict = ASHA, mode: str = "max", metric: str = "eval_accuracy"):
    return validate_config({
        "name": "exp", "metric": metric, "mode": mode, "model": {"name": "m"},
        "data": {"task": "sst2"}, "search": {"learning_rate": {"loguniform": [1e-5, 1e-3]}},
        "scheduler": scheduler})


def trials(*rows) -> pd.DataFrame:
    """(trial_id, status, best_metric, last_metric) rows, as the analysis trials table has."""
    return pd.DataFrame(rows, columns=["trial_id", "status", "best_metric", "last_metric"])


# ---------------------------------------------------------------------------- ranking


def test_errored_and_diverged_trials_never_win():
    table = trials(("a_00000", "errored", 0.99, 0.99), ("a_00001", "diverged", 0.98, 0.98),
                   ("a_00002", "stopped", 0.60, 0.60), ("a_00003", "terminated", 0.70, 0.65))
    ranked = rank_trials(table, config())
    assert ranked["trial_id"].tolist() == ["a_00003", "a_00002"]
    assert ranked["rank"].tolist() == [1, 2]
    assert ranked["search_metric"].tolist() == [0.70, 0.60]


def test_a_diverged_trial_does_not_win_a_min_metric_either():
    # a diverged trial reports the worst finite loss, but a NaN or a lucky value must not win
    table = trials(("a_00000", "diverged", 0.01, 1e9), ("a_00001", "terminated", 0.50, 0.60))
    ranked = rank_trials(table, config(mode="min", metric="eval_loss"))
    assert ranked["trial_id"].tolist() == ["a_00001"]


def test_population_based_schedulers_rank_by_the_last_metric():
    table = trials(("a_00000", "terminated", 0.90, 0.70), ("a_00001", "terminated", 0.80, 0.80))
    assert rank_trials(table, config(ASHA))["trial_id"].tolist() == ["a_00000", "a_00001"]
    for kind in ("pbt", "pb2"):
        ranked = rank_trials(table, config({**PBT, "type": kind}))
        assert ranked["trial_id"].tolist() == ["a_00001", "a_00000"]
        assert ranked["search_metric"].tolist() == [0.80, 0.70]


def test_ties_go_to_the_trial_created_first_and_a_trial_without_the_metric_is_out():
    # a searcher's trial ids are random hex: the number in the trial's folder is the order
    table = trials(("f9182c57", "terminated", 0.5, 0.5), ("37b2269b", "terminated", 0.5, 0.5),
                   ("42b51917", "running", None, None))
    table["trial_dir"] = ["train_trial_f9182c57_1_batch_size=16_2026-11-29_16-34-10",
                          "train_trial_37b2269b_6_batch_size=16_2026-11-29_16-34-10",
                          "train_trial_42b51917_4_batch_size=16_2026-11-29_16-34-10"]
    assert rank_trials(table, config())["trial_id"].tolist() == ["f9182c57", "37b2269b"]
    table["trial_dir"] = ["elsewhere", "unknown", "x"]  # no number: the smaller id
    assert rank_trials(table, config())["trial_id"].tolist() == ["37b2269b", "f9182c57"]


def test_finished_only_keeps_terminated_and_stopped_trials():
    table = trials(("a_00000", "running", 0.9, 0.9), ("a_00001", "stopped", 0.5, 0.5),
                   ("a_00002", "terminated", 0.4, 0.4))
    assert rank_trials(table, config())["trial_id"].tolist() == ["a_00000", "a_00001",
                                                                 "a_00002"]
    finished = rank_trials(table, config(), finished_only=True)
    assert finished["trial_id"].tolist() == ["a_00001", "a_00002"]


def test_replay_picks_the_best_trial_that_did_not_fail():
    from raytune_ft.tuning.replay import best_trial

    # PBT: by the last metric; the errored trial's last value is the best of all
    table = trials(("a_00000", "errored", 0.2, 0.1), ("a_00001", "terminated", 0.3, 0.3),
                   ("a_00002", "terminated", 0.25, 0.4))
    assert best_trial(table, config(PBT, mode="min", metric="eval_loss")) == "a_00001"
    with pytest.raises(ExperimentError, match="no trial has reported eval_loss"):
        best_trial(table.iloc[:1], config(PBT, mode="min", metric="eval_loss"))


# ---------------------------------------------------------------------------- confirm summary


def confirm_rows() -> pd.DataFrame:
    rows = [(1, "t1", 1, 0.80, 0.9), (1, "t1", 2, 0.82, 0.9), (1, "t1", 3, math.nan, 0.9),
            (2, "t2", 4, 0.85, 0.8), (2, "t2", 5, 0.87, 0.8), (2, "t2", 6, 0.86, 0.8)]
    return pd.DataFrame(rows, columns=["config_rank", "trial_id", "seed", "metric",
                                       "search_metric"])


def test_confirm_summary_counts_the_values_behind_mean_and_sd():
    summary = confirm_summary(confirm_rows(), "max").set_index("config_rank")
    assert summary.loc[1, "n"] == 2  # the seed that did not finish is not a value
    assert summary.loc[1, "mean"] == pytest.approx(0.81)
    assert summary.loc[1, "sd"] == pytest.approx(math.sqrt(2 * 0.01 ** 2 / 1))
    assert summary.loc[2, "n"] == 3
    assert summary.loc[2, "sd"] == pytest.approx(0.01)  # sample sd (ddof=1)
    assert (summary.loc[2, "min"], summary.loc[2, "max"]) == (0.85, 0.87)
    assert summary.loc[2, "search_metric"] == 0.8


def test_confirm_summary_ranks_the_best_mean_first():
    summary = confirm_summary(confirm_rows(), "max")
    assert summary["config_rank"].tolist() == [2, 1] and summary["rank"].tolist() == [1, 2]
    summary = confirm_summary(confirm_rows(), "min")
    assert summary["config_rank"].tolist() == [1, 2]


def test_confirm_summary_without_search_metric_and_a_configuration_with_no_value():
    rows = confirm_rows().drop(columns="search_metric")
    rows.loc[rows["config_rank"] == 2, "metric"] = math.nan
    summary = confirm_summary(rows, "max")
    assert "search_metric" not in summary
    assert summary["config_rank"].tolist() == [1, 2]  # no mean ranks last
    assert summary.loc[1, "n"] == 0


def test_the_report_shows_the_same_confirm_summary(tmp_path, monkeypatch):
    from raytune_ft.analysis import _report

    shown = []
    monkeypatch.setattr(_report, "_table", lambda frame: shown.append(frame) or "")
    (tmp_path / "analysis").mkdir()
    confirm_rows().to_parquet(tmp_path / "analysis" / "confirm.parquet")
    assert 'id="confirmation-plot"' in _report._confirmation(tmp_path, "eval_accuracy", "max")
    pd.testing.assert_frame_equal(shown[0], confirm_summary(confirm_rows(), "max"))
    assert shown[0]["n"].tolist() == [3, 2]


def test_reading_confirm_rows_that_do_not_exist_says_what_to_run(tmp_path):
    with pytest.raises(ExperimentError, match="run `raytune-ft confirm"):
        read_confirm_rows(tmp_path)


# ---------------------------------------------------------------------------- atomic writes


def test_an_atomic_file_write_replaces_the_file_whole(tmp_path):
    path = tmp_path / "table.txt"
    path.write_text("old")
    with atomic_write(path) as staging:
        assert staging.parent == tmp_path and staging != path
        staging.write_text("new")
        assert path.read_text() == "old"  # nothing changes until the write is complete
    assert path.read_text() == "new"
    assert [p.name for p in tmp_path.iterdir()] == ["table.txt"]


def test_a_failed_file_write_leaves_the_old_file_and_no_temporary(tmp_path):
    path = tmp_path / "table.txt"
    path.write_text("old")
    with pytest.raises(RuntimeError, match="disk full"), atomic_write(path) as staging:
        staging.write_text("half")
        raise RuntimeError("disk full")
    assert path.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["table.txt"]


def test_a_failed_first_write_leaves_nothing(tmp_path):
    with pytest.raises(KeyboardInterrupt), atomic_write(tmp_path / "new.parquet") as staging:
        staging.write_bytes(b"PAR1")
        raise KeyboardInterrupt
    assert list(tmp_path.iterdir()) == []


def test_an_atomic_folder_write_replaces_a_non_empty_folder(tmp_path):
    out = tmp_path / "model"
    out.mkdir()
    (out / "old.txt").write_text("old")
    with atomic_write(out) as staging:
        staging.mkdir()
        (staging / "new.txt").write_text("new")
    assert [p.name for p in out.iterdir()] == ["new.txt"]
    assert [p.name for p in tmp_path.iterdir()] == ["model"]


def test_a_failed_folder_write_leaves_the_old_folder(tmp_path):
    out = tmp_path / "model"
    out.mkdir()
    (out / "old.txt").write_text("old")
    with pytest.raises(ValueError), atomic_write(out) as staging:
        staging.mkdir()
        (staging / "half.bin").write_bytes(b"\0" * 10)
        raise ValueError("cannot read the checkpoint")
    assert [p.name for p in out.iterdir()] == ["old.txt"]
    assert [p.name for p in tmp_path.iterdir()] == ["model"]


def test_the_writers_of_the_package_write_atomically(tmp_path, monkeypatch):
    """The analysis tables, the report, confirm.parquet and text files all go through
    atomic_write: a writer that fails half-way leaves the previous file."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from raytune_ft.analysis._export import write_atomic
    from raytune_ft.storage import write_text
    from raytune_ft.tuning.confirm import write_rows

    table = tmp_path / "trials.parquet"
    write_atomic(pa.table({"x": [1]}), table)
    text = tmp_path / "raytune_ft.json"
    write_text(str(text), "{}")
    confirm = tmp_path / "analysis" / "confirm.parquet"
    write_rows(confirm_rows(), confirm, config())

    def half_then_fail(_table, where, **_):
        open(where, "wb").write(b"PAR1 half")
        raise OSError("disk full")

    monkeypatch.setattr(pq, "write_table", half_then_fail)
    for write in (lambda: write_atomic(pa.table({"x": [2]}), table),
                  lambda: write_rows(confirm_rows(), confirm, config())):
        with pytest.raises(OSError, match="disk full"):
            write()
    assert pq.read_table(table).column("x").to_pylist() == [1]
    assert len(pd.read_parquet(confirm)) == 6
    monkeypatch.setattr("pathlib.Path.write_text", lambda *a, **k: 1 / 0)
    with pytest.raises(ZeroDivisionError):
        write_text(str(text), '{"half": ')
    assert text.read_text() == "{}"
    assert sorted(p.name for p in tmp_path.rglob("*")) == [
        "analysis", "confirm.parquet", "raytune_ft.json", "trials.parquet"]


# ---------------------------------------------------------------------------- the record


def test_the_record_round_trips_with_its_derived_keys(tmp_path):
    derived = {"budget_samples": 512, "model_path": "/m", "label_names": ["0", "1"],
               "train_samples": 256, "eval_samples": 128}
    write_record(str(tmp_path), config(), derived)
    raw = json.loads((tmp_path / CONFIG_FILE).read_text())
    assert list(raw)[-5:] == list(derived)  # the config first, then what prepare derived
    read, record = read_record(str(tmp_path))
    assert read == config() and record == raw
    directory, opened, _ = open_experiment(tmp_path)
    assert directory == tmp_path.resolve() and opened == config()


def test_a_folder_without_a_record_is_named(tmp_path):
    with pytest.raises(ExperimentError, match=r"not a raytune_ft experiment \(raytune_ft.json"):
        read_record(str(tmp_path))
    with pytest.raises(ExperimentError, match="no such experiment directory"):
        open_experiment(tmp_path / "missing")
    (tmp_path / CONFIG_FILE).write_text("{")
    with pytest.raises(ExperimentError, match="not valid JSON"):
        read_record(str(tmp_path))


def test_analysis_ranks_by_the_scheduler_it_finds_in_the_tables():
    from raytune_ft.experiment import rank_by, ranking_column

    assert ranking_column("pbt") == ranking_column("pb2") == "last_metric"
    assert ranking_column("asha") == ranking_column("") == ranking_column(None) == "best_metric"
    table = trials(("a", "errored", 0.99, 0.99), ("b", "terminated", 0.80, 0.70),
                   ("c", "diverged", 0.95, 0.0), ("d", "stopped", 0.75, 0.75))
    assert list(rank_by(table, "max", "best_metric")["trial_id"]) == ["b", "d"]
    assert list(rank_by(table, "max", "last_metric")["trial_id"]) == ["d", "b"]


def test_resume_refuses_data_that_changed_the_plan(tmp_path):
    import json

    from raytune_ft.tuning.runner import _check_same_plan

    cfg = config()
    started = {"plan": json.loads(json.dumps(cfg.plan(2000).record()))}
    _check_same_plan(started, cfg.plan(2000), "exp")
    _check_same_plan({}, cfg.plan(1999), "exp")  # an older record
    with pytest.raises(ExperimentError, match="exp: the data or settings changed .*budget"):
        _check_same_plan(started, cfg.plan(1999), "exp")
