"""Deployment figures: parameter counts from requires_grad, checkpoint size, latency."""

from __future__ import annotations

import statistics

import numpy as np
import pytest
import torch

from raytune_ft.config import TrainConfig
from raytune_ft.tasks import get_task
from raytune_ft.training import deployment
from raytune_ft.training.deployment import deployment_figures, folder_mb, parameter_counts
from raytune_ft.training.loop import FineTuneLoop


@pytest.fixture(scope="module")
def loop(tiny_bert, glue_dir):
    from raytune_ft.config import DataConfig

    task = get_task("sequence_classification")
    data = DataConfig(task="sst2", path=str(glue_dir), max_train_samples=64,
                      max_eval_samples=40)
    bundle = task.load_data(data, str(tiny_bert), 32)
    hp = TrainConfig(max_epochs=1, batch_size=16, eval_batch_size=32, freeze_layers=1,
                     freeze_embeddings=True)
    model = task.load_model(str(tiny_bert), bundle.label_names, 0)
    from raytune_ft.training.model import parameter_groups

    parameter_groups(model, hp)  # freezing happens where the optimizer groups are built
    return FineTuneLoop(model, bundle, hp)


def test_counts_follow_requires_grad(loop):
    total, trainable = parameter_counts(loop.model)
    params = list(loop.model.parameters())
    assert total == sum(p.numel() for p in params)
    frozen = sum(p.numel() for p in params if not p.requires_grad)
    assert frozen > 0 and trainable == total - frozen
    embeddings = sum(p.numel() for p in loop.model.bert.embeddings.parameters())
    layer0 = sum(p.numel() for p in loop.model.bert.encoder.layer[0].parameters())
    assert frozen == embeddings + layer0


def test_folder_size_is_the_bytes_of_its_files(tmp_path):
    (tmp_path / "a").write_bytes(b"x" * 1500)
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "b").write_bytes(b"y" * 2500)
    assert folder_mb(tmp_path) == pytest.approx(4000 / 1e6)


def test_figures_of_a_saved_loop(loop, tmp_path, monkeypatch):
    timed = []
    real = deployment.median_ms_per_example

    def spy(run, batch_size, repeats, device):
        timed.append((batch_size, repeats))
        return real(run, batch_size, repeats, device)

    monkeypatch.setattr(deployment, "median_ms_per_example", spy)
    loop.save(tmp_path)
    loop.model.train()
    figures = deployment_figures(loop, tmp_path)
    sizes = sum(p.stat().st_size for p in tmp_path.iterdir())
    assert figures["checkpoint_mb"] == pytest.approx(sizes / 1e6, abs=5e-4)  # to the kB
    assert figures["param_count"] == sum(p.numel() for p in loop.model.parameters())
    assert figures["latency_eval_batch"] == 32  # eval_batch_size, the split has 40
    # not evaluated yet: one pass over its eval batches, as an evaluation times them
    assert timed == [(1, deployment.B1_REPEATS)] and loop.eval_ms_per_example is None
    assert figures["latency_ms_b1"] > 0 and figures["latency_ms_eval_batch"] > 0
    # after an evaluation, the eval-batch figure is that evaluation's median: no extra pass
    loop.evaluate()
    loop.model.train()
    timed.clear()
    evaluated = deployment_figures(loop, tmp_path)
    assert timed == [(1, deployment.B1_REPEATS)]
    assert evaluated["latency_ms_eval_batch"] == loop.eval_ms_per_example > 0
    assert figures["latency_device"] == "cpu" and figures["latency_threads"] >= 1
    assert loop.model.training  # measuring leaves the model as it found it


