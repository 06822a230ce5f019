"""Every registered scheduler through the same short experiment, with the same invariants.

The tiny random BERT on 64 SST-2 sentences, 4 trials of 4 evaluation intervals each, through
the real CLI (in this process, on the module's one Ray). Whatever the scheduler decides
(stop, pause, exploit), a trial's samples seen sit on the plan's evaluation points, never go
back and never pass the budget, and every checkpoint Ray kept restores into a fresh loop.
"""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import pytest
from support import experiment_yaml

from raytune_ft import cli
from raytune_ft.config import TrainConfig
from raytune_ft.schedulers import SCHEDULERS, scheduler_spec
from raytune_ft.schema import load_config
from raytune_ft.tasks import get_task

MUTATIONS = ["learning_rate", "batch_size"]  # what a population scheduler changes here


def settings(kind: str) -> dict:
    """The scheduler's settings in the shared experiment: its registry example, mutating
    both searched keys where it is population-based. A new scheduler is in this contract
    through its registry line alone."""
    spec = SCHEDULERS[kind]
    return {**spec.example, "mutations": MUTATIONS} if spec.population else dict(spec.example)


# Every registered scheduler runs in the default suite (each run ~30 s on 2 cores).
@pytest.fixture(scope="module", params=list(SCHEDULERS))
def run(request, tmp_path_factory, tiny_bert, glue_dir, ray_local):
    """One experiment under the scheduler: the experiment folder and its prepared plan."""
    from raytune_ft.tuning.runner import prepare

    kind = request.param
    root = tmp_path_factory.mktemp(kind)
    path = experiment_yaml(
        root / "exp.yaml", tiny_bert, glue_dir, root / "results", name=kind,
        metric="eval_loss", mode="min",
        data={"max_train_samples": 64, "max_eval_samples": 32},
        train={"max_epochs": 1, "eval_every_epochs": 0.25, "max_micro_batch": 8},
        search={"learning_rate": {"loguniform": [1e-4, 1e-2]},
                "batch_size": {"choice": [8, 16]}},
        scheduler=settings(kind), search_alg={"type": "random", "seed": 0},
        run={"num_samples": 4, "storage_path": str(root / "results"), "verbose": 0,
             "checkpoint_every": 2})  # what a scheduler needs more often, it gets
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = cli.main(["tune", str(path)])
    assert code == cli.EXIT_OK, out.getvalue()[-3000:]
    assert "budget       64 samples per trial (1 epochs), 4 evaluations of 0.25 epoch" in \
        out.getvalue()
    trials = [line for line in out.getvalue().splitlines() if line.startswith("trials ")]
    assert trials == ["trials       4 run, 0 failed, 0 diverged"], out.getvalue()[-3000:]
    prepared = prepare(load_config(path), resume=True)  # the same data, read again
    return kind, root / "results" / kind, prepared


def trial_rows(experiment: Path) -> dict[Path, list[dict]]:
    return {p: [json.loads(line) for line in (p / "result.json").read_text().splitlines()]
            for p in experiment.iterdir() if (p / "result.json").is_file()}


def test_the_record_holds_the_plan_the_trials_ran_with(run):
    _, experiment, prepared = run
    record = json.loads((experiment / "raytune_ft.json").read_text())
    plan = prepared.plan
    assert record["plan"] == json.loads(json.dumps(plan.record()))
    assert record["budget_samples"] == plan.budget.total_samples == 64
    assert plan.budget.evaluation_points == (16, 32, 48, 64) and plan.iterations == 4
    assert plan.log_scaled == ("learning_rate",)


def exploits(experiment: Path) -> dict[int, int]:
    """Trial index -> exploits of that trial, from PBT's log ([target tag, donor tag, ...];
    a tag starts with the trial's index)."""
    log = experiment / "pbt_global.txt"
    lines = log.read_text().splitlines() if log.is_file() else []
    counts: dict[int, int] = {}
    for line in lines:
        index = int(json.loads(line)[0].split("_")[0])
        counts[index] = counts.get(index, 0) + 1
    return counts


def test_samples_seen_follow_the_plan_and_never_pass_the_budget(run):
    kind, experiment, prepared = run
    budget = prepared.plan.budget
    rows = trial_rows(experiment)
    exploited = exploits(experiment)
    assert len(rows) == 4
    for trial, reports in rows.items():
        seen = [r["samples_seen"] for r in reports]
        iterations = [r["training_iteration"] for r in reports]
        for r in reports:
            assert 1 <= r["training_iteration"] <= budget.iterations, (trial.name, r)
            assert r["samples_seen"] == budget.evaluation_point(r["training_iteration"]), \
                (trial.name, r["training_iteration"], r["samples_seen"])
            assert r["diverged"] is False
        assert max(seen) <= budget.total_samples, (trial.name, seen)
        # Each report is one evaluation point further: never back, never repeated, even
        # after a pause (HyperBand) or a retry. Only a clone (PBT/PB2) continues from its
        # donor's checkpoint instead, which async PBT may take from an earlier iteration.
        jumps = sum(b != a + 1 for a, b in zip([0, *iterations], iterations))
        index = int(trial.name.split("_")[4])  # train_trial_<id: 5 hex>_<5 digits>_<index>_...
        allowed = exploited.get(index, 0) if scheduler_spec(kind).population else 0
        assert jumps <= allowed, (trial.name, seen, f"{allowed} exploits")
    finished = [reports[-1]["samples_seen"] == budget.total_samples for reports in rows.values()]
    assert any(finished), "no trial reached the budget"
    if kind == "fifo":
        assert all(finished)


