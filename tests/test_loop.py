"""The loop, with numbers: restore continues bit for bit, accumulation equals one big batch,
a batch-size change keeps position, schedule and optimizer moments."""

import json

import numpy as np
import pytest
import torch

from raytune_ft.config import TrainConfig
from raytune_ft.plan import trial_budget
from raytune_ft.schema import data_settings
from raytune_ft.tasks import get_task
from raytune_ft.tasks.sequence_classification import build_bundle, collate, load_model
from raytune_ft.training.loop import FineTuneLoop


@pytest.fixture(scope="module")
def bundle(glue_dir, tiny_bert):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_bert)
    cfg = data_settings(task="sst2", path=str(glue_dir), max_train_samples=160,
                     max_eval_samples=64)
    return build_bundle(cfg, tokenizer, max_length=48)


def make_loop(tiny_bert, bundle, dropout=0.1, dropout_seed=None, keep_diverged=False,
              **settings):
    model = load_model(str(tiny_bert), bundle.label_names, seed=0)
    if dropout == 0:
        for module in model.modules():
            if isinstance(module, torch.nn.Dropout):
                module.p = 0.0
    hp = TrainConfig(**{"max_epochs": 1.0, "eval_every_epochs": 0.5, "learning_rate": 1e-3,
                        "batch_size": 16, "max_micro_batch": 16, **settings})
    return FineTuneLoop(model, bundle, hp, dropout_seed=dropout_seed,
                        keep_diverged=keep_diverged, task=get_task(bundle.kind))


def weights(loop):
    return {k: v.clone() for k, v in loop.model.state_dict().items()}


def test_restore_continues_bit_for_bit(tiny_bert, bundle, tmp_path):
    settings = dict(warmup_ratio=0.2, schedule="linear", batch_size=24)
    straight = make_loop(tiny_bert, bundle, **settings)
    first = straight.run_interval()
    straight.run_interval()
    interrupted = make_loop(tiny_bert, bundle, **settings)
    halfway = interrupted.run_interval()
    timed = {"samples_per_s", "train_s", "eval_s", "eval_predict_s"}  # wall-clock figures
    assert {k: v for k, v in halfway.items() if k not in timed} == \
        {k: v for k, v in first.items() if k not in timed}
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
    # 30 samples in micro-batches of at most 8 (8, 8, 7, 7: unequal) against one batch of 30:
    # the gradients themselves, not weights after a nearly scale-invariant AdamW step.
    big = make_loop(tiny_bert, bundle, dropout=0, batch_size=30, max_micro_batch=30,
                    max_grad_norm=None)
    small = make_loop(tiny_bert, bundle, dropout=0, batch_size=30, max_micro_batch=8,
                      max_grad_norm=None)
    grads = {}
    for name, loop in (("big", big), ("small", small)):
        loop.model.train()
        loop._set_group_hyperparameters()
        loop.optimizer.step = lambda: None  # keep the gradients of this one step
        loop._step(loop.stream.take(0, 30))
        grads[name] = {n: p.grad.clone() for n, p in loop.model.named_parameters()
                       if p.grad is not None}
    assert small.state.samples_seen == big.state.samples_seen == 30
    assert grads["big"].keys() == grads["small"].keys() and len(grads["big"]) > 10
    for name, value in grads["big"].items():
        torch.testing.assert_close(grads["small"][name], value, atol=1e-6, rtol=1e-4)
    # a loss that weighted micro-batches equally (mean of means) would be off by far more
    assert any(v.abs().max() > 1e-3 for v in grads["big"].values())


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

    hp = TrainConfig(max_epochs=3, eval_every_epochs=0.25)
    fake = SimpleNamespace(budget=trial_budget(hp.max_epochs, hp.eval_every_epochs, 67349))
    assert fake.budget.total_samples == 3 * 67349 and fake.budget.iterations == 12
    points = [FineTuneLoop.evaluation_point(fake, k) for k in range(1, 13)]
    assert points[:3] == [16837, 33674, 50512] and points[-1] == 202047
    assert min(b - a for a, b in zip([0, *points], points)) >= 16837


def test_restore_puts_every_group_setting_of_the_new_trial_in_force(tiny_bert, bundle, tmp_path):
    # A PBT exploit: the donor's moments and position, the recipient's eps, weight decay,
    # learning rate, schedule and layer-wise decay.
    donor = make_loop(tiny_bert, bundle, adam_epsilon=1e-8, weight_decay=0.01,
                      learning_rate=1e-3, schedule="linear")
    donor.run_interval()
    donor.save(tmp_path / "ckpt")
    recipient = make_loop(tiny_bert, bundle, adam_epsilon=1e-6, weight_decay=0.2,
                          learning_rate=3e-4, schedule="cosine", layer_decay=0.5,
                          adam_beta2=0.98)
    scales = [g["lr_scale"] for g in recipient.optimizer.param_groups]
    recipient.load(tmp_path / "ckpt")
    lr, _ = recipient._set_group_hyperparameters()
    # cosine from 3e-4 at 80 of 160 samples, no warmup: half way down to 0
    assert lr == pytest.approx(3e-4 * 0.5, rel=1e-12)
    for group, scale in zip(recipient.optimizer.param_groups, scales):
        assert group["eps"] == 1e-6 and group["betas"] == (0.9, 0.98)
        assert group["lr_scale"] == scale
        assert group["lr"] == pytest.approx(lr * scale, rel=1e-12)
        assert group["weight_decay"] == (0.2 if group["decays"] else 0.0)
    assert sorted({g["lr_scale"] for g in recipient.optimizer.param_groups})[0] == 0.5 ** 3