def test_median_is_per_example_after_untimed_warmup(monkeypatch):
    """A clock the passes advance: warm-up passes take 1 s and are not timed."""
    import torch

    clock = [0.0]
    monkeypatch.setattr(deployment.time, "perf_counter", lambda: clock[0])
    costs = iter([1.0] * deployment.WARMUP + [0.004, 0.002, 0.010])

    def run(i):
        clock[0] += next(costs)

    ms = deployment.median_ms_per_example(run, 2, 3, torch.device("cpu"))
    assert ms == pytest.approx(4.0 / 2)  # median 4 ms per pass, 2 examples per pass
    assert np.isfinite(ms)


def test_model_mb_is_the_weights_alone_checkpoint_mb_the_training_state(loop, tmp_path):
    # the frozen fixture saves the whole model; the checkpoint adds optimizer and trainer state
    loop.save(tmp_path)
    figures = deployment_figures(loop, tmp_path)
    weights = sum(p.numel() * p.element_size() for p in loop.model.parameters())
    size = (tmp_path / "model.safetensors").stat().st_size
    assert figures["model_mb"] == round(size / 1e6, 3)  # to the kB
    assert 0 < size - weights < 20_000  # safetensors' JSON header
    others = sum(p.stat().st_size for p in tmp_path.iterdir() if p.name != "model.safetensors")
    assert figures["checkpoint_mb"] == pytest.approx(figures["model_mb"] + others / 1e6,
                                                     abs=1e-3)
    assert others > 0


def test_model_mb_of_lora_is_adapters_and_head(tiny_bert, glue_dir, tmp_path):
    from raytune_ft.config import DataConfig
    from raytune_ft.training.lora import apply_lora

    task = get_task("sequence_classification")
    data = DataConfig(task="sst2", path=str(glue_dir), max_train_samples=32,
                      max_eval_samples=8)
    bundle = task.load_data(data, str(tiny_bert), 32)
    hp = TrainConfig(max_epochs=1, batch_size=16, eval_batch_size=8, lora_r=4)
    model = apply_lora(task.load_model(str(tiny_bert), bundle.label_names, 0), hp)
    lora = FineTuneLoop(model, bundle, hp)
    lora.save(tmp_path)
    figures = deployment_figures(lora, tmp_path)
    trained = sum(p.numel() * 4 for p in model.parameters() if p.requires_grad)
    assert 0 < figures["model_mb"] * 1e6 - trained < 20_000
    assert figures["model_mb"] * 1e6 < 4 * figures["param_count"] / 5  # not the base


def test_lora_figures_describe_the_merged_model_export_ships(tiny_bert, glue_dir,
                                                              monkeypatch):
    """param_count and latency are the merged model's (what `export` writes: no adapters,
    no peft copy of the head, the merged graph timed); trainable_param_count stays what the
    trial trains. The merged model's function and the training model's weights afterwards:
    test_lora_measurement_keeps_no_second_base_and_restores_the_weights."""
    from raytune_ft.training.lora import is_lora

    loop = _lora_loop(tiny_bert, glue_dir, eval_samples=8, eval_batch_size=8)
    task, bundle = loop.task, loop.data
    timed = []
    real = type(task).forward

    def spy(self, net, batch):
        timed.append(net)
        return real(self, net, batch)

    monkeypatch.setattr(type(task), "forward", spy)
    figures = deployment_figures(loop, None)
    plain = task.load_model(str(tiny_bert), bundle.label_names, 0)
    assert figures["param_count"] == sum(p.numel() for p in plain.parameters())
    assert figures["trainable_param_count"] == sum(
        p.numel() for p in loop.model.parameters() if p.requires_grad)
    # batch 1 and the one eval batch (not the training model's evaluation): the merged model
    assert len(timed) == deployment.WARMUP + deployment.B1_REPEATS + 1
    assert all(not is_lora(net) and not any("lora_" in name for name, _ in
                                             net.named_parameters()) for net in timed)
    assert is_lora(loop.model)

