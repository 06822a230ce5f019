"""PBT and PB2 through the real CLI: exploits continue where the donor stood, with the new
learning rate and batch size in force; replay re-runs the winner's schedule."""

import json

import pytest
from support import experiment_yaml, run_cli

TRAIN = {"max_epochs": 1, "eval_every_epochs": 0.125, "max_micro_batch": 16,
         "schedule": "linear", "warmup_ratio": 0.0, "lr_scaling": "linear",
         "reference_batch_size": 16}
SEARCH = {"learning_rate": {"loguniform": [1e-4, 1e-2]}, "batch_size": {"choice": [8, 16, 32]},
          "weight_decay": {"uniform": [0.0, 0.1]}}



def trial_rows(experiment):
    return {p.name: [json.loads(line) for line in (p / "result.json").read_text().splitlines()]
            for p in experiment.iterdir() if (p / "result.json").is_file()}


def population(tmp_path_factory, tiny_bert, glue_dir, kind):
    root = tmp_path_factory.mktemp(kind)
    scheduler = {"type": kind, "perturbation_interval": 1, "quantile_fraction": 0.25,
                 "mutations": ["learning_rate", "batch_size", "weight_decay"]}
    path = experiment_yaml(root / "exp.yaml", tiny_bert, glue_dir, root / "results",
                           name=kind, metric="eval_loss", mode="min", train=TRAIN,
                           search=SEARCH, scheduler=scheduler,
                           search_alg={"type": "random", "seed": 3},
                           run={"num_samples": 4, "storage_path": str(root / "results")})
    done = run_cli("tune", str(path))
    assert done.returncode == 0, done.stderr[-3000:]
    return root / "results" / kind


@pytest.fixture(scope="module")
def pbt_run(tmp_path_factory, tiny_bert, glue_dir):
    return population(tmp_path_factory, tiny_bert, glue_dir, "pbt")


def test_exploits_happen_and_are_logged(pbt_run):
    events = (pbt_run / "pbt_global.txt").read_text().splitlines()
    assert events, "no exploit happened"
    assert list(pbt_run.glob("pbt_policy_*.txt"))


def test_the_exploit_log_names_the_report_decided_on_and_the_checkpoint_cloned(pbt_run):
    # [target tag, donor tag, target iteration, donor iteration, donor config, new config]:
    # the target's report at its logged iteration is followed by its first report as the
    # clone, one iteration past the donor's. Ray 2.60 logged the target's previous report.
    by_index = {int(trial[0]["trial_id"].rsplit("_", 1)[1]): trial
                for trial in trial_rows(pbt_run).values()}
    seen = {index: 0 for index in by_index}  # each trial's reports, consumed in order
    for line in (pbt_run / "pbt_global.txt").read_text().splitlines():
        target, _, decided_at, cloned_at, _, new_config = json.loads(line)
        index = int(target.split("_", 1)[0])
        reports = by_index[index]
        pairs = list(zip(reports, reports[1:]))[seen[index]:]
        at = next((n for n, (before, after) in enumerate(pairs)
                  if before["training_iteration"] == decided_at
                  and after["training_iteration"] == cloned_at + 1
                  and after["config"] == new_config), None)
        assert at is not None, (line, [r["training_iteration"] for r in reports])
        seen[index] += at + 1


def test_samples_seen_continue_and_batch_size_changes(pbt_run):
    rows = trial_rows(pbt_run)
    assert len(rows) == 4
    changed = False
    for name, trial in rows.items():
        # A clone continues from the donor's checkpoint: its next iteration is the donor's
        # iteration + 1, and the samples seen stay tied to the iteration, never back to 0.
        assert all(r["samples_seen"] == 32 * r["training_iteration"] for r in trial), name
        assert trial[-1]["samples_seen"] == 256, name
        sizes = [r["batch_size"] for r in trial]
        changed |= len(set(sizes)) > 1
    assert changed, "no trial's reported batch size changed"


def test_reported_lr_and_batch_size_are_the_ones_in_force(pbt_run):
    # Linear decay, no warmup: the last step of an interval starts at samples_seen - batch;
    # lr_scaling linear from the reference batch 16, also after an exploit moved the batch.
    moved = 0
    for trial in trial_rows(pbt_run).values():
        for before, row in zip([None, *trial], trial):
            config = row["config"]
            assert row["batch_size"] == config["batch_size"]
            start = row["samples_seen"] - config["batch_size"]
            expected = config["learning_rate"] * config["batch_size"] / 16 * (1 - start / 256)
            assert row["lr"] == pytest.approx(expected, rel=1e-9)
            moved += before is not None and before["batch_size"] != row["batch_size"]
    assert moved, "no exploit changed a trial's batch size"


