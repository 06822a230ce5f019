"""All three trackers through the real CLI, read back with each tool's own reader: MLflow
with a local store (sqlite) and MlflowClient, TensorBoard with EventAccumulator, W&B offline
with wandb's protobuf records. Credentials set in the environment end up in no file."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from support import experiment_yaml

sys.path.insert(0, str(Path(__file__).parent))

from _helpers import (  # noqa: E402
    SECRETS,
    check_mlflow,
    cli_env,
    results,
    run_cli,
    trial_dirs,
    trial_id,
)
from wandb_records import history, run_info  # noqa: E402

from raytune_ft.experiment import TRACKING_FILE  # noqa: E402


@pytest.fixture(scope="module")
def tracked(tmp_path_factory, tiny_bert, glue_dir):
    root = tmp_path_factory.mktemp("tracked")
    store = f"sqlite:///{root}/mlflow.db"
    path = experiment_yaml(root / "exp.yaml", tiny_bert, glue_dir, root / "results",
                           run={"num_samples": 2, "storage_path": str(root / "results")},
                           tracking={"tensorboard": True,
                                     "mlflow": {"tracking_uri": store},
                                     "wandb": {"project": "raytune-ft-tests", "mode": "offline"}})
    done = run_cli(["tune", str(path)], cli_env(root, **SECRETS))
    return done, root, root / "results" / "tiny", store


def test_the_run_succeeds_and_the_console_shows_progress_columns(tracked):
    done, *_ = tracked
    assert done.returncode == 0, done.stderr[-3000:]
    assert "warning: tracking" not in done.stderr, done.stderr[-3000:]
    assert "tracking     tensorboard (event files in each trial folder), mlflow (sqlite:///" \
        in done.stdout and "wandb (project raytune-ft-tests, offline)" in done.stdout
    # the last table (the first ones are printed before any trial reported)
    header = [line for line in done.stdout.splitlines() if "Trial name" in line][-1]
    columns = header.strip("│ ").split()
    # iteration, samples seen, the experiment's metric, lr and batch size, beside the params
    for column in ("iter", "samples_seen", "eval_accuracy", "lr", "batch_size"):
        assert column in columns, header
    assert columns.index("samples_seen") < columns.index("eval_accuracy") < columns.index("lr")


def test_mlflow_local_store_holds_a_parent_and_nested_trial_runs(tracked):
    done, root, experiment, store = tracked
    assert done.returncode == 0, done.stderr[-3000:]
    runs = check_mlflow(store, experiment, "tiny")
    assert len(runs["children"]) == 2
    # a local store keeps the artifacts beside its database, not in the working folder
    parent = runs["parent"].info.run_id
    assert list(root.glob(f"mlartifacts/{parent}/artifacts/analysis/report.html"))
    ids = json.loads((experiment / TRACKING_FILE).read_text())["mlflow"]
    assert ids["parent_run_id"] == runs["parent"].info.run_id
    assert {k: v["run_id"] for k, v in ids["trials"].items()} == {
        k: r.info.run_id for k, r in runs["children"].items()}


def test_tensorboard_events_hold_every_metric_against_samples_seen_and_the_hparams(tracked):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import plugin_data_pb2

    done, _, experiment, _ = tracked
    assert done.returncode == 0, done.stderr[-3000:]
    for directory in trial_dirs(experiment):
        rows = results(directory)
        events = EventAccumulator(str(directory))
        events.Reload()
        for metric in ("eval_accuracy", "eval_loss", "train_loss", "lr", "samples_per_s"):
            scalars = events.Scalars(metric)
            assert [s.step for s in scalars] == [r["samples_seen"] for r in rows], metric
            assert [s.value for s in scalars] == pytest.approx([r[metric] for r in rows],
                                                               rel=1e-6), metric
        content = events.PluginTagToContent("hparams")
        session = plugin_data_pb2.HParamsPluginData.FromString(
            content["_hparams_/session_start_info"]).session_start_info
        params = json.loads((directory / "params.json").read_text())
        assert session.hparams["batch_size"].number_value == params["batch_size"]
        assert session.hparams["learning_rate"].number_value == pytest.approx(
            params["learning_rate"], rel=1e-12)
        experiment_info = plugin_data_pb2.HParamsPluginData.FromString(
            content["_hparams_/experiment"]).experiment
        assert [m.name.tag for m in experiment_info.metric_infos] == ["eval_accuracy"]


def test_wandb_offline_runs_hold_the_metrics_and_config_in_the_experiment_group(tracked):
    done, root, experiment, _ = tracked
    assert done.returncode == 0, done.stderr[-3000:]
    for directory in trial_dirs(experiment):
        rows = results(directory)
        tid = trial_id(directory)
        files = list((root / "wandb_dir" / "wandb").glob(f"offline-run-*-{tid}/run-{tid}.wandb"))
        assert len(files) == 1, files
        run = run_info(files[0])
        assert (run.run_id, run.run_group, run.project) == (tid, "tiny", "raytune-ft-tests")
        config = {item.key: json.loads(item.value_json) for item in run.config.update}
        params = json.loads((directory / "params.json").read_text())
        assert {k: config[k] for k in params} == params
        logged = history(files[0])
        assert [int(row["samples_seen"]) for row in logged] == [r["samples_seen"] for r in rows]
        assert [float(row["eval_accuracy"]) for row in logged] == [r["eval_accuracy"]
                                                                   for r in rows]
        assert [int(row["iteration"]) for row in logged] == list(range(1, len(rows) + 1))


def test_credentials_from_the_environment_are_in_no_file_of_the_experiment(tracked):
    done, root, experiment, _ = tracked
    assert done.returncode == 0, done.stderr[-3000:]
    files = [p for p in experiment.rglob("*") if p.is_file()]
    assert any(p.name == "tuner.pkl" for p in files)  # the pickled callbacks are checked too
    assert any(p.name.startswith("events.out.tfevents") for p in files)
    for path in files:
        data = path.read_bytes()
        for name, secret in SECRETS.items():
            assert secret.encode() not in data, f"{name} found in {path}"