def _lora_loop(tiny_bert, glue_dir, eval_samples: int, eval_batch_size: int) -> FineTuneLoop:
    """A LoRA loop on SST-2 trained one interval, so merging changes the base weights."""
    from raytune_ft.config import DataConfig
    from raytune_ft.training.lora import apply_lora

    task = get_task("sequence_classification")
    data = DataConfig(task="sst2", path=str(glue_dir), max_train_samples=32,
                      max_eval_samples=eval_samples)
    bundle = task.load_data(data, str(tiny_bert), 64)
    hp = TrainConfig(max_epochs=1, batch_size=16, eval_batch_size=eval_batch_size, lora_r=4)
    loop = FineTuneLoop(apply_lora(task.load_model(str(tiny_bert), bundle.label_names, 0), hp),
                        bundle, hp)
    loop.run_interval()
    return loop


def test_lora_eval_batch_latency_is_the_evaluations_measurement(tiny_bert, glue_dir,
                                                                monkeypatch):
    """With a forward whose time is its token slots (1 us each, padding included), the
    merged model's eval-batch figure is the median over the trial's length-sorted eval
    batches, per example: what the training model's evaluation measures, and what a full
    fine-tuning trial reports (it was a repeated pass of the first examples in file order,
    padded to the longest of them)."""
    import time

    loop = _lora_loop(tiny_bert, glue_dir, eval_samples=40, eval_batch_size=8)
    task, split = loop.task, loop.data.eval
    clock = [0.0]
    monkeypatch.setattr(time, "perf_counter", lambda: clock[0])
    real = type(task).forward
    shapes = []

    def forward(self, net, batch):
        clock[0] += batch["input_ids"].numel() * 1e-6
        shapes.append(tuple(batch["input_ids"].shape))
        return real(self, net, batch)

    monkeypatch.setattr(type(task), "forward", forward)
    loop.evaluate()
    evaluated = list(shapes)
    shapes.clear()
    figures = deployment_figures(loop, None)
    sorted_batches = [tuple(b["input_ids"].shape) for _, b in loop._eval_batches()]
    assert evaluated == sorted_batches and len(sorted_batches) == 5
    assert shapes[-len(sorted_batches):] == sorted_batches  # after the batch-1 passes
    per_example = statistics.median(width * 1e-3 for _, width in sorted_batches)
    assert loop.eval_ms_per_example == pytest.approx(per_example)
    assert figures["latency_ms_eval_batch"] == pytest.approx(per_example)
    in_file_order = int(split.lengths[:8].max()) * 1e-3
    assert in_file_order > per_example  # what it used to time: more padding


def test_lora_measurement_keeps_no_second_base_and_restores_the_weights(tiny_bert, glue_dir,
                                                                        monkeypatch):
    """The merged model shares every tensor with the training model (the adapted weights
    are merged in place, the base is not copied onto the device); it computes the trial's
    function; afterwards every weight of the training model is bit for bit what it was."""
    loop = _lora_loop(tiny_bert, glue_dir, eval_samples=8, eval_batch_size=8)
    task = loop.task
    batch = task.collate(loop.data, loop.data.eval, np.arange(8))
    loop.model.eval()
    with torch.no_grad():
        expected = task.forward(loop.model, batch)
    loop.model.train()
    before = {k: v.clone() for k, v in loop.model.state_dict().items()}
    storage = {p.data_ptr() for p in loop.model.parameters()}
    real = type(task).forward
    seen = []

    def forward(self, net, one):
        if not seen:
            seen.append(({p.data_ptr() for p in net.parameters()}, real(self, net, batch)))
        return real(self, net, one)

    monkeypatch.setattr(type(task), "forward", forward)
    deployment_figures(loop, None)
    merged_storage, outputs = seen[0]
    assert merged_storage <= storage  # no parameter of its own
    torch.testing.assert_close(outputs, expected, rtol=1e-5, atol=1e-6)
    assert loop.model.state_dict().keys() == before.keys()
    assert all(torch.equal(v, before[k]) for k, v in loop.model.state_dict().items())
    assert loop.model.training
