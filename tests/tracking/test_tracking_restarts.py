"""Trackers across Ctrl-C and `resume`, twice, through the real Tuner and `Tuner.restore` (the
product's settings, `tests/synthetic.py`'s trainable) with a real MLflow store (sqlite) and
W&B offline files: every iteration exactly once per trial, steps unique, every run finished.

Each interrupt lands on a result past the trial's last checkpoint, so the resumed trial
reports it again. Ray 2.60 copies the experiment's top-level *.json into its staging folder
at a restore and syncs that copy back over the live file at every snapshot: a tracker record
kept there was rolled back to the resume's start, and the second resume logged points twice.
Also a PBT exploit that leaves the config as it was (a choice of one value, repeated): the
clone's points are logged and the exploit tagged, as in the analysis tables.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import synthetic

sys.path.insert(0, str(Path(__file__).parent))

from wandb_records import history, records, summary  # noqa: E402

from raytune_ft.config import validate_config  # noqa: E402

ITERATIONS = 8


@pytest.fixture(scope="module")
def ray_by_value(ray_local):
    synthetic.by_value()
    yield


@pytest.fixture
def wandb_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wandb_dir"))
    monkeypatch.setenv("WANDB_SILENT", "true")
    (tmp_path / "wandb_dir").mkdir()
    yield tmp_path / "wandb_dir" / "wandb"
    import wandb

    wandb.teardown()  # the wandb-core service this process started


def experiment(tmp_path: Path, name: str, **sections):
    return validate_config({
        "name": name, "model": {"name": "m"}, "data": {"task": "sst2"},
        "metric": "eval_accuracy", "mode": "max",
        "train": {"max_epochs": ITERATIONS / 4, "eval_every_epochs": 0.25},
        "search": {"learning_rate": {"grid": [1e-4, 2e-4]}},
        "scheduler": {"type": "fifo"}, "search_alg": {"type": "grid"},
        "run": {"num_samples": 1, "verbose": 0, "storage_path": str(tmp_path / "results")},
        "tracking": {"mlflow": {"tracking_uri": f"sqlite:///{tmp_path}/mlflow.db"},
                     "wandb": {"project": "resume", "mode": "offline"}},
        **sections})


def run(tuner, config, experiment_dir: Path) -> bool:
    """`Tuner.fit` and the trackers' end step, as `raytune-ft tune`/`resume` run them;
    whether Ctrl-C cut it short."""
    from raytune_ft.tracking import End, TrackingContext, finish_tracking
    from raytune_ft.tuning.runner import fit_tuner

    _, interrupted = fit_tuner(tuner)
    context = TrackingContext(config, str(experiment_dir), config.iterations)
    assert finish_tracking(context, End(None, None, interrupted)) == []
    return interrupted


def mlflow_runs(tmp_path: Path, name: str):
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path}/mlflow.db")
    runs = client.search_runs([client.get_experiment_by_name(name).experiment_id])
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = {r.data.tags["trial_id"]: r for r in runs if "mlflow.parentRunId" in r.data.tags}
    return client, parents, children


def test_ctrl_c_and_resume_twice_log_every_iteration_once_and_finish_every_run(
        tmp_path, wandb_dir, ray_by_value):
    config = experiment(tmp_path, "twice")
    directory = tmp_path / "results" / "twice"
    marker = tmp_path / "interrupt"
    marker.touch()
    interrupt = synthetic.Interrupt(marker, after=5, checkpoint_every=3)
    tuner = synthetic.tuner(config, directory, checkpoint_every=3, interrupt=interrupt,
                            callbacks=(synthetic.SettleAtTheEnd(2.0),))
    assert run(tuner, config, directory)
    marker.touch()  # the restored callback interrupts the first resume too
    assert run(synthetic.restored(directory), config, directory)
    assert not marker.exists(), "the first resume was not interrupted"
    assert not run(synthetic.restored(directory), config, directory)

    trials = synthetic.trial_dirs(directory)
    reported = {synthetic.rows(t)[-1]["trial_id"]: synthetic.rows(t) for t in trials}
    assert len(reported) == 2
    # each interrupt came past a checkpoint: the resumed trial reported iterations again
    assert any(len(rows) > ITERATIONS for rows in reported.values()), reported
    record = json.loads((directory / "raytune_ft_tracking" / "runs.json").read_text())
    assert not (directory / "raytune_ft_tracking.json").exists()

    client, parents, children = mlflow_runs(tmp_path, "twice")
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert record["mlflow"]["parent_run_id"] == parents[0].info.run_id
    assert set(children) == set(reported)
    for trial_id in reported:
        child = children[trial_id]
        assert child.info.status == "FINISHED" and child.data.tags["status"] == "terminated"
        logged = sorted((m.step, m.value) for m in
                        client.get_metric_history(child.info.run_id, "training_iteration"))
        assert logged == [(10 * i, float(i)) for i in range(1, ITERATIONS + 1)], trial_id
        assert record["mlflow"]["trials"][trial_id]["last_step"] == 10 * ITERATIONS
        assert record["wandb"]["trials"][trial_id]["last_step"] == 10 * ITERATIONS

        files = sorted(wandb_dir.glob(f"offline-run-*-{trial_id}/run-{trial_id}.wandb"))
        assert files, trial_id  # the run, continued by each resume it was still running in
        iterations = [int(row["iteration"]) for f in files for row in history(f)]
        assert iterations == list(range(1, ITERATIONS + 1)), (trial_id, iterations)
        steps = [int(row["samples_seen"]) for f in files for row in history(f)]
        assert steps == [10 * i for i in range(1, ITERATIONS + 1)]
        exits = [r.exit.exit_code for f in files for r in records(f)
                 if r.WhichOneof("record_type") == "exit"]
        assert exits == [0] * len(files), exits  # every part of the run finished
        assert json.loads(summary(files[-1])["status"]) == "terminated"


def test_a_pbt_exploit_that_keeps_the_config_is_tagged_and_its_points_logged(
        tmp_path, wandb_dir, ray_by_value):
    """Asynchronous PBT over a choice of one value, repeated: every exploit keeps the config
    (the batch size it re-draws is the same; the learning rate is not searched). One trial
    at a time, so the order is certain: trial 0 reaches iteration 4 while trial 1 waits at
    2, and clones trial 1's checkpoint of iteration 2: it reports iterations 3 and 4 again."""
    from raytune_ft.analysis import export_experiment
    from raytune_ft.experiment import write_record

    config = experiment(
        tmp_path, "same", search={"batch_size": {"choice": [16, 16]}},
        scheduler={"type": "pbt", "perturbation_interval": 2, "quantile_fraction": 0.5,
                   "mutations": ["batch_size"]},
        search_alg={"type": "random", "seed": 0},
        run={"num_samples": 2, "verbose": 0, "storage_path": str(tmp_path / "results")})
    directory = tmp_path / "results" / "same"
    tuner = synthetic.tuner(config, directory, cpus=2, reuse_actors=False, by_trial=True)
    assert not run(tuner, config, directory)
    exploits = [json.loads(line) for line in
                (directory / "pbt_global.txt").read_text().splitlines()]
    assert exploits, "no exploit happened"
    # one config for every trial, before and after any exploit
    configs = {json.dumps({k: r["config"][k] for k in ("batch_size", "learning_rate")
                           if k in r["config"]}, sort_keys=True)
               for folder in synthetic.trial_dirs(directory) for r in synthetic.rows(folder)}
    assert configs == {'{"batch_size": 16}'}, configs
    write_record(str(directory), config, {})
    export_experiment(directory)
    import pandas as pd

    table = pd.read_parquet(directory / "analysis" / "iterations.parquet")

    client, _, children = mlflow_runs(tmp_path, "same")
    went_back = False
    for folder in synthetic.trial_dirs(directory):
        rows = synthetic.rows(folder)
        trial_id = rows[-1]["trial_id"]
        steps = [r["samples_seen"] for r in rows]
        went_back |= any(b <= a for a, b in zip(steps, steps[1:]))
        tagged = [k for k in children[trial_id].data.tags if k.startswith("pbt.exploit.")]
        index = int(trial_id.rsplit("_", 1)[-1])
        cloned = sum(int(e[0].split("_")[0]) == index for e in exploits)
        assert len(tagged) == cloned, (trial_id, tagged, cloned)
        points = client.get_metric_history(children[trial_id].info.run_id, "eval_accuracy")
        assert sorted((m.step, m.value) for m in points) == sorted(
            (r["samples_seen"], r["eval_accuracy"]) for r in rows)
        # the point logged last at each step is the analysis table's (last report wins)
        last = {}
        for m in sorted(points, key=lambda m: m.timestamp):
            last[m.step] = m.value
        ours = table[table.trial_id == trial_id].sort_values("iteration")
        assert last == dict(zip(ours.samples_seen, ours.eval_accuracy)), trial_id

        files = list(wandb_dir.glob(f"offline-run-*-{trial_id}/run-{trial_id}.wandb"))
        assert len(files) == 1, files
        logged = [(int(r["samples_seen"]), float(r["eval_accuracy"])) for r in history(files[0])]
        assert logged == [(r["samples_seen"], r["eval_accuracy"]) for r in rows]
        assert json.loads(summary(files[0]).get("pbt_exploits", "0")) == cloned
    assert went_back, "no clone went back: the re-reported points were not tested"


