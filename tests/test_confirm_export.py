"""`raytune-ft confirm` and `raytune-ft export` through the real CLI: a tiny random BERT on a
real SST-2 subset; one small search shared by the tests, confirmed once."""

import json
import math
import re
import shutil

import pandas as pd
import pyarrow.parquet as pq
import pytest
from support import experiment_yaml, run_cli

from raytune_ft.tasks import get_task

TRAIN = {"max_epochs": 1, "eval_every_epochs": 0.5, "max_micro_batch": 16}
SUMMARY = re.compile(r"^  rank (\d+)  config (\d+)  trial (\S+)  mean (\S+)  sd (\S+)  "
                     r"min (\S+)  max (\S+)  n (\d+)", re.M)



@pytest.fixture(scope="module")
def search(tmp_path_factory, tiny_bert, glue_dir):
    """Three random-search trials, 256 SST-2 samples each, 128 dev examples."""
    root = tmp_path_factory.mktemp("confirm")
    # A tiny random model ties on accuracy (majority class); the loss separates trials.
    path = experiment_yaml(root / "exp.yaml", tiny_bert, glue_dir, root / "results",
                           name="search", metric="eval_loss", mode="min", train=TRAIN,
                           scheduler={"type": "fifo"}, search_alg={"type": "random", "seed": 0},
                           run={"num_samples": 3, "storage_path": str(root / "results")})
    done = run_cli("tune", str(path))
    assert done.returncode == 0, done.stderr[-3000:]
    return root / "results" / "search"


@pytest.fixture(scope="module")
def confirmed(search):
    done = run_cli("confirm", str(search), "--top", "2", "--seeds", "3")
    assert done.returncode == 0, done.stderr[-3000:]
    return done, pd.read_parquet(search / "analysis" / "confirm.parquet")


def test_confirm_writes_one_row_per_configuration_and_new_seed(search, confirmed):
    _, rows = confirmed
    assert len(rows) == 6
    assert rows["seed"].nunique() == 6 and 0 not in set(rows["seed"])  # the search used 0
    assert rows.groupby("config_rank").size().to_dict() == {1: 3, 2: 3}
    assert (rows["status"] == "finished").all() and rows["metric"].notna().all()
    assert rows["confirm_trial_id"].nunique() == 6
    schema = pq.read_schema(search / "analysis" / "confirm.parquet")
    types = {name: str(schema.field(name).type) for name in schema.names}
    assert types == {"config_rank": "int64", "trial_id": "string", "seed": "int64",
                     "metric": "double", "confirm_trial_id": "string",
                     "confirm_trial_dir": "string", "status": "string", "samples_seen": "int64",
                     "search_metric": "double", "hp_batch_size": "int64",
                     "hp_learning_rate": "double"}
    # config_rank 1 is the search's best trial, by its best eval_loss
    trials = {}
    for folder in search.iterdir():
        if (folder / "result.json").is_file():
            lines = [json.loads(x) for x in (folder / "result.json").read_text().splitlines()]
            trials[lines[-1]["trial_id"]] = min(x["eval_loss"] for x in lines)
    best_two = sorted(trials, key=trials.get)[:2]
    assert rows.groupby("config_rank")["trial_id"].first().tolist() == best_two
    # each confirm trial ran the full budget with its seed and the source configuration
    confirm_dir = search.parent / "search-confirm"
    for row in rows.itertuples():
        lines = (confirm_dir / row.confirm_trial_dir / "result.json").read_text().splitlines()
        last = json.loads(lines[-1])
        assert last["samples_seen"] == 256 and last["eval_loss"] == row.metric
        assert last["config"]["seed"] == row.seed
        assert last["config"]["learning_rate"] == row.hp_learning_rate
        assert list((confirm_dir / row.confirm_trial_dir).glob("checkpoint_*"))


def test_confirm_summary_numbers_match_the_rows(confirmed):
    done, rows = confirmed
    printed = SUMMARY.findall(done.stdout)
    assert len(printed) == 2, done.stdout
    means = []
    for position, (rank, config_rank, trial_id, mean, sd, low, high, n) in enumerate(printed):
        assert int(rank) == position + 1
        metric = rows.loc[rows["config_rank"] == int(config_rank), "metric"]
        assert trial_id == rows.loc[metric.index[0], "trial_id"]
        assert float(mean) == pytest.approx(metric.mean(), abs=1e-6)
        expected_sd = math.sqrt(((metric - metric.mean()) ** 2).sum() / (len(metric) - 1))
        assert float(sd) == pytest.approx(expected_sd, abs=1e-6)
        assert float(low) == pytest.approx(metric.min(), abs=1e-6)
        assert float(high) == pytest.approx(metric.max(), abs=1e-6)
        assert int(n) == 3
        means.append(metric.mean())
    assert means == sorted(means)  # eval_loss: the lowest mean ranks first


