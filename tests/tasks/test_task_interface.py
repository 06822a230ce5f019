"""The task interface: a toy task defined here (this module is its registry entry) trains,
evaluates, accumulates exactly and diverges through the loop, which names no task; the
registry is importable without torch."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch

from raytune_ft.config import TrainConfig
from raytune_ft.errors import ConfigError
from raytune_ft.schema import data_settings
from raytune_ft.tasks import TASKS, DataBundle, Metric, Task, get_task, task_for
from raytune_ft.training.loop import FineTuneLoop

PACKAGE = Path(__file__).resolve().parents[2] / "raytune_ft"


@dataclass
class VectorSplit:
    """Fixed-size examples: no lengths to group by, so every length is 1."""

    x: np.ndarray  # (n, 4) float32
    y: np.ndarray  # (n,) float32

    def __len__(self) -> int:
        return len(self.y)

    @property
    def lengths(self) -> np.ndarray:
        return np.ones(len(self.y), dtype=np.int64)


class Linear(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.head = torch.nn.Linear(4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(x).squeeze(-1)


class ToyRegression(Task):
    """y = x @ w + noise; scored by mean absolute error (lower is better)."""

    name = "toy_regression"
    metrics = (Metric("eval_mae", "min", 1e6),)
    pipeline_tag = "tabular-regression"
    auto_class = "AutoModel"

    def load_data(self, data, model_path, max_length) -> DataBundle:
        rng = np.random.default_rng(0)
        w = np.array([1.0, -2.0, 0.5, 3.0], dtype=np.float32)

        def split(n):
            x = rng.normal(size=(n, 4)).astype(np.float32)
            return VectorSplit(x, (x @ w + 0.01 * rng.normal(size=n)).astype(np.float32))

        return DataBundle(split(96), split(40), [], 0, "toy", ["eval_loss", "eval_mae"],
                          self.name)

    def load_model(self, path, label_names, seed) -> torch.nn.Module:
        torch.manual_seed(seed)
        return Linear()

    def collate(self, data, split, indices) -> dict:
        return {"x": torch.from_numpy(split.x[indices]), "y": torch.from_numpy(split.y[indices])}

    def forward(self, model, batch):
        return model(batch["x"])

    def loss(self, outputs, batch, label_smoothing=0.0):
        return ((outputs.float() - batch["y"]) ** 2).sum()

    def predict(self, outputs, batch):
        return outputs.float().cpu().numpy()

    def compute_metrics(self, data, predictions) -> dict:
        errors = [np.abs(values - data.eval.y[indices]) for indices, values in predictions]
        return {"eval_mae": float(np.concatenate(errors).mean()), "eval_unreported": 1.0}

    def save_processor(self, model_path, out, max_length) -> None:
        pass

    def usage(self) -> list[str]:
        return []


TASK = ToyRegression()


@pytest.fixture
def toy(monkeypatch):
    monkeypatch.setitem(TASKS, TASK.name, TASK)  # the one registry line
    task = get_task(TASK.name)
    return task, task.load_data(None, "", 0)


def toy_loop(task, bundle, keep_diverged=False, **settings) -> FineTuneLoop:
    hp = TrainConfig(**{"max_epochs": 3, "eval_every_epochs": 1, "learning_rate": 0.05,
                        "batch_size": 16, "max_micro_batch": 16, "weight_decay": 0.0,
                        "schedule": "constant", "max_grad_norm": None, **settings})
    return FineTuneLoop(task.load_model("", [], 0), bundle, hp, "eval_mae", "min",
                        keep_diverged=keep_diverged, task=task)


def test_a_toy_task_trains_and_evaluates_through_the_interface(toy):
    task, bundle = toy
    loop = toy_loop(task, bundle)
    assert loop.task is TASK
    reports = [loop.run_interval() for _ in range(3)]
    assert loop.finished and reports[-1]["samples_seen"] == 3 * 96
    maes = [r["eval_mae"] for r in reports]
    assert maes[0] > maes[1] > maes[2]
    assert "eval_unreported" not in reports[0]  # only what the bundle says it reports
    assert not any(name in reports[0] for name in ("eval_accuracy", "eval_f1", "eval_mcc"))
    with torch.no_grad():
        errors = loop.model(torch.from_numpy(bundle.eval.x)) - torch.from_numpy(bundle.eval.y)
    assert reports[-1]["eval_loss"] == pytest.approx(float((errors ** 2).mean()), rel=1e-5)


def test_summed_task_loss_keeps_accumulation_exact(toy):
    task, bundle = toy
    whole, parts = toy_loop(task, bundle), toy_loop(task, bundle, max_micro_batch=5)
    whole.run_interval()
    parts.run_interval()
    for (name, a), b in zip(whole.model.state_dict().items(), parts.model.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=name)


def test_a_diverged_toy_trial_reports_the_worst_values_its_task_declares(toy):
    task, bundle = toy
    loop = toy_loop(task, bundle, keep_diverged=True)
    with torch.no_grad():
        loop.model.head.weight.fill_(float("nan"))
    metrics = loop.run_interval()
    assert metrics["diverged"]
    assert {k: metrics[k] for k in ("eval_mae", "eval_loss", "train_loss")} == {
        "eval_mae": 1e6, "eval_loss": 1e9, "train_loss": 1e9}


def test_the_loop_and_batching_name_no_task():
    for module in ("training/loop.py", "training/batching.py"):
        # train.label_smoothing is a setting the loop hands every task's loss (0 at eval)
        text = (PACKAGE / module).read_text().lower().replace("label_smoothing", "")
        for word in ("sequence_classification", "sequence-classification", "logits",
                     "cross_entropy", "glue", "tokeniz", "label"):
            assert word not in text, f"{module} names {word!r}"


def test_the_data_chooses_the_task():
    assert task_for(data_settings(task="SST-2")).name == "sequence_classification"
    files = data_settings(train_file="t.csv", eval_file="e.csv", text_columns=["text"],
                       label_column="label")
    assert task_for(files).name == "sequence_classification"
    with pytest.raises(ConfigError, match="data.kind: 'nope' is not a registered task; "
                                          "registered: sequence_classification"):
        get_task("nope")


def test_the_run_header_needs_nothing_of_a_task_but_its_interface(toy):
    # the driver's generic warnings read the plan and the split sizes, never labels; a task
    # without label names or 1-D labels only adds what it says itself
    from raytune_ft.schema import validate_config
    from raytune_ft.tuning.runner import _warnings

    task, bundle = toy
    config = validate_config({"name": "toy", "model": {"name": "m"}, "data": {"task": "sst2"},
                              "train": {"batch_size": 128, "max_micro_batch": 128}})
    plan = config.plan(len(bundle.train))
    assert _warnings(plan, bundle) == [
        f"the training split has {len(bundle.train)} examples, fewer than one batch of 128: "
        "a step then repeats examples"]
    assert task.warnings(bundle, config.data) == [] and task.describe(bundle) == []


class WeightedToy(ToyRegression):
    """Example i counts `w_i` loss units (1 to 5), as a tagged sentence counts its labelled
    tokens: the loss sums w_i x error^2, its units are the batch's summed w_i."""

    name = "toy_weighted"

    def collate(self, data, split, indices) -> dict:
        batch = super().collate(data, split, indices)
        batch["w"] = torch.from_numpy(1.0 + indices % 5).float()
        return batch

    def loss(self, outputs, batch, label_smoothing=0.0):
        return (batch["w"] * (outputs.float() - batch["y"]) ** 2).sum()

    def loss_units(self, batch) -> int:
        return int(batch["w"].sum())


