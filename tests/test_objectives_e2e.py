"""Through the real CLI on an SST-2 subset with a tiny BERT: Optuna over two objectives
(eval loss, latency), deployment figures per trial, the Pareto column against a brute-force
check, `compare --pareto`, the front in the report (headless Chromium where installed), then
a warm start from that run ended by a stop rule, and an incompatible warm start refused."""

from __future__ import annotations

import json
import re
import shutil
import subprocess

import pandas as pd
import pytest
from support import experiment_yaml, run_cli

GOALS = [{"metric": "eval_loss", "mode": "min"}, {"metric": "latency_ms_b1", "mode": "min"}]
SEARCH_LR = {"learning_rate": {"loguniform": [1e-4, 1e-3]}}
SEARCH = {**SEARCH_LR, "freeze_layers": {"choice": [0, 1, 2]}}
# tried first, so the warm starts below know a trial ran freeze_layers 2 and one ran 0
# (batch_size: searched by support.experiment_yaml)
PINNED = [{"learning_rate": 3e-4, "batch_size": 16, "freeze_layers": 2},
          {"learning_rate": 1e-4, "batch_size": 32, "freeze_layers": 0}]
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")



def write(root, name, **sections):
    return experiment_yaml(
        root / f"{name}.yaml", sections.pop("model"), sections.pop("glue"), root / "results",
        name=name, scheduler={"type": "fifo"},
        train={"max_epochs": 1, "eval_every_epochs": 0.5, "max_micro_batch": 32,
               "eval_batch_size": 64},
        run={"num_samples": 4, "storage_path": str(root / "results"),
             **sections.pop("run", {})},
        **sections)


@pytest.fixture(scope="module")
def two_goals(tmp_path_factory, tiny_bert, glue_dir):
    root = tmp_path_factory.mktemp("pareto")
    path = write(root, "front", model=tiny_bert, glue=glue_dir, search=SEARCH,
                 objectives=GOALS, search_alg={"type": "optuna", "sampler": "tpe", "seed": 0,
                                               "n_initial_points": 2,
                                               "points_to_evaluate": PINNED})
    return run_cli("tune", str(path)), root, root / "results" / "front"


def test_header_says_who_optimises_what(two_goals):
    done, _, _ = two_goals
    assert done.returncode == 0, done.stderr[-3000:]
    assert "search optuna tpe multivariate (seed 0); eval_loss (min)" in done.stdout
    assert ("objectives   eval_loss (min), latency_ms_b1 (min); the searcher optimises all; "
            "scheduler fifo, stop rules and the best trial use the first") in done.stdout


def test_deployment_figures_are_in_every_result_and_the_trials_table(two_goals, tiny_bert):
    from transformers import AutoModelForSequenceClassification

    _, _, experiment = two_goals
    model = AutoModelForSequenceClassification.from_pretrained(tiny_bert, num_labels=2)
    embeddings = sum(p.numel() for p in model.bert.embeddings.parameters())
    layer = sum(p.numel() for p in model.bert.encoder.layer[0].parameters())
    total = sum(p.numel() for p in model.parameters())
    trials = pd.read_parquet(experiment / "analysis" / "trials.parquet")
    assert len(trials) == 4
    for row in trials.itertuples():
        folder = experiment / row.trial_dir
        lines = [json.loads(x) for x in (folder / "result.json").read_text().splitlines()]
        last = lines[-1]
        assert all(line["latency_ms_b1"] == last["latency_ms_b1"] for line in lines)
        assert row.param_count == last["param_count"] == total
        frozen = row.hp_freeze_layers * layer  # freezing k layers freezes k layers' weights
        assert row.trainable_param_count == total - frozen
        # measured on the first checkpoint; the kept one differs only in trainer_state.json
        kept = sorted(folder.glob("checkpoint_*"))[-1]
        size = sum(p.stat().st_size for p in kept.iterdir()) / 1e6
        assert row.checkpoint_mb == pytest.approx(size, abs=5e-4 + 200 / 1e6)  # to the kB
        # the weights alone: the whole tiny BERT in float32 plus safetensors' header
        weights = (kept / "model.safetensors").stat().st_size
        assert row.model_mb == round(weights / 1e6, 3)  # to the kB
        assert 0 < weights - 4 * total < 20_000 and row.model_mb < row.checkpoint_mb
        assert row.latency_ms_b1 == pytest.approx(last["latency_ms_b1"])
        assert row.latency_ms_b1 > 0 and row.latency_ms_eval_batch > 0
        assert row.latency_eval_batch == 64 and row.latency_device == "cpu"
        assert row.latency_threads == 1  # resources.cpus_per_trial
        assert row.obj_eval_loss == pytest.approx(last["eval_loss"])
    assert embeddings > 0


