"""A resumed experiment decides what the uninterrupted one decides (`tuning.scheduler_state`).

On the scheduler itself: the same results fed to an uninterrupted ASHA and to one whose state
went through the save Tune makes at a snapshot, a new scheduler (`tuner.pkl`) and the restore
Tune makes at `Tuner.restore`: every decision equal. Through the real `Tuner` and
`Tuner.restore` (the product's `tune_settings` and `restore_tuner`) on a synthetic trainable
whose metric is a function of its config and its checkpointed state, one trial at a time (each
takes both CPUs): an experiment interrupted by SIGINT (Tune's Ctrl-C) and resumed ends with the
same trials stopped at the same iterations, the same PBT exploits and the same values as one
that ran through, and a restored trial's iterations go on from its checkpoint. Under
`run.max_concurrent_trials`, a trial the running limit holds at a snapshot runs after the
resume (on the scheduler alone for HyperBand, ASHA and FIFO, and through the real Tuner).
"""

from __future__ import annotations

import json
import os
import pickle
import signal
from pathlib import Path

import pytest
import synthetic
from ray import tune

from raytune_ft.schedulers import build_scheduler
from raytune_ft.schema import validate_config
from raytune_ft.tuning.scheduler_state import Resumable, SchedulerState, resumable

RATES = [3e-4, 1e-4, 5e-4, 2e-4, 6e-4, 1.5e-4, 4e-4, 0.5e-4]  # one trial each, in this order
SCHEDULERS = {
    "asha": {"type": "asha", "grace_period": 1, "reduction_factor": 2},
    "hyperband": {"type": "hyperband", "reduction_factor": 2},
    # synchronous, so a decision waits for the whole population whatever the timing; the
    # synthetic trainable ignores the batch size PBT explores (a random draw)
    "pbt": {"type": "pbt", "perturbation_interval": 2, "quantile_fraction": 0.25,
            "synch": True, "mutations": ["batch_size"]},
    "fifo": {"type": "fifo"},
    # asynchronous: a trial at its perturbation is ranked at once, the best asked to save
    "pbt_async": {"type": "pbt", "perturbation_interval": 2, "quantile_fraction": 0.5,
                  "mutations": ["batch_size"]},
}


def experiment(kind: str, num_trials: int = len(RATES), iterations: int = 8,
               limit: int | None = None):
    search = {"learning_rate": {"grid": RATES[:num_trials]}}
    search_alg = {"type": "grid"}
    if kind.startswith("pbt"):
        search["batch_size"] = {"choice": [16, 32]}
        search_alg = {"type": "random", "seed": 0}
    return validate_config({
        "name": kind, "model": {"name": "m"}, "data": {"task": "sst2"},
        "metric": "eval_accuracy", "mode": "max",
        "train": {"max_epochs": iterations / 4, "eval_every_epochs": 0.25},
        "search": search, "scheduler": SCHEDULERS[kind], "search_alg": search_alg,
        "run": {"num_samples": 1, "verbose": 0, "max_concurrent_trials": limit}})


# --------------------------------------------------------------------- the scheduler alone

def _trials(n: int):
    from ray.tune.experiment import Trial

    return [Trial("synthetic", config={"learning_rate": RATES[i]}, trial_id=f"t{i}",
                  stub=True) for i in range(n)]


def _results(n: int, iterations: int) -> list[tuple[int, dict]]:
    """Two trials at a time, each to its end, so a later trial meets rungs the earlier ones
    filled (and the restore falls between them)."""
    return [(i, {"training_iteration": step, "eval_accuracy": RATES[i] * 1e3 * step})
            for pair in range(0, n, 2) for step in range(1, iterations + 1)
            for i in range(pair, min(pair + 2, n))]


def _fresh(config) -> Resumable:
    """What `Tuner.restore` starts from: the scheduler as pickled in tuner.pkl."""
    from ray import cloudpickle

    scheduler, _ = resumable(build_scheduler(config.scheduler, config.plan()))
    scheduler.set_search_properties(config.metric, config.mode)
    return cloudpickle.loads(cloudpickle.dumps(scheduler))


