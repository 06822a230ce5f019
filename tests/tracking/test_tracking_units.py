"""The tracking section's validation, the failure ledger, the console's columns and the
tokenizer's progress bar: fast, no Ray started."""

from __future__ import annotations

import importlib.util
import json
import logging
from types import SimpleNamespace

import numpy as np
import pytest
from support import experiment_yaml

from raytune_ft.config import load_config
from raytune_ft.errors import ConfigError
from raytune_ft.tracking import _guard
from raytune_ft.tracking._common import end_status, flat_params, metrics_of


@pytest.fixture
def exp_file(tmp_path, tiny_bert, glue_dir):
    return experiment_yaml(tmp_path / "exp.yaml", tiny_bert, glue_dir, tmp_path / "results")


def test_tracking_is_off_by_default_and_set_from_the_command_line(exp_file):
    assert load_config(exp_file).tracking.enabled() == []
    config = load_config(exp_file, ["tracking.tensorboard=true",
                                    "tracking.mlflow.tracking_uri=http://127.0.0.1:5000",
                                    "tracking.wandb.project=p", "tracking.wandb.mode=offline"])
    assert config.tracking.enabled() == ["tensorboard", "mlflow", "wandb"]
    assert config.tracking.mlflow.tracking_uri == "http://127.0.0.1:5000"
    assert (config.tracking.wandb.project, config.tracking.wandb.mode) == ("p", "offline")


@pytest.mark.parametrize("override, message", [
    ("tracking.wandb={project: p, mode: cloud}",
     "tracking.wandb.mode: Input should be 'online' or 'offline' (got 'cloud')"),
    ("tracking.wandb={mode: offline}", "tracking.wandb.project: required field is missing"),
    ("tracking.mlflow.uri=x", "tracking.mlflow.uri: unknown key; allowed: tracking_uri, "
                              "experiment_name"),
    ("tracking.mlflow.tracking_uri=https://me:hunter2@mlflow.example.com",
     "tracking.mlflow.tracking_uri: a password in the URI is refused"),
    ("tracking.tensorbord=true", "tracking.tensorbord: unknown key (did you mean "
                                 "'tensorboard'?)"),
])
def test_bad_tracking_settings_are_one_line_errors_naming_the_field(exp_file, override,
                                                                    message):
    with pytest.raises(ConfigError) as error:
        load_config(exp_file, [override])
    text = str(error.value)
    assert message in text and "\n" not in text, text
    assert "hunter2" not in text.split("(from --set")[0]


@pytest.mark.parametrize("tracker, override", [
    ("wandb", "tracking.wandb.project=p"), ("mlflow", "tracking.mlflow={}"),
    ("tensorboard", "tracking.tensorboard=true")])
def test_a_missing_extra_is_refused_at_validation_with_the_pip_command(exp_file, monkeypatch,
                                                                       tracker, override):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == tracker else real(name, *a))
    with pytest.raises(ConfigError) as error:
        load_config(exp_file, [override])
    assert (f": tracking.{tracker}: the {tracker} package is not installed; "
            f"pip install 'raytune-ft[{tracker}]'") in str(error.value)


def test_a_failing_tracker_warns_once_and_counts_what_it_missed(caplog):
    _guard.reset()
    calls = []

    class Flaky(_guard.Guarded):
        tracker = "flaky"

    def refuse(n):
        calls.append(n)
        raise ConnectionError("Connection refused\n(on a second line)")

    flaky = Flaky()
    flaky._guard("results", "trial t1: iteration 1", calls.append, 0)
    with caplog.at_level(logging.WARNING):
        flaky._guard("results", "trial t1: iteration 2", refuse, 1)
        flaky._guard("results", "trial t1: iteration 3", refuse, 2)
        flaky._guard("trial ends", "trial t1: its end", refuse, 3)
    assert calls == [0, 1]  # quiet after its first failure
    assert len([r for r in caplog.records if r.levelno == logging.WARNING]) == 1
    assert _guard.not_logged() == [
        "flaky: not logged from trial t1: iteration 2 on ((on a second line)); "
        "skipped 2 results, 1 trial ends"]
    _guard.reset()
    assert _guard.not_logged() == []


