"""Data-parallel trials through the real CLI: two gloo workers per trial in a placement
group, ASHA, then confirm and export on the result; the resource check counts the group;
(slow) PBT with two-worker trials on a three-node cluster counts every sample once."""

from __future__ import annotations

import pytest
from support import experiment_yaml, read_results, run_cli

from raytune_ft.errors import ResourceError
from raytune_ft.schema import validate_config
from raytune_ft.tuning.cluster import check_local_resources, local_cpus

INTERVAL = 64  # samples per evaluation: 128 train samples, eval every 0.5 epoch
SMALL = {"data": {"max_train_samples": 128, "max_eval_samples": 64},
         "train": {"max_epochs": 1, "eval_every_epochs": 0.5, "max_micro_batch": 8}}
TWO_WORKERS = {"cpus_per_trial": 1, "workers_per_trial": 2}



@pytest.fixture(scope="module")
def two_worker_run(tmp_path_factory, tiny_bert, glue_dir):
    root = tmp_path_factory.mktemp("workers")
    path = experiment_yaml(root / "exp.yaml", tiny_bert, glue_dir, root / "results",
                           name="ddp", **SMALL, metric="eval_loss", mode="min",
                           search={"learning_rate": {"loguniform": [1e-4, 1e-3]},
                                   "batch_size": {"choice": [15, 16]}},
                           search_alg={"type": "random", "seed": 0},
                           resources=TWO_WORKERS,
                           run={"num_samples": 2, "storage_path": str(root / "results")})
    return run_cli("tune", str(path)), root / "results" / "ddp"


def test_two_worker_trials_run_through_the_cli(two_worker_run):
    done, experiment = two_worker_run
    assert done.returncode == 0, done.stderr[-3000:]
    assert "2 CPU, 0 GPU per trial (2 data-parallel workers of 1 CPU, 0 GPU, placement pack)" \
        in done.stdout
    trials = sorted(p for p in experiment.iterdir() if p.is_dir() and p.name.startswith("train"))
    assert len(trials) == 2
    for trial in trials:
        reported = read_results(trial)
        # global samples, counted once: not once per worker
        assert [r["samples_seen"] for r in reported] == [INTERVAL * (i + 1)
                                                         for i in range(len(reported))]
        assert all(r["eval_loss"] > 0 for r in reported)


@pytest.mark.slow  # about 1.5 min on a quiet machine: four more trial starts
def test_confirm_and_export_work_on_two_worker_trials(two_worker_run, tmp_path):
    done, experiment = two_worker_run
    assert done.returncode == 0, done.stderr[-3000:]
    confirmed = run_cli("confirm", str(experiment), "--top", "1", "--seeds", "2")
    assert confirmed.returncode == 0, confirmed.stderr[-3000:]
    exported = run_cli("export", str(experiment), "--confirmed", "--out", str(tmp_path / "model"))
    assert exported.returncode == 0, exported.stderr[-3000:]
    from transformers import AutoModelForSequenceClassification

    AutoModelForSequenceClassification.from_pretrained(tmp_path / "model")


def test_the_resource_check_counts_every_worker_of_a_trial():
    workers = local_cpus() + 1
    config = validate_config({"name": "x", "model": {"name": "m"}, "data": {"task": "sst2"},
                              "resources": {"workers_per_trial": workers}})
    with pytest.raises(ResourceError, match=rf"resources.cpus_per_worker: 1 x {workers} "
                       r"workers_per_trial is more than this machine's \d+ CPUs"):
        check_local_resources(config)


@pytest.mark.parametrize("resources,message", [
    ({"workers_per_trial": 2, "gpus_per_worker": 0.5}, "resources.gpus_per_worker: 0.5 is a "
     "fraction of a GPU, but NCCL needs each worker of a trial on its own GPU"),
    ({"cpus_per_worker": 2}, "resources.cpus_per_worker and gpus_per_worker apply with "
     "resources.workers_per_trial > 1"),
    ({"workers_per_trial": 2, "placement": "strict"}, "resources.placement"),
])
def test_worker_settings_are_checked(resources, message):
    from raytune_ft.errors import ConfigError

    with pytest.raises(ConfigError, match=message):
        validate_config({"name": "x", "model": {"name": "m"}, "data": {"task": "sst2"},
                         "resources": resources})


