"""LoRA through the real CLI: a PBT run of a tiny random BERT on real SST-2 with rank and
lora_dropout searched; a clone continues exactly from its donor's adapter checkpoint; export
merged and adapter-only, both predicting what the trial's own evaluation predicted."""

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from support import experiment_yaml, run_cli

from raytune_ft.tasks import get_task

pytest.importorskip("peft")

TRAIN = {"max_epochs": 1, "eval_every_epochs": 0.25, "max_micro_batch": 16,
         "schedule": "linear", "lora_alpha": 16.0}
SEARCH = {"learning_rate": {"loguniform": [1e-3, 1e-2]}, "batch_size": {"choice": [16, 32]},
          "lora_r": {"choice": [2, 4]}, "lora_dropout": {"uniform": [0.0, 0.2]}}



@pytest.fixture(scope="module")
def pbt_lora(tmp_path_factory, tiny_bert, glue_dir):
    root = tmp_path_factory.mktemp("lora")
    # synchronous: every member is ranked at each perturbation point, so the worst one is
    # cloned there whatever order the results arrive in (asynchronous PBT clones only from a
    # member that was on top when it reported, and on CI once cloned none)
    scheduler = {"type": "pbt", "perturbation_interval": 1, "quantile_fraction": 0.25,
                 "synch": True, "mutations": ["learning_rate", "batch_size", "lora_dropout"]}
    path = experiment_yaml(root / "exp.yaml", tiny_bert, glue_dir, root / "results",
                           name="lora", metric="eval_loss", mode="min", train=TRAIN,
                           search=SEARCH, scheduler=scheduler,
                           search_alg={"type": "random", "seed": 1},
                           run={"num_samples": 4, "storage_path": str(root / "results")})
    done = run_cli("tune", str(path))
    assert done.returncode == 0, done.stderr[-3000:]
    return root / "results" / "lora"


def trials(experiment):
    from raytune_ft.experiment import trial_results

    return trial_results(experiment)


def test_checkpoints_hold_only_adapters_and_head(pbt_lora, tiny_bert):
    full = sum(v.numel() for v in load_file(tiny_bert / "model.safetensors").values())
    folders = sorted(pbt_lora.glob("*/checkpoint_*"))
    assert len(folders) >= 8  # 4 trials x 4 iterations, every one kept under PBT (clones
    # can reuse a folder name, so fewer than 16 remain)
    for folder in folders:
        saved = load_file(folder / "model.safetensors")
        r = json.loads((folder / "trainer_state.json").read_text())["hyperparameters"]["lora_r"]
        assert all("lora_" in k or ".modules_to_save." in k for k in saved)
        # 2 layers x (4 x r x (32 + 32) + 2 x r x (32 + 64)), the pooler r x (32 + 32),
        # and the head 2 x 32 + 2
        assert sum(v.numel() for v in saved.values()) == 2 * r * (4 * 64 + 2 * 96) \
            + r * 64 + 66
        assert sum(v.numel() for v in saved.values()) < full / 50


def test_a_clone_continues_exactly_from_its_donors_adapters(pbt_lora):
    """Re-run, outside Ray, the first interval of every clone after an exploit from its
    donor's checkpoint with the clone's settings: the same eval_loss to the last bit."""
    from raytune_ft.experiment import read_record
    from raytune_ft.schema import trial_hyperparameters
    from raytune_ft.tasks import task_for
    from raytune_ft.training.loop import FineTuneLoop
    from raytune_ft.training.lora import apply_lora
    from raytune_ft.tuning.trial import trial_dropout_seed

    config, record = read_record(str(pbt_lora))
    results = trials(pbt_lora)
    events = [json.loads(x) for x in (pbt_lora / "pbt_global.txt").read_text().splitlines()]
    assert events, "no exploit happened"
    task = task_for(config.data)
    bundle = task.load_data(config.data, record["model_path"], config.model.max_length)
    import pandas as pd

    # the analysis resolved Ray's tags to trial ids; one row per line of pbt_global.txt
    ids = pd.read_parquet(pbt_lora / "analysis" / "pbt_events.parquet").sort_values("event")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as in the trial (cpus_per_trial 1)
    checked, rank_kept = 0, 0
    try:
        for (_, _, _, donor_it, donor_config, new_config), target, donor in zip(
                events, ids["target_trial_id"], ids["donor_trial_id"]):
            donor_rows = [r for r in results[donor][1] if r["training_iteration"] == donor_it]
            after = [r for r in results[target][1] if r["training_iteration"] == donor_it + 1
                     and r["config"] == new_config]
            if len(donor_rows) != 1 or len(after) != 1:
                continue  # ambiguous: that trial was itself cloned at the same iteration
            checkpoint = results[donor][0] / donor_rows[0]["checkpoint_dir_name"]
            state = json.loads((checkpoint / "trainer_state.json").read_text())
            held = {k: state["hyperparameters"][k] for k in SEARCH}
            if held != {k: donor_config[k] for k in SEARCH}:
                continue  # the folder was written again by a later clone of that trial
            assert new_config["lora_r"] == donor_config["lora_r"]  # rank is not mutated
            rank_kept += 1
            hp = trial_hyperparameters(config, new_config)
            model = apply_lora(task.load_model(record["model_path"], bundle.label_names,
                                               hp.seed), hp)
            loop = FineTuneLoop(model, bundle, hp, config.metric, config.mode,
                                dropout_seed=trial_dropout_seed(hp.seed, True, target),
                                task=get_task(bundle.kind))
            loop.load(checkpoint)
            metrics = loop.run_interval()
            assert metrics["samples_seen"] == after[0]["samples_seen"]
            assert metrics["eval_loss"] == after[0]["eval_loss"], (target, donor_it)
            assert metrics["lr"] == after[0]["lr"]
            checked += 1
    finally:
        torch.set_num_threads(threads)
    assert checked >= 1 and rank_kept == checked