def test_metrics_statuses_and_params_as_trackers_log_them():
    result = {"eval_accuracy": 0.75, "diverged": False, "samples_seen": 256, "lr": 1e-4,
              "training_iteration": 2, "time_this_iter_s": 1.5, "trial_id": "a_00000",
              "done": False, "config": {"lr": 1e-4}, "eval_loss": float("nan")}
    assert metrics_of(result) == {"eval_accuracy": 0.75, "diverged": 0.0,
                                  "samples_seen": 256.0, "lr": 1e-4,
                                  "training_iteration": 2.0}
    assert end_status({"training_iteration": 4}, 4) == "terminated"
    assert end_status({"training_iteration": 2}, 4) == "stopped"
    assert end_status({"training_iteration": 2, "diverged": True}, 4) == "diverged"
    assert end_status(None, 4, errored=True) == "errored"
    assert flat_params({"a": {"b": 1, "c": [0.5, 16]}, "d": "x", "e": None, "f": {}}) == {
        "a.b": "1", "a.c": "[0.5, 16]", "d": "x", "e": "null", "f": "{}"}


def test_rays_progress_table_shows_samples_seen_the_metric_lr_and_batch_size():
    from ray.tune.experimental.output import _infer_user_metrics

    from raytune_ft.tuning.trainable import console_order

    reported = {"eval_loss": 0.6, "eval_accuracy": 0.7, "train_loss": 0.5, "lr": 1e-4,
                "lr_min_group": 1e-5, "batch_size": 16, "epoch": 0.5, "samples_seen": 128,
                "step": 8, "samples_per_s": 100.0, "diverged": False}
    trial = SimpleNamespace(last_result={**console_order(reported, "eval_loss"),
                                         "training_iteration": 1, "time_total_s": 2.0})
    assert _infer_user_metrics([trial]) == ["samples_seen", "eval_loss", "lr", "batch_size"]
    assert console_order(reported, "eval_loss") == reported  # reordered, nothing lost


def test_a_large_split_tokenizes_in_chunks_under_a_bar_to_the_same_arrays(
        tiny_bert, glue_dir, monkeypatch, capsys):
    import pandas as pd
    from transformers import AutoTokenizer

    from raytune_ft.tasks import sequence_classification as sc
    from raytune_ft.tasks._tables import TextSplit

    frame = pd.read_csv(glue_dir / "MRPC" / "dev.tsv", sep="\t", quoting=3, nrows=95)
    # columns: Quality (the label; a BOM precedes its name), two ids, two sentences
    split = TextSplit([frame.iloc[:, 3].tolist(), frame.iloc[:, 4].tolist()],
                      frame.iloc[:, 0].to_numpy())
    tokenizer = AutoTokenizer.from_pretrained(tiny_bert)
    whole = sc.tokenize(split, tokenizer, 64)
    assert "tokenizing" not in capsys.readouterr().err  # small: no bar
    monkeypatch.setattr(sc, "TOKENIZE_CHUNK", 10)
    chunked = sc.tokenize(split, tokenizer, 64, progress_above=50)
    assert "tokenizing: 100%" in capsys.readouterr().err
    for name in ("ids", "type_ids", "offsets", "labels"):
        assert np.array_equal(getattr(whole, name), getattr(chunked, name)), name
    assert len(chunked.offsets) == 96