def test_replay_reruns_the_best_schedule(pbt_run):
    done = run_cli("replay", str(pbt_run))
    assert done.returncode == 0, done.stderr[-3000:]
    assert "replayed     trial" in done.stdout and "best         eval_loss=" in done.stdout
    best = done.stdout.split("replayed     trial ")[1].split()[0]
    (trial,) = trial_rows(pbt_run.parent / f"pbt-replay-{best}").values()
    assert [r["samples_seen"] for r in trial] == [32 * i for i in range(1, 9)]


# What the loop computes (timings and the host's figures aside): a replay must equal the trial
LOOP_METRICS = ("training_iteration", "samples_seen", "step", "epoch", "batch_size", "lr",
                "lr_min_group", "train_loss", "eval_loss", "eval_accuracy", "diverged",
                "skipped_steps", "param_count", "trainable_param_count")


def test_the_replay_of_an_exploited_trial_is_that_trial_to_the_last_digit(pbt_run):
    # Its dropout masks follow the index of each trial that trained a part of its schedule;
    # replayed under the replay's own trial id (index 0) the figures drifted (0.7867 against
    # the trial's 0.7821 in a user's run).
    rows = {trial[0]["trial_id"]: trial for trial in trial_rows(pbt_run).values()}
    policies = {tid: [json.loads(x) for x in (pbt_run / f"pbt_policy_{tid}.txt")
                      .read_text().splitlines()]
                for tid in rows if (pbt_run / f"pbt_policy_{tid}.txt").is_file()}
    exploited = sorted(tid for tid in policies if not tid.endswith("_00000"))
    assert exploited, f"no trial but the first was exploited: {sorted(policies)}"
    target = exploited[-1]
    done = run_cli("replay", str(pbt_run), "--trial", target)
    assert done.returncode == 0, done.stderr[-3000:]
    (replayed,) = trial_rows(pbt_run.parent / f"pbt-replay-{target}").values()
    assert [r["training_iteration"] for r in replayed] == list(range(1, 9))
    # From its last exploit on, the trial trained alone: its last report of each iteration
    cloned_at = policies[target][-1][3]  # the donor's iteration it continued from
    final = {r["training_iteration"]: r for r in rows[target]
             if r["training_iteration"] > cloned_at}
    assert final, (cloned_at, [r["training_iteration"] for r in rows[target]])
    for row in replayed:
        if row["training_iteration"] in final:
            original = final[row["training_iteration"]]
            assert {k: row[k] for k in LOOP_METRICS} == {k: original[k] for k in LOOP_METRICS}


def test_pb2_run_of_the_same_shape_completes(tmp_path_factory, tiny_bert, glue_dir):
    experiment = population(tmp_path_factory, tiny_bert, glue_dir, "pb2")
    rows = trial_rows(experiment)
    assert len(rows) == 4
    assert all(trial[-1]["samples_seen"] == 256 for trial in rows.values())


def test_a_diverged_member_is_replaced_by_a_healthy_clone(tmp_path_factory, tiny_bert,
                                                          glue_dir):
    # lr 1e30 diverges in its first interval; weight_decay is the only mutation, so the clone
    # of a healthy donor takes the donor's learning rate and trains on to the budget.
    # Asynchronous PBT (the default): the diverged member is paused and cloned from the best
    # healthy trial's newest checkpoint, whenever the results arrive (tuning/population.py);
    # it had been rescued or not depending on that order.
    root = tmp_path_factory.mktemp("rescue")
    scheduler = {"type": "pbt", "perturbation_interval": 1, "quantile_fraction": 0.5,
                 "mutations": ["weight_decay"]}
    path = experiment_yaml(
        root / "exp.yaml", tiny_bert, glue_dir, root / "results", name="rescue",
        metric="eval_loss", mode="min", train={**TRAIN, "max_epochs": 1},
        search={"learning_rate": {"grid": [1e-3, 1e30]}, "batch_size": 16,
                "weight_decay": {"uniform": [0.0, 0.1]}},
        scheduler=scheduler, search_alg={"type": "grid", "seed": 0},
        run={"num_samples": 1, "storage_path": str(root / "results")})
    done = run_cli("tune", str(path))
    assert done.returncode == 0, done.stderr[-3000:]
    assert "2 run, 0 failed, 0 diverged" in done.stdout
    rows = trial_rows(root / "results" / "rescue")
    (sick,) = [t for t in rows.values() if t[0]["config"]["learning_rate"] == 1e30]
    assert sick[0]["diverged"] is True and sick[0]["eval_loss"] == 1e9
    assert sick[-1]["diverged"] is False and sick[-1]["samples_seen"] == 256
    assert sick[-1]["config"]["learning_rate"] == 1e-3 and sick[-1]["eval_loss"] < 1.0
    # the clone continues from the donor's position: samples stay tied to the iteration
    assert all(r["samples_seen"] == 32 * r["training_iteration"] for r in sick)
