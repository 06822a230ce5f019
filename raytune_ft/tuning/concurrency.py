"""`run.max_concurrent_trials` for every searcher and scheduler, also after a resume.

Two places hold the limit. The searcher creates a trial only while fewer than N are
unfinished (`limit_concurrency`): Ray's `TuneConfig(max_concurrent_trials=...)` does that
only by wrapping a `Searcher` (hyperopt, Optuna) and warns and ignores it for a
`BasicVariantGenerator` instance, which random and grid search, replay, confirm and every
PBT/PB2 run use. A resumed experiment breaks the searcher's count: Tune requeues every
unfinished trial and every errored one at once, and an errored trial is no longer unfinished
to the searcher, so `raytune-ft resume` ran two trials side by side under a limit of one.
`RunningLimit` wraps the scheduler and keeps a trial beyond the limit PAUSED until a running
one ends. While a run lasts, the searcher's limit keeps it idle.

Under PBT and PB2 a paused member counts as unfinished: the population that exchanges
weights is the N members alive at once (Ray's own semantics for `max_concurrent_trials`).
"""

from __future__ import annotations

from ray.tune.experiment import Trial
from ray.tune.schedulers.trial_scheduler import TrialScheduler


def limit_concurrency(search_alg, limit: int | None):
    """`search_alg` with at most `limit` unfinished trials at a time (None: no limit)."""
    from ray.tune.search import BasicVariantGenerator, ConcurrencyLimiter

    if not limit or isinstance(search_alg, ConcurrencyLimiter):
        return search_alg
    if isinstance(search_alg, BasicVariantGenerator):
        search_alg.max_concurrent = limit
        return search_alg
    if search_alg.set_max_concurrency(limit):  # it keeps the limit itself (Optuna here: a
        return search_alg  # ConcurrencyLimiter would drop a resumed errored trial's completion)
    return ConcurrencyLimiter(search_alg, max_concurrent=limit)


def limit_running(scheduler, limit: int | None):
    """`scheduler` starting a trial only while fewer than `limit` run (None: unchanged)."""
    if not limit or isinstance(scheduler, RunningLimit):
        return scheduler
    return RunningLimit(scheduler, limit)


_BUSY = (Trial.RUNNING, Trial.PENDING)  # running, or about to start (Tune starts every PENDING)


class RunningLimit(TrialScheduler):
    """Any Tune scheduler, with at most `limit` trials RUNNING or PENDING at once.

    Tune starts every PENDING trial that fits the cluster; only `choose_trial_to_run` (asked
    first on every step, before the pending trials start) and a PAUSED status hold one back.
    So a trial that turns up PENDING beyond the limit is set PAUSED here before it starts, and
    handed back to Tune as soon as fewer than `limit` are busy. Everything else is the wrapped
    scheduler's. A module-level class: Tune pickles the scheduler with the experiment.
    """

    def __init__(self, scheduler: TrialScheduler, limit: int) -> None:
        super().__init__()
        self.scheduler = scheduler
        self.limit = limit
        self._seen: set[str] = set()  # trials this gate has looked at
        self._held: list[str] = []  # trials it paused, oldest first

    def choose_trial_to_run(self, tune_controller) -> Trial | None:
        trials = list(tune_controller.get_trials())
        busy = sum(t.status in _BUSY and t.trial_id in self._seen for t in trials)
        for trial in trials:  # new since the last step: not yet started by Tune
            if trial.trial_id in self._seen:
                continue
            self._seen.add(trial.trial_id)
            if trial.status != Trial.PENDING:
                continue
            if busy >= self.limit:
                tune_controller._set_trial_status(trial, Trial.PAUSED)
                self._held.append(trial.trial_id)
            else:
                busy += 1
        if busy >= self.limit:
            return None
        by_id = {t.trial_id: t for t in trials}
        while self._held:
            trial = by_id.get(self._held.pop(0))
            if trial is not None and trial.status == Trial.PAUSED:
                return trial
        return self.scheduler.choose_trial_to_run(tune_controller)

    # ------------------------------------------------------------ the wrapped scheduler's

    @property
    def metric(self):
        return self.scheduler.metric

    @property
    def supports_buffered_results(self):
        return self.scheduler.supports_buffered_results

    def set_search_properties(self, metric, mode, **spec) -> bool:
        return self.scheduler.set_search_properties(metric, mode, **spec)

    def on_trial_add(self, tune_controller, trial: Trial) -> None:
        self.scheduler.on_trial_add(tune_controller, trial)

    def on_trial_error(self, tune_controller, trial: Trial) -> None:
        self.scheduler.on_trial_error(tune_controller, trial)

    def on_trial_result(self, tune_controller, trial: Trial, result: dict) -> str:
        return self.scheduler.on_trial_result(tune_controller, trial, result)

    def on_trial_complete(self, tune_controller, trial: Trial, result: dict) -> None:
        self.scheduler.on_trial_complete(tune_controller, trial, result)

    def on_trial_remove(self, tune_controller, trial: Trial) -> None:
        self.scheduler.on_trial_remove(tune_controller, trial)

    def debug_string(self) -> str:
        return f"{self.scheduler.debug_string()} (at most {self.limit} trials at once)"

    def save(self, checkpoint_path: str) -> None:
        self.scheduler.save(checkpoint_path)

    def restore(self, checkpoint_path: str) -> None:
        self.scheduler.restore(checkpoint_path)