def test_a_tracker_that_failed_ends_its_open_runs_failed_when_its_store_answers(
        tmp_path, ray_by_value):
    """MLflow refuses a metric's name at iteration 3 (a real refusal of the real store): the
    tracker goes quiet, its runs stay RUNNING through the run, and the end step, finding
    the store answering, ends them FAILED and says so in the end line."""
    from raytune_ft.tracking import End, TrackingContext, finish_tracking
    from raytune_ft.tuning.runner import fit_tuner

    config = experiment(tmp_path, "odd", tracking={
        "mlflow": {"tracking_uri": f"sqlite:///{tmp_path}/mlflow.db"}})
    directory = tmp_path / "results" / "odd"
    _, interrupted = fit_tuner(synthetic.tuner(config, directory, odd_key_at=3))
    assert not interrupted
    lines = finish_tracking(TrackingContext(config, str(directory), config.iterations),
                            End(None, None, False))
    assert len(lines) == 1 and 'Invalid value "odd key!"' in lines[0], lines
    client, parents, children = mlflow_runs(tmp_path, "odd")
    assert children  # a trial that started after the failure has no run
    assert lines[0].endswith(f"its {1 + len(children)} open runs ended FAILED once the store "
                             "answered again"), lines[0]
    assert {r.info.status for r in [*parents, *children.values()]} == {"FAILED"}
    assert '"odd key!"' in parents[0].data.tags["raytune_ft.tracking_stopped"]
