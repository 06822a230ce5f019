"""Image classification through the real CLI on the real digits (an ImageFolder tree): PBT
mutating batch size and learning rate, then analyze, compare, report, replay, confirm and
export; the exported folder loads with AutoModelForImageClassification and pipeline(). Also
the shipped image experiments and one-line errors for bad image settings."""

import json

import numpy as np
import pandas as pd
import pytest
import yaml
from support import image_experiment_yaml, run_cli

from raytune_ft.config import load_config


@pytest.fixture(scope="module")
def pbt_run(tmp_path_factory, tiny_resnet, digits_dir):
    root = tmp_path_factory.mktemp("images")
    path = image_experiment_yaml(
        root / "exp.yaml", tiny_resnet, digits_dir, root / "results",
        train={"max_epochs": 4, "eval_every_epochs": 1, "max_micro_batch": 16,
               "learning_rate": 3e-3, "schedule": "constant", "batchnorm": "train",
               "label_smoothing": 0.1},
        search={"learning_rate": {"loguniform": [1e-3, 1e-2]},
                "batch_size": {"choice": [16, 32]}},
        scheduler={"type": "pbt", "perturbation_interval": 2, "quantile_fraction": 0.5,
                   "mutations": ["learning_rate", "batch_size"]},
        run={"num_samples": 2, "storage_path": str(root / "results")})
    done = run_cli("tune", str(path))
    return done, root / "results" / "digits"


def test_tune_prints_the_image_header_and_trains(pbt_run):
    done, experiment = pbt_run
    assert done.returncode == 0, done.stderr[-3000:]
    assert "images       3x16x16 uint8; object store 0.3 MB" in done.stdout
    assert "modes        images read as 384 L; converted to RGB" in done.stdout
    # batch 32 over micro-batches of 16 while BatchNorm trains: the header says so
    assert "warning: train.batchnorm 'train' with gradient accumulation (up to 2" in done.stdout
    trials = pd.read_parquet(experiment / "analysis" / "trials.parquet")
    assert len(trials) == 2 and (trials["status"] == "terminated").all()
    rows = pd.read_parquet(experiment / "analysis" / "iterations.parquet")
    assert {"eval_accuracy", "eval_top5", "eval_macro_f1", "eval_loss"} <= set(rows.columns)
    last = rows[rows["iteration"] == 4]
    assert len(last) == 2 and (last["samples_seen"] == 4 * 256).all()
    assert last["eval_accuracy"].max() > 0.5  # 10 classes: chance is 0.1
    assert (rows["eval_top5"] >= rows["eval_accuracy"]).all()


def test_every_command_works_on_the_image_experiment(pbt_run, tmp_path, digits_dir):
    done, experiment = pbt_run
    assert done.returncode == 0, done.stderr[-3000:]
    for args in (["analyze", str(experiment)], ["compare", str(experiment)],
                 ["report", str(experiment)]):
        result = run_cli(*args)
        assert result.returncode == 0, (args, result.stderr[-2000:])
    assert (experiment / "analysis" / "report.html").stat().st_size > 10_000
    out = tmp_path / "model"
    export = run_cli("export", str(experiment), "--out", str(out))
    assert export.returncode == 0, export.stderr[-3000:]
    check_exported(out, digits_dir)


@pytest.mark.slow
def test_replay_and_confirm_retrain_image_trials(pbt_run, tmp_path, digits_dir):
    done, experiment = pbt_run
    assert done.returncode == 0, done.stderr[-3000:]
    replay = run_cli("replay", str(experiment))
    assert replay.returncode == 0, replay.stderr[-3000:]
    confirm = run_cli("confirm", str(experiment), "--top", "1", "--seeds", "2")
    assert confirm.returncode == 0, confirm.stderr[-3000:]
    rows = pd.read_parquet(experiment / "analysis" / "confirm.parquet")
    assert len(rows) == 2 and rows["metric"].between(0.2, 1).all()
    out = tmp_path / "confirmed"
    export = run_cli("export", str(experiment), "--confirmed", "--out", str(out))
    assert export.returncode == 0, export.stderr[-3000:]
    check_exported(out, digits_dir)


