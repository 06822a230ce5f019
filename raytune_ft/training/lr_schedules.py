"""Learning-rate and batch-size schedules as pure functions of training progress.

Progress is counted in samples (DESIGN.md): `t` below is in epochs, `samples_seen / n_train`,
so a batch-size change never moves the schedule. Warmup (linear from 0) comes first where
`warmup_ratio > 0`; the decay schedules then start at the end of warmup, so with no warmup they
are exactly the closed forms in DESIGN.md:

    step         lr0 * gamma ** floor(t / s)
    cosine       lr_min + (lr0 - lr_min) * (1 + cos(pi * t / T)) / 2
    exponential  lr0 * gamma ** t
    linear       lr0 * (1 - t / T)
    constant     lr0
    plateau      lr0 * factor ** reductions   (reductions counted by `PlateauState`)

These are the head group's rates; every other group runs at the head's rate times its
layer-decay scale, so the cosine floor `lr_min` is the head's floor and a group of scale s
floors at s * lr_min.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from raytune_ft.config import TrainConfig


def learning_rate(hp: TrainConfig, base_lr: float, samples_seen: int, total_samples: int,
                  n_train: int, plateau_reductions: int = 0) -> float:
    """The head learning rate in force at `samples_seen`, for a base rate `base_lr`."""
    progress = samples_seen / total_samples
    if progress < hp.warmup_ratio:
        return base_lr * progress / hp.warmup_ratio
    t = (samples_seen - hp.warmup_ratio * total_samples) / n_train  # epochs after warmup
    horizon = (1.0 - hp.warmup_ratio) * total_samples / n_train  # epochs of decay
    if hp.schedule == "linear":
        return base_lr * max(0.0, 1.0 - t / horizon)
    if hp.schedule == "constant":
        return base_lr
    if hp.schedule == "cosine":
        lr_min = min(hp.lr_min, base_lr)
        return lr_min + 0.5 * (base_lr - lr_min) * (1.0 + math.cos(math.pi * min(t / horizon, 1)))
    if hp.schedule == "step":
        return base_lr * hp.gamma ** math.floor(t / hp.step_epochs + 1e-12)
    if hp.schedule == "exponential":
        return base_lr * hp.gamma ** t
    if hp.schedule == "plateau":
        return base_lr * hp.plateau_factor ** plateau_reductions
    raise ValueError(f"train.schedule: {hp.schedule!r} is unknown")


def batch_size_at(hp: TrainConfig, progress: float) -> int:
    """The effective batch size in force at `progress` (fraction of the budget)."""
    if not hp.batch_schedule:
        return hp.batch_size
    size = hp.batch_schedule[0][1]
    for start, phase_size in hp.batch_schedule:
        if progress + 1e-12 >= start:
            size = phase_size
    return size


def lr_scale_for_batch(rule: str, batch_size: int, reference_batch_size: int) -> float:
    """`train.lr_scaling`: how the base lr follows the batch size away from its reference."""
    ratio = batch_size / reference_batch_size
    if rule == "linear":
        return ratio
    if rule == "sqrt":
        return math.sqrt(ratio)
    return 1.0


@dataclass
class PlateauState:
    """Reduce-on-plateau bookkeeping: the only state a schedule holds (checkpointed)."""

    best: float | None = None
    bad_evaluations: int = 0
    reductions: int = 0

    def update(self, value: float, mode: str, patience: int, threshold: float) -> bool:
        """Record one evaluation; return True when the learning rate is reduced."""
        improved = self.best is None or (
            value > self.best + threshold if mode == "max" else value < self.best - threshold
        )
        if improved:
            self.best, self.bad_evaluations = value, 0
            return False
        self.bad_evaluations += 1
        if self.bad_evaluations >= patience:
            self.reductions += 1
            self.bad_evaluations = 0
            return True
        return False

    def to_dict(self) -> dict:
        return asdict(self)