def test_asha_restored_midway_decides_what_the_uninterrupted_one_decides():
    from ray import cloudpickle
    from ray.tune.schedulers import TrialScheduler

    config = experiment("asha")
    n, results = len(RATES), _results(len(RATES), 8)
    through, before = _fresh(config), _fresh(config)
    trials, trials_before = _trials(n), _trials(n)
    for i in range(n):
        through.on_trial_add(None, trials[i])
        before.on_trial_add(None, trials_before[i])
    stopped: set[int] = set()
    decisions = []
    half = len(results) // 2 + 3  # inside a pair
    for i, result in results[:half]:
        if i in stopped:
            continue
        decision = through.on_trial_result(None, trials[i], result)
        assert before.on_trial_result(None, trials_before[i], result) == decision
        decisions.append(decision)
        if decision == TrialScheduler.STOP:
            stopped.add(i)
    # Tune's snapshot (a pickled callback state), a new scheduler, Tune's restore
    saved = cloudpickle.loads(cloudpickle.dumps(SchedulerState(before).get_state()))
    after, restored = _fresh(config), _trials(n)
    callback = SchedulerState(after)
    callback.set_state(saved)
    for trial in restored:  # Tune re-adds every trial of the experiment
        after.on_trial_add(None, trial)
    callback.setup()  # then sets its callbacks up, before its first step
    empty, restored_empty = _fresh(config), _trials(n)  # what a restore did before
    for trial in restored_empty:
        empty.on_trial_add(None, trial)
    differ = 0
    for i, result in results[half:]:
        if i in stopped:
            continue
        decision = through.on_trial_result(None, trials[i], result)
        assert after.on_trial_result(None, restored[i], result) == decision, (i, result)
        differ += empty.on_trial_result(None, restored_empty[i], result) != decision
        decisions.append(decision)
        if decision == TrialScheduler.STOP:
            stopped.add(i)
    assert decisions.count(TrialScheduler.STOP) >= 3 and stopped
    assert differ, "an empty scheduler decides the same: the test shows nothing"


def test_a_saved_state_pickles_trials_by_id_and_keeps_no_session_objects():
    config = experiment("hyperband", num_trials=4)  # its brackets hold the trials
    scheduler = _fresh(config)
    for trial in _trials(4):
        scheduler.on_trial_add(None, trial)
    state = SchedulerState(scheduler).get_state()["scheduler"]
    assert set(state["statuses"]) == {"t0", "t1", "t2", "t3"}
    with pytest.raises(pickle.UnpicklingError):  # a trial is a reference, not a copy
        pickle.loads(state["scheduler"])


class _Controller:
    """What a scheduler and the running limit call of Tune's controller; `save`: the object
    reference a checkpoint save asked of a trial's actor returns."""

    search_alg = None

    def __init__(self, trials, save=None) -> None:
        self.trials = trials
        self.save = save

    def _schedule_trial_save(self, trial, result=None):
        from ray.train._internal.session import _FutureTrainingResult

        trial.temporary_state.saving_to = _FutureTrainingResult(self.save)
        return trial.temporary_state.saving_to

    def pause_trial(self, trial, should_checkpoint: bool = True) -> None:
        from ray.tune.experiment import Trial

        trial.set_status(Trial.PAUSED)

    def get_trials(self):
        return self.trials

    def get_live_trials(self):
        from ray.tune.experiment import Trial

        return [t for t in self.trials if t.status not in (Trial.TERMINATED, Trial.ERROR)]

    def _set_trial_status(self, trial, status) -> None:
        trial.set_status(status)

    def step(self, scheduler) -> None:
        """Tune's step, as far as starting trials goes: the scheduler's choice starts, and
        so does every trial PENDING (what fits the cluster, here all)."""
        from ray.tune.experiment import Trial

        chosen = scheduler.choose_trial_to_run(self)
        for trial in self.trials:
            if trial is chosen or trial.status == Trial.PENDING:
                trial.set_status(Trial.RUNNING)


