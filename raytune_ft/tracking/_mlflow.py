"""MLflow: one parent run per experiment, one nested child run per trial.

Ray's `MLflowLoggerCallback` opens a top-level run per trial (no parent: ray#19978) and logs
against the iteration. Here the parent holds the validated experiment (params and
`raytune_ft.json`), at the end the analysis tables, report.html and the best metric; each child
holds its trial's hyperparameters, every reported metric with step = samples_seen, its end
status (terminated, stopped, diverged, errored) and its PBT exploits as tags (at the first
result after the trial restarted from another trial's checkpoint, `_common.clone_source`:
whether or not the config changed, whichever trial's result PBT decided on). The run ids
are kept in the experiment's tracker record (`_runs`), so a resumed experiment continues the
same runs, and a point already logged for a trial is not logged again.

Every call runs on a background thread (`_worker`); credentials come from the environment
(`MLFLOW_TRACKING_TOKEN`, `MLFLOW_TRACKING_USERNAME`/`_PASSWORD`), which MLflow reads itself.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from ray import tune

from raytune_ft.experiment import CONFIG_FILE
from raytune_ft.tracking import _guard
from raytune_ft.tracking._common import (
    Clones,
    clone_source,
    end_status,
    flat_params,
    metrics_of,
    step_of,
)
from raytune_ft.tracking._runs import read_runs, write_runs
from raytune_ft.tracking._worker import Threaded, Worker

TRACKER = "mlflow"
_BATCH = 100  # MLflow's log_batch takes at most 100 params (1000 metrics) per call
# An unreachable server fails fast instead of MLflow's default 7 retries of 120 s each.
_HTTP_DEFAULTS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1", "MLFLOW_HTTP_REQUEST_TIMEOUT": "10"}
_STATUS = {"terminated": "FINISHED", "stopped": "FINISHED", "diverged": "FAILED",
           "errored": "FAILED"}


def tracking_uri(configured: str | None) -> str | None:
    """A sqlite path relative to the driver's folder made absolute (Ray may chdir)."""
    prefix = "sqlite:///"
    if configured and configured.startswith(prefix) and not configured[len(prefix):].startswith(
            "/"):
        return prefix + str(Path(configured[len(prefix):]).resolve())
    return configured


def artifact_location(uri: str | None) -> str | None:
    """A local sqlite store keeps its artifacts beside the database (`mlartifacts/`); MLflow
    would put them in the driver's working folder (`./mlruns`). A server decides its own."""
    prefix = "sqlite:///"
    if uri and uri.startswith(prefix):
        return Path(uri[len(prefix):]).parent.joinpath("mlartifacts").as_uri()
    return None


def client_for(uri: str | None):
    for name, value in _HTTP_DEFAULTS.items():
        os.environ.setdefault(name, value)
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=uri)


class MlflowTracker(Threaded, tune.Callback):
    """Driver-side: queues every MLflow call on its worker thread."""

    tracker = TRACKER

    def __init__(self, uri: str | None, experiment_name: str, experiment_dir: str,
                 run_name: str, iterations: int, params: dict):
        self.uri = uri
        self.experiment_name = experiment_name
        self.experiment_dir = experiment_dir
        self.run_name = run_name
        self.iterations = iterations
        self.params = params  # the validated experiment, flattened
        self._reset()

    TRANSIENT = ("_client", "_runs", "_clones")

    def _reset(self) -> None:
        super()._reset()
        self._client = None
        self._runs: dict = {}
        self._clones = Clones()

    # ------------------------------------------------------------------ Tune's hooks (driver)

    def setup(self, **info):
        self._worker = Worker(TRACKER)
        self._worker.submit("the parent run", "the experiment's parent run", self._open)

    def on_trial_start(self, iteration, trials, trial, **info):
        self._submit("trial runs", f"trial {trial}: its run", self._start_trial,
                     trial.trial_id, str(trial), dict(trial.config), clone_source(trial))

    def on_trial_result(self, iteration, trials, trial, result, **info):
        trained = dict(result.get("config") or trial.config)  # what this result trained with
        self._submit("results", f"trial {trial}: iteration {result.get('training_iteration')}",
                     self._log_result, trial.trial_id, str(trial), trained, dict(result))

    def on_trial_complete(self, iteration, trials, trial, **info):
        self._submit("trial ends", f"trial {trial}: its end", self._end_trial, trial.trial_id,
                     end_status(trial.last_result, self.iterations))

    def on_trial_error(self, iteration, trials, trial, **info):
        self._submit("trial ends", f"trial {trial}: its end", self._end_trial, trial.trial_id,
                     end_status(trial.last_result, self.iterations, errored=True))

    def on_experiment_end(self, trials, **info):
        if self._worker is not None and not self._worker.close(timeout_s=120):
            _guard.fail(TRACKER, "the queued results", TimeoutError("still busy after 120 s"))

    # ------------------------------------------------------------------ the worker thread

    def _open(self) -> None:
        client = client_for(self.uri)
        runs = read_runs(self.experiment_dir).get(TRACKER, {})
        if runs.get("tracking_uri") == self.uri and runs.get("parent_run_id"):
            client.update_run(runs["parent_run_id"], status="RUNNING")  # a resume
        else:
            experiment = client.get_experiment_by_name(self.experiment_name)
            experiment_id = (experiment.experiment_id if experiment is not None
                             else client.create_experiment(self.experiment_name,
                                                           artifact_location(self.uri)))
            parent = client.create_run(experiment_id, run_name=self.run_name,
                                       tags={"raytune_ft.role": "experiment",
                                             "raytune_ft.experiment_dir": self.experiment_dir})
            runs = {"tracking_uri": self.uri, "experiment_id": experiment_id,
                    "parent_run_id": parent.info.run_id, "trials": {}}
            _log_params(client, parent.info.run_id, self.params)
            record = Path(self.experiment_dir, CONFIG_FILE)
            if record.is_file():
                client.log_artifact(parent.info.run_id, str(record))
            write_runs(self.experiment_dir, TRACKER, runs)
        self._client, self._runs = client, runs

    def _trial_run(self, trial_id: str, name: str, config: dict) -> dict:
        known = self._runs["trials"].get(trial_id)
        if known is not None:
            return known
        run = self._client.create_run(
            self._runs["experiment_id"], run_name=name,
            tags={"mlflow.parentRunId": self._runs["parent_run_id"], "trial_id": trial_id,
                  "status": "running"})
        _log_params(self._client, run.info.run_id, flat_params(config))
        known = {"run_id": run.info.run_id, "last_step": -1, "exploits": 0}
        self._runs["trials"][trial_id] = known
        write_runs(self.experiment_dir, TRACKER, self._runs)
        return known

    def _start_trial(self, trial_id: str, name: str, config: dict, source: str | None
                     ) -> None:
        self._clones.started(self._trial_run(trial_id, name, config), trial_id, source)

    def _log_result(self, trial_id: str, name: str, trained: dict, result: dict) -> None:
        from mlflow.entities import Metric

        known = self._trial_run(trial_id, name, trained)
        step = step_of(result)
        log, source = self._clones.result(known, trial_id, step)
        if source is not None:  # PBT replaced it: the donor's checkpoint, the config it got
            self._client.set_tag(known["run_id"], f"pbt.exploit.{known['exploits']}",
                                 json.dumps({"samples_seen": step, "checkpoint": source,
                                             "config": trained})[:5000])
        if log:
            now_ms = int(time.time() * 1000)
            metrics = [Metric(key, value, now_ms, step)
                       for key, value in metrics_of(result).items()]
            self._client.log_batch(known["run_id"], metrics=metrics)
        write_runs(self.experiment_dir, TRACKER, self._runs)

    def _end_trial(self, trial_id: str, status: str) -> None:
        known = self._runs["trials"].get(trial_id)
        if known is None:
            return
        self._client.set_tag(known["run_id"], "status", status)
        self._client.set_terminated(known["run_id"], _STATUS[status])


