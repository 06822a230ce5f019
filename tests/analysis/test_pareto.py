"""Pareto fronts: the mask against a brute-force check, and which trials are candidates."""

from __future__ import annotations

import itertools

import numpy as np
import pandas as pd
import pytest

from raytune_ft.analysis._pareto import front, pareto_column, pareto_mask


def brute_force(values: np.ndarray, modes: list[str]) -> list[bool]:
    """Row i is on the front unless some row j is no worse everywhere and better somewhere."""
    better = {"max": lambda a, b: a > b, "min": lambda a, b: a < b}
    out = []
    for i, row in enumerate(values):
        dominated = False
        for j, other in enumerate(values):
            if j == i:
                continue
            no_worse = all(not better[m](row[k], other[k]) for k, m in enumerate(modes))
            strictly = any(better[m](other[k], row[k]) for k, m in enumerate(modes))
            dominated |= no_worse and strictly
        out.append(not dominated)
    return out


@pytest.mark.parametrize("modes", [["max", "min"], ["min", "min"], ["max", "min", "max"]])
def test_mask_matches_brute_force(modes):
    rng = np.random.default_rng(7)
    for trial in range(30):
        # few distinct values: ties and duplicates happen often
        values = rng.integers(0, 5, size=(int(rng.integers(1, 25)), len(modes))).astype(float)
        assert pareto_mask(values, modes).tolist() == brute_force(values, modes), trial


def test_two_objectives_known_front():
    values = np.array([[0.9, 5.0], [0.8, 2.0], [0.85, 6.0], [0.7, 1.0], [0.9, 5.0]])
    # (0.85, 6) is beaten by (0.9, 5); the duplicates (0.9, 5) do not dominate each other
    assert pareto_mask(values, ["max", "min"]).tolist() == [True, True, False, True, True]


def test_only_normally_ended_trials_with_every_objective_are_candidates():
    trials = pd.DataFrame({
        "trial_id": ["a", "b", "c", "d", "e"],
        "status": ["terminated", "stopped", "errored", "terminated", "diverged"],
        "obj_eval_accuracy": [0.8, 0.7, 0.99, 0.95, 0.99],
        "obj_latency_ms_b1": [2.0, 1.0, 0.1, None, 0.1],
    })
    goals = [("eval_accuracy", "max"), ("latency_ms_b1", "min")]
    column = pareto_column(trials, goals)
    assert column.tolist() == [True, True, None, None, None]
    trials["pareto"] = column
    assert front(trials, goals)["trial_id"].tolist() == ["a", "b"]  # best accuracy first


def test_one_objective_front_is_the_tied_best():
    trials = pd.DataFrame({"trial_id": list("abc"), "status": ["terminated"] * 3,
                           "obj_eval_loss": [0.3, 0.2, 0.2]})
    assert pareto_column(trials, [("eval_loss", "min")]).tolist() == [False, True, True]


def test_brute_force_helper_agrees_on_every_small_case():
    """The front of every 3-point set on a 3x3 grid (both directions)."""
    grid = list(itertools.product(range(3), range(3)))
    for points in itertools.combinations(grid, 3):
        values = np.array(points, dtype=float)
        assert pareto_mask(values, ["max", "min"]).tolist() == brute_force(values,
                                                                           ["max", "min"])


def test_the_report_draws_two_objectives_as_a_joined_front_and_more_as_coordinates():
    from raytune_ft.analysis._plots import pareto_front

    trials = pd.DataFrame({
        "trial_id": list("abcde"), "status": ["terminated"] * 5,
        "obj_eval_accuracy": [0.9, 0.8, 0.85, 0.7, 0.6],
        "obj_latency_ms_b1": [5.0, 2.0, 6.0, 1.0, 7.0],
        "obj_checkpoint_mb": [90.0, 80.0, 10.0, 95.0, 99.0]})
    two = [("eval_accuracy", "max"), ("latency_ms_b1", "min")]
    trials["pareto"] = pareto_column(trials, two)
    fig = pareto_front(trials, two)
    dominated, joined = fig.data
    assert list(dominated.customdata) == ["c", "e"] and joined.mode == "lines+markers"
    assert list(joined.customdata) == ["d", "b", "a"]  # joined in order of the x objective
    three = [*two, ("checkpoint_mb", "min")]
    trials["pareto"] = pareto_column(trials, three)  # c is now best on size
    fig = pareto_front(trials, three)
    (coords,) = fig.data
    assert coords.type == "parcoords"
    assert [d.label for d in coords.dimensions][:3] == [
        "eval_accuracy (max)", "latency_ms_b1 (min)", "checkpoint_mb (min)"]
    assert list(coords.line.color) == [1, 1, 1, 1, 0]  # e is dominated on all three
