"""MLflow against a real `mlflow server` on 127.0.0.1 (a subprocess, stopped by its pid), and
a resumed experiment continuing the same MLflow runs. Slow: each test starts the CLI (and Ray)
and the server takes seconds to come up on a loaded 2-core machine."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from support import experiment_yaml

sys.path.insert(0, str(Path(__file__).parent))

from _helpers import (  # noqa: E402
    check_mlflow,
    cli_env,
    results,
    run_cli,
    start_mlflow_server,
    stop,
    trial_dirs,
    trial_id,
)
from wandb_records import history, run_info  # noqa: E402

from raytune_ft.experiment import TRACKING_FILE  # noqa: E402

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("mlflow_server")
    proc, uri = start_mlflow_server(root)
    yield uri
    stop(proc)


def _experiment(root: Path, tiny_bert, glue_dir, uri: str, name: str, wandb: bool = False,
                checkpoint_every: int = 1, **train) -> Path:
    tracking = {"mlflow": {"tracking_uri": uri}}
    if wandb:
        tracking["wandb"] = {"project": "resume-tests", "mode": "offline"}
    return experiment_yaml(root / f"{name}.yaml", tiny_bert, glue_dir, root / "results",
                           name=name,
                           run={"num_samples": 2, "storage_path": str(root / "results"),
                                "checkpoint_every": checkpoint_every},
                           train={"max_epochs": 2, "eval_every_epochs": 0.5, **train},
                           tracking=tracking)


def test_a_server_holds_one_parent_two_nested_trials_and_the_artifacts(
        server, tmp_path, tiny_bert, glue_dir):
    path = _experiment(tmp_path, tiny_bert, glue_dir, server, "served")
    done = run_cli(["tune", str(path)], cli_env(tmp_path))
    assert done.returncode == 0, done.stderr[-3000:]
    assert "warning: tracking" not in done.stderr
    runs = check_mlflow(server, tmp_path / "results" / "served", "served")
    assert len(runs["children"]) == 2


def test_the_server_stopped_mid_run_costs_a_warning_not_the_experiment(
        tmp_path, tiny_bert, glue_dir):
    proc, uri = start_mlflow_server(tmp_path)
    path = _experiment(tmp_path, tiny_bert, glue_dir, uri, "cut", eval_every_epochs=0.25)
    experiment = tmp_path / "results" / "cut"
    tracking = experiment / TRACKING_FILE
    cli = subprocess.Popen([sys.executable, "-m", "raytune_ft", "tune", str(path)],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                           env=cli_env(tmp_path), start_new_session=True)
    try:
        deadline = time.monotonic() + 240
        while True:  # until MLflow holds a first result
            assert cli.poll() is None, cli.communicate()[1][-3000:]
            assert time.monotonic() < deadline, "no result logged within 240 s"
            if tracking.is_file():
                trials = json.loads(tracking.read_text())["mlflow"]["trials"]
                if any(t["last_step"] > 0 for t in trials.values()):
                    break
            time.sleep(0.2)
        stop(proc)
        out, err = cli.communicate(timeout=400)
    finally:
        stop(proc)
        if cli.poll() is None:
            os.killpg(cli.pid, signal.SIGKILL)
            cli.wait()
    assert cli.returncode == 0, err[-3000:]
    assert err.count("mlflow tracking failed") == 1, err[-3000:]  # one warning, then quiet
    summary = [line for line in err.splitlines() if line.startswith("warning: tracking: mlflow")]
    assert len(summary) == 1 and "not logged from" in summary[0], err[-3000:]
    assert "parent-run artifacts" in summary[0]
    for directory in trial_dirs(experiment):  # the trials trained on
        rows = [json.loads(line) for line in (directory / "result.json").read_text().splitlines()]
        assert rows and all(r["diverged"] is False for r in rows)
    assert (experiment / "analysis" / "report.html").is_file()
    assert "best         eval_accuracy=" in out


def test_a_resumed_experiment_continues_the_same_runs_without_duplicates(
        tmp_path, tiny_bert, glue_dir):
    store = f"sqlite:///{tmp_path}/mlflow.db"
    # a checkpoint every 3rd iteration: a trial interrupted past its last checkpoint reports
    # those iterations again when resumed, which no tracker may log twice
    path = _experiment(tmp_path, tiny_bert, glue_dir, store, "resumed", wandb=True,
                       checkpoint_every=3, eval_every_epochs=0.25)
    experiment = tmp_path / "results" / "resumed"
    env = cli_env(tmp_path)
    cli = subprocess.Popen([sys.executable, "-m", "raytune_ft", "tune", str(path)],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                           start_new_session=True)
    try:
        deadline = time.monotonic() + 240
        while not any(p.stat().st_size for p in experiment.glob("*/result.json")):
            assert cli.poll() is None, cli.communicate()[1][-3000:]
            assert time.monotonic() < deadline, "no result within 240 s"
            time.sleep(0.5)
        # `raytune-ft report` while it runs: a partial report, from the files as they are
        report = run_cli(["report", str(experiment)], env, timeout=120)
        assert report.returncode == 0, report.stderr[-3000:]
        page = (experiment / "analysis" / "report.html").read_text()
        assert '<p id="partial"' in page and "(partial)</title>" in page
        assert cli.poll() is None, "the experiment ended before the report was written"
        os.killpg(cli.pid, signal.SIGINT)  # Ctrl-C
        _, err = cli.communicate(timeout=120)
    finally:
        if cli.poll() is None:
            os.killpg(cli.pid, signal.SIGKILL)
            cli.wait()
    assert cli.returncode == 130, err[-3000:]
    before = json.loads((experiment / "raytune_ft_tracking.json").read_text())["mlflow"]
    resumed = run_cli(["resume", str(experiment)], env)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    after = json.loads((experiment / "raytune_ft_tracking.json").read_text())["mlflow"]
    assert after["parent_run_id"] == before["parent_run_id"]
    for trial, known in before["trials"].items():
        assert after["trials"][trial]["run_id"] == known["run_id"]
    # one parent, one run per trial, and each history equal to result.json (no step twice)
    check_mlflow(store, experiment, "resumed")
    # W&B: the resumed runs (same id, a new offline file) continue without a point twice
    for directory in trial_dirs(experiment):
        tid = trial_id(directory)
        files = sorted((tmp_path / "wandb_dir" / "wandb").glob(f"*-run-*-{tid}/run-{tid}.wandb"))
        assert files and all(run_info(f).run_id == tid for f in files), files
        logged = [int(row["samples_seen"]) for f in files for row in history(f)]
        assert logged == [r["samples_seen"] for r in results(directory)], (tid, logged)
