"""Failing trials during a run: a diverged or crashing trial ends alone, the others go on.

The tiny random BERT on a real SST-2 subset; one local Ray for the module. The fault hook
(tests/fault_hook/sitecustomize.py, RAYTUNE_FT_TEST_FAIL_SEED) acts inside the trial, so it is
set before Ray starts: the workers of a local instance inherit the environment of the process
that started Ray.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from support import FAULT_HOOK, REPO, experiment_yaml, fault_hook_env

from raytune_ft import cli
from raytune_ft.tasks import get_task

FAIL_SEED = 13  # the trial whose train.seed is this raises at its first iteration
SMALL = {"data": {"max_train_samples": 64, "max_eval_samples": 32},
         "train": {"max_epochs": 1, "eval_every_epochs": 0.5, "batch_size": 16}}
ITERATIONS = 2  # max_epochs / eval_every_epochs


@pytest.fixture(scope="module", autouse=True)
def fault_hook():
    """Set before the module's Ray starts (autouse fixtures come first)."""
    hook = fault_hook_env(FAIL_SEED)
    previous = {name: os.environ.get(name) for name in hook}
    os.environ.update(hook)
    yield
    for name, value in previous.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


def test_the_product_code_carries_no_fault_hook():
    files = [p for p in (REPO / "raytune_ft").rglob("*.py") if FAULT_HOOK in p.read_text()]
    assert files == []


def write_experiment(tmp_path, tiny_bert, glue_dir, name: str, search: dict, **sections) -> str:
    """A small grid experiment: FIFO, so every trial runs its whole budget unless it fails."""
    path = experiment_yaml(tmp_path / f"{name}.yaml", tiny_bert, glue_dir, tmp_path / "results",
                           name=name, **{**SMALL, **sections})
    raw = yaml.safe_load(path.read_text())
    raw.update(search=search, scheduler={"type": "fifo"}, search_alg={"type": "grid"},
               run={**raw["run"], "num_samples": 1, "verbose": 0})
    path.write_text(yaml.safe_dump(raw))
    return str(path)


def trials(experiment_dir: Path) -> list[dict]:
    """Per trial: its params, every reported result, and its error text if it failed."""
    found = []
    for directory in sorted(p for p in experiment_dir.iterdir() if (p / "params.json").is_file()):
        lines = (directory / "result.json").read_text().splitlines() \
            if (directory / "result.json").is_file() else []
        error = directory / "error.txt"
        params = json.loads((directory / "params.json").read_text())
        found.append({"dir": directory, "params": params,
                      "results": [json.loads(line) for line in lines if line.strip()],
                      "error": error.read_text() if error.is_file() else None})
    return found


@pytest.mark.slow  # ~100 s: the CLI starts its own Ray twice (tune, then resume)
def test_ctrl_c_stops_cleanly_and_resume_finishes(tmp_path, tiny_bert, glue_dir):
    """SIGINT to the CLI's process group (what Ctrl-C does) after the first reported result."""
    path = write_experiment(tmp_path, tiny_bert, glue_dir, "interrupted",
                            {"learning_rate": {"grid": [1e-4, 3e-4]}},
                            train={"max_epochs": 2, "eval_every_epochs": 0.25})
    experiment = tmp_path / "results" / "interrupted"
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    env.pop("RAY_ADDRESS", None)
    exe = str(Path(sys.executable).with_name("raytune-ft"))
    proc = subprocess.Popen([exe, "tune", path],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                            start_new_session=True)
    try:
        deadline = time.monotonic() + 90
        while not any(p.stat().st_size for p in experiment.glob("*/result.json")):
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "no result within 90 s"
            time.sleep(0.5)
        os.killpg(proc.pid, signal.SIGINT)
        out, err = proc.communicate(timeout=90)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == cli.EXIT_INTERRUPTED, err[-3000:]
    assert f"raytune-ft resume {experiment}" in err, err[-3000:]
    assert list(experiment.glob("experiment_state*.json")), "Tune saved no experiment state"
    assert list(experiment.glob("*/checkpoint_*/trainer_state.json")), "no trial checkpointed"
    done = [t for t in trials(experiment) if t["results"]]
    assert done and all(t["results"][-1]["training_iteration"] < 8 for t in done)

    resumed = subprocess.run([exe, "resume", str(experiment)], capture_output=True, text=True,
                             env=env, timeout=240)
    assert resumed.returncode == cli.EXIT_OK, resumed.stderr[-3000:]
    finished = trials(experiment)
    assert len(finished) == 2
    assert all(t["results"][-1]["training_iteration"] == 8 for t in finished)


