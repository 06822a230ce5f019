"""A resumed experiment decides what the uninterrupted one decides (`tuning.scheduler_state`).

On the scheduler itself: the same results fed to an uninterrupted ASHA and to one whose state
went through the save Tune makes at a snapshot, a new scheduler (`tuner.pkl`) and the restore
Tune makes at `Tuner.restore`: every decision equal. Through the real `Tuner` and
`Tuner.restore` (the product's `tune_settings` and `restore_tuner`) on a synthetic trainable
whose metric is a function of its config and its checkpointed state, one trial at a time (each
takes both CPUs): an experiment interrupted by SIGINT (Tune's Ctrl-C) and resumed ends with the
same trials stopped at the same iterations, the same PBT exploits and the same values as one
that ran through, and a restored trial's iterations go on from its checkpoint.
"""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import pytest
import synthetic

from raytune_ft.config import validate_config
from raytune_ft.tuning.scheduler_state import Resumable, SchedulerState, resumable
from raytune_ft.tuning.schedulers import build_scheduler

RATES = [3e-4, 1e-4, 5e-4, 2e-4, 6e-4, 1.5e-4, 4e-4, 0.5e-4]  # one trial each, in this order
SCHEDULERS = {
    "asha": {"type": "asha", "grace_period": 1, "reduction_factor": 2},
    "hyperband": {"type": "hyperband", "reduction_factor": 2},
    # synchronous, so a decision waits for the whole population whatever the timing; the
    # synthetic trainable ignores the batch size PBT explores (a random draw)
    "pbt": {"type": "pbt", "perturbation_interval": 2, "quantile_fraction": 0.25,
            "synch": True, "mutations": ["batch_size"]},
}


def experiment(kind: str, num_trials: int = len(RATES), iterations: int = 8):
    search = {"learning_rate": {"grid": RATES[:num_trials]}}
    search_alg = {"type": "grid"}
    if kind == "pbt":
        search["batch_size"] = {"choice": [16, 32]}
        search_alg = {"type": "random", "seed": 0}
    return validate_config({
        "name": kind, "model": {"name": "m"}, "data": {"task": "sst2"},
        "metric": "eval_accuracy", "mode": "max",
        "train": {"max_epochs": iterations / 4, "eval_every_epochs": 0.25},
        "search": search, "scheduler": SCHEDULERS[kind], "search_alg": search_alg,
        "run": {"num_samples": 1, "verbose": 0}})


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

    scheduler, _ = resumable(build_scheduler(config))
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