def predicted_labels(model, bundle):
    from raytune_ft.tasks import get_task

    task = get_task(bundle.kind)
    model.eval()
    labels, logits = np.empty(len(bundle.eval), dtype=np.int64), []
    with torch.no_grad():
        for start in range(0, len(bundle.eval), 64):
            indices = np.arange(start, min(start + 64, len(bundle.eval)))
            outputs = task.forward(model, task.collate(bundle, bundle.eval, indices))
            labels[indices] = task.predict(outputs, {})
            logits.append(outputs)
    return labels, torch.cat(logits)


def test_export_merged_and_adapter_predict_as_the_trials_evaluation(pbt_lora, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForSequenceClassification

    from raytune_ft.experiment import read_record
    from raytune_ft.tasks import task_for
    from raytune_ft.training.loop import FineTuneLoop
    from raytune_ft.training.lora import apply_lora

    merged, adapter = tmp_path / "merged", tmp_path / "adapter"
    for out, extra in ((merged, []), (adapter, ["--adapter"])):
        done = run_cli("export", str(pbt_lora), "--out", str(out), *extra)
        assert done.returncode == 0, done.stderr[-3000:]
    info = json.loads((merged / "raytune_ft_export.json").read_text())
    assert json.loads((adapter / "raytune_ft_export.json").read_text())["checkpoint"] == \
        info["checkpoint"]
    assert not (merged / "adapter_config.json").exists()
    assert (adapter / "adapter_config.json").is_file() and not (adapter / "config.json").exists()
    card = (adapter / "README.md").read_text()
    r, alpha = info["hyperparameters"]["lora_r"], info["hyperparameters"]["lora_alpha"]
    assert f"- rank r: {r}, alpha: {alpha:g}" in card and "PeftModel.from_pretrained" in card
    assert "13 linear layers named dense, key, query, value" in card
    config, record = read_record(str(pbt_lora))
    bundle = task_for(config.data).load_data(config.data, record["model_path"],
                                             config.model.max_length)
    # the trial's own model: its checkpoint loaded into the adapted base, as a restore does
    from raytune_ft.schema import trial_hyperparameters

    hp = trial_hyperparameters(config, info["hyperparameters"])
    loop = FineTuneLoop(apply_lora(task_for(config.data).load_model(
        record["model_path"], bundle.label_names, 0), hp), bundle, hp, task=get_task(bundle.kind))
    loop.load(info["checkpoint"])
    assert loop.evaluate()["eval_loss"] == pytest.approx(info["metrics"]["eval_loss"], rel=1e-6)
    own, own_logits = predicted_labels(loop.model, bundle)
    plain = AutoModelForSequenceClassification.from_pretrained(merged)
    assert type(plain).__module__.startswith("transformers.")
    base = AutoModelForSequenceClassification.from_pretrained(record["model_path"], num_labels=2)
    peft_model = PeftModel.from_pretrained(base, adapter)
    for model in (plain, peft_model):
        labels, logits = predicted_labels(model, bundle)
        assert np.array_equal(labels, own)
        assert torch.allclose(logits, own_logits, atol=1e-5)
    accuracy = float(np.mean(own == bundle.eval.labels))
    assert accuracy == pytest.approx(info["metrics"]["eval_accuracy"], abs=1e-12)