def _log_params(client, run_id: str, params: dict[str, str]) -> None:
    from mlflow.entities import Param

    items = [Param(key[:250], value[:6000]) for key, value in params.items()]
    for start in range(0, len(items), _BATCH):
        client.log_batch(run_id, params=items[start:start + _BATCH])


def finish(experiment_dir: str, analysis_dir: Path | None, best: tuple[str, float] | None,
           interrupted: bool) -> None:
    """The end of a run: the analysis tables and report.html as the parent's artifacts, the
    best metric, and the parent's status (an interrupted run stays open for its resume).
    After a failure during the run, only its open runs are closed (`_close_after_failure`)."""
    try:
        runs = read_runs(experiment_dir).get(TRACKER)
    except Exception as error:  # noqa: BLE001 - the experiment itself is complete
        _guard.fail(TRACKER, "the parent run's artifacts", error)
        return
    if not runs:
        return
    if _guard.broken(TRACKER):
        _guard.skip(TRACKER, "parent-run artifacts")
        _close_after_failure(runs, interrupted)
        return
    try:
        client = client_for(runs["tracking_uri"])
        parent = runs["parent_run_id"]
        if analysis_dir is not None and analysis_dir.is_dir():
            for path in sorted(analysis_dir.iterdir()):
                if path.is_file():
                    client.log_artifact(parent, str(path), artifact_path="analysis")
        if best is not None:
            client.log_metric(parent, f"best_{best[0]}", best[1])
        client.set_terminated(parent, "KILLED" if interrupted else "FINISHED")
    except Exception as error:  # noqa: BLE001 - the experiment itself is complete
        _guard.fail(TRACKER, "the parent run's artifacts", error)
        _guard.skip(TRACKER, "parent-run artifacts")


def _close_after_failure(runs: dict, interrupted: bool) -> None:
    """The runs a failed tracker left RUNNING, ended as FAILED (their record is incomplete)
    if the store answers again; else the end line says that they stay open. An interrupted
    run's parent ends KILLED and its trial runs stay open for `raytune-ft resume`, as after
    any Ctrl-C."""
    failure = _guard.failure(TRACKER)
    ours = {runs["parent_run_id"], *(t["run_id"] for t in runs.get("trials", {}).values())}
    with _guard.quiet_retries():
        try:
            client = client_for(runs["tracking_uri"])
            running = client.search_runs([runs["experiment_id"]],
                                         filter_string="attributes.status = 'RUNNING'",
                                         max_results=50000)
            open_ids = [r.info.run_id for r in running if r.info.run_id in ours]
            if interrupted:
                open_ids = [i for i in open_ids if i == runs["parent_run_id"]]
            client.set_tag(runs["parent_run_id"], "raytune_ft.tracking_stopped",
                           f"not logged from {failure.first} on ({failure.error})"[:5000])
            for run_id in open_ids:
                client.set_terminated(run_id, "KILLED" if interrupted else "FAILED")
        except Exception as error:  # noqa: BLE001 - still unreachable: say so
            failure.outcome = (f"its runs stay open (RUNNING) in MLflow: the store did not "
                               f"answer at the end either ({_guard.brief(error)})")
            return
    if interrupted:
        failure.outcome = ("its parent run ended KILLED once the store answered again; the "
                           "trial runs stay open for `raytune-ft resume`")
    else:
        failure.outcome = (f"its {len(open_ids)} open runs ended FAILED once the store "
                           "answered again")