def test_wandb_without_an_api_key_runs_offline_and_online_is_one_warning(tmp_path,
                                                                           monkeypatch):
    from raytune_ft.tracking._wandb import WandbTracker

    for name in ("WANDB_API_KEY", "WANDB_MODE", "WANDB_SETUP_API_KEY_HOOK"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.netrc from a `wandb login`
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path))
    _guard.reset()
    WandbTracker("p", "exp", "offline", None).setup()
    assert _guard.not_logged() == []
    online = WandbTracker("p", "exp", "online", None)
    online.setup()  # the key check fails on the worker thread; the guard keeps the run going
    online.on_trial_result(1, [], SimpleNamespace(trial_id="t", config={}),
                           {"training_iteration": 1})
    online.on_experiment_end([])  # waits for the queued calls
    lines = _guard.not_logged()
    assert len(lines) == 1 and lines[0].startswith("wandb: not logged from its setup (the API "
                                                   "key) on (No WandB API key found"), lines
    assert lines[0].endswith("skipped 1 the setup, 1 results"), lines
    _guard.reset()


def test_an_unreadable_tracking_file_is_an_error_not_a_fresh_start(tmp_path):
    from raytune_ft.experiment import TRACKING_FILE
    from raytune_ft.tracking._runs import read_runs, write_runs

    assert read_runs(str(tmp_path)) == {}  # a new experiment
    write_runs(str(tmp_path), "mlflow", {"parent_run_id": "p1"})
    write_runs(str(tmp_path), "wandb", {"trials": {}})
    assert read_runs(str(tmp_path)) == {"mlflow": {"parent_run_id": "p1"}, "wandb": {"trials": {}}}
    path = tmp_path / TRACKING_FILE
    path.write_text('{"mlflow": {"parent_run_id": "p1"')  # cut short
    with pytest.raises(ValueError):
        write_runs(str(tmp_path), "wandb", {"trials": {"t": {}}})
    assert path.read_text() == '{"mlflow": {"parent_run_id": "p1"'  # MLflow's ids not dropped


def test_the_tracking_record_is_where_rays_restore_does_not_copy_it(tmp_path):
    """Ray 2.60's restore copies the experiment's top-level *.json and *.pkl (listed without
    recursion) into its staging folder, which every snapshot syncs back over the experiment:
    the record is in a subfolder, which that listing does not see."""
    import pyarrow.fs
    from ray.train._internal.storage import _list_at_fs_path

    from raytune_ft.experiment import LEGACY_TRACKING_FILE, TRACKING_FILE
    from raytune_ft.tracking._runs import read_runs, write_runs

    write_runs(str(tmp_path), "mlflow", {"parent_run_id": "p1"})
    listed = _list_at_fs_path(pyarrow.fs.LocalFileSystem(), str(tmp_path))
    copied = [name for name in listed if name.endswith((".json", ".pkl"))]  # as Ray filters
    assert (tmp_path / TRACKING_FILE).is_file() and copied == []
    # an experiment started before: its top-level record is read, then written to the folder
    old = tmp_path / "old"
    old.mkdir()
    (old / LEGACY_TRACKING_FILE).write_text(json.dumps({"mlflow": {"parent_run_id": "p0"}}))
    assert read_runs(str(old)) == {"mlflow": {"parent_run_id": "p0"}}
    write_runs(str(old), "wandb", {"trials": {}})
    assert json.loads((old / TRACKING_FILE).read_text()) == {
        "mlflow": {"parent_run_id": "p0"}, "wandb": {"trials": {}}}


# ---------------------------------------------------------------------- MLflow's file store

@pytest.fixture
def mlflow_env(tmp_path, monkeypatch):
    """A working folder of its own and no MLflow settings from the shell."""
    for name in ("MLFLOW_TRACKING_URI", "MLFLOW_ALLOW_FILE_STORE"):
        monkeypatch.delenv(name, raising=False)
    workdir = tmp_path / "work"
    workdir.mkdir()
    monkeypatch.chdir(workdir)
    return workdir