def test_diverged_trial_ends_and_the_others_go_on(tmp_path, tiny_bert, glue_dir, ray_local,
                                                  capsys):
    # lr 1e8 overflows the weights in its first step: the loss is non-finite (checked).
    path = write_experiment(tmp_path, tiny_bert, glue_dir, "diverge",
                            {"learning_rate": {"grid": [1e-4, 1e8]}})
    assert cli.main(["tune", path]) == cli.EXIT_OK
    found = {t["params"]["learning_rate"]: t for t in trials(tmp_path / "results" / "diverge")}
    assert set(found) == {1e-4, 1e8}
    bad, good = found[1e8]["results"], found[1e-4]["results"]
    assert bad[-1]["diverged"] is True and len(bad) == 1
    assert bad[-1]["eval_accuracy"] == 0.0  # the worst value, so schedulers keep working
    assert not any(r["diverged"] for r in good) and len(good) == ITERATIONS
    assert found[1e8]["error"] is None and found[1e-4]["error"] is None
    assert "0 failed, 1 diverged" in capsys.readouterr().out


def test_a_trial_that_raises_is_recorded_and_the_others_go_on(tmp_path, tiny_bert, glue_dir,
                                                              ray_local, capsys):
    path = write_experiment(tmp_path, tiny_bert, glue_dir, "raises",
                            {"seed": {"grid": [0, FAIL_SEED]}})
    assert cli.main(["tune", path]) == cli.EXIT_OK
    found = {t["params"]["seed"]: t for t in trials(tmp_path / "results" / "raises")}
    assert set(found) == {0, FAIL_SEED}
    assert f"fault hook {FAULT_HOOK}={FAIL_SEED}: this trial raises" in found[FAIL_SEED]["error"]
    assert found[0]["error"] is None and len(found[0]["results"]) == ITERATIONS
    out = capsys.readouterr().out
    assert "2 run, 1 failed" in out and "this trial raises" in out


def test_every_trial_failing_exits_1(tmp_path, tiny_bert, glue_dir, ray_local, capsys):
    path = write_experiment(tmp_path, tiny_bert, glue_dir, "all_fail",
                            {"seed": FAIL_SEED, "learning_rate": {"grid": [1e-4, 3e-4]}})
    assert cli.main(["tune", path]) == cli.EXIT_FAILED
    err = capsys.readouterr().err
    assert "every trial failed" in err and "this trial raises" in err
    assert "Traceback" not in err.splitlines()[-1]


# ---------------------------------------------------------------------- checkpoints (no Ray)

UNREADABLE = {
    "trainer_state.json": b'{"samples_seen": ',  # cut short mid-write
    "model.safetensors": b"not a safetensors file",
    "optimizer.pt": b"not a torch file",
}


@pytest.fixture(scope="module")
def saved_loop(tmp_path_factory, tiny_bert, glue_dir):
    from raytune_ft.schema import load_config, trial_hyperparameters
    from raytune_ft.tasks.sequence_classification import load_model
    from raytune_ft.training.loop import FineTuneLoop
    from raytune_ft.tuning.runner import prepare

    tmp = tmp_path_factory.mktemp("checkpoint")
    path = write_experiment(tmp, tiny_bert, glue_dir, "ckpt", {})
    prepared = prepare(load_config(path))
    hp = trial_hyperparameters(prepared.config, {})
    loop = FineTuneLoop(load_model(prepared.model_path, prepared.bundle.label_names, 0),
                        prepared.bundle, hp, task=get_task(prepared.bundle.kind))
    loop.run_interval()
    loop.save(tmp / "good")
    return loop, tmp / "good"


@pytest.mark.parametrize("name", [
    "trainer_state.json",
    "model.safetensors",
    "optimizer.pt",
    "missing",
    "state-without-plateau",
])
def test_an_unreadable_checkpoint_is_named(name, saved_loop, tmp_path):
    from raytune_ft.errors import RaytuneFtError

    loop, good = saved_loop
    broken = tmp_path / "checkpoint_000001"
    shutil.copytree(good, broken)
    if name == "missing":
        (broken / "optimizer.pt").unlink()
    elif name == "state-without-plateau":
        state = json.loads((broken / "trainer_state.json").read_text())
        del state["plateau"]
        (broken / "trainer_state.json").write_text(json.dumps(state))
    else:
        (broken / name).write_bytes(UNREADABLE[name])
    with pytest.raises(RaytuneFtError, match="cannot be read") as caught:
        loop.load(broken)
    assert str(broken) in str(caught.value)