@pytest.mark.parametrize("save", ["resolves", "actor gone", "does not answer"])
def test_a_pbt_save_in_flight_is_saved_as_what_it_returns(save, tmp_path, ray_local):
    """Asynchronous PBT asks its best trial to save at a perturbation, and Tune's snapshot
    may come while that save is in flight. Restored, the worse trial exploits what the save
    returns, as it would have without the interrupt: the value it resolved to, else (an
    actor gone at Ctrl-C, a save that does not answer at once) the trial's newest
    checkpoint, which is what a function trainable's save returns. Such a save was stored
    as no checkpoint (the exploit skipped), after up to 10 s."""
    import time

    import ray
    from ray import cloudpickle
    from ray.train import Checkpoint
    from ray.train._internal.session import _FutureTrainingResult, _TrainingResult
    from ray.train._internal.storage import StorageContext
    from ray.tune.experiment import Trial

    @ray.remote(num_cpus=0)
    class Saving:  # a trial's actor, whose save does not answer
        def save(self) -> None:
            time.sleep(60)

    def trials():
        storage = StorageContext(storage_path=str(tmp_path), experiment_dir_name="exp")
        out = [Trial("synthetic", config={"learning_rate": RATES[i], "batch_size": 16},
                     trial_id=f"t{i}", stub=True, storage=storage) for i in range(2)]
        for trial in out:
            trial.init_local_path()  # PBT logs its exploits beside the trials
        return out

    def saved_at(iteration: int) -> _TrainingResult:
        return _TrainingResult(checkpoint=Checkpoint(str(tmp_path / f"t0_{iteration}")),
                               metrics={"training_iteration": iteration,
                                        "eval_accuracy": 0.9})

    actor = None
    if save == "resolves":
        reference = ray.put(saved_at(3))  # (another checkpoint than the newest: which one?)
    else:
        actor = Saving.remote()
        reference = actor.save.remote()
        if save == "actor gone":
            ray.kill(actor)
    config = experiment("pbt_async", num_trials=2)
    before, (t0, t1) = _fresh(config), trials()
    controller = _Controller([t0, t1], save=reference)
    for trial in (t0, t1):
        before.on_trial_add(controller, trial)
        trial.set_status(Trial.RUNNING)
    t0.run_metadata.checkpoint_manager.register_checkpoint(saved_at(2))  # Tune's, at a report
    before.on_trial_result(controller, t1, {"training_iteration": 2, "eval_accuracy": 0.1})
    before.on_trial_result(controller, t0, {"training_iteration": 2, "eval_accuracy": 0.9})
    assert isinstance(t0.temporary_state.saving_to, _FutureTrainingResult)  # the best saves
    started = time.monotonic()
    saved = cloudpickle.dumps(SchedulerState(before).get_state())  # Tune's snapshot
    assert time.monotonic() - started < 5, "the snapshot waited for the save"
    if actor is not None:
        ray.kill(actor)
    after, (r0, r1) = _fresh(config), trials()  # Tune's restore
    callback = SchedulerState(after)
    callback.set_state(cloudpickle.loads(saved))
    controller = _Controller([r0, r1])
    for trial in (r0, r1):
        after.on_trial_add(controller, trial)
    callback.setup()
    for trial in (r0, r1):
        trial.set_status(Trial.RUNNING)
    after.on_trial_result(controller, r1, {"training_iteration": 4, "eval_accuracy": 0.1})
    expected = saved_at(3 if save == "resolves" else 2).checkpoint.path
    assert r1.checkpoint is not None and r1.checkpoint.path == expected, \
        "the restored PBT skipped the exploit, or cloned another checkpoint"
    assert r1.status == Trial.PAUSED  # to restart from it


def _driver(config, tmp_path, saved: dict | None):
    """A driver's limited scheduler and its callback as `tune_settings` makes them, through
    `tuner.pkl`, and its two trials as Tune adds them (a resume requeues both PENDING), with
    `saved` (a pickled snapshot) restored."""
    from ray import cloudpickle

    from raytune_ft.tuning.runner import tune_settings

    tune_config, run_config = tune_settings(config, str(tmp_path / config.name), config.plan())
    callback = next(c for c in run_config.callbacks if isinstance(c, SchedulerState))
    scheduler, callback = cloudpickle.loads(cloudpickle.dumps((tune_config.scheduler,
                                                               callback)))
    scheduler.set_search_properties(config.metric, config.mode)
    if saved is not None:
        callback.set_state(cloudpickle.loads(saved))
    trials = _trials(2)
    controller = _Controller([])
    for trial in trials:
        if saved is None and trial.trial_id == "t1":
            break  # the first run: the searcher makes t1 once t0 has ended
        controller.trials.append(trial)
        scheduler.on_trial_add(controller, trial)
    callback.setup()
    return scheduler, callback, controller, trials