def test_optimizer_state_is_read_onto_the_cpu(tiny_bert, bundle, tmp_path, monkeypatch):
    # map_location=<the loop's device> put AdamW's step counters on the GPU after a restore
    # (a host sync per parameter per step). A loop that believes it is on "cuda" shows it here.
    loop = make_loop(tiny_bert, bundle)
    loop.run_interval()
    loop.save(tmp_path / "ckpt")
    restored = make_loop(tiny_bert, bundle)
    restored.device = torch.device("cuda")
    seen, real_load = [], torch.load
    monkeypatch.setattr(torch, "load", lambda *a, **k: seen.append(k.get("map_location"))
                        or real_load(*a, **k))
    restored.load(tmp_path / "ckpt")
    assert seen == ["cpu"]
    steps = [s["step"] for s in restored.optimizer.state.values()]
    assert steps and all(step.device.type == "cpu" for step in steps)


def test_a_short_step_at_an_evaluation_point_takes_its_share_of_the_lr(tiny_bert, bundle):
    # 80 samples to the first evaluation point with batch 24: 3 full steps, then 8 samples
    loop = make_loop(tiny_bert, bundle, dropout=0, batch_size=24, schedule="constant")
    counts, losses, real_step = [], [], loop._step

    def step(indices):
        with torch.no_grad():  # the batch's summed loss before the update, computed apart
            batch = collate(bundle.train, indices, bundle.pad_token_id)
            labels = batch.pop("labels")
            logits = loop.model(**batch).logits
            losses.append(torch.nn.functional.cross_entropy(logits, labels, reduction="sum"))
        counts.append(len(indices))
        return real_step(indices)

    loop._step = step
    metrics = loop.run_interval()
    assert counts == [24, 24, 24, 8] and metrics["samples_seen"] == 80
    assert metrics["step"] == 4 and metrics["lr"] == 1e-3 and metrics["batch_size"] == 24
    for group in loop.optimizer.param_groups:  # the last step's lr: 8/24 of the full one
        assert group["lr"] == pytest.approx(1e-3 * group["lr_scale"] * 8 / 24, rel=1e-12)
    # summed loss over summed samples, not a mean of per-step means
    assert metrics["train_loss"] == pytest.approx(float(sum(losses)) / 80, rel=1e-5)


def poison_gradients(loop, steps):
    """Make the gradient of one weight infinite at the given optimizer steps (loss stays
    finite): what a bad batch does to an fp32 or bf16 run."""
    weight = loop.model.classifier.weight

    def hook(grad):
        return grad * float("inf") if loop.state.step in steps else grad

    weight.register_hook(hook)


def test_a_non_finite_gradient_norm_skips_the_step(tiny_bert, bundle, tmp_path):
    # The interval's last step: clipping by an infinite norm used to write NaN weights, and
    # the evaluation then reported NaN loss and majority-class accuracy as a normal result.
    loop = make_loop(tiny_bert, bundle, batch_size=16)
    poison_gradients(loop, steps={4})
    before = {}
    original_step = loop._step

    def step(indices):
        if loop.state.step == 4:
            before.update(weights(loop))
        return original_step(indices)

    loop._step = step
    metrics = loop.run_interval()
    assert metrics["step"] == 4 and metrics["samples_seen"] == 80  # the data was consumed
    assert metrics["skipped_steps"] == 1 and metrics["diverged"] is False
    assert np.isfinite(metrics["eval_loss"]) and np.isfinite(metrics["train_loss"])
    for name, value in weights(loop).items():  # the skipped step changed nothing
        assert torch.equal(value, before[name]), name
    loop.save(tmp_path / "ckpt")


def test_non_finite_gradient_norms_in_a_row_diverge_the_trial(tiny_bert, bundle, tmp_path):
    from raytune_ft.training.loop import NONFINITE_STEPS_TO_DIVERGE, CheckpointError

    loop = make_loop(tiny_bert, bundle, batch_size=8)
    poison_gradients(loop, steps={2})  # step 2 is never taken: every later step is skipped
    metrics = loop.run_interval()
    assert metrics["diverged"] is True and loop.finished
    assert metrics["skipped_steps"] == NONFINITE_STEPS_TO_DIVERGE and metrics["step"] == 2
    # outside a population it ends where it stopped: 2 steps and 3 skipped ones of 8 samples
    assert metrics["samples_seen"] == 40 and 0 < metrics["samples_per_s"] < 1e5
    assert metrics["eval_accuracy"] == 0.0 and metrics["eval_loss"] == 1e9
    assert all(torch.isfinite(v).all() for v in weights(loop).values())
    with pytest.raises(CheckpointError, match="non-finite"):
        loop.save(tmp_path / "ckpt")


