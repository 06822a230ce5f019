"""PBT and PB2 as raytune_ft builds them (tuning/population.py), through the real Tuner: a
diverged member is rescued whatever order the results arrive in, and the exploit log names
the iterations the decisions used.

The members are a small function trainable that checkpoints every iteration (its loss, the
iteration, which trial wrote the checkpoint); a learning rate above 1 diverges at the first
iteration, as the loop does: the worst values, no checkpoint, on to the next evaluation
point. Marker files order the members where a test needs an order.
"""

from __future__ import annotations

import dataclasses
import json
import sys
import tempfile
import time
import uuid
from pathlib import Path

import pytest
from ray import tune

from raytune_ft.config import validate_config
from raytune_ft.tuning.runner import tune_settings

ITERATIONS = 4


@pytest.fixture(scope="module", autouse=True)
def ray_for_module(ray_local):
    from ray import cloudpickle

    # `member` lives in this test module, which Ray's workers cannot import: by value
    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    yield


def member(config):
    """`config["after"]`: learning rate -> a marker file that member waits for before its
    first report; `config["pace"]`: learning rate -> seconds per iteration. A member writes
    `<marks>/<its learning rate>_diverged` when it diverges; `Ended` marks a member's end."""
    marks = Path(config["marks"])
    checkpoint = tune.get_checkpoint()
    state = {"iteration": 0, "loss": 1.0, "owner": tune.get_context().get_trial_id()}
    restored = None
    if checkpoint is not None:
        with checkpoint.as_directory() as directory:
            state = json.loads((Path(directory) / "state.json").read_text())
        restored = dict(state)
    attempt, lr = uuid.uuid4().hex, config["learning_rate"]
    after, waited = config.get("after", {}).get(lr), time.monotonic()
    while after and not (marks / after).exists():
        if time.monotonic() > waited + 300:
            raise TimeoutError(f"{after} never appeared")
        time.sleep(0.05)
    while state["iteration"] < ITERATIONS:
        time.sleep(config.get("pace", {}).get(lr, 0.0))  # (PB2 drops empty dicts)
        state["iteration"] += 1
        about = {"attempt": attempt, "restored_from": restored}
        if lr > 1:  # diverged: the worst values, never a checkpoint
            (marks / f"{lr}_diverged").write_text("")
            tune.report({"eval_loss": 1e9, "diverged": True, **about})
            continue
        state["loss"] = round(state["loss"] * (1 - lr), 12)
        state["owner"] = tune.get_context().get_trial_id()
        with tempfile.TemporaryDirectory() as directory:
            (Path(directory) / "state.json").write_text(json.dumps(state))
            tune.report({"eval_loss": state["loss"], "diverged": False, **about},
                        checkpoint=tune.Checkpoint.from_directory(directory))


class Ended(tune.Callback):
    """Writes `<marks>/<learning rate>_ended` once Tune has ended a member."""

    def __init__(self, marks: Path) -> None:
        self.marks = marks

    def on_trial_complete(self, iteration, trials, trial, **info) -> None:
        (self.marks / f"{trial.config['learning_rate']}_ended").write_text("")


def population(tmp_path, kind: str, rates: list[float], after: dict | None = None,
               pace: dict | None = None, quantile: float = 0.5,
               cpus: float = 0.5) -> tuple[Path, dict[float, list]]:
    """Run one member per learning rate under the PBT or PB2 `raytune-ft tune` builds
    (weight_decay is the mutation); the experiment and each member's results by rate."""
    config = validate_config({
        "name": "pop", "model": {"name": "m"}, "data": {"task": "sst2"},
        "metric": "eval_loss", "mode": "min", "train": {"max_epochs": ITERATIONS},
        "search": {"learning_rate": {"grid": rates}, "weight_decay": {"uniform": [0.0, 0.1]}},
        "scheduler": {"type": kind, "perturbation_interval": 1, "quantile_fraction": quantile,
                      "mutations": ["weight_decay"]},
        "search_alg": {"type": "grid", "seed": 0}, "resources": {"cpus_per_trial": cpus},
        "run": {"num_samples": 1, "verbose": 0}})
    marks = tmp_path / "marks"
    marks.mkdir()
    tune_config, run_config = tune_settings(config, str(tmp_path / "pop"))
    run_config = dataclasses.replace(run_config, callbacks=[*run_config.callbacks,
                                                            Ended(marks)])
    space = {"learning_rate": tune.grid_search(rates), "weight_decay": tune.uniform(0, 0.1),
             "marks": str(marks), "after": after or {}, "pace": pace or {}}
    results = tune.Tuner(tune.with_resources(member, {"cpu": cpus}), param_space=space,
                         tune_config=tune_config, run_config=run_config).fit()
    assert not results.errors
    rows = {}
    for trial in (tmp_path / "pop").iterdir():
        if (trial / "result.json").is_file():
            lines = [json.loads(x) for x in (trial / "result.json").read_text().splitlines()]
            rows[lines[0]["config"]["learning_rate"]] = lines  # its rate before any clone
    return tmp_path / "pop", rows