@pytest.mark.parametrize("kind", ["hyperband", "asha", "fifo"])
def test_a_trial_the_limit_held_runs_after_a_second_resume(kind, tmp_path):
    # `run.max_concurrent_trials: 1`. The first run: t0 errors, t1 starts; Ctrl-C. Resumed,
    # both restart: the limit holds t1 (PAUSED) while t0 runs; Ctrl-C again. Resumed again,
    # t1 was restored PAUSED, which HyperBand never hands back: the run hung.
    from ray import cloudpickle
    from ray.tune.experiment import Trial

    config = experiment(kind, num_trials=2, limit=1)
    scheduler, callback, controller, (t0, t1) = _driver(config, tmp_path, None)
    controller.step(scheduler)
    t0.set_status(Trial.ERROR)
    scheduler.on_trial_error(controller, t0)
    controller.trials.append(t1)
    scheduler.on_trial_add(controller, t1)
    controller.step(scheduler)
    assert (t0.status, t1.status) == (Trial.ERROR, Trial.RUNNING)
    saved = cloudpickle.dumps(callback.get_state())  # Tune's snapshot at Ctrl-C
    for resume in (1, 2):
        scheduler, callback, controller, (t0, t1) = _driver(config, tmp_path, saved)
        controller.step(scheduler)
        assert (t0.status, t1.status) == (Trial.RUNNING, Trial.PAUSED), resume  # one at once
        saved = cloudpickle.dumps(callback.get_state())
    result = {"training_iteration": config.iterations, "eval_accuracy": 0.5}
    t0.set_status(Trial.TERMINATED)
    scheduler.on_trial_complete(controller, t0, result)
    controller.step(scheduler)
    assert t1.status == Trial.RUNNING  # handed back to Tune
    # and the restored scheduler takes its results (HyperBand: it is in a bracket)
    assert scheduler.on_trial_result(controller, t1, {**result, "training_iteration": 1}) \
        == "CONTINUE"


# --------------------------------------------------------------------- the real Tuner

@pytest.fixture(scope="module")
def ray_by_value(ray_local):
    synthetic.by_value()
    yield


def _run(config, storage: Path, name: str, interrupt_after: int | None, checkpoint_every: int):
    """One trial at a time (each takes both CPUs of the module's Ray), each on a new actor:
    Tune then starts pending trials in order (a cached actor goes to any pending trial),
    and the order of trials is what ASHA's decisions depend on."""
    interrupt = None
    if interrupt_after is not None:
        marker = storage / f"{name}.interrupt"
        marker.touch()
        interrupt = synthetic.Interrupt(marker, interrupt_after, checkpoint_every)
    return synthetic.tuner(config, storage / name, cpus=2, checkpoint_every=checkpoint_every,
                           interrupt=interrupt, reuse_actors=False).fit()


def _history(experiment: Path) -> dict[float, list[tuple[int, float]]]:
    """learning rate it started with -> (iteration, value) per iteration, the last report of
    an iteration winning (as in iterations.parquet)."""
    out = {}
    for folder in sorted(p for p in experiment.iterdir() if (p / "result.json").is_file()):
        rows = [json.loads(line) for line in (folder / "result.json").read_text().splitlines()]
        start = json.loads((folder / "params.json").read_text())["learning_rate"]
        last = {row["training_iteration"]: round(row["eval_accuracy"], 9) for row in rows}
        out[start] = sorted(last.items())
    return out


def _exploits(experiment: Path) -> list[list]:
    log = experiment / "pbt_global.txt"
    lines = log.read_text().splitlines() if log.is_file() else []
    # [target tag, donor tag, ...]: a tag starts with the trial's index. The iterations Ray
    # logs beside them are the trials' previous results when a trial decided on its own
    # result, so they follow the order in which trials reached the sync point, not the
    # decision; the histories compared above show which checkpoint a clone took.
    return [[int(tag.split("_")[0]) for tag in json.loads(line)[:2]] for line in lines]


@pytest.mark.parametrize("kind, trials, iterations, interrupt_after, checkpoint_every", [
    # trials 1 and 3 stop at the first rung; the 8th result is trial 2's 3rd iteration (its
    # checkpoint is at the 2nd): an empty rung would then let trial 3 go on
    ("asha", 4, 4, 8, 2),
    pytest.param("hyperband", 8, 8, 7, 1, marks=pytest.mark.slow),  # ~100 s each
    pytest.param("pbt", 4, 8, 11, 1, marks=pytest.mark.slow)])