def evaluate_export(out, search):
    """Evaluate an exported folder on the experiment's dev data, tokenized as raytune_ft does."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from raytune_ft.config import TrainConfig
    from raytune_ft.experiment import read_experiment_record
    from raytune_ft.tasks.sequence_classification import build_bundle
    from raytune_ft.training.loop import FineTuneLoop

    config = read_experiment_record(str(search))
    model = AutoModelForSequenceClassification.from_pretrained(out)
    tokenizer = AutoTokenizer.from_pretrained(out)
    assert model.config.id2label == {0: "0", 1: "1"}
    assert model.config.label2id == {"0": 0, "1": 1}
    assert tokenizer.model_max_length == config.model.max_length
    bundle = build_bundle(config.data, tokenizer, config.model.max_length)
    loop = FineTuneLoop(model, bundle, TrainConfig(**TRAIN), config.metric, config.mode,
                        task=get_task(bundle.kind))
    return loop.evaluate()


def test_export_default_is_the_best_kept_checkpoint_and_reproduces_its_metrics(search,
                                                                               tmp_path):
    out = tmp_path / "model"
    done = run_cli("export", str(search), "--out", str(out))
    assert done.returncode == 0, done.stderr[-3000:]
    record = json.loads((out / "raytune_ft_export.json").read_text())
    kept = []
    for folder in search.iterdir():
        if (folder / "result.json").is_file():
            for line in (folder / "result.json").read_text().splitlines():
                row = json.loads(line)
                if (folder / str(row.get("checkpoint_dir_name")) / "model.safetensors").is_file():
                    kept.append(row)
    best = min(kept, key=lambda r: r["eval_loss"])
    assert record["trial_id"] == best["trial_id"]
    assert record["metrics"]["eval_loss"] == best["eval_loss"]
    metrics = evaluate_export(out, search)
    assert metrics["eval_accuracy"] == pytest.approx(best["eval_accuracy"], abs=1e-12)
    assert metrics["eval_mcc"] == pytest.approx(best["eval_mcc"], abs=1e-12)
    assert "eval_f1" not in best  # SST-2: GLUE reports accuracy only
    assert metrics["eval_loss"] == pytest.approx(best["eval_loss"], rel=1e-6)
    card = (out / "README.md").read_text()
    assert "sst2" in card and "256 train, 128 dev/eval" in card
    assert f"eval_loss of this checkpoint on the dev/eval data: {best['eval_loss']:.4f}" in card
    assert "| learning_rate * |" in card and "| batch_size * |" in card
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no staging left


def test_export_confirmed_reports_mean_and_sd_over_seeds(search, confirmed, tmp_path):
    _, rows = confirmed
    out = tmp_path / "confirmed"
    done = run_cli("export", str(search), "--out", str(out), "--confirmed")
    assert done.returncode == 0, done.stderr[-3000:]
    record = json.loads((out / "raytune_ft_export.json").read_text())
    best_rank = rows.groupby("config_rank")["metric"].mean().idxmin()
    metric = rows.loc[rows["config_rank"] == best_rank, "metric"]
    assert record["confirmed"]["config_rank"] == best_rank
    assert record["confirmed"]["mean"] == pytest.approx(metric.mean())
    assert record["confirmed"]["sd"] == pytest.approx(metric.std(ddof=1))
    chosen = rows[rows["confirm_trial_id"] == record["trial_id"]]
    assert chosen["metric"].item() == metric.min() == record["metrics"]["eval_loss"]
    card = (out / "README.md").read_text()
    assert f"eval_loss {metric.mean():.4f} ± {metric.std(ddof=1):.4f}" in card
    assert evaluate_export(out, search)["eval_loss"] == pytest.approx(metric.min(), rel=1e-6)


def test_export_refuses_a_non_empty_out_unless_overwrite(search, tmp_path):
    out = tmp_path / "taken"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    done = run_cli("export", str(search), "--out", str(out))
    assert done.returncode == 2
    assert done.stderr.strip() == (f"error: --out: {out} exists and is not empty; use "
                                   "--overwrite to replace it")
    assert (out / "keep.txt").read_text() == "mine"
    done = run_cli("export", str(search), "--out", str(out), "--overwrite")
    assert done.returncode == 0, done.stderr[-3000:]
    assert not (out / "keep.txt").exists() and (out / "model.safetensors").is_file()


def test_a_failed_export_leaves_nothing(search, tmp_path):
    from raytune_ft.errors import ExperimentError
    from raytune_ft.model_export import export_model

    broken = tmp_path / "broken"
    shutil.copytree(search, broken / "search")
    for weights in (broken / "search").glob("*/checkpoint_*/model.safetensors"):
        weights.write_bytes(b"not safetensors")
    out = tmp_path / "out"
    with pytest.raises(ExperimentError, match="cannot be read"):
        export_model(broken / "search", out)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["broken"]


def test_refusals_name_the_problem(search, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    for args in (("confirm", str(empty)), ("export", str(empty), "--out", str(tmp_path / "o"))):
        done = run_cli(*args)
        assert done.returncode == 2, done.stderr
        assert done.stderr.strip() == (f"error: {empty}: not a raytune_ft experiment "
                                       "(raytune_ft.json not found)")
    missing = tmp_path / "missing"
    done = run_cli("export", str(missing), "--out", str(tmp_path / "o"))
    assert done.returncode == 2 and done.stderr.strip() == (
        f"error: {missing}: no such experiment directory")

    no_trials = tmp_path / "no_trials"
    no_trials.mkdir()
    shutil.copy(search / "raytune_ft.json", no_trials)
    done = run_cli("confirm", str(no_trials))
    assert done.returncode == 2
    assert done.stderr.strip() == f"error: {no_trials}: no finished trial (no trial has reported)"

    no_checkpoint = tmp_path / "no_checkpoint"
    shutil.copytree(search, no_checkpoint, ignore=shutil.ignore_patterns("checkpoint_*"))
    done = run_cli("export", str(no_checkpoint), "--out", str(tmp_path / "o"))
    assert done.returncode == 2
    assert done.stderr.strip().startswith(f"error: {no_checkpoint}: no finished trial kept a "
                                          "checkpoint")
    assert len(done.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "o").exists()

    # --adapter on a full fine-tuning trial: there is no adapter to write
    done = run_cli("export", str(search), "--out", str(tmp_path / "o"), "--adapter")
    assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1
    assert re.match(r"error: --adapter: trial \S+ trained every weight \(train.lora_r 0\)",
                    done.stderr)
    assert not (tmp_path / "o").exists()


def test_policy_files_load_as_ray_replays_them(tmp_path):
    from ray.tune.schedulers import PopulationBasedTrainingReplay

    from raytune_ft.tuning.pbt_replay import load_policy

    lines = [  # [old_tag, new_tag, old_step, new_step, old_config, new_config]
        ["5_x", "5_x", 1, 1, {"lr": 9.0}, {"lr": 8.0}],  # not in the chain: overwritten
        ["0_a", "0_a", 2, 3, {"lr": 1.0}, {"lr": 2.0}],
        ["0_a", "0_a", 4, 5, {"lr": 2.0}, {"lr": 3.0}],
    ]
    path = tmp_path / "pbt_policy_x.txt"
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    schedule = load_policy(path)
    ray_initial, ray_policy = PopulationBasedTrainingReplay(str(path))._load_policy(str(path))
    assert schedule.initial == ray_initial == {"lr": 1.0}
    assert list(schedule.changes) == [tuple(c) for c in ray_policy] == [(3, {"lr": 2.0}),
                                                                         (5, {"lr": 3.0})]


def test_new_seeds_skip_the_ones_the_search_used():
    from raytune_ft.tuning.confirm import new_seeds

    assert new_seeds({0, 2, 5}, 4) == [1, 3, 4, 6]


@pytest.mark.slow
def test_confirm_replays_each_pbt_schedule_with_its_changes(tmp_path, tiny_bert, glue_dir):
    scheduler = {"type": "pbt", "perturbation_interval": 1, "quantile_fraction": 0.5,
                 "mutations": ["learning_rate", "batch_size"]}
    path = experiment_yaml(tmp_path / "exp.yaml", tiny_bert, glue_dir, tmp_path / "results",
                           name="pbt", metric="eval_loss", mode="min",
                           train={"max_epochs": 1, "eval_every_epochs": 0.25,
                                  "max_micro_batch": 16},
                           search={"learning_rate": {"loguniform": [1e-4, 1e-2]},
                                   "batch_size": {"choice": [8, 16, 32]}},
                           data={"max_train_samples": 128}, scheduler=scheduler,
                           search_alg={"type": "random", "seed": 3},
                           run={"num_samples": 3, "storage_path": str(tmp_path / "results")})
    assert run_cli("tune", str(path)).returncode == 0
    experiment = tmp_path / "results" / "pbt"
    assert list(experiment.glob("pbt_policy_*.txt")), "no exploit to replay"
    done = run_cli("confirm", str(experiment), "--top", "3", "--seeds", "2")
    assert done.returncode == 0, done.stderr[-3000:]
    rows = pd.read_parquet(experiment / "analysis" / "confirm.parquet")
    assert len(rows) == 6 and (rows["status"] == "finished").all()
    plan = json.loads((tmp_path / "results" / "pbt-confirm" / "raytune_ft_confirm.json")
                      .read_text())
    changed = False
    for row in rows.itertuples():
        schedule = plan["schedules"][str(row.config_rank)]
        lines = (tmp_path / "results" / "pbt-confirm" / row.confirm_trial_dir / "result.json")
        reports = [json.loads(x) for x in lines.read_text().splitlines()]
        assert [r["samples_seen"] for r in reports] == [32, 64, 96, 128]
        in_force = dict(schedule["initial"])
        changes = {step: config for step, config in schedule["changes"]}
        for report in reports:  # a change at iteration i is in force from iteration i + 1
            assert report["batch_size"] == in_force["batch_size"]
            assert report["config"]["seed"] == row.seed
            if report["training_iteration"] in changes:
                in_force = changes[report["training_iteration"]]
                changed = True
    assert changed, "no schedule changed a trial's hyperparameters"