def test_every_kept_checkpoint_restores_into_a_fresh_loop(run):
    from raytune_ft.tasks.sequence_classification import load_model
    from raytune_ft.training.loop import FineTuneLoop

    kind, experiment, prepared = run
    budget = prepared.plan.budget
    restored = 0
    for trial, reports in trial_rows(experiment).items():
        reported = {r["checkpoint_dir_name"]: r for r in reports if r.get("checkpoint_dir_name")}
        for checkpoint in sorted(trial.glob("checkpoint_*")):
            state = json.loads((checkpoint / "trainer_state.json").read_text())
            hp = TrainConfig.model_validate(state["hyperparameters"])
            model = load_model(prepared.model_path, prepared.bundle.label_names, hp.seed)
            loop = FineTuneLoop(model, prepared.bundle, hp, budget=budget,
                                task=get_task(prepared.bundle.kind))
            loop.load(checkpoint)
            assert (loop.state.samples_seen, loop.state.step) == \
                (state["samples_seen"], state["step"]), checkpoint
            assert loop.state.samples_seen in budget.evaluation_points, checkpoint
            assert state["total_samples"] == budget.total_samples
            if checkpoint.name in reported:  # the report that came with it
                row = reported[checkpoint.name]
                assert (row["samples_seen"], row["step"]) == \
                    (state["samples_seen"], state["step"]), checkpoint
            restored += 1
    reported = sum(any(r.get("checkpoint_dir_name") for r in reports)
                   for reports in trial_rows(experiment).values())
    assert restored >= reported >= 1, f"{kind}: {restored} checkpoints kept"


def test_each_capability_shows_in_what_the_trials_do(run):
    """What the registry says a scheduler needs, its trials do: checkpoints every iteration
    (experiment: every 2nd) and keeping every one when trials exchange weights or pause; a
    diverged trial staying to be replaced, and its own dropout masks, in a population."""
    from raytune_ft.schema import load_config
    from raytune_ft.tuning.model_data import ModelData
    from raytune_ft.tuning.trial import TrialSetup

    kind, experiment, prepared = run
    spec, budget = scheduler_spec(kind), prepared.plan.budget
    for trial, reports in trial_rows(experiment).items():
        for r in reports:  # the checkpoint the trial wrote with this report
            expected = spec.checkpoint_every_iteration or spec.pauses_trials or \
                r["training_iteration"] % 2 == 0 or r["samples_seen"] == budget.total_samples
            assert bool(r.get("checkpoint_dir_name")) == expected, (kind, trial.name, r)
        written = {r["checkpoint_dir_name"] for r in reports if r.get("checkpoint_dir_name")}
        kept = {p.name for p in trial.glob("checkpoint_*")}
        # under a population every one a clone may take is kept; else run.checkpoints_to_keep 1
        assert kept == written if spec.population else len(kept) <= 1, (kind, trial.name)
    config = load_config(experiment.parent.parent / "exp.yaml")
    point = {"learning_rate": 1e30, "batch_size": 8}
    data = ModelData.single(config.model.name, prepared.model_path, config.model.max_length,
                            prepared.bundle)
    setup = TrialSetup(config, prepared.plan, data)
    loops = [setup.trial(point, f"abcde_0000{i}").build_loop(prepared.bundle) for i in (1, 2)]
    assert (loops[0].dropout_seed != loops[1].dropout_seed) == spec.population
    metrics = loops[0].run_interval()
    assert metrics["diverged"] and loops[0].finished != spec.keeps_diverged


def trial_statuses(experiment: Path) -> dict[str, str]:
    """Ray's last recorded status of every trial (the newest experiment_state file)."""
    state = json.loads(sorted(experiment.glob("experiment_state-*.json"))[-1].read_text())
    return {json.loads(t)["trial_id"]: json.loads(t)["status"] for t, _ in state["trial_data"]}


def test_every_trial_has_ended_when_the_run_returns(run):
    # HyperBand kept a trial at max_t PAUSED until its bracket filled: Tune's own stop at
    # the plan's last iteration ends it (runner.tune_settings)
    _, experiment, _ = run
    statuses = trial_statuses(experiment)
    assert len(statuses) == 4 and set(statuses.values()) == {"TERMINATED"}, statuses


def test_a_trial_at_the_budget_trains_no_further(run):
    # PBT/PB2 exploited a trial's final result and trained its last interval again
    # (ray-project/ray#11499) before Tune's own stop at the last iteration
    _, experiment, prepared = run
    total = prepared.plan.budget.total_samples
    for trial, reports in trial_rows(experiment).items():
        seen = [r["samples_seen"] for r in reports]
        assert total not in seen or seen.index(total) == len(seen) - 1, (trial.name, seen)
