"""PBT through the real CLI with MLflow (local sqlite store), TensorBoard and W&B (offline):
every exploit in Ray's `pbt_global.txt` is a `pbt.exploit.<n>` tag on the recipient's MLflow
run and counted in its W&B summary, and every reported iteration, before and after the
exploits, is in all three trackers. Slow: a PBT population."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import yaml
from support import experiment_yaml

sys.path.insert(0, str(Path(__file__).parent))

from _helpers import cli_env, results, run_cli, trial_dirs, trial_id  # noqa: E402
from wandb_records import history as wandb_history  # noqa: E402
from wandb_records import run_info, summary  # noqa: E402

pytestmark = pytest.mark.slow


def test_pbt_exploits_are_tags_and_every_iteration_is_logged(tmp_path, tiny_bert, glue_dir):
    from mlflow import MlflowClient
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    store = f"sqlite:///{tmp_path}/mlflow.db"
    path = experiment_yaml(
        tmp_path / "exp.yaml", tiny_bert, glue_dir, tmp_path / "results", name="pbt",
        metric="eval_loss", mode="min",
        train={"max_epochs": 1, "eval_every_epochs": 0.125, "max_micro_batch": 16},
        search={"learning_rate": {"loguniform": [1e-4, 1e-2]},
                "batch_size": {"choice": [8, 16, 32]}},
        scheduler={"type": "pbt", "perturbation_interval": 1, "quantile_fraction": 0.25,
                   "mutations": ["learning_rate", "batch_size"]},
        search_alg={"type": "random", "seed": 3},
        run={"num_samples": 4, "storage_path": str(tmp_path / "results")},
        tracking={"tensorboard": True, "mlflow": {"tracking_uri": store},
                  "wandb": {"project": "pbt-tests", "mode": "offline"}})
    done = run_cli(["tune", str(path)], cli_env(tmp_path), timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "warning: tracking" not in done.stderr
    experiment = tmp_path / "results" / "pbt"
    exploits = (experiment / "pbt_global.txt").read_text().splitlines()
    assert exploits, "no exploit happened"

    client = MlflowClient(tracking_uri=store)
    runs = client.search_runs([client.get_experiment_by_name("pbt").experiment_id])
    children = {r.data.tags["trial_id"]: r for r in runs if "mlflow.parentRunId" in r.data.tags}
    assert len(children) == 4 and len(runs) == 5
    tags = [json.loads(v) for r in children.values() for k, v in r.data.tags.items()
            if k.startswith("pbt.exploit.")]
    assert len(tags) == len(exploits)
    for directory in trial_dirs(experiment):
        rows = results(directory)
        child = children[trial_id(directory)]
        history = client.get_metric_history(child.info.run_id, "eval_loss")
        assert sorted((m.step, m.value) for m in history) == sorted(
            (r["samples_seen"], r["eval_loss"]) for r in rows)
        # keep every point: TensorBoard would otherwise hide those past a step that went back
        events = EventAccumulator(str(directory), purge_orphaned_data=False)
        events.Reload()
        scalars = events.Scalars("eval_loss")
        assert [s.step for s in scalars] == [r["samples_seen"] for r in rows]
        assert [s.value for s in scalars] == pytest.approx([r["eval_loss"] for r in rows])
        # W&B: one run for the trial, all its points, its exploits counted, its final config
        tid = trial_id(directory)
        files = list((tmp_path / "wandb_dir" / "wandb").glob(f"*-run-*-{tid}/run-{tid}.wandb"))
        assert len(files) == 1, files
        assert run_info(files[0]).run_group == "pbt"
        logged = wandb_history(files[0])
        assert [(int(row["samples_seen"]), float(row["eval_loss"])) for row in logged] == [
            (r["samples_seen"], r["eval_loss"]) for r in rows]
        exploited = sum(k.startswith("pbt.exploit.") for k in child.data.tags)
        final = summary(files[0])
        assert json.loads(final.get("pbt_exploits", "0")) == exploited
        assert json.loads(final["status"]) in ("terminated", "stopped")
        for tag in (v for k, v in child.data.tags.items() if k.startswith("pbt.exploit.")):
            exploit = json.loads(tag)
            # the recipient's new settings, and where it stood when they took force
            assert exploit["samples_seen"] in [r["samples_seen"] for r in rows]
            assert set(exploit["config"]) >= {"learning_rate", "batch_size"}


def test_exploits_that_keep_the_config_are_tagged_and_agree_with_the_analysis(
        tmp_path, tiny_bert, glue_dir):
    """Every trial has the same config (the learning rate is not searched; the batch size is
    a choice of one value, repeated), so every exploit leaves the config as it was; the
    trials differ by their dropout masks (a PBT trial's own seed). Each exploit is still a
    tag, and the clone's points are in MLflow and W&B as in iterations.parquet."""
    import pandas as pd
    from mlflow import MlflowClient

    store = f"sqlite:///{tmp_path}/mlflow.db"
    path = experiment_yaml(
        tmp_path / "exp.yaml", tiny_bert, glue_dir, tmp_path / "results", name="same",
        metric="eval_loss", mode="min",
        train={"max_epochs": 1, "eval_every_epochs": 0.125, "max_micro_batch": 16},
        search={"batch_size": {"choice": [16, 16]}},
        scheduler={"type": "pbt", "perturbation_interval": 1, "quantile_fraction": 0.25,
                   "mutations": ["batch_size"]},
        search_alg={"type": "random", "seed": 3},
        run={"num_samples": 4, "storage_path": str(tmp_path / "results")},
        tracking={"mlflow": {"tracking_uri": store},
                  "wandb": {"project": "pbt-tests", "mode": "offline"}})
    raw = yaml.safe_load(path.read_text())
    raw["search"] = {"batch_size": {"choice": [16, 16]}}  # the only searched key
    path.write_text(yaml.safe_dump(raw))
    done = run_cli(["tune", str(path)], cli_env(tmp_path), timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "warning: tracking" not in done.stderr
    experiment = tmp_path / "results" / "same"
    exploits = (experiment / "pbt_global.txt").read_text().splitlines()
    assert exploits, "no exploit happened"
    # one config for every trial, before and after any exploit
    configs = {json.dumps(r["config"], sort_keys=True)
               for d in trial_dirs(experiment) for r in results(d)}
    assert configs == {'{"batch_size": 16}'}, configs
    exploits = [json.loads(line) for line in exploits]
    table = pd.read_parquet(experiment / "analysis" / "iterations.parquet")

    client = MlflowClient(tracking_uri=store)
    runs = client.search_runs([client.get_experiment_by_name("same").experiment_id])
    children = {r.data.tags["trial_id"]: r for r in runs if "mlflow.parentRunId" in r.data.tags}
    for directory in trial_dirs(experiment):
        rows, tid = results(directory), trial_id(directory)
        index = int(directory.name.split("_")[4])  # train_trial_<5 hex>_<5 digits>_<index>_
        cloned = sum(int(e[0].split("_")[0]) == index for e in exploits)
        child = children[tid]
        assert sum(k.startswith("pbt.exploit.") for k in child.data.tags) == cloned, tid
        points = client.get_metric_history(child.info.run_id, "eval_loss")
        assert sorted((m.step, m.value) for m in points) == sorted(
            (r["samples_seen"], r["eval_loss"]) for r in rows)
        last = {}
        for m in sorted(points, key=lambda m: m.timestamp):  # at a step reported twice,
            last[m.step] = m.value  # the analysis keeps the last report
        ours = table[table.trial_id == tid]
        assert last == pytest.approx(dict(zip(ours.samples_seen, ours.eval_loss))), tid
        files = list((tmp_path / "wandb_dir" / "wandb").glob(f"*-run-*-{tid}/run-{tid}.wandb"))
        assert len(files) == 1, files
        assert [(int(r["samples_seen"]), float(r["eval_loss"])) for r in wandb_history(files[0])
                ] == [(r["samples_seen"], r["eval_loss"]) for r in rows]
        assert json.loads(summary(files[0]).get("pbt_exploits", "0")) == cloned
