"""Deployment figures of a trial's model: parameter counts, checkpoint and model size on
disk, and inference latency on the trial's own device. No Ray in here.

Latency is a median of warm inference passes (the forward pass and the task's predictions
from it: an argmax, or for a generating task the decoding with the trial's generation
settings, so for seq2seq it is generation time) with the loop's precision, on real
evaluation examples, per example (ms per pass / batch size): at batch 1 over `B1_REPEATS`
timed passes after `WARMUP` untimed ones (the first eval examples, one per pass, so the
median covers their lengths), in inference mode; at the eval batch over the trial's eval
batches (length-sorted batches of `train.eval_batch_size`), each timed from the host batch
to its predictions as the trial evaluates (`FineTuneLoop.eval_passes`). For the loop's own
model that is its last evaluation, so it costs no extra pass; a loop not evaluated yet, or a
LoRA trial's merged model, makes one pass over the eval batches.

A trial measures once, after its first evaluation (the model is built and warm then): the
weights change during training but not the shapes, so the figures hold for the whole trial,
and a trial a scheduler stops early carries them like one that runs its budget.

The figures describe the model `export` ships. With LoRA that is the base with the adapters
merged in (a plain transformers model): `param_count` and both latencies are measured on the
merged model (`shipped_model`: it shares the training model's tensors, merges into the
adapted weights in place and restores them bit for bit), so they leave out the adapters and
peft's second copy of the head, and time the merged graph. `trainable_param_count` stays what
the trial trains (adapters and head), and `model_mb` what its checkpoint holds of the model
(what `export --adapter` writes).
"""

from __future__ import annotations

import contextlib
import copy
import itertools
import os
import statistics
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

WARMUP = 3  # untimed passes first: allocator, kernels, caches
B1_REPEATS = 20  # timed passes at batch 1


def parameter_counts(model: torch.nn.Module) -> tuple[int, int]:
    """(every parameter, those that train): shared tensors counted once."""
    seen, total, trainable = set(), 0, 0
    for parameter in model.parameters():
        if id(parameter) in seen:
            continue
        seen.add(id(parameter))
        total += parameter.numel()
        trainable += parameter.numel() if parameter.requires_grad else 0
    return total, trainable


def folder_mb(directory: str | os.PathLike) -> float:
    """Bytes of every file under `directory`, in 10^6 bytes, to the kB: checkpoints of the
    same shape differ by a few bytes of trainer state, which no Pareto front should weigh."""
    return round(sum(p.stat().st_size for p in Path(directory).rglob("*") if p.is_file())
                 / 1e6, 3)


def device_name(device: torch.device) -> str:
    """"cpu", or "cuda:0 NVIDIA H200" (the GPU's name beside its index)."""
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        return f"cuda:{index} {torch.cuda.get_device_name(index)}"
    return device.type


def median_ms_per_example(run, batch_size: int, repeats: int, device: torch.device) -> float:
    """Median wall ms of `run(i)` over `repeats` timed calls after WARMUP, / batch_size."""
    for i in range(WARMUP):
        run(i)
    times = []
    for i in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        run(i)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append((time.perf_counter() - start) * 1000.0)
    return statistics.median(times) / batch_size


@contextlib.contextmanager
def shipped_model(model: torch.nn.Module) -> Iterator[torch.nn.Module]:
    """The model `export` writes, for the `with` block: a LoRA model merged (the plain
    transformers graph merge_and_unload gives), else `model` itself.

    The merged model costs no second base on the device: it is a copy of the module tree
    that shares every tensor with `model`, and the adapters are merged into the shared
    adapted weights in place. Those weights are set aside on the host first and copied back
    on leaving, so the training model is bit for bit what it was (subtracting the update
    again would not restore fp32 weights exactly).
    """
    from raytune_ft.training.model import is_lora

    if not is_lora(model):
        yield model
        return
    from peft.tuners.tuners_utils import BaseTunerLayer

    adapted = [layer.get_base_layer().weight for layer in model.modules()
               if isinstance(layer, BaseTunerLayer)]
    aside = [weight.detach().to("cpu", copy=True) for weight in adapted]
    shared = {id(t): t for t in itertools.chain(model.parameters(), model.buffers())}
    try:
        with torch.no_grad():
            merged = copy.deepcopy(model, shared).merge_and_unload()
        yield merged.eval()
    finally:
        with torch.no_grad():
            for weight, saved in zip(adapted, aside):
                weight.copy_(saved)


def _infer(task, model: torch.nn.Module, batch: dict, data):
    """One inference pass as the evaluation makes it: the forward pass and the task's
    predictions from it (a generating task: decoding, after its teacher-forced pass)."""
    return task.predict_model(model, task.forward(model, batch), batch, data)


def measure_latency(loop, model: torch.nn.Module | None = None) -> dict:
    """Median ms per example at batch 1 and at the eval batch of `model` (default: the loop's
    own, whose last evaluation gives the eval-batch figure), on a `FineTuneLoop`'s data and
    device. Any other model (a LoRA trial's merged one), or a loop not evaluated yet, is
    timed over the loop's eval batches as its evaluation times them."""
    task, data, device = loop.task, loop.data, loop.device
    model = loop.model if model is None else model
    split = data.eval
    n = len(split)
    singles = [task.collate(data, split, np.array([i % n])) for i in range(B1_REPEATS)]
    on_device = [{k: v.to(device) for k, v in one.items()} for one in singles]
    at_batch = loop.eval_ms_per_example if model is loop.model else None
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode(), loop._autocast():
            b1 = median_ms_per_example(
                lambda i: _infer(task, model, on_device[i % B1_REPEATS], data), 1, B1_REPEATS,
                device)
        if at_batch is None:
            with torch.no_grad():  # as `evaluate` runs them
                at_batch = statistics.median(ms for *_, ms, _ in loop.eval_passes(model))
    finally:
        model.train(was_training)
    return {"latency_ms_b1": b1, "latency_ms_eval_batch": at_batch,
            "latency_eval_batch": min(loop.hp.eval_batch_size, n),
            "latency_threads": torch.get_num_threads(),
            "latency_device": device_name(device)}


def model_mb(checkpoint_dir: str | os.PathLike) -> float:
    """The saved weights alone, in 10^6 bytes: the checkpoint's model.safetensors, without
    the optimizer's moments and trainer state. It is what `export` ships: the whole model
    after full fine-tuning; with LoRA what trains (adapters and head), as `--adapter` writes
    it (a merged export is the base model's size)."""
    return round((Path(checkpoint_dir) / "model.safetensors").stat().st_size / 1e6, 3)  # kB


def deployment_figures(loop, checkpoint_dir: str | os.PathLike | None) -> dict:
    """Every figure of `training.metrics.DEPLOYMENT_METRICS` (and the device) for a loop
    whose checkpoint was written to `checkpoint_dir` (None: no checkpoint, no sizes).
    `checkpoint_mb` is the training state (weights, Adam moments, trainer state): what a
    search keeps on disk per trial; `model_mb` the weights a deployment ships."""
    with shipped_model(loop.model) as shipped:
        total, _ = parameter_counts(shipped)
        latency = measure_latency(loop, shipped)
    _, trainable = parameter_counts(loop.model)
    saved = checkpoint_dir is not None
    return {"param_count": total, "trainable_param_count": trainable,
            "checkpoint_mb": folder_mb(checkpoint_dir) if saved else None,
            "model_mb": model_mb(checkpoint_dir) if saved else None, **latency}
