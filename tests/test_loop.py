"""The loop, with numbers: restore continues bit for bit, accumulation equals one big batch,
a batch-size change keeps position, schedule and optimizer moments."""

import json

import numpy as np
import pytest
import torch

from raytune_ft.config import DataConfig, TrainConfig
from raytune_ft.data import build_bundle
from raytune_ft.loop import FineTuneLoop
from raytune_ft.model import load_model


@pytest.fixture(scope="module")
def bundle(glue_dir, tiny_bert):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_bert)
    cfg = DataConfig(task="sst2", path=str(glue_dir), max_train_samples=160,
                     max_eval_samples=64)
    return build_bundle(cfg, tokenizer, max_length=48)


def make_loop(tiny_bert, bundle, dropout=0.1, **settings):
    model = load_model(str(tiny_bert), bundle.label_names, seed=0)
    if dropout == 0:
        for module in model.modules():
            if isinstance(module, torch.nn.Dropout):
                module.p = 0.0
    hp = TrainConfig(**{"max_epochs": 1.0, "eval_every_epochs": 0.5, "learning_rate": 1e-3,
                        "batch_size": 16, "max_micro_batch": 16, **settings})
    return FineTuneLoop(model, bundle, hp)


def weights(loop):
    return {k: v.clone() for k, v in loop.model.state_dict().items()}


def test_restore_continues_bit_for_bit(tiny_bert, bundle, tmp_path):
    settings = dict(warmup_ratio=0.2, schedule="linear", batch_size=24)
    straight = make_loop(tiny_bert, bundle, **settings)
    first = straight.run_interval()
    straight.run_interval()
    interrupted = make_loop(tiny_bert, bundle, **settings)
    halfway = interrupted.run_interval()
    assert {k: v for k, v in halfway.items() if k != "samples_per_s"} == \
        {k: v for k, v in first.items() if k != "samples_per_s"}
    interrupted.save(tmp_path / "ckpt")
    restored = make_loop(tiny_bert, bundle, **settings)
    restored.load(tmp_path / "ckpt")
    assert restored.state.samples_seen == 80 and restored.state.step == 4
    last = restored.run_interval()
    assert last["samples_seen"] == 160 and restored.finished
    for name, value in weights(straight).items():
        assert torch.equal(value, restored.model.state_dict()[name]), name
    a, b = straight.optimizer.state_dict()["state"], restored.optimizer.state_dict()["state"]
    assert all(torch.equal(a[k]["exp_avg_sq"], b[k]["exp_avg_sq"]) for k in a)
    # the checkpoint contract: safetensors, weights-only optimizer, JSON trainer state
    state = json.loads((tmp_path / "ckpt" / "trainer_state.json").read_text())
    assert state["samples_seen"] == 80 and state["hyperparameters"]["batch_size"] == 24
    torch.load(tmp_path / "ckpt" / "optimizer.pt", weights_only=True)
    assert (tmp_path / "ckpt" / "model.safetensors").is_file()


def test_accumulation_equals_one_big_batch(tiny_bert, bundle):
    big = make_loop(tiny_bert, bundle, dropout=0, batch_size=32, max_micro_batch=32,
                    max_grad_norm=None)
    small = make_loop(tiny_bert, bundle, dropout=0, batch_size=32, max_micro_batch=8,
                      max_grad_norm=None)
    for loop in (big, small):
        loop.model.train()
        loop._set_group_hyperparameters()
        loop._step(loop.stream.take(0, 32))
    assert small.state.samples_seen == big.state.samples_seen == 32
    for name, value in weights(big).items():
        torch.testing.assert_close(small.model.state_dict()[name], value, atol=1e-5, rtol=0)