def test_pareto_column_matches_a_brute_force_check(two_goals):
    _, _, experiment = two_goals
    trials = pd.read_parquet(experiment / "analysis" / "trials.parquet")
    values = list(zip(trials["obj_eval_loss"], trials["obj_latency_ms_b1"]))
    expected = []
    for i, (loss, latency) in enumerate(values):
        beaten = any(lo <= loss and la <= latency and (lo < loss or la < latency)
                     for j, (lo, la) in enumerate(values) if j != i)
        expected.append(not beaten)
    assert trials["pareto"].tolist() == expected and any(expected)


def test_compare_pareto_lists_the_front(two_goals):
    _, _, experiment = two_goals
    done = run_cli("compare", str(experiment), "--pareto", "--format", "json")
    assert done.returncode == 0, done.stderr[-2000:]
    listed = json.loads(done.stdout)
    trials = pd.read_parquet(experiment / "analysis" / "trials.parquet")
    assert sorted(r["trial_id"] for r in listed) == sorted(trials[trials["pareto"]]["trial_id"])
    assert [r["eval_loss"] for r in listed] == sorted(r["eval_loss"] for r in listed)
    assert {"latency_ms_b1", "hp_learning_rate", "param_count"} <= set(listed[0])


def test_report_draws_the_front(two_goals, tmp_path):
    _, _, experiment = two_goals
    text = (experiment / "analysis" / "report.html").read_text()
    for sid in ("pareto", "deployment"):
        assert f'<section id="{sid}">' in text
    assert 'id="pareto-plot"' in text and "Pareto front (" in text
    if CHROMIUM is None:
        pytest.skip("chromium not installed: the HTML is checked, not its rendering")
    dom = subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu",
                          f"--user-data-dir={tmp_path / 'profile'}", "--enable-logging=stderr",
                          "--v=0", "--dump-dom", (experiment / "analysis" /
                                                  "report.html").as_uri()],
                         capture_output=True, text=True, timeout=90)
    assert dom.returncode == 0, dom.stderr[-2000:]
    section = dom.stdout[dom.stdout.index('<section id="pareto">'):]
    section = section[:section.index("</section>")]
    assert 'class="plot-container plotly"' in section  # plotly drew the front
    assert not [x for x in dom.stderr.splitlines() if "Uncaught" in x
                or re.search(r":(ERROR|WARNING):CONSOLE", x)]