def test_a_non_finite_eval_loss_is_divergence(tiny_bert, bundle, tmp_path):
    from raytune_ft.training.loop import CheckpointError

    loop = make_loop(tiny_bert, bundle)
    real = loop.evaluate
    loop.evaluate = lambda: {**real(), "eval_loss": float("nan")}
    metrics = loop.run_interval()
    assert metrics["diverged"] is True and metrics["eval_loss"] == 1e9
    assert metrics["eval_accuracy"] == 0.0 and metrics["train_loss"] == 1e9
    with pytest.raises(CheckpointError):
        loop.save(tmp_path / "ckpt")


def test_a_diverged_population_member_waits_at_each_point_until_replaced(tiny_bert, bundle,
                                                                        tmp_path, monkeypatch):
    healthy = make_loop(tiny_bert, bundle, eval_every_epochs=0.25)
    healthy.run_interval()
    healthy.save(tmp_path / "donor")
    loop = make_loop(tiny_bert, bundle, eval_every_epochs=0.25, keep_diverged=True,
                     learning_rate=1e30)
    first = loop.run_interval()
    assert first["diverged"] is True and not loop.finished  # stays in the population
    assert first["samples_seen"] == 40 and first["eval_accuracy"] == 0.0
    # The scheduler holds it here (schedulers/_rescue.py); asked on, it neither trains, nor
    # evaluates, nor waits: the rescue no longer depends on its pace.
    monkeypatch.setattr("raytune_ft.training.loop.time.sleep", pytest.fail)
    monkeypatch.setattr(loop, "evaluate", pytest.fail)
    before = weights(loop)
    second = loop.run_interval()
    assert second["samples_seen"] == 80 and second["diverged"] is True
    assert second["eval_loss"] == 1e9 and second["step"] == first["step"]
    assert second["samples_per_s"] == 0.0
    assert all(torch.equal(v, weights(loop)[k]) for k, v in before.items())
    monkeypatch.undo()
    loop.load(tmp_path / "donor")  # the scheduler clones a healthy donor into it
    assert loop.state.diverged is False and loop.state.samples_seen == 40
    loop.apply_hyperparameters(TrainConfig(**{**loop.hp.model_dump(), "learning_rate": 1e-3}))
    rest = [loop.run_interval() for _ in range(3)]
    assert [m["samples_seen"] for m in rest] == [80, 120, 160] and loop.finished
    assert not any(m["diverged"] for m in rest) and np.isfinite(rest[-1]["eval_loss"])
    # the donor's own next interval, from the same checkpoint: the clone continued it
    assert rest[0]["step"] == healthy.run_interval()["step"]
    # a member that is never replaced still ends at the budget
    alone = make_loop(tiny_bert, bundle, eval_every_epochs=0.25, keep_diverged=True,
                      learning_rate=1e30)
    reports = []
    while not alone.finished:
        reports.append(alone.run_interval())
    assert [m["samples_seen"] for m in reports] == [40, 80, 120, 160]


def test_dropout_follows_the_dropout_seed_and_the_data_order_the_state_seed(tiny_bert, bundle):
    a = make_loop(tiny_bert, bundle, dropout_seed=1)
    b = make_loop(tiny_bert, bundle, dropout_seed=1)
    c = make_loop(tiny_bert, bundle, dropout_seed=2)
    for loop in (a, b, c):
        loop.run_interval()
    assert all(torch.equal(v, weights(b)[k]) for k, v in weights(a).items())
    assert not all(torch.equal(v, weights(c)[k]) for k, v in weights(a).items())
    assert (a.stream.take(0, 160) == c.stream.take(0, 160)).all()  # same seed, same order


def test_evaluation_reports_the_metrics_of_the_task_only(tiny_bert, bundle):
    # SST-2 is binary, but GLUE reports no F1 for it: neither does a trial
    metrics = make_loop(tiny_bert, bundle).evaluate()
    assert set(metrics) == {"eval_loss", *bundle.metrics} and "eval_f1" not in metrics


def test_a_restore_starts_a_new_streak_of_non_finite_gradients(tiny_bert, bundle, tmp_path):
    loop = make_loop(tiny_bert, bundle, batch_size=16)
    poison_gradients(loop, steps={3})  # steps 4 and 5 of the interval are skipped
    metrics = loop.run_interval()
    assert metrics["skipped_steps"] == 2 and loop.state.nonfinite_streak == 2
    loop.save(tmp_path / "ckpt")
    clone = make_loop(tiny_bert, bundle, batch_size=16)
    clone.load(tmp_path / "ckpt")
    assert clone.state.nonfinite_streak == 0 and clone.state.skipped_steps == 2