def test_batch_size_change_keeps_position_schedule_and_moments(tiny_bert, bundle, tmp_path):
    # 40% of the budget at batch 16, then restore with batch 64 and a new learning rate.
    settings = dict(max_epochs=1.0, eval_every_epochs=0.2, warmup_ratio=0.1,
                    schedule="cosine", lr_scaling="linear")
    before = make_loop(tiny_bert, bundle, batch_size=16, learning_rate=1e-3, **settings)
    before.run_interval()
    before.run_interval()
    multiplier = before.current_lr() / before.hp.learning_rate
    before.save(tmp_path / "ckpt")
    saved = torch.load(tmp_path / "ckpt" / "optimizer.pt", weights_only=True)

    after = make_loop(tiny_bert, bundle, batch_size=64, learning_rate=3e-4, **settings)
    after.load(tmp_path / "ckpt")
    assert after.state.samples_seen == 64 == round(0.4 * len(bundle.train))
    assert after.state.step == before.state.step
    assert after.current_lr() / (3e-4 * 64 / 16) == pytest.approx(multiplier, rel=1e-12)
    lr, _ = after._set_group_hyperparameters()
    assert lr == pytest.approx(3e-4 * multiplier * 64 / 16, rel=1e-12)
    for group in after.optimizer.param_groups:
        assert group["lr"] == pytest.approx(lr * group["lr_scale"], rel=1e-12)
    restored = after.optimizer.state_dict()["state"]
    for key, saved_state in saved["state"].items():
        assert torch.equal(restored[key]["exp_avg"], saved_state["exp_avg"])
        assert int(restored[key]["step"]) == int(saved_state["step"])
    metrics = after.run_interval()
    assert metrics["batch_size"] == 64 and metrics["samples_seen"] == 96
    assert metrics["step"] == before.state.step + 1  # 32 samples to the boundary: one step


def test_batch_schedule_changes_batch_at_the_right_samples(tiny_bert, bundle):
    loop = make_loop(tiny_bert, bundle, max_epochs=1.0, eval_every_epochs=0.25,
                     batch_schedule=[(0.0, 8), (0.5, 40)], max_micro_batch=16)
    reported = [loop.run_interval() for _ in range(4)]
    assert [m["batch_size"] for m in reported] == [8, 8, 40, 40]
    assert [m["samples_seen"] for m in reported] == [40, 80, 120, 160]
    assert [m["step"] for m in reported] == [5, 10, 11, 12]


def test_non_finite_loss_ends_the_trial_as_diverged(tiny_bert, bundle):
    loop = make_loop(tiny_bert, bundle, learning_rate=1e6, max_grad_norm=None, max_epochs=2.0)
    with torch.no_grad():
        for param in loop.model.parameters():
            param.mul_(1e30)
    metrics = loop.run_interval()
    assert metrics["diverged"] is True and loop.finished
    assert metrics["eval_accuracy"] == 0.0 and np.isfinite(metrics["eval_loss"])


def test_frozen_parameters_are_not_in_the_checkpoint_optimizer_state(tiny_bert, bundle, tmp_path):
    loop = make_loop(tiny_bert, bundle, freeze_embeddings=True, freeze_layers=1)
    loop.run_interval()
    loop.save(tmp_path / "ckpt")
    saved = torch.load(tmp_path / "ckpt" / "optimizer.pt", weights_only=True)
    trainable = sum(p.numel() for p in loop.model.parameters() if p.requires_grad)
    in_state = sum(s["exp_avg"].numel() for s in saved["state"].values())
    assert in_state == trainable < sum(p.numel() for p in loop.model.parameters())


def test_plateau_state_survives_a_checkpoint(tiny_bert, bundle, tmp_path):
    loop = make_loop(tiny_bert, bundle, schedule="plateau", plateau_factor=0.5,
                     plateau_patience=1, eval_every_epochs=0.25)
    loop.run_interval()
    loop.state.plateau.best, loop.state.plateau.reductions = 0.75, 2  # two reductions so far
    loop.save(tmp_path / "ckpt")
    restored = make_loop(tiny_bert, bundle, schedule="plateau", plateau_factor=0.5,
                         plateau_patience=1, eval_every_epochs=0.25)
    restored.load(tmp_path / "ckpt")
    assert restored.state.plateau == loop.state.plateau
    assert restored.current_lr() == pytest.approx(1e-3 * 0.25, rel=1e-12)


def test_evaluation_points_split_the_budget_evenly():
    # SST-2's 67,349 sentences, 3 epochs, 4 evaluations per epoch: 12 points, none tiny.
    from types import SimpleNamespace

    fake = SimpleNamespace(hp=TrainConfig(max_epochs=3, eval_every_epochs=0.25),
                           n_train=67349, total_samples=3 * 67349, evaluations=12)
    points = [FineTuneLoop.evaluation_point(fake, k) for k in range(1, 13)]
    assert points[:3] == [16837, 33674, 50512] and points[-1] == 202047
    assert min(b - a for a, b in zip([0, *points], points)) >= 16837