def exploits(experiment: Path) -> list[list]:
    log = experiment / "pbt_global.txt"
    return [json.loads(x) for x in log.read_text().splitlines()] if log.is_file() else []


def check_rescued(rows: list[dict], donor_rows: list[dict], cloned_at: int) -> None:
    """Diverged at 1, then the donor's checkpoint at `cloned_at` trained on to the budget."""
    assert rows[0]["diverged"] is True and rows[0]["training_iteration"] == 1
    assert 1 <= cloned_at < ITERATIONS
    healthy = [r for r in rows if not r["diverged"]]
    assert [r["training_iteration"] for r in healthy] == list(range(cloned_at + 1,
                                                                    ITERATIONS + 1))
    assert all(not r["diverged"] for r in rows[rows.index(healthy[0]):])
    assert healthy[0]["restored_from"]["iteration"] == cloned_at
    assert healthy[0]["restored_from"]["owner"] == donor_rows[0]["trial_id"]
    assert healthy[0]["config"]["learning_rate"] == donor_rows[0]["config"]["learning_rate"]


@pytest.mark.parametrize("kind", ["pbt", "pb2"])
def test_a_diverged_member_clones_a_member_that_has_finished(tmp_path, kind):
    # The healthy member ends before the sick one reports: Ray's PBT ranks finished trials
    # no more, so the sick one idled to its budget, diverged. Its newest checkpoint before
    # the last iteration is the one to clone (a clone of the final one has nothing to train).
    experiment, rows = population(tmp_path, kind, [0.1, 1e30], after={1e30: "0.1_ended"})
    check_rescued(rows[1e30], rows[0.1], cloned_at=ITERATIONS - 1)
    sick, healthy = rows[1e30][0]["trial_id"], rows[0.1][0]["trial_id"]
    (logged,) = exploits(experiment)
    # [target tag, donor tag, target iteration, donor iteration, ...]: the result it was
    # decided on (the sick member's first) and the checkpoint cloned (the donor's 3rd)
    assert logged[0].startswith("1_") and logged[1].startswith("0_") and sick != healthy
    assert logged[2:4] == [1, ITERATIONS - 1]


def test_a_member_that_diverges_first_waits_for_a_healthy_checkpoint(tmp_path):
    # The sick member reports before any checkpoint exists; the healthy one starts only then
    # (and takes its time). Ray's PBT ranked the sick one alone, found no partner, and it
    # idled on to its budget. Which checkpoint it clones depends on when the healthy one
    # has written one; that it is rescued does not.
    _, rows = population(tmp_path, "pbt", [0.1, 1e30], after={0.1: "1e+30_diverged"},
                         pace={0.1: 0.3})
    healthy = [r for r in rows[1e30] if not r["diverged"]]
    assert healthy, [r["diverged"] for r in rows[1e30]]
    check_rescued(rows[1e30], rows[0.1], healthy[0]["restored_from"]["iteration"])


def test_members_with_no_healthy_member_left_end_diverged(tmp_path):
    experiment, rows = population(tmp_path, "pbt", [1e30, 2e30])
    assert len(rows) == 2 and not exploits(experiment)
    for reports in rows.values():  # each stopped at its first report: nothing to clone
        assert [r["diverged"] for r in reports] == [True]


def test_the_exploit_log_names_the_results_the_decisions_used(tmp_path):
    # Ray 2.60 logged the target's previous report (and after an exploit, its report before
    # the restore) and the donor's newest report; the analysis read the same.
    from raytune_ft.analysis import pbt_events_table

    experiment, rows = population(tmp_path, "pbt", [0.3, 0.2, 0.1, 0.05], quantile=0.25,
                                  cpus=0.25)
    logged = exploits(experiment)
    assert logged, "no exploit happened"
    truth = []  # per exploit, in order: (target, deciding report, the clone's first report)
    for reports in rows.values():
        for before, after in zip(reports, reports[1:]):
            own = reports[0]["trial_id"]
            if after["restored_from"] and after["restored_from"]["owner"] != own and \
                    after["attempt"] != before["attempt"]:
                truth.append((own, before, after))
    events = pbt_events_table(experiment)
    assert len(events) == len(logged) == len(truth)
    found = {(e.target_trial_id, e.target_iteration, e.donor_iteration, e.timestamp)
             for e in events.itertuples()}
    assert found == {(own, before["training_iteration"],
                      after["restored_from"]["iteration"], float(before["timestamp"]))
                     for own, before, after in truth}
    assert sorted((e[2], e[3]) for e in logged) == sorted(
        (before["training_iteration"], after["restored_from"]["iteration"])
        for _, before, after in truth)
