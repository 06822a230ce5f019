"""Every schedule against its closed form (exact to 1e-9), warmup, steps and plateau."""

import math

import pytest

from raytune_ft.config import TrainConfig
from raytune_ft.training.lr_schedules import (
    PlateauState,
    batch_size_at,
    learning_rate,
    lr_scale_for_batch,
)

N = 1000  # samples per epoch
LR = 1e-4


def lr_at(epochs: float, max_epochs: float = 4.0, **settings) -> float:
    hp = TrainConfig(max_epochs=max_epochs, **settings)
    return learning_rate(hp, LR, round(epochs * N), round(max_epochs * N), N)


@pytest.mark.parametrize("t", [0.0, 0.5, 1.0, 1.999, 2.0, 3.5])
def test_step_schedule(t):
    assert lr_at(t, schedule="step", gamma=0.3, step_epochs=2.0) == pytest.approx(
        LR * 0.3 ** math.floor(t / 2.0), abs=1e-15, rel=1e-9)


@pytest.mark.parametrize("t", [0.0, 1.0, 2.0, 3.0, 4.0])
def test_cosine_schedule(t):
    expected = 1e-6 + 0.5 * (LR - 1e-6) * (1 + math.cos(math.pi * t / 4.0))
    assert lr_at(t, schedule="cosine", lr_min=1e-6) == pytest.approx(expected, rel=1e-9)


@pytest.mark.parametrize("t", [0.0, 0.25, 1.5, 4.0])
def test_exponential_schedule(t):
    assert lr_at(t, schedule="exponential", gamma=0.7) == pytest.approx(LR * 0.7 ** t, rel=1e-9)


@pytest.mark.parametrize("t", [0.0, 1.0, 3.0, 4.0])
def test_linear_and_constant(t):
    assert lr_at(t, schedule="linear") == pytest.approx(LR * (1 - t / 4.0), abs=1e-15)
    assert lr_at(t, schedule="constant") == LR


def test_warmup_then_decay_starts_from_warmup_end():
    # 10% of 4 epochs = 0.4 epoch of warmup from 0 to LR, then linear decay to 0 over 3.6.
    assert lr_at(0.0, warmup_ratio=0.1) == 0.0
    assert lr_at(0.2, warmup_ratio=0.1) == pytest.approx(LR * 0.5, rel=1e-9)
    assert lr_at(0.4, warmup_ratio=0.1) == pytest.approx(LR, rel=1e-9)
    assert lr_at(2.2, warmup_ratio=0.1) == pytest.approx(LR * 0.5, rel=1e-9)
    # step boundaries are measured from the end of warmup
    assert lr_at(1.399, warmup_ratio=0.1, schedule="step", gamma=0.5) == pytest.approx(LR)
    assert lr_at(1.4, warmup_ratio=0.1, schedule="step", gamma=0.5) == pytest.approx(LR / 2)


def test_plateau_reduces_after_patience_evaluations_without_improvement():
    state = PlateauState()
    scripted = [0.50, 0.60, 0.60, 0.59, 0.61, 0.61, 0.61, 0.70]
    reductions = []
    for value in scripted:
        state.update(value, "max", patience=2, threshold=1e-4)
        reductions.append(state.reductions)
    assert reductions == [0, 0, 0, 1, 1, 1, 2, 2]
    hp = TrainConfig(schedule="plateau", plateau_factor=0.5, max_epochs=4)
    assert learning_rate(hp, LR, 1500, 4000, N, state.reductions) == pytest.approx(LR * 0.25)


def test_plateau_in_min_mode_and_round_trip():
    state = PlateauState()
    for value in [1.0, 0.9, 0.95, 0.91]:
        state.update(value, "min", patience=2, threshold=0.0)
    assert state.reductions == 1
    assert PlateauState(**state.to_dict()) == state


def test_batch_schedule_phases_and_lr_scaling():
    hp = TrainConfig(batch_schedule=[(0.0, 16), (0.5, 64)])
    assert [batch_size_at(hp, p) for p in (0.0, 0.49, 0.5, 0.9)] == [16, 16, 64, 64]
    assert batch_size_at(TrainConfig(batch_size=24), 0.7) == 24
    assert lr_scale_for_batch("linear", 64, 16) == 4.0
    assert lr_scale_for_batch("sqrt", 64, 16) == 2.0
    assert lr_scale_for_batch("none", 64, 16) == 1.0
