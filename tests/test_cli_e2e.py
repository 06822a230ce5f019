"""End to end through the real CLI: a tiny random BERT on a real SST-2 subset, ASHA + TPE
searching learning rate, batch size, schedule and layer-wise decay."""

import json

import pytest
from support import experiment_yaml, read_results, run_cli

METRICS = ("eval_accuracy", "eval_mcc", "eval_loss", "train_loss", "lr",
           "lr_min_group", "batch_size", "epoch", "samples_seen", "step", "samples_per_s",
           "diverged")



@pytest.fixture(scope="module")
def asha_run(tmp_path_factory, tiny_bert, glue_dir):
    root = tmp_path_factory.mktemp("e2e")
    # A tiny random model ties on accuracy (majority class); the loss separates trials.
    path = experiment_yaml(root / "exp.yaml", tiny_bert, glue_dir, root / "results",
                           metric="eval_loss", mode="min",
                           search={"schedule": {"choice": ["linear", "cosine", "constant"]},
                                   "layer_decay": {"uniform": [0.6, 1.0]}},
                           run={"num_samples": 6, "storage_path": str(root / "results")},
                           train={"max_epochs": 2, "eval_every_epochs": 0.5,
                                  "warmup_ratio": 0.1, "max_micro_batch": 8})
    done = run_cli("tune", str(path))
    return done, root / "results" / "tiny"


def test_tune_completes_and_prints_the_run_header(asha_run):
    done, _ = asha_run
    assert done.returncode == 0, done.stderr[-3000:]
    assert "budget       512 samples per trial (2 epochs), 4 evaluations" in done.stdout
    assert "16 (accumulation 2 x <= 8), 32 (accumulation 4 x <= 8)" in done.stdout
    assert "best         eval_loss=" in done.stdout


def test_every_trial_reports_the_metrics_at_equal_samples(asha_run):
    _, experiment = asha_run
    trials = sorted(p for p in experiment.iterdir() if p.is_dir() and p.name.startswith("train"))
    assert len(trials) == 6
    lengths = []
    for trial in trials:
        rows = read_results(trial)
        lengths.append(len(rows))
        config = json.loads((trial / "params.json").read_text())
        for i, row in enumerate(rows, start=1):
            assert set(METRICS) <= set(row), set(METRICS) - set(row)
            assert row["samples_seen"] == 128 * i and row["epoch"] == pytest.approx(0.5 * i)
            assert row["batch_size"] == config["batch_size"]
            assert 0.0 <= row["eval_accuracy"] <= 1.0 and row["diverged"] is False
            assert 0 < row["lr"] <= config["learning_rate"]
            # the embeddings of the 2-layer model learn at lr * decay^(L + 1)
            assert row["lr_min_group"] == pytest.approx(row["lr"] * config["layer_decay"] ** 3)
            assert config["schedule"] in ("linear", "cosine", "constant")
        assert rows[-1]["step"] == sum(-(-128 // config["batch_size"]) for _ in rows)
    assert max(lengths) == 4, "no trial ran the full budget"
    assert min(lengths) < 4, "ASHA stopped no trial early"
    record = json.loads((experiment / "raytune_ft.json").read_text())
    assert record["budget_samples"] == 512 and record["metric"] == "eval_loss"