@pytest.mark.slow
def test_pbt_with_two_worker_trials_on_three_nodes(tmp_path, tiny_bert, glue_dir):
    import ray
    from ray.cluster_utils import Cluster

    from raytune_ft import cli

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0})
    for _ in range(3):
        cluster.add_node(num_cpus=2)
    cluster.wait_for_nodes()
    try:
        storage = tmp_path / "storage"
        path = experiment_yaml(
            tmp_path / "exp.yaml", tiny_bert, glue_dir, storage, name="ddp_pbt", **SMALL,
            metric="eval_loss", mode="min",
            scheduler={"type": "pbt", "perturbation_interval": 1,
                       "mutations": ["learning_rate", "batch_size"]},
            search={"learning_rate": {"loguniform": [1e-4, 1e-3]},
                    "batch_size": {"choice": [15, 16]}},
            search_alg={"type": "random", "seed": 0},
            resources={**TWO_WORKERS, "placement": "spread"},
            run={"num_samples": 3, "storage_path": storage.as_uri(), "verbose": 0})
        assert cli.main(["tune", str(path), "--address", cluster.address]) == cli.EXIT_OK
    finally:
        ray.shutdown()
        cluster.shutdown()
    trials = [p for p in (storage / "ddp_pbt").iterdir() if p.name.startswith("train")]
    assert len(trials) == 3
    for trial in trials:
        reported = read_results(trial)
        assert [r["samples_seen"] for r in reported] == [
            INTERVAL * r["training_iteration"] for r in reported]
        assert [r["training_iteration"] for r in reported].count(1) == 1


def test_the_multi_gpu_node_type_fits_the_data_parallel_example():
    import yaml
    from support import REPO

    from raytune_ft.schema import load_config
    from raytune_ft.tuning.cluster import _how_many_fit, trial_resources

    config = load_config(REPO / "experiments" / "mrpc_ddp.yaml")
    node = yaml.safe_load((REPO / "cluster.yaml").read_text())["available_node_types"]["gpu4"]
    need = {k: v for k, v in trial_resources(config).items() if v}
    assert need == {"CPU": 8, "GPU": 1}
    assert _how_many_fit(need, node["resources"]) == config.resources.workers_per_trial == 4


def test_the_cluster_check_counts_the_workers_every_node_holds(monkeypatch):
    from raytune_ft.tuning import cluster

    config = validate_config({"name": "x", "model": {"name": "m"}, "data": {"task": "sst2"},
                              "resources": {"workers_per_trial": 3, "cpus_per_worker": 0.4}})
    nodes = [{"CPU": 1.2}, {"CPU": 0.3}]  # 3 workers of 0.4 CPU fit on the first node alone
    monkeypatch.setattr(cluster, "_cluster_view", lambda: (nodes, None))
    cluster.check_resources(config)
    nodes[0] = {"CPU": 0.8}  # 2 there, none on the other
    with pytest.raises(ResourceError, match="one trial needs 3 workers of 0.4 CPU, but the "
                       "cluster's 2 nodes hold 2 such workers and no autoscaler can add nodes"):
        cluster.check_resources(config)


def test_the_analysis_counts_every_workers_cpus_and_gpus(tmp_path):
    from raytune_ft.analysis._layout import read_meta
    from raytune_ft.experiment import write_record
    from raytune_ft.schema import validate_config

    def meta(resources: dict):
        config = validate_config({"name": "w", "model": {"name": "m"},
                                  "data": {"task": "sst2"}, "resources": resources})
        write_record(str(tmp_path), config, {})
        return read_meta(tmp_path, [])

    four = meta({"cpus_per_trial": 2, "gpus_per_trial": 1, "workers_per_trial": 4,
                 "cpus_per_worker": 8})
    assert (four.cpus_per_trial, four.gpus_per_trial) == (32.0, 4.0)
    assert meta({"cpus_per_trial": 2}).cpus_per_trial == 2.0