@pytest.mark.slow  # a second CLI run (~40 s here); tests/tuning covers both parts fast
def test_warm_start_imports_the_trials_and_a_stop_rule_ends_the_run(two_goals, tiny_bert,
                                                                     glue_dir):
    _, root, experiment = two_goals
    path = write(root, "warm", model=tiny_bert, glue=glue_dir, search=SEARCH,
                 metric="eval_loss", mode="min",
                 search_alg={"type": "optuna", "seed": 1, "n_initial_points": 2},
                 run={"num_samples": 3, "max_concurrent_trials": 1,
                      "stop": {"target": 5.0}})  # any eval loss of 2 labels is below 5
    done = run_cli("tune", str(path), "--warm-start", str(experiment))
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"warm start   4 of 4 trials imported from 1 experiment ({experiment})\n" \
        in done.stdout
    assert "stopped by   target: trial " in done.stdout
    reason = json.loads((root / "results" / "warm" / "stop_reason.json").read_text())
    assert reason["rule"] == "target"
    trials = pd.read_parquet(root / "results" / "warm" / "analysis" / "trials.parquet")
    assert len(trials) == 1 and trials["status"].tolist() == ["stopped"]
    report = (root / "results" / "warm" / "analysis" / "report.html").read_text()
    assert "Search stopped early by run.stop.target" in report
    record = json.loads((root / "results" / "warm" / "raytune_ft.json").read_text())
    assert record["warm_start"] == [{"experiment": str(experiment), "trials": 4, "skipped": 0,
                                     "why": {}}]
    assert f"Warm start: the searcher began with 4 earlier trials from {experiment} " \
           "(4 trials)." in report


def test_an_incompatible_warm_start_exits_2_naming_the_parameter(two_goals, tiny_bert,
                                                                   glue_dir):
    _, root, experiment = two_goals
    wider = {**SEARCH, "warmup_ratio": {"uniform": [0.0, 0.2]}}
    path = write(root, "other", model=tiny_bert, glue=glue_dir, search=wider,
                 search_alg={"type": "tpe", "seed": 0})
    done = run_cli("validate", str(path), "--warm-start", str(experiment))
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        f"error: {path}: --warm-start {experiment}: search.warmup_ratio is searched now but "
        "was not searched there; the spaces must search the same keys"]
    trials = pd.read_parquet(experiment / "analysis" / "trials.parquet")
    ran = trials["hp_freeze_layers"].value_counts().to_dict()
    assert ran.get(2, 0) >= 1 and ran.get(0, 0) >= 1  # the pinned points
    narrower = {**SEARCH, "freeze_layers": {"choice": [0, 1]}}  # narrowing: skip, count
    path = write(root, "narrow", model=tiny_bert, glue=glue_dir, search=narrower,
                 metric="eval_loss", mode="min",  # its metric: another would be refused
                 search_alg={"type": "tpe", "seed": 0})
    done = run_cli("validate", str(path), "--warm-start", str(experiment))
    assert done.returncode == 0, done.stderr[-2000:]
    assert (f"warm start   {4 - ran[2]} of 4 trials imported from 1 experiment ({experiment}); "
            f"skipped: {ran[2]} ran freeze_layers outside choice [0, 1]") in done.stdout
    path = write(root, "fixed", model=tiny_bert, glue=glue_dir, search=SEARCH_LR,
                 metric="eval_loss", mode="min", search_alg={"type": "tpe", "seed": 0})
    done = run_cli("validate", str(path), "--set", "train.freeze_layers=0",
                   "--warm-start", str(experiment))  # searched there, fixed now
    assert done.returncode == 0, done.stderr[-2000:]
    assert (f"warm start   {ran[0]} of 4 trials imported from 1 experiment ({experiment}); "
            f"skipped: {4 - ran[0]} ran train.freeze_layers != 0") in done.stdout


def test_an_objective_the_data_never_reports_exits_2_before_training(tmp_path, tiny_bert,
                                                                     glue_dir):
    # SST-2 reports no F1: found at validation, not as Tune's traceback after a result
    path = write(tmp_path, "nof1", model=tiny_bert, glue=glue_dir, search=SEARCH,
                 objectives=[{"metric": "eval_accuracy", "mode": "max"},
                             {"metric": "eval_f1", "mode": "max"}],
                 search_alg={"type": "optuna", "sampler": "tpe", "seed": 0})
    done = run_cli("validate", str(path))
    assert done.returncode == 2, done.stderr[-2000:]
    assert "objectives.1.metric: 'eval_f1' is not reported for sst2" in done.stderr
