"""A synthetic trainable driven through the product's real `Tuner` settings
(`runner.tune_settings`, `runner.restore_tuner`, `runner.fit_tuner`), for tests of what Tune
and the callbacks do around trials (resume, scheduler state, trackers) in seconds, not minutes.

Ray's workers cannot import the tests folder: a test module using this calls
`by_value()` once its Ray is up, so Tune pickles these functions and classes by value.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import tempfile
from pathlib import Path

from ray import tune


def by_value() -> None:
    import sys

    from ray import cloudpickle

    cloudpickle.register_pickle_by_value(sys.modules[__name__])


def synthetic(config: dict) -> None:
    """`config["iterations"]` iterations; `eval_accuracy` accumulates the learning rate
    (x 1000; x (1 + the trial's index) with `by_trial`) per iteration, and with
    `samples_seen` (10 per iteration) it is the state a checkpoint holds, so an exploit's
    clone goes on from its donor's values. A checkpoint at every `checkpoint_every`-th
    iteration: a resumed trial reports the ones after its last checkpoint again.
    `fail_once`: [iteration, marker file]: the first trial to reach that iteration while the
    marker exists raises (and the marker goes). `odd_key_at`: at that iteration a metric
    named "odd key!" comes too. `by_trial` needs Ray's variant generator
    (random, grid), whose trial ids end in the trial's index."""
    value, step = 0.0, 0
    checkpoint = tune.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as directory:
            state = json.loads(Path(directory, "state.json").read_text())
            value, step = state["value"], state["step"]
    every = config.get("checkpoint_every", 1)
    gain = config.get("learning_rate", 1e-4) * 1e3
    if config.get("by_trial"):  # trials of one config differ: gain x (1 + trial index)
        gain *= 1 + int(tune.get_context().get_trial_id().rsplit("_", 1)[-1])
    while step < config["iterations"]:
        step += 1
        value += gain
        fail = config.get("fail_once")  # [iteration, marker file]
        if fail and step == fail[0] and _take(Path(fail[1])):
            raise RuntimeError(f"the first trial at iteration {step} fails, once")
        metrics = {"eval_accuracy": value, "step": step, "samples_seen": 10 * step}
        if step == config.get("odd_key_at"):  # a name MLflow refuses ("Invalid metric name")
            metrics["odd key!"] = 1.0
        if step % every == 0:
            with tempfile.TemporaryDirectory() as directory:
                Path(directory, "state.json").write_text(json.dumps(
                    {"value": value, "step": step}))
                tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(directory))
        else:
            tune.report(metrics)


def _take(marker: Path) -> bool:
    """Remove `marker`; whether this process was the one that removed it."""
    try:
        marker.unlink()
    except FileNotFoundError:
        return False
    return True


class Interrupt(tune.Callback):
    """SIGINT (what Ctrl-C sends) to this process once `marker` exists and `after` results
    came, at the first result that is not at a checkpoint, if any (so a resume reports it
    again); the marker goes with it. The callback is pickled into tuner.pkl with the experiment, so
    touching the marker again interrupts the resumed run too."""

    def __init__(self, marker: Path, after: int, checkpoint_every: int) -> None:
        self.marker, self.after, self.every, self.seen = marker, after, checkpoint_every, 0

    def on_trial_result(self, iteration, trials, trial, result, **info):
        self.seen += 1
        past_checkpoint = self.every == 1 or result["step"] % self.every
        if self.seen >= self.after and past_checkpoint and self.marker.exists():
            self.marker.unlink()
            os.kill(os.getpid(), signal.SIGINT)


class SettleAtTheEnd(tune.Callback):
    """Waits `seconds` when a trial completes, as a real trial's last checkpoint would: the
    trackers' threads have written everything before Tune's final snapshot (and its sync of
    the staging folder over the experiment) comes."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds

    def on_trial_complete(self, iteration, trials, trial, **info):
        import time

        time.sleep(self.seconds)


def trainable(cpus: float):
    return tune.with_resources(synthetic, {"cpu": cpus})


def tuner(config, experiment_dir: Path, *, cpus: float = 1, checkpoint_every: int = 1,
          interrupt: Interrupt | None = None, reuse_actors: bool = True,
          callbacks: tuple = (), **space):
    """The experiment's `Tuner` as `runner.build_tuner` makes it, on the synthetic trainable
    (`cpus` each), with the test's `interrupt` and `callbacks`; `space`: extra keys of every
    trial's config."""
    from raytune_ft.tuning.runner import tune_settings
    from raytune_ft.tuning.search import param_space

    tune_config, run_config = tune_settings(config, str(experiment_dir))
    callbacks = [*run_config.callbacks, *callbacks,
                 *([interrupt] if interrupt is not None else [])]
    run_config = dataclasses.replace(run_config, callbacks=callbacks)
    tune_config = dataclasses.replace(tune_config, reuse_actors=reuse_actors)
    space = {**param_space(config), "checkpoint_every": checkpoint_every,
             "iterations": config.iterations, **space}
    return tune.Tuner(trainable(cpus), param_space=space, tune_config=tune_config,
                      run_config=run_config)


def restored(experiment_dir: Path, cpus: float = 1):
    from raytune_ft.tuning.runner import restore_tuner

    return restore_tuner(str(experiment_dir), trainable(cpus))


def rows(trial_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (trial_dir / "result.json").read_text().splitlines()
            if line.strip()]


def trial_dirs(experiment_dir: Path) -> list[Path]:
    return sorted(p for p in experiment_dir.iterdir() if (p / "result.json").is_file())
