"""Weights & Biases: one run per trial (id = the trial id) in a group named after the
experiment, every reported metric against `samples_seen`, the trial's hyperparameters as its
config, and its end status (terminated, stopped, diverged, errored) in the run summary.

Ray's `WandbLoggerCallback` starts a Ray actor (a Python process that imports wandb) for every
trial; on a machine whose cores the trials already fill, those start-ups alone cost several
per cent of the quick experiment's wall time (benchmarks/RESULTS.md, "Tracking overhead").
wandb keeps several runs open in one process (`reinit="create_new"`), so here one background
thread of the driver (`_worker`) opens, logs to and finishes every trial's run, and one
wandb-core service writes them all; the driver only queues calls. Two more changes from Ray's
callback: the x axis is `samples_seen`, not W&B's step (Ray logs with step = iteration, which
a PBT exploit moves backwards, and W&B then drops the points); a resumed experiment continues
each trial's run (`resume="allow"` with the trial id) and logs no point twice (the last step
logged per trial is kept in the experiment's tracker record, `_runs`, as for MLflow). An
exploit (a restart from another trial's checkpoint, `_common.clone_source`) updates the run's
config and counts `pbt_exploits` in its summary.

The API key is read by wandb from `WANDB_API_KEY` (or a `wandb login`); the callback never
holds it, so the pickled experiment does not either. Offline runs land in `$WANDB_DIR/wandb/`,
or without WANDB_DIR in `<experiment folder>/wandb/`.
"""

from __future__ import annotations

import os

from ray import tune

from raytune_ft.storage import is_uri
from raytune_ft.tracking import _guard
from raytune_ft.tracking._common import (
    STEP,
    Clones,
    clone_source,
    end_status,
    hparam_values,
    metrics_of,
    step_of,
)
from raytune_ft.tracking._runs import read_runs, write_runs
from raytune_ft.tracking._worker import Threaded, Worker

TRACKER = "wandb"


class WandbTracker(Threaded, tune.Callback):
    """Driver-side: queues every W&B call on its worker thread."""

    tracker = TRACKER

    def __init__(self, project: str, group: str, mode: str, entity: str | None,
                 experiment_dir: str | None = None, iterations: int = 0):
        self.project = project
        self.group = group
        self.mode = mode
        self.entity = entity
        self.experiment_dir = experiment_dir
        self.iterations = iterations
        self._reset()

    TRANSIENT = ("_runs", "_known", "_clones")

    def _reset(self) -> None:
        super()._reset()
        self._runs: dict[str, object] = {}  # trial id -> its open wandb Run (worker thread)
        self._known: dict[str, dict] | None = None  # trial id -> last step logged, exploits
        self._clones = Clones()

    # ------------------------------------------------------------------ Tune's hooks (driver)

    def setup(self, **info):
        self._worker = Worker(TRACKER)
        if self.mode == "online":
            self._worker.submit("the setup", "its setup (the API key)", _check_api_key)

    def on_trial_start(self, iteration, trials, trial, **info):
        self._submit("trial runs", f"trial {trial}: its run", self._start, trial.trial_id,
                     str(trial), dict(trial.config), clone_source(trial))

    def on_trial_result(self, iteration, trials, trial, result, **info):
        trained = dict(result.get("config") or trial.config)  # what this result trained with
        self._submit("results", f"trial {trial}: iteration {result.get('training_iteration')}",
                     self._log, trial.trial_id, str(trial), trained, dict(result))

    def on_trial_complete(self, iteration, trials, trial, **info):
        # A run is finished even after a W&B failure (the guard would skip it): its files
        # are then complete as far as they go.
        self._submit("trial ends", f"trial {trial}: its end", self._finish, trial.trial_id,
                     end_status(trial.last_result, self.iterations), always=True)

    def on_trial_error(self, iteration, trials, trial, **info):
        self._submit("trial ends", f"trial {trial}: its end", self._finish, trial.trial_id,
                     end_status(trial.last_result, self.iterations, errored=True), always=True)

    def on_experiment_end(self, trials, **info):
        if self._worker is None:
            return
        if not self._worker.close(timeout_s=120):
            _guard.fail(TRACKER, "the final uploads", TimeoutError("still busy after 120 s"))
            return
        if self._runs:  # still open (an interrupted experiment): finished, so their files
            # are complete; `raytune-ft resume` continues them
            self._attempt("trial ends", "the open runs", self._finish_open)

    # ------------------------------------------------------------------ the worker thread

    def _open(self, trial_id: str, name: str, config: dict):
        run = self._runs.get(trial_id)
        if run is not None:  # a trial restarted (a PBT exploit, a retry) keeps its run
            return run
        import wandb

        extra = {"entity": self.entity} if self.entity else {}
        directory = os.environ.get("WANDB_DIR") or (
            self.experiment_dir if self.experiment_dir and not is_uri(self.experiment_dir)
            else None)
        # console off: every open run would otherwise copy the driver's whole console (Ray's
        # table, every trial's lines) into its output.log; no stats: they would be the
        # driver's machine, not the trial's node
        run = wandb.init(project=self.project, group=self.group, name=name, id=trial_id,
                         mode=self.mode, resume="allow", reinit="create_new", dir=directory,
                         config=hparam_values(config),
                         settings=wandb.Settings(console="off", x_disable_stats=True), **extra)
        run.define_metric(STEP)
        run.define_metric("*", step_metric=STEP)
        self._runs[trial_id] = run
        return run

    def _trial_known(self, trial_id: str) -> dict:
        if self._known is None:  # a resumed experiment: what its first run logged
            self._known = read_runs(self.experiment_dir).get(TRACKER, {}).get(
                "trials", {}) if self.experiment_dir else {}
        return self._known.setdefault(trial_id, {"last_step": -1, "exploits": 0})

    def _start(self, trial_id: str, name: str, config: dict, source: str | None) -> None:
        self._open(trial_id, name, config)
        self._clones.started(self._trial_known(trial_id), trial_id, source)

    def _log(self, trial_id: str, name: str, trained: dict, result: dict) -> None:
        run = self._open(trial_id, name, trained)
        known = self._trial_known(trial_id)
        log, source = self._clones.result(known, trial_id, step_of(result))
        if source is not None:  # PBT replaced it: the config it goes on with
            run.config.update(hparam_values(trained), allow_val_change=True)
            run.summary["pbt_exploits"] = known["exploits"]
        if log:
            metrics = metrics_of(result)
            if "training_iteration" in metrics:  # W&B's own step stays its running count
                metrics["iteration"] = metrics.pop("training_iteration")
            run.log(metrics)
        if self.experiment_dir:
            write_runs(self.experiment_dir, TRACKER, {"trials": self._known})

    def _finish(self, trial_id: str, status: str) -> None:
        run = self._runs.pop(trial_id, None)
        if run is not None:
            run.summary["status"] = status
            run.finish(exit_code=1 if status == "errored" else 0)

    def _finish_open(self) -> None:
        for trial_id in list(self._runs):
            self._runs.pop(trial_id).finish()


def _check_api_key() -> None:
    """Online mode needs a key (`WANDB_API_KEY`, a `wandb login`, or Ray's key hook): without
    one every run would fail; say so once, at the start."""
    from ray.air.integrations.wandb import _set_api_key

    _set_api_key()
