"""MLflow against a real `mlflow server` on 127.0.0.1 (a subprocess, stopped by its pid): a
server stopped mid-run, one that went away and came back (behind a relay the test cuts), and
an experiment interrupted and resumed twice continuing the same MLflow and W&B runs. Slow:
each test starts the CLI (and Ray), and the server takes seconds to come up on a loaded
2-core machine."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from support import experiment_yaml

sys.path.insert(0, str(Path(__file__).parent))

from _helpers import (  # noqa: E402
    Outage,
    check_mlflow,
    cli_env,
    results,
    run_cli,
    start_mlflow_server,
    stop,
    trial_dirs,
    trial_id,
)
from wandb_records import history, records, run_info  # noqa: E402

from raytune_ft.tracking._runs import TRACKING_FILE  # noqa: E402

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
    # one short line: the request and its cause, not urllib3's chain nor its retry warning
    warning = next(line for line in err.splitlines() if "mlflow tracking failed" in line)
    assert re.search(rf"\(API request to {uri}/api/2\.0/mlflow/\S+ failed: Connection "
                     r"refused\); training goes on without it$", warning), warning
    assert "HTTPConnectionPool" not in err and "Retrying (Retry(" not in err, err[-3000:]
    summary = [line for line in err.splitlines() if line.startswith("warning: tracking: mlflow")]
    assert len(summary) == 1 and "not logged from" in summary[0], err[-3000:]
    assert "parent-run artifacts" in summary[0]
    # the server never came back: the end line says the runs stay open
    assert "; its runs stay open (RUNNING) in MLflow: the store did not answer at the end " \
        "either (API request to" in summary[0], summary[0]
    for directory in trial_dirs(experiment):  # the trials trained on
        rows = [json.loads(line) for line in (directory / "result.json").read_text().splitlines()]
        assert rows and all(r["diverged"] is False for r in rows)
    assert (experiment / "analysis" / "report.html").is_file()
    assert "best         eval_accuracy=" in out


class Lines:
    """A running CLI's stdout or stderr, read line by line on a thread (the pipe never
    fills; the test sees what came so far)."""

    def __init__(self, stream):
        import threading

        self.lines: list[str] = []
        self._thread = threading.Thread(target=self._read, args=(stream,), daemon=True)
        self._thread.start()

    def _read(self, stream) -> None:
        for line in stream:
            self.lines.append(line)

    def text(self) -> str:
        self._thread.join(timeout=30)
        return "".join(self.lines)


def _wait(condition, cli: subprocess.Popen, what: str, err: Lines | None = None,
          timeout_s: float = 300) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert cli.poll() is None, f"the CLI ended before {what}" + (
            f": {err.text()[-3000:]}" if err else "")
        assert time.monotonic() < deadline, f"no {what} within {timeout_s} s"
        time.sleep(0.2)


def _kill(cli: subprocess.Popen) -> None:
    if cli.poll() is None:
        os.killpg(cli.pid, signal.SIGKILL)
        cli.wait()


def test_a_server_back_before_the_end_sees_every_open_run_ended_failed(
        server, tmp_path, tiny_bert, glue_dir):
    """The server goes away after the first logged result (the relay in front of it refuses
    connections) and comes back while the trials still train: the tracker stayed quiet
    after its one warning, and the end step ends the runs it left RUNNING as FAILED."""
    from mlflow import MlflowClient

    outage = Outage(int(server.rsplit(":", 1)[1]))
    path = _experiment(tmp_path, tiny_bert, glue_dir, outage.uri, "outage",
                       eval_every_epochs=0.25)
    record = tmp_path / "results" / "outage" / TRACKING_FILE
    cli = subprocess.Popen([sys.executable, "-m", "raytune_ft", "tune", str(path)],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                           env=cli_env(tmp_path), start_new_session=True)
    out, err = Lines(cli.stdout), Lines(cli.stderr)
    try:
        _wait(lambda: record.is_file() and any(
            t["last_step"] > 0 for t in json.loads(record.read_text())["mlflow"]["trials"]
            .values()), cli, "logged result", err)
        outage.down()
        _wait(lambda: any("mlflow tracking failed" in line for line in err.lines), cli,
              "tracker failure", err)
        outage.up()
        cli.wait(timeout=600)
    finally:
        outage.down()
        _kill(cli)
    text = err.text()
    assert cli.returncode == 0, text[-3000:]
    assert text.count("mlflow tracking failed") == 1 and "Retrying (Retry(" not in text
    summary = [line for line in text.splitlines() if line.startswith("warning: tracking: mlflow")]
    client = MlflowClient(tracking_uri=server)  # straight to the server
    runs = client.search_runs([client.get_experiment_by_name("outage").experiment_id])
    statuses = [r.info.status for r in runs]
    parent = next(r for r in runs if "mlflow.parentRunId" not in r.data.tags)
    # none left RUNNING: those open at the end ended FAILED (a trial that ended before the
    # outage is FINISHED), the parent among them
    assert "RUNNING" not in statuses and parent.info.status == "FAILED", statuses
    assert len(summary) == 1 and summary[0].endswith(
        f"; its {statuses.count('FAILED')} open runs ended FAILED once the store answered "
        "again"), summary
    assert "Connection refused" in parent.data.tags["raytune_ft.tracking_stopped"]
    assert "best         eval_accuracy=" in out.text()


def _interrupt_past_a_checkpoint(cli: subprocess.Popen, experiment: Path, before: int,
                                 every: int) -> None:
    """Ctrl-C once the trials reported more than `before` lines and a trial's last report
    is past its last checkpoint (a checkpoint every `every` iterations): the resumed trial
    reports it again."""
    def past_checkpoint() -> bool:
        files = [p for p in experiment.glob("*/result.json") if p.stat().st_size]
        rows = [results(p.parent) for p in files]
        return sum(map(len, rows)) > before and any(
            r and r[-1]["training_iteration"] % every for r in rows)

    _wait(past_checkpoint, cli, "report past a checkpoint")
    os.killpg(cli.pid, signal.SIGINT)  # Ctrl-C
    _, err = cli.communicate(timeout=180)
    assert cli.returncode == 130, err[-3000:]


def test_ctrl_c_and_resume_twice_log_every_iteration_once_and_finish_every_run(
        tmp_path, tiny_bert, glue_dir):
    """Interrupted twice (the second time during the first resume), each time past a
    trial's last checkpoint: MLflow (a sqlite store) and W&B (offline) hold every iteration
    of every trial exactly once, at unique steps, and every run ends FINISHED."""
    from mlflow import MlflowClient

    store = f"sqlite:///{tmp_path}/mlflow.db"
    path = _experiment(tmp_path, tiny_bert, glue_dir, store, "twice", wandb=True,
                       checkpoint_every=3, eval_every_epochs=0.25)
    experiment = tmp_path / "results" / "twice"
    env = cli_env(tmp_path)
    reported = 0
    for command in (["tune", str(path)], ["resume", str(experiment)]):
        cli = subprocess.Popen([sys.executable, "-m", "raytune_ft", *command],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               env=env, start_new_session=True)
        try:
            _interrupt_past_a_checkpoint(cli, experiment, reported, every=3)
        finally:
            _kill(cli)
        reported = sum(len(results(d)) for d in trial_dirs(experiment))
    done = run_cli(["resume", str(experiment)], env, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "warning: tracking" not in done.stderr, done.stderr[-3000:]
    rows = {trial_id(d): results(d) for d in trial_dirs(experiment)}
    # a resume reported iterations again (the interrupts came past a checkpoint)
    assert any(len(r) > len({x["training_iteration"] for x in r}) for r in rows.values())

    client = MlflowClient(tracking_uri=store)
    runs = client.search_runs([client.get_experiment_by_name("twice").experiment_id])
    assert {r.info.status for r in runs} == {"FINISHED"} and len(runs) == 1 + len(rows)
    children = {r.data.tags["trial_id"]: r for r in runs if "mlflow.parentRunId" in r.data.tags}
    for tid, reports in rows.items():
        iterations = sorted({r["training_iteration"] for r in reports})
        last = {r["training_iteration"]: r["samples_seen"] for r in reports}
        logged = sorted((m.step, m.value) for m in client.get_metric_history(
            children[tid].info.run_id, "training_iteration"))
        assert logged == [(last[i], float(i)) for i in iterations], (tid, logged)
        # W&B: the trial's run, continued by each resume, without a point twice
        files = sorted((tmp_path / "wandb_dir" / "wandb").glob(f"*-run-*-{tid}/run-{tid}.wandb"))
        assert files and all(run_info(f).run_id == tid for f in files), files
        wandb_rows = [row for f in files for row in history(f)]
        assert [int(row["iteration"]) for row in wandb_rows] == iterations, tid
        assert [int(row["samples_seen"]) for row in wandb_rows] == [last[i] for i in iterations]
        exits = [r.exit.exit_code for f in files for r in records(f)
                 if r.WhichOneof("record_type") == "exit"]
        assert exits == [0] * len(files), (tid, exits)  # each part of the run finished
