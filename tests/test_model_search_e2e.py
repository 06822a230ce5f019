"""Through the real CLI on an SST-2 subset: a search over `model.name` (three tiny BERTs: two
sizes with one tokenizer, and a copy with another vocabulary) and `model.max_length`; each
trial trains the model it names on data tokenized at its length, the driver tokenizes once
per distinct (tokenizer, length); confirm and export of such a trial; refusals exit 2."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import yaml
from support import build_model_family, experiment_yaml, read_results, run_cli

POINTS = [("two", 8), ("one", 32), ("swapped", 8)]


@pytest.fixture(scope="module")
def family(tmp_path_factory):
    return build_model_family(tmp_path_factory.mktemp("family"))


def write(root, family, glue_dir, **sections):
    names = [str(path) for path in family.values()]
    search = {"model.name": {"choice": names}, "model.max_length": {"choice": [8, 32]},
              "learning_rate": 1e-3, "batch_size": 32}  # the defaults' searches, fixed
    return experiment_yaml(
        root / "exp.yaml", family["two"], glue_dir, root / "results", name="models",
        metric="eval_loss", mode="min", scheduler={"type": "fifo"},
        train={"max_epochs": 1, "eval_every_epochs": 1, "max_micro_batch": 32},
        data={"max_train_samples": 128, "max_eval_samples": 64}, search=search,
        search_alg={"type": "random", "seed": 0, "points_to_evaluate": [
            {"model.name": str(family[name]), "model.max_length": length}
            for name, length in POINTS]},
        run={"num_samples": len(POINTS), "storage_path": str(root / "results"),
             "max_concurrent_trials": 2}, **sections)


@pytest.fixture(scope="module")
def searched(tmp_path_factory, family, glue_dir):
    root = tmp_path_factory.mktemp("model_search")
    done = run_cli("tune", str(write(root, family, glue_dir)))
    assert done.returncode == 0, done.stderr[-3000:]
    return done, root / "results" / "models"


def parameters(path) -> int:
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=2)
    return sum(p.numel() for p in model.parameters())


def test_header_counts_one_tokenization_per_tokenizer_and_length(searched, family):
    done, _ = searched
    groups = f"tokenizer 1: {family['two']}, {family['one']}; tokenizer 2: {family['swapped']}"
    assert (f"models       3 searched, max_length [8, 32]: 4 tokenizations ({groups})"
            in done.stdout), done.stdout


def test_each_trial_trained_its_model_at_its_length(searched, family):
    _, experiment = searched
    sizes = {str(path): parameters(path) for path in family.values()}
    assert sizes[str(family["two"])] > sizes[str(family["one"])] == sizes[str(family["swapped"])]
    trials = pd.read_parquet(experiment / "analysis" / "trials.parquet")
    by_name = {str(path): name for name, path in family.items()}
    ran = sorted((by_name[row["hp_model.name"]], int(row["hp_model.max_length"]))
                 for _, row in trials.iterrows())
    assert ran == sorted(POINTS) and (trials["status"] == "terminated").all()
    for _, row in trials.iterrows():
        assert row["param_count"] == sizes[row["hp_model.name"]]
        last = read_results(experiment / row["trial_dir"])[-1]
        # the longest training example of its tokenization: cut at its max_length
        assert last["max_tokens"] == row["hp_model.max_length"]
    record = json.loads((experiment / "raytune_ft.json").read_text())
    assert record["model_paths"] == {str(p): str(p.resolve()) for p in family.values()}


def test_export_writes_the_trials_model_and_tokenizer(searched, family, tmp_path):
    from transformers import AutoConfig, AutoTokenizer

    _, experiment = searched
    trials = pd.read_parquet(experiment / "analysis" / "trials.parquet")
    swapped = trials[trials["hp_model.name"] == str(family["swapped"])].iloc[0]
    out = tmp_path / "swapped"
    done = run_cli("export", str(experiment), "--trial", swapped["trial_id"], "--out", str(out))
    assert done.returncode == 0, done.stderr[-3000:]
    assert AutoConfig.from_pretrained(out).num_hidden_layers == 1
    assert parameters(out) == swapped["param_count"]
    tokenizer = AutoTokenizer.from_pretrained(out)
    original = AutoTokenizer.from_pretrained(family["one"])
    assert tokenizer.model_max_length == 8
    assert tokenizer.convert_tokens_to_ids("the") == original.convert_tokens_to_ids("movie")
    card = (out / "README.md").read_text()
    assert f"# models: {family['swapped']} fine-tuned on sst2" in card
    assert "| model.max_length * | 8 |" in card


@pytest.mark.slow  # a confirm run and an export: ~50 s on 2 loaded cores
def test_confirm_retrains_the_best_trials_model_then_exports_it(searched, tmp_path):
    from transformers import AutoConfig, AutoTokenizer

    _, experiment = searched
    trials = pd.read_parquet(experiment / "analysis" / "trials.parquet")
    best = trials.sort_values("best_metric").iloc[0]
    done = run_cli("confirm", str(experiment), "--top", "1", "--seeds", "2")
    assert done.returncode == 0, done.stderr[-3000:]
    rows = pd.read_parquet(experiment / "analysis" / "confirm.parquet")
    assert len(rows) == 2 and (rows["status"] == "finished").all()
    assert (rows["hp_model.name"] == best["hp_model.name"]).all()
    confirm_dir = experiment.parent / "models-confirm"
    for row in rows.itertuples():
        last = read_results(confirm_dir / row.confirm_trial_dir)[-1]
        assert last["config"]["model.name"] == best["hp_model.name"]
        assert last["param_count"] == best["param_count"]
        assert last["max_tokens"] == best["hp_model.max_length"]
    out = tmp_path / "confirmed"
    done = run_cli("export", str(experiment), "--confirmed", "--out", str(out))
    assert done.returncode == 0, done.stderr[-3000:]
    layers = AutoConfig.from_pretrained(best["hp_model.name"]).num_hidden_layers
    assert AutoConfig.from_pretrained(out).num_hidden_layers == layers
    assert AutoTokenizer.from_pretrained(out).model_max_length == best["hp_model.max_length"]


@pytest.mark.parametrize(("change", "message"), [
    ({"search.model.max_length": {"uniform": [8, 64]}},
     "search.model.max_length: uniform [8, 64] is a range, but each distinct value costs one "
     "tokenization of the data; allowed: choice or grid of listed values, or a constant"),
    ({"search.model.max_length": {"choice": [8, 32, 600]}},
     "search.model.max_length: 600 is above the position limit 512 of model"),
    ({"scheduler": {"type": "pbt", "mutations": ["model.name"]}, "train.max_epochs": 2},
     "scheduler.mutations: 'model.name' cannot change inside a running trial"),
    # model `one` has 1 layer: refused here, not in the trials that draw it
    ({"train.freeze_layers": 2}, "train.freeze_layers: 2 is above the 1 encoder layers of "
                                 "model "),
    # a fixed name the search never draws would be shown as the model, yet never trained
    ({"model.name": "all-MiniLM-L6-v2"},
     "model.name: 'all-MiniLM-L6-v2' is not among search.model.name ["),
])
def test_refusals_exit_2_with_one_line(tmp_path, family, glue_dir, change, message):
    path = write(tmp_path, family, glue_dir)
    sets = [f"{key}={yaml.safe_dump(value, default_flow_style=True).strip()}"
            for key, value in change.items()]
    done = run_cli("validate", str(path), *(arg for s in sets for arg in ("--set", s)))
    assert done.returncode == 2, done.stdout + done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], done.stderr
    assert not (tmp_path / "results").exists()  # nothing half-done on disk