def test_unequal_loss_units_per_micro_batch_give_the_whole_batchs_gradient(monkeypatch):
    # Micro-batches of 5 hold different unit counts: dividing each by its own count (or by
    # examples) would weight them wrongly; the loop divides by the whole batch's units.
    task = WeightedToy()
    monkeypatch.setitem(TASKS, task.name, task)
    bundle = task.load_data(None, "", 0)
    bundle.kind = task.name
    whole, parts = toy_loop(task, bundle), toy_loop(task, bundle, max_micro_batch=5)
    indices = whole.stream.take(0, 16)
    assert len({task.loss_units(task.collate(bundle, bundle.train, part))
                for part in np.array_split(indices[:15], 3)}) > 1  # the units do differ
    weight = whole.model.head.weight.detach().clone().requires_grad_()
    batch = task.collate(bundle, bundle.train, indices)
    prediction = (batch["x"] @ weight.T).squeeze(-1) + whole.model.head.bias.detach()
    units = batch["w"].sum()
    expected = torch.autograd.grad((batch["w"] * (prediction - batch["y"]) ** 2).sum() / units,
                                   weight)[0]
    for loop in (whole, parts):
        loss_sum, step_units = loop._step(indices)  # the gradient stays on the weights
        assert step_units == int(units)
        torch.testing.assert_close(loop.model.head.weight.grad, expected, rtol=1e-5, atol=1e-7)
    # eval_loss is per unit too: summed weighted error over the eval set's summed units
    loop = toy_loop(task, bundle)
    report = loop.evaluate()
    every = task.collate(bundle, bundle.eval, np.arange(len(bundle.eval)))
    with torch.no_grad():
        errors = (loop.model(every["x"]) - every["y"]) ** 2
    assert report["eval_loss"] == pytest.approx(
        float((every["w"] * errors).sum() / every["w"].sum()), rel=1e-5)
