"""TensorBoard: event files in each trial's folder, every reported metric against
`samples_seen`, and the trial's hyperparameters for the HParams dashboard.

Ray's `TBXLoggerCallback` needs tensorboardX and plots against the iteration; this writes
with torch's `SummaryWriter` (the `tensorboard` package) into the trial's driver folder, which
Ray copies to storage with its own files, so `tensorboard --logdir <experiment>` reads them.
"""

from __future__ import annotations

from ray import tune

from raytune_ft.tracking._common import end_status, hparam_values, metrics_of, step_of
from raytune_ft.tracking._guard import Guarded


class TensorboardTracker(Guarded, tune.Callback):
    tracker = "tensorboard"

    def __init__(self, metric: str, iterations: int):
        self.metric = metric
        self.iterations = iterations
        self._writers: dict[str, object] = {}
        self._last_step: dict[str, int] = {}

    def __getstate__(self) -> dict:
        return {"metric": self.metric, "iterations": self.iterations}

    def __setstate__(self, state: dict) -> None:
        self.__init__(**state)

    def on_trial_start(self, iteration, trials, trial, **info):
        self._guard("trial starts", f"trial {trial}: its start", self._writer, trial)

    def on_trial_result(self, iteration, trials, trial, result, **info):
        self._guard("results", f"trial {trial}: a result", self._log, trial, result)

    def on_trial_complete(self, iteration, trials, trial, **info):
        self._guard("trial ends", f"trial {trial}: its end", self._close, trial,
                    end_status(trial.last_result, self.iterations))

    def on_trial_error(self, iteration, trials, trial, **info):
        self._guard("trial ends", f"trial {trial}: its end", self._close, trial,
                    end_status(trial.last_result, self.iterations, errored=True))

    def on_experiment_end(self, trials, **info):
        for trial_id in list(self._writers):
            self._writers.pop(trial_id).close()

    def _writer(self, trial):
        writer = self._writers.get(trial.trial_id)
        if writer is None:
            from torch.utils.tensorboard import SummaryWriter
            from torch.utils.tensorboard.summary import hparams

            writer = SummaryWriter(log_dir=trial.local_path, flush_secs=30)
            # The HParams plugin pairs these values with the scalars of the same run folder.
            for summary in hparams(hparam_values(trial.config), {self.metric: 0.0}):
                writer.file_writer.add_summary(summary)
            self._writers[trial.trial_id] = writer
        return writer

    def _log(self, trial, result: dict) -> None:
        step = step_of(result)
        writer = self._writer(trial)
        for key, value in metrics_of(result).items():
            writer.add_scalar(key, value, global_step=step)
        writer.flush()  # Ray copies the folder to storage at its snapshots
        self._last_step[trial.trial_id] = step

    def _close(self, trial, status: str) -> None:
        writer = self._writers.pop(trial.trial_id, None)
        if writer is not None:
            writer.add_text("status", status, global_step=self._last_step.get(trial.trial_id, 0))
            writer.close()

