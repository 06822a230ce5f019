"""One fine-tuning run, one evaluation interval at a time. No Ray in here.

Progress is counted in training samples. Each optimizer step takes the next `batch_size`
samples of the length-grouped stream, split into micro-batches of at most `max_micro_batch`;
each micro-batch's summed loss is divided by the loss units (examples; tagged tokens for
tagging) of the whole batch, so the gradient equals the one of the whole batch however the
units fall across micro-batches. Learning rate and weight decay are set on every step from the
hyperparameters in force: changing them (PBT) or the batch size needs no rebuild.

Evaluation k happens at exactly round(k x eval_every_epochs x len(train)) samples (the last at
the whole budget). A step that would cross an evaluation point is cut at it: that short step of
c < batch_size samples takes the mean gradient of its c samples at lr x c / batch_size, so each
sample moves the weights by the same share as in a full step. `train_loss` is the summed loss of
the interval's loss units over their count (per example; per tagged token for tagging), as
is `eval_loss` over the evaluation set.

Several workers (`world`, training/distributed.py): each rank trains its share of every
step's batch and the gradients are summed over the ranks before the step, so the trial follows
the one-worker trajectory (to float tolerance); progress stays in global samples.

Divergence: a non-finite training loss, `NONFINITE_STEPS_TO_DIVERGE` non-finite gradient norms
in a row (each such step is skipped: no update) or a non-finite eval loss marks the trial
diverged; it reports the worst finite value of every metric and its weights are never
checkpointed. With `keep_diverged` (population-based schedulers) a diverged trial moves to
the next evaluation point without training (and without waiting there) and reports those worst
values there, at every point until the budget, so the scheduler can replace it with a clone of
a healthy trial (schedulers/_rescue.py holds it until then); otherwise it ends.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import statistics
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from safetensors.torch import load_file, load_model, save_file, save_model

from raytune_ft.config import TrainConfig
from raytune_ft.errors import RaytuneFtError
from raytune_ft.plan import Budget, trial_budget
from raytune_ft.training.batching import SampleStream, Split, eval_batches, micro_batches
from raytune_ft.training.distributed import SINGLE, World
from raytune_ft.training.lora import load_trained_state, put_in_force, trained_state
from raytune_ft.training.lr_schedules import (
    PlateauState,
    batch_size_at,
    learning_rate,
    lr_scale_for_batch,
)
from raytune_ft.training.model import is_lora, parameter_groups, train_mode

log = logging.getLogger(__name__)
# Skipped steps with a non-finite gradient norm in a row before a trial counts as diverged:
# one can be a bad batch; several in a row mean the weights or the learning rate are broken.
NONFINITE_STEPS_TO_DIVERGE = 3


class CheckpointError(RaytuneFtError):
    """A checkpoint directory cannot be read."""


@dataclass
class TrainerState:
    """Everything besides weights and optimizer moments that a restore needs."""

    samples_seen: int = 0
    step: int = 0
    seed: int = 0
    reference_batch_size: int = 32
    plateau: PlateauState = field(default_factory=PlateauState)
    diverged: bool = False
    skipped_steps: int = 0  # steps skipped for a non-finite gradient norm, over the run
    nonfinite_streak: int = 0  # of which in a row, up to now
    hyperparameters: dict = field(default_factory=dict)


class LoopTask(Protocol):
    """What the loop asks of a task (`raytune_ft.tasks.Task` implements it): the loop names no
    task and imports none."""

    def collate(self, data: Any, split: Split, indices: np.ndarray) -> dict[str, torch.Tensor]:
        ...

    def forward(self, model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> Any: ...

    def loss(self, outputs: Any, batch: dict[str, torch.Tensor], label_smoothing: float = 0.0
             ) -> torch.Tensor: ...

    def loss_units(self, batch: dict[str, torch.Tensor]) -> int: ...

    def predict_model(self, model: torch.nn.Module, outputs: Any,
                      batch: dict[str, torch.Tensor], data: Any) -> Any: ...

    def compute_metrics(self, data: Any, predictions: list[tuple[np.ndarray, Any]]
                        ) -> dict[str, float]: ...

    def worst(self, metric: str) -> float: ...


class LoopData(Protocol):
    """What the loop reads of the encoded data (`raytune_ft.tasks.DataBundle`)."""

    train: Split
    eval: Split
    metrics: list[str]  # what a trial reports for this data (eval_loss included)


class FineTuneLoop:
    """Train `model` on `data` (encoded by `task`) with hyperparameters `hp`.

    `dropout_seed` (default `hp.seed`) seeds dropout; the data order follows the seed saved in
    the trainer state, which a PBT clone takes from its donor. `keep_diverged`: see above.
    `budget`: the experiment plan's (`raytune_ft.plan`); a loop built without one (tests,
    benchmarks) computes it from `hp` and the data with the same function. `world`: this
    worker's rank among a data-parallel trial's workers (default: the only one).
    """

    def __init__(self, model: torch.nn.Module, data: LoopData, hp: TrainConfig,
                 metric: str = "eval_accuracy", mode: str = "max", device: str = "cpu",
                 dropout_seed: int | None = None, keep_diverged: bool = False,
                 budget: Budget | None = None, world: World = SINGLE, *,
                 task: LoopTask) -> None:
        self.model, self.data, self.metric, self.mode = model.to(device), data, metric, mode
        self.task = task  # collates, computes the loss and the metrics of `data`
        self.world = world
        world.broadcast_parameters(self.model)  # one starting point on every rank
        self.dropout_seed = hp.seed if dropout_seed is None else dropout_seed
        self.keep_diverged = keep_diverged
        self.device = torch.device(device)
        self.n_train = len(data.train)
        if budget is None:
            budget = trial_budget(hp.max_epochs, hp.eval_every_epochs, self.n_train)
        self.budget = budget
        if self.budget.n_train != self.n_train:
            raise RaytuneFtError(f"the plan's budget is for {self.budget.n_train} training "
                                 f"samples, but the data has {self.n_train}")
        self.total_samples = self.budget.total_samples
        self.optimizer = torch.optim.AdamW(parameter_groups(model, hp), lr=hp.learning_rate,
                                           eps=hp.adam_epsilon, betas=(0.9, hp.adam_beta2))
        self._eval_cache: tuple[int | None, list] = (None, [])
        self.eval_ms_per_example: float | None = None  # of the last evaluation
        self.eval_seconds = (0.0, 0.0)  # the last evaluation's, and of it the predictions'
        self.state = TrainerState(seed=hp.seed,
                                  reference_batch_size=hp.reference_batch_size
                                  or batch_size_at(hp, 0.0))
        self.apply_hyperparameters(hp)
        self.autocast_dtype = _autocast_dtype(hp.precision, self.device)
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.autocast_dtype == torch.float16)

    # ------------------------------------------------------------------ hyperparameters

    def apply_hyperparameters(self, hp: TrainConfig) -> None:
        """Put new hyperparameters in force at the current position (PBT explore).

        The optimizer keeps its moments; lr, weight decay and batch size are read from `hp`
        on every step, and batches are cut from the same stream position.
        """
        budget = trial_budget(hp.max_epochs, hp.eval_every_epochs, self.n_train)
        if budget.total_samples != self.total_samples:
            raise RaytuneFtError("train.max_epochs cannot change inside a running trial")
        if budget != self.budget:
            raise RaytuneFtError("train.eval_every_epochs cannot change inside a running trial")
        if is_lora(self.model):  # same adapter shape, the trial's own lora_dropout
            put_in_force(self.model, hp)
        self.hp = hp
        for group in self.optimizer.param_groups:  # lr and weight decay are set every step
            group["eps"] = hp.adam_epsilon
            group["betas"] = (group["betas"][0], hp.adam_beta2)
        self.stream = SampleStream(self.data.train.lengths, self.state.seed,
                                   hp.length_group_window)
        if hp.reference_batch_size:
            self.state.reference_batch_size = hp.reference_batch_size
        self.state.hyperparameters = hp.model_dump(mode="json")

    @property
    def batch_size(self) -> int:
        return batch_size_at(self.hp, self.state.samples_seen / self.total_samples)

    def current_lr(self) -> float:
        """The head group's learning rate at the current position."""
        scale = lr_scale_for_batch(self.hp.lr_scaling, self.batch_size,
                                   self.state.reference_batch_size)
        return learning_rate(self.hp, self.hp.learning_rate * scale, self.state.samples_seen,
                             self.total_samples, self.n_train, self.state.plateau.reductions)

    def _set_group_hyperparameters(self, share: float = 1.0) -> tuple[float, float]:
        """Set every group's lr (x `share` for a short step) and weight decay; return the
        head's scheduled lr and the smallest group lr (both without `share`)."""
        lr = self.current_lr()
        for group in self.optimizer.param_groups:
            group["lr"] = lr * group["lr_scale"] * share
            group["weight_decay"] = self.hp.weight_decay if group["decays"] else 0.0
        return lr, lr * min(g["lr_scale"] for g in self.optimizer.param_groups)

    # ------------------------------------------------------------------ training

    @property
    def finished(self) -> bool:
        diverged_out = self.state.diverged and not self.keep_diverged
        return diverged_out or self.state.samples_seen >= self.total_samples

    def evaluation_point(self, k: int) -> int:
        """Samples seen at evaluation k (1-based): the budget split evenly, the rest last."""
        return self.budget.evaluation_point(k)

    @property
    def evaluations_done(self) -> int:
        """Evaluation points passed: the Tune iteration this position belongs to."""
        return self.budget.evaluations_done(self.state.samples_seen)

    def run_interval(self) -> dict:
        """Train to the next evaluation point, evaluate, and return the metrics."""
        start_samples, started = self.state.samples_seen, time.perf_counter()
        target = self.budget.next_point(start_samples)
        train_mode(self.model, self.hp)  # model.train() with the task's layer policies
        batch_size = self.batch_size
        lr, lr_min = self._set_group_hyperparameters()
        loss_sum, units = 0.0, 0
        while self.state.samples_seen < target and not self.state.diverged:
            batch_size = self.batch_size
            count = min(batch_size, target - self.state.samples_seen)
            lr, lr_min = self._set_group_hyperparameters(share=count / batch_size)
            step_loss, step_units = self._step(self.stream.take(self.state.samples_seen, count))
            loss_sum, units = loss_sum + step_loss, units + step_units
        train_seconds = time.perf_counter() - started
        trained = self.state.samples_seen - start_samples
        if self.state.diverged and self.keep_diverged:
            self.state.samples_seen = target  # to the evaluation point, untrained
        metrics = {} if self.state.diverged else {**self.evaluate(),
                                                   "train_loss": loss_sum / max(units, 1)}
        eval_s, predict_s = self.eval_seconds
        if not math.isfinite(metrics.get("eval_loss", math.nan)):
            if not self.state.diverged:
                log.warning("non-finite eval loss at step %d: trial diverged", self.state.step)
            self.state.diverged = True  # no usable evaluation: report the worst finite values
            metrics = {name: self.task.worst(name)
                       for name in [*self.data.metrics, "train_loss"]}
        metrics.update(
            lr=lr, lr_min_group=lr_min, batch_size=batch_size,
            epoch=self.state.samples_seen / self.n_train,
            samples_seen=self.state.samples_seen, step=self.state.step,
            samples_per_s=trained / train_seconds if trained and train_seconds > 0 else 0.0,
            train_s=train_seconds, eval_s=eval_s, eval_predict_s=predict_s,
            diverged=self.state.diverged, skipped_steps=self.state.skipped_steps,
        )
        self._update_plateau(metrics)
        return metrics

    def _step(self, indices: np.ndarray) -> tuple[float, int]:
        """One optimizer step over `indices`; returns the batch's summed loss and its units.

        A non-finite loss diverges the trial at once; a non-finite gradient norm (without an
        fp16 loss scaler, which skips such steps itself) skips the update, and
        `NONFINITE_STEPS_TO_DIVERGE` of them in a row diverge it.
        """
        # Random draws come from generators seeded by position: a restore continues bit for
        # bit. Collating (a task's augmentation) draws the same numbers for every micro-batch
        # and every worker, so a sample is augmented alike however the batch is split;
        # dropout then draws per worker (rank 0: one worker's masks).
        step_seed = _seed(self.dropout_seed, self.state.samples_seen)
        self.optimizer.zero_grad(set_to_none=True)
        total = torch.zeros((), device=self.device)  # summed on the device: one sync per step
        task = self.task
        share, parts = self.world.share(indices), []
        for part in micro_batches(share, self.hp.max_micro_batch) if len(share) else []:
            torch.manual_seed(step_seed)
            parts.append(task.collate(self.data, self.data.train, part))
        rank = [self.world.rank] if self.world.rank else []
        torch.manual_seed(_seed(self.dropout_seed, self.state.samples_seen, *rank))
        units = sum(int(task.loss_units(part)) for part in parts)  # host tensors: no sync
        if self.world.distributed:  # the whole batch's units, before any backward
            units = int(self.world.sum_(torch.tensor(units, device=self.device)))
        for part in parts:
            batch = {k: v.to(self.device) for k, v in part.items()}
            with self._autocast():
                outputs = task.forward(self.model, batch)
            # summed: weighted by the micro-batch's share
            loss = task.loss(outputs, batch, self.hp.label_smoothing)
            self.scaler.scale(loss / max(units, 1)).backward()
            total += loss.detach()
        params = [p for g in self.optimizer.param_groups for p in g["params"]]
        if self.world.distributed:  # the big batch's gradient and loss on every rank
            self.world.sum_gradients(params)
            self.world.sum_(total)
        self.scaler.unscale_(self.optimizer)
        grad_norm = torch.nn.utils.get_total_norm([p.grad for p in params if p.grad is not None])
        loss_sum, norm = torch.stack([total, grad_norm.to(total.device)]).tolist()
        if not math.isfinite(loss_sum):
            self.state.diverged = True
            log.warning("non-finite loss at step %d: trial diverged", self.state.step)
            return loss_sum, units
        self.state.samples_seen += len(indices)
        if not math.isfinite(norm) and not self.scaler.is_enabled():
            self.optimizer.zero_grad(set_to_none=True)
            self.state.skipped_steps += 1
            self.state.nonfinite_streak += 1
            log.warning("non-finite gradient norm at step %d: update skipped (%d in a row)",
                        self.state.step, self.state.nonfinite_streak)
            if self.state.nonfinite_streak >= NONFINITE_STEPS_TO_DIVERGE:
                self.state.diverged = True
                log.warning("%d non-finite gradient norms in a row: trial diverged",
                            self.state.nonfinite_streak)
            return loss_sum, units
        self.state.nonfinite_streak = 0
        if self.hp.max_grad_norm:
            torch.nn.utils.clip_grads_with_norm_(params, self.hp.max_grad_norm, grad_norm)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.world.broadcast_buffers(self.model)  # running statistics: rank 0's, as DDP
        self.state.step += 1
        return loss_sum, units

    def _autocast(self):
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.autocast_dtype)

    def _update_plateau(self, metrics: dict) -> None:
        if self.hp.schedule == "plateau" and not self.state.diverged:
            value = metrics.get(self.metric)
            if value is not None:
                self.state.plateau.update(value, self.mode, self.hp.plateau_patience,
                                          self.hp.plateau_threshold)

    # ------------------------------------------------------------------ evaluation

    @torch.no_grad()
    def evaluate(self) -> dict:
        self.model.eval()
        task = self.task
        predictions, loss_sum, units, ms_per_example = [], 0.0, 0, []
        evaluating, predict_s = time.perf_counter(), 0.0
        for indices, collated, predicted, loss, ms, predicting in self.eval_passes(self.model):
            loss_sum += loss
            ms_per_example.append(ms)
            predict_s += predicting
            units += int(task.loss_units(collated))
            predictions.append((indices, predicted))
        # the deployment figures' latency at the eval batch (training/deployment.py)
        self.eval_ms_per_example = statistics.median(ms_per_example) if ms_per_example \
            else None
        self.eval_seconds = (time.perf_counter() - evaluating, predict_s)  # this rank's
        if self.world.distributed:  # every rank: the whole evaluation set's figures
            totals = self.world.sum_(torch.tensor([loss_sum, units], dtype=torch.float64,
                                                  device=self.device))
            loss_sum, units = totals[0].item(), int(totals[1].item())
            predictions = [p for part in self.world.gather(predictions) for p in part]
        scores = task.compute_metrics(self.data, predictions)
        # only what the task reports for this data (its bundle lists it)
        return {"eval_loss": loss_sum / max(units, 1),
                **{k: v for k, v in scores.items() if k in self.data.metrics}}

    def eval_passes(self, model: torch.nn.Module) -> Iterator[tuple]:
        """Every eval batch through `model` (in the caller's eval mode, without gradients):
        (indices, host batch, predictions, summed loss, ms per example, seconds predicting),
        each pass timed from the host batch to its predictions (a generating task decodes
        there). `evaluate` passes the loop's model; the deployment figures time a LoRA
        trial's merged model with the same passes, so both kinds of trial report the same
        measurement (training/deployment.py)."""
        task = self.task
        for indices, collated in self._eval_batches():
            started = time.perf_counter()
            batch = {k: v.to(self.device) for k, v in collated.items()}
            with self._autocast():
                outputs = task.forward(model, batch)
            loss = task.loss(outputs, batch).item()  # smoothing 0: the true NLL
            predicting = time.perf_counter()
            with self._autocast():
                predicted = task.predict_model(model, outputs, batch, self.data)
            done = time.perf_counter()
            ms = (done - started) * 1000 / len(indices)
            yield indices, collated, predicted, loss, ms, done - predicting

    def _eval_batches(self) -> list[tuple[np.ndarray, dict[str, torch.Tensor]]]:
        """The evaluation set (this rank's deal of it), sorted by length and collated once
        per eval batch size."""
        size = self.hp.eval_batch_size
        if self._eval_cache[0] != size:
            split = self.data.eval
            self._eval_cache = (size, [(i, self.task.collate(self.data, split, i))
                                       for i in self.world.deal(eval_batches(split, size))])
        return self._eval_cache[1]

    # ------------------------------------------------------------------ checkpoints

    def save(self, directory: str | Path) -> None:
        """Write model.safetensors, optimizer.pt and trainer_state.json (DESIGN.md). With LoRA
        model.safetensors holds what trains only (adapters, head): the base is never written."""
        directory = Path(directory)
        if self.state.diverged or not all(torch.isfinite(p).all() for p in
                                           self.model.parameters()):
            raise CheckpointError("refusing to checkpoint non-finite weights (trial diverged)")
        directory.mkdir(parents=True, exist_ok=True)
        if is_lora(self.model):
            save_file(trained_state(self.model), str(directory / "model.safetensors"))
        else:
            save_model(self.model, str(directory / "model.safetensors"))
        torch.save(self.optimizer.state_dict(), directory / "optimizer.pt")
        state = asdict(self.state)
        state.update(epoch=self.state.samples_seen / self.n_train,
                     total_samples=self.total_samples)
        if self.scaler.is_enabled():  # fp16 loss scale: a restore continues with it
            state["grad_scaler"] = self.scaler.state_dict()
        (directory / "trainer_state.json").write_text(json.dumps(state, indent=1))

    def load(self, directory: str | Path) -> None:
        """Continue from a checkpoint; the hyperparameters in force stay this loop's own."""
        directory = Path(directory)
        try:
            state = json.loads((directory / "trainer_state.json").read_text())
            plateau = PlateauState(**state.pop("plateau"))
            weights = str(directory / "model.safetensors")
            if is_lora(self.model):  # the adapters and head; the base is the model's own
                missing, unexpected = load_trained_state(self.model, load_file(weights))
            else:
                missing, unexpected = load_model(self.model, weights, strict=False)
            # On the CPU: load_state_dict moves the moments to the parameters' device and
            # keeps AdamW's step counters on the host (on the GPU they cost a sync each).
            optimizer_state = torch.load(directory / "optimizer.pt", weights_only=True,
                                         map_location="cpu")
            # Every group setting (lr, eps, betas, weight decay, layer-decay scale, decay
            # flag) is this trial's own; the checkpoint gives only the moments.
            own = [{k: v for k, v in g.items() if k != "params"}
                   for g in self.optimizer.param_groups]
            self.optimizer.load_state_dict(optimizer_state)
            for group, settings in zip(self.optimizer.param_groups, own):
                group.update(settings)
        except Exception as error:  # noqa: BLE001 - any unreadable part makes it unusable
            raise CheckpointError(f"checkpoint {directory} cannot be read: "
                                  f"{type(error).__name__}: {error}") from None
        if missing or unexpected:
            raise CheckpointError(f"checkpoint {directory} does not match the model: missing "
                                  f"{sorted(missing)[:5]}, unexpected {sorted(unexpected)[:5]}")
        if self.scaler.is_enabled() and "grad_scaler" in state:
            self.scaler.load_state_dict(state["grad_scaler"])
        known = {k: v for k, v in state.items() if k in TrainerState.__dataclass_fields__}
        # A streak of non-finite gradients is the donor's, not this trial's next step's.
        self.state = TrainerState(**{**known, "plateau": plateau, "nonfinite_streak": 0})
        self.apply_hyperparameters(self.hp)


def _seed(*key: int) -> int:
    return int(np.random.SeedSequence(list(key)).generate_state(1)[0])


def _autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    if device.type != "cuda" or precision == "fp32":
        return None
    if precision == "fp16":
        return torch.float16
    if precision == "bf16" or torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float16