@pytest.mark.parametrize("uri, fix", [
    ("file:///data/runs/mlruns", "sqlite:////data/runs/mlflow.db"),  # an absolute path
    ("/data/runs/mlruns", "sqlite:////data/runs/mlflow.db"),
    ("./mlruns", "sqlite:///{workdir}/mlflow.db"),
])
def test_an_mlflow_file_store_is_refused_at_validate_naming_the_fix(
        exp_file, mlflow_env, capsys, uri, fix):
    from raytune_ft import cli

    code = cli.main(["validate", str(exp_file), "--set", f"tracking.mlflow.tracking_uri={uri}"])
    err = capsys.readouterr().err.strip()
    assert code == cli.EXIT_BAD_INPUT and "\n" not in err, err
    assert f"tracking.mlflow.tracking_uri: {uri!r} is an MLflow file store, which MLflow " \
        in err and fix.format(workdir=mlflow_env) in err, err


def test_tune_refuses_a_file_store_before_ray_starts(exp_file, mlflow_env, capsys):
    import ray

    from raytune_ft import cli

    assert not ray.is_initialized()
    code = cli.main(["tune", str(exp_file), "--set", "tracking.mlflow.tracking_uri=./mlruns"])
    assert code == cli.EXIT_BAD_INPUT and not ray.is_initialized()
    assert "is an MLflow file store" in capsys.readouterr().err


def test_an_unset_uri_is_checked_where_mlflow_would_log(exp_file, mlflow_env, monkeypatch,
                                                        capsys):
    from raytune_ft import cli

    unset = ["validate", str(exp_file), "--set", "tracking.mlflow={}"]
    # MLflow's default in an empty working folder: sqlite:///mlflow.db there
    assert cli.main(unset) == cli.EXIT_OK, capsys.readouterr().err
    # ... but a ./mlruns that holds runs keeps MLflow on that file store
    (mlflow_env / "mlruns" / "0").mkdir(parents=True)
    (mlflow_env / "mlruns" / "0" / "meta.yaml").write_text("name: Default\n")
    capsys.readouterr()
    assert cli.main(unset) == cli.EXIT_BAD_INPUT
    err = capsys.readouterr().err
    assert f"MLflow's default here is the file store file://{mlflow_env}/mlruns" in err, err
    assert f"sqlite:///{mlflow_env}/mlflow.db" in err
    # the variable MLflow reads when the experiment does not say
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "/srv/mlruns")
    assert cli.main(unset) == cli.EXIT_BAD_INPUT
    assert "MLFLOW_TRACKING_URI='/srv/mlruns' is an MLflow file store" in \
        capsys.readouterr().err
    # MLflow's own opt-out makes it a store MLflow writes to
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    assert cli.main(unset) == cli.EXIT_OK


def test_an_unreachable_mlflow_server_is_one_short_warning_and_no_retry_noise(caplog):
    """The guard's warning keeps the request and its root cause, not urllib3's whole chain;
    urllib3's own retry warning for the tracker's request is not repeated beside it."""
    import socket

    from raytune_ft.tracking._mlflow import client_for
    from raytune_ft.tracking._worker import Worker

    with socket.socket() as probe:  # a port nothing listens on once closed
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    _guard.reset()
    client = client_for(f"http://127.0.0.1:{port}")
    with caplog.at_level(logging.WARNING):
        worker = Worker("mlflow")
        worker.submit("results", "trial t1: iteration 1", client.get_experiment_by_name, "x")
        worker.submit("results", "trial t1: iteration 2", client.get_experiment_by_name, "x")
        assert worker.close(timeout_s=120)
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    expected = (f"API request to http://127.0.0.1:{port}/api/2.0/mlflow/experiments/"
                "get-by-name failed: Connection refused")
    assert warnings == ["mlflow tracking failed while logging trial t1: iteration 1 "
                        f"({expected}); training goes on without it"], warnings
    assert _guard.not_logged() == [f"mlflow: not logged from trial t1: iteration 1 on "
                                   f"({expected}); skipped 2 results"]
    _guard.reset()