def check_exported(out, digits_dir):
    import torch
    from PIL import Image
    from transformers import AutoModelForImageClassification, pipeline

    from raytune_ft.tasks._images import read_items
    from raytune_ft.tasks.image_classification import _subset

    model = AutoModelForImageClassification.from_pretrained(out)
    assert model.config.id2label == {i: str(i) for i in range(10)}
    card = (out / "README.md").read_text()
    assert "pipeline_tag: image-classification" in card
    assert 'pipeline("image-classification"' in card and "tokens" not in card
    record = json.loads((out / "raytune_ft_export.json").read_text())
    classify = pipeline("image-classification", model=str(out))
    image = Image.open(sorted((digits_dir / "val").glob("*/*.png"))[0])
    scores = classify(image, top_k=10)
    assert {s["label"] for s in scores} == {str(i) for i in range(10)}
    assert sum(s["score"] for s in scores) == pytest.approx(1.0, abs=1e-4)
    pixels = classify.image_processor(image.convert("RGB"), return_tensors="pt")
    with torch.no_grad():
        logits = model(**pixels).logits
    assert logits.shape == (1, 10) and record["metric"] == "eval_accuracy"
    # the exported model and its image processor, on the image files the trial was scored
    # on (the experiment's eval subset), reach the accuracy the trial reported
    items = _subset(read_items(str(digits_dir / "val"), "data.eval_file", None, None), 128, 0)
    images = [Image.open(item.source).convert("RGB") for item in items]
    with torch.no_grad():
        logits = model(**classify.image_processor(images, return_tensors="pt")).logits
    labels = torch.tensor([model.config.label2id[item.label] for item in items])
    accuracy = (logits.argmax(-1) == labels).double().mean().item()
    assert accuracy == pytest.approx(record["metrics"]["eval_accuracy"], abs=1e-12)


@pytest.mark.parametrize("name", ["digits_resnet", "digits_resnet_pbt", "imagefolder_resnet50"])
def test_shipped_image_experiments_validate(name, tmp_path):
    config = load_config(f"experiments/{name}.yaml")
    assert config.data.kind == "image_classification"
    again = tmp_path / "again.yaml"
    again.write_text(yaml.safe_dump(config.model_dump(mode="json")))
    assert load_config(again) == config
    if name == "digits_resnet_pbt":
        assert config.scheduler.mutations == ["learning_rate", "batch_size"]
    if name == "imagefolder_resnet50":  # the GPU example: bf16 on a GPU per trial
        assert config.resources.gpus_per_trial == 1 and config.model.name == \
            "microsoft/resnet-50"


@pytest.mark.parametrize("override,words", [
    ("train.batchnorm=bogus", ["train.batchnorm", "'train', 'eval' or 'frozen'"]),
    ("data.max_object_store_mb=0.5", ["data.max_object_store_mb", "above the limit 0.5 MB"]),
])
def test_bad_image_settings_are_one_line_exit_2(override, words, tiny_resnet, digits_dir,
                                                 tmp_path):
    path = image_experiment_yaml(tmp_path / "exp.yaml", tiny_resnet, digits_dir,
                                 tmp_path / "results",
                                 data={"max_train_samples": None, "max_eval_samples": None})
    done = run_cli("validate", str(path), "--set", override)
    assert done.returncode == 2, done.stderr[-2000:]
    line = done.stderr.strip()
    assert "\n" not in line and all(w in line for w in words), line
    assert not (tmp_path / "results" / "digits").exists()  # no experiment folder


@pytest.mark.parametrize("override,words", [
    ("train.label_smoothing=1.0", ["train.label_smoothing", "less than 1"]),
    ("search.label_smoothing={choice: [0.0, 1.5]}", ["search.label_smoothing", "1.5"]),
    ("search.batchnorm={choice: [eval, none]}", ["search.batchnorm", "'none'"]),
    ("data.train_file=x.csv", ["data.image_column and data.label_column are required"]),
])
def test_bad_image_settings_are_refused_at_validation(override, words, tiny_resnet, digits_dir,
                                                      tmp_path):
    from raytune_ft.errors import ConfigError

    path = image_experiment_yaml(tmp_path / "exp.yaml", tiny_resnet, digits_dir,
                                 tmp_path / "results")
    with pytest.raises(ConfigError) as error:
        load_config(path, [override])
    assert all(w in str(error.value) for w in words) and "\n" not in str(error.value)


def test_digits_demo_split_is_fixed(digits_dir):
    counts = [len(list((digits_dir / "val" / str(d)).iterdir())) for d in range(10)]
    assert sum(counts) == 359 and np.min(counts) > 20


def test_the_digits_script_writes_the_tree_and_an_untrained_model(tmp_path):
    from raytune_ft.digits import main
    from raytune_ft.tasks import get_task

    assert main([str(tmp_path)]) == 0
    assert len(list((tmp_path / "digits" / "train").glob("*/*.png"))) == 1438
    model = get_task("image_classification").load_model(str(tmp_path / "resnet-digits"),
                                                        [str(d) for d in range(10)], 0)
    assert type(model).__name__ == "ResNetForImageClassification"
    assert main([str(tmp_path)]) == 2  # never overwrites