def test_a_resumed_experiment_decides_what_the_uninterrupted_one_decides(
        kind, trials, iterations, interrupt_after, checkpoint_every, tmp_path, ray_by_value):
    config = experiment(kind, trials, iterations)
    _run(config, tmp_path, "through", None, checkpoint_every)
    first = _run(config, tmp_path, "resumed", interrupt_after, checkpoint_every)
    assert any(not r.metrics or r.metrics["training_iteration"] < iterations for r in first), \
        "the interrupt came after the run ended"
    resumed = synthetic.restored(tmp_path / "resumed", cpus=2).fit()
    assert not resumed.errors
    through = _history(tmp_path / "through")
    assert _history(tmp_path / "resumed") == through
    if kind == "pbt":  # who cloned whom (the values above show from which checkpoint)
        exploits = _exploits(tmp_path / "through")
        assert exploits, "no exploit: the comparison shows nothing"
        assert _exploits(tmp_path / "resumed") == exploits
    else:
        assert any(rows[-1][0] < iterations for rows in through.values()), \
            f"{kind} stopped no trial: the comparison shows nothing"
    # a restored trial's iterations go on from its checkpoint, never restart at 1
    for folder in (tmp_path / "resumed").iterdir():
        if (folder / "result.json").is_file():
            rows = [json.loads(x) for x in (folder / "result.json").read_text().splitlines()]
            assert all(r["training_iteration"] == r["step"] for r in rows), folder.name


class _InterruptWhileHeld(tune.Callback):
    """Ctrl-C (SIGINT) once `marker` exists and the running limit holds a trial: one PAUSED
    that this driver never started and that was not PAUSED at its first step (the scheduler
    state restores those). The marker goes with it."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker
        self._reset()

    def _reset(self) -> None:
        self.started: set[str] = set()
        self.restored_paused: set[str] | None = None

    def __getstate__(self) -> dict:
        return {"marker": self.marker}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._reset()

    def on_step_begin(self, iteration, trials, **info):
        if self.restored_paused is None:
            self.restored_paused = {t.trial_id for t in trials if t.status == "PAUSED"}

    def on_trial_start(self, iteration, trials, trial, **info):
        self.started.add(trial.trial_id)

    def on_step_end(self, iteration, trials, **info):
        held = [t for t in trials if t.status == "PAUSED" and t.trial_id not in self.started
                and t.trial_id not in (self.restored_paused or ())]
        if held and self.marker.exists():
            self.marker.unlink()
            os.kill(os.getpid(), signal.SIGINT)


@pytest.mark.slow  # ~30 s; test_a_trial_the_limit_held_runs_after_a_second_resume is fast
def test_a_limited_hyperband_run_resumed_twice_ends(tmp_path, ray_by_value):
    """`max_concurrent_trials: 1` under HyperBand through the real Tuner: the first trial
    errors, Ctrl-C while the second runs; resumed, both restart and the limit holds one:
    Ctrl-C again. The second resume restored the held trial PAUSED and never started it."""
    import threading

    from raytune_ft.tuning.runner import fit_tuner

    config = experiment("hyperband", num_trials=2, iterations=4, limit=1)
    fail, first, second = (tmp_path / name for name in ("fail", "first", "second"))
    fail.touch()
    first.touch()
    # half a CPU each: only the limit keeps the trials apart
    synthetic.tuner(config, tmp_path / "exp", cpus=0.5,
                    interrupt=synthetic.Interrupt(first, 3, 1),
                    callbacks=(_InterruptWhileHeld(second),), fail_once=[2, str(fail)]).fit()
    assert not first.exists() and not fail.exists()
    second.touch()
    _, interrupted = fit_tuner(synthetic.restored(tmp_path / "exp", cpus=0.5))
    assert interrupted and not second.exists(), "no trial was held at the second Ctrl-C"
    hang = threading.Timer(240, os.kill, (os.getpid(), signal.SIGINT))  # the old hang
    hang.start()
    try:
        results, interrupted = fit_tuner(synthetic.restored(tmp_path / "exp", cpus=0.5))
    finally:
        hang.cancel()
    assert not interrupted, "the second resume did not end: a held trial never started"
    assert len(results) == 2 and not results.errors
