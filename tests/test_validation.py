"""Bad input fails before Ray starts: exit code 2, one line naming the field, no traceback.

Each case writes one bad experiment (or data file) and runs the CLI in-process with `ray.init`
replaced by a spy, so a case that reached Ray fails loudly instead of starting a cluster.
`RAY_TMPDIR` points into the test's own folder: no Ray session folder may appear there.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from support import experiment_yaml

from raytune_ft import cli

BIG = 1 + (os.cpu_count() or 1) * 8  # more CPUs than this machine has


class Case:
    """What a test case needs: the fixtures and helpers to write bad experiments."""

    def __init__(self, tmp: Path, model: Path, glue: Path) -> None:
        self.tmp, self.model, self.glue = tmp, model, glue
        self.storage = tmp / "results"
        self.yaml = tmp / "experiment.yaml"

    def write(self, replace: tuple[str, ...] = (), **sections) -> str:
        """`experiment_yaml` merges sections into its defaults; `replace` ones are taken whole."""
        path = experiment_yaml(self.yaml, self.model, self.glue, self.storage, **sections)
        if replace:
            raw = yaml.safe_load(path.read_text())
            raw.update({key: sections[key] for key in replace})
            path.write_text(yaml.safe_dump(raw))
        return str(path)

    def table(self, name: str, rows: list[tuple], columns=("text", "label")) -> str:
        path = self.tmp / name
        lines = [",".join(columns)] + [",".join(map(str, row)) for row in rows]
        path.write_text("\n".join(lines) + "\n")
        return str(path)

    def files(self, train_rows=None, eval_rows=None, sections=None, **data) -> str:
        """An experiment on CSV files instead of GLUE."""
        rows = [("good film", 1), ("bad film", 0)] * 4
        train = self.table("train.csv", train_rows or rows)
        dev = self.table("eval.csv", eval_rows or rows)
        return self.write(data={"task": None, "path": None, "train_file": train,
                                "eval_file": dev, "text_columns": ["text"],
                                "label_column": "label", **data}, **(sections or {}))


def _glue_with_bad_label(c: Case) -> list[str]:
    folder = c.tmp / "glue" / "SST-2"
    folder.mkdir(parents=True)
    (folder / "train.tsv").write_text("sentence\tlabel\na fine film\t1\na dull film\t2\n")
    shutil.copy(c.glue / "SST-2" / "dev.tsv", folder / "dev.tsv")
    return ["validate", c.write(data={"path": str(c.tmp / "glue")})]


def _hub_id(c: Case) -> list[str]:
    return ["validate", c.write(model={"name": "no-such-org-7/no-such-model"})]


def _existing(c: Case) -> list[str]:
    (c.storage / "tiny").mkdir(parents=True)
    (c.storage / "tiny" / "experiment_state.json").write_text("{}")
    return ["tune", c.write()]


def _storage_under_file(c: Case) -> list[str]:
    (c.tmp / "a_file").write_text("not a folder")
    return ["tune", c.write(run={"storage_path": str(c.tmp / "a_file" / "results")})]


def _model_without_config(c: Case) -> list[str]:
    (c.tmp / "empty_model").mkdir()
    return ["validate", c.write(model={"name": str(c.tmp / "empty_model")})]


def _model_without_tokenizer(c: Case) -> list[str]:
    """config.json and weights, no vocabulary: AutoTokenizer would make every word [UNK]."""
    folder = c.tmp / "no_tokenizer"
    folder.mkdir()
    for name in ("config.json", "model.safetensors"):
        shutil.copy(c.model / name, folder / name)
    return ["validate", c.write(model={"name": str(folder)})]


def _yaml_syntax(c: Case) -> list[str]:
    c.yaml.write_text("name: tiny\nmodel: {name: [unclosed\ntrain:\n  max_epochs: 1\n")
    return ["validate", str(c.yaml)]


def _pbt(c: Case, interval: int) -> list[str]:
    return ["validate", c.write(scheduler={"type": "pbt", "perturbation_interval": interval,
                                           "mutations": ["learning_rate"]},
                                search_alg={"type": "random"}, replace=("scheduler",))]


PBT = {"type": "pbt", "perturbation_interval": 1, "mutations": ["learning_rate"]}
PRESENT = "columns present in data.train_file: text, label"
ROWS3 = [("a", 0), ("b", 1), ("c", 2)] * 3

# id -> (builds argv from a Case, fragments the message must hold; the first is the field path)
CASES = {
    "yaml-syntax": (_yaml_syntax, ["line 3, column 6", "YAML syntax error"]),
    "missing-file": (lambda c: ["validate", str(c.tmp / "nope.yaml")], ["nope.yaml", "not found"]),
    "unknown-top-key": (lambda c: ["validate", c.write(schedular={"type": "asha"})],
                        ["schedular", "did you mean 'scheduler'"]),
    "unknown-train-key": (lambda c: ["validate", c.write(train={"learning_rte": 1e-4})],
                          ["train.learning_rte", "did you mean 'learning_rate'"]),
    "unknown-scheduler-key": (
        lambda c: ["validate", c.write(scheduler={"type": "asha", "grace_perod": 1})],
        ["scheduler.grace_perod", "did you mean 'grace_period'"]),
    "wrong-type": (lambda c: ["validate", c.write(train={"batch_size": "big"})],
                   ["train.batch_size", "'big'", "integer"]),
    "name-pattern": (lambda c: ["validate", c.write(name="my experiment")],
                     ["name", "'my experiment'"]),
    "log-range-not-positive": (
        lambda c: ["validate", c.write(search={"learning_rate": {"loguniform": [0, 1e-3]}})],
        ["search.learning_rate", "low 0 must be > 0"]),
    "range-inverted": (
        lambda c: ["validate", c.write(search={"learning_rate": {"loguniform": [1e-3, 1e-5]}})],
        ["search.learning_rate", "low 0.001 >= high 1e-05"]),
    "uniform-negative": (
        lambda c: ["validate", c.write(search={"warmup_ratio": {"uniform": [-0.1, 0.2]}})],
        ["search.warmup_ratio", "-0.1"]),
    "empty-choice": (lambda c: ["validate", c.write(search={"batch_size": {"choice": []}})],
                     ["search.batch_size", "non-empty list"]),
    "bad-choice-value": (
        lambda c: ["validate", c.write(search={"batch_size": {"choice": [16, 0]}})],
        ["search.batch_size", "value 0"]),
    "integer-setting-continuous": (
        lambda c: ["validate", c.write(search={"batch_size": {"uniform": [8, 32]}})],
        ["search.batch_size", "uniform [8, 32]", "integer", "randint, choice or grid"]),
    "integer-setting-fraction": (
        lambda c: ["validate", c.write(search={"batch_size": {"choice": [16, 24.5]}})],
        ["search.batch_size", "value 24.5", "not an integer"]),
    "negative-seed": (lambda c: ["validate", c.write(train={"seed": -1})],
                      ["train.seed", "-1", "greater than or equal to 0"]),
    "grid-search-with-choice": (
        lambda c: ["validate", c.write(search_alg={"type": "grid"})],
        ["search.batch_size", "choice [16, 32]", "{grid: [16, 32]}"]),
    "lora-targets-unknown": (
        lambda c: ["validate", c.write(train={"lora_r": 4, "lora_targets": "query,qkv"})],
        ["train.lora_targets", "qkv matches no linear layer", "names there: dense, key, query, "
         "value (or all-linear)"]),
    "lora-targets-syntax": (
        lambda c: ["validate", c.write(train={"lora_r": 4, "lora_targets": "query value"})],
        ["train.lora_targets", "'query value' is not 'all-linear' or comma-separated"]),
    "lora-no-layer-left": (
        lambda c: ["validate", c.write(train={"lora_r": 4, "freeze_layers": 2,
                                              "lora_targets": "query"})],
        ["train.lora_targets", "no linear layer is left above train.freeze_layers"]),
    "lora-searched-targets-unknown": (
        lambda c: ["validate", c.write(search={"lora_r": 8, "lora_targets": {
            "choice": ["query,value", "q_lin"]}})],
        ["train.lora_targets", "'q_lin': q_lin matches no linear layer"]),
    "pbt-mutates-lora-rank": (
        lambda c: ["validate", c.write(search={"lora_r": {"choice": [4, 8]}},
                                       scheduler={**PBT, "mutations": ["lora_r"]},
                                       search_alg={"type": "random"}, replace=("scheduler",))],
        ["scheduler.mutations", "'lora_r' cannot change inside a running trial"]),
    "pbt-mutates-lora-alpha": (
        lambda c: ["validate", c.write(search={"lora_r": 8, "lora_alpha": {"choice": [8, 16]}},
                                       scheduler={**PBT, "mutations": ["lora_alpha"]},
                                       search_alg={"type": "random"}, replace=("scheduler",))],
        ["scheduler.mutations", "'lora_alpha' cannot change inside a running trial"]),
    "pbt-mutates-length-window": (
        lambda c: ["validate", c.write(search={"length_group_window": {"choice": [512, 2048]}},
                                       scheduler={**PBT, "mutations": ["length_group_window"]},
                                       search_alg={"type": "random"}, replace=("scheduler",))],
        ["scheduler.mutations", "'length_group_window'", "current epoch"]),
    "unknown-distribution": (
        lambda c: ["validate", c.write(search={"learning_rate": {"logunifrom": [1e-5, 1e-3]}})],
        ["search.learning_rate", "did you mean 'loguniform'"]),
    "search-unknown-setting": (
        lambda c: ["validate", c.write(search={"learning_rat": {"choice": [1e-4]}})],
        ["search.learning_rat", "did you mean 'learning_rate'"]),
    "unknown-scheduler": (lambda c: ["validate", c.write(scheduler={"type": "ashaa"})],
                          ["scheduler.type", "'ashaa'", "asha"]),
    "unknown-search-alg": (lambda c: ["validate", c.write(search_alg={"type": "bayes"})],
                           ["search_alg.type", "'bayes'", "'tpe'"]),
    "unknown-schedule": (lambda c: ["validate", c.write(train={"schedule": "cosin"})],
                         ["train.schedule", "'cosin'", "'cosine'"]),
    "unknown-task": (lambda c: ["validate", c.write(data={"task": "sst3"})],
                     ["data.task", "'sst3'", "did you mean 'sst2'", "mrpc"]),
    "asha-grace-above-budget": (
        lambda c: ["validate", c.write(scheduler={"type": "asha", "grace_period": 9})],
        ["scheduler.grace_period", "9", "budget of 4"]),
    "pbt-interval-above-budget": (lambda c: _pbt(c, 6), ["scheduler.perturbation_interval", "6"]),
    "pbt-mutation-not-searched": (
        lambda c: ["validate", c.write(scheduler={**PBT, "mutations": ["weight_decay"]},
                                       search_alg={"type": "random"}, replace=("scheduler",))],
        ["scheduler.mutations", "'weight_decay'"]),
    "metric-never-reported": (lambda c: ["validate", c.write(metric="eval_acc")],
                              ["metric", "'eval_acc'", "eval_accuracy"]),
    "metric-not-for-task": (lambda c: ["validate", c.files(ROWS3, ROWS3,
                                                           {"metric": "eval_f1"})],
                            ["metric", "'eval_f1'", "3 labels"]),
    "f1-not-for-sst2": (lambda c: ["validate", c.write(metric="eval_f1")],
                        ["metric", "'eval_f1'", "sst2 (2 labels; GLUE reports F1 for MRPC and "
                         "QQP only); reported: eval_accuracy, eval_loss, eval_mcc"]),
    "mode": (lambda c: ["validate", c.write(mode="maximize")], ["mode", "'maximize'"]),
    "eval-every-above-budget": (
        lambda c: ["validate", c.write(train={"max_epochs": 1, "eval_every_epochs": 2})],
        ["train.eval_every_epochs", "2"]),
    "tpe-with-grid": (
        lambda c: ["validate", c.write(search={"batch_size": {"grid": [16, 32]}})],
        ["search_alg.type", "grid"]),
    "model-missing": (lambda c: ["validate", c.write(model={"name": str(c.tmp / "nope")})],
                      ["model.name", "nope", "does not exist"]),
    "model-without-config": (_model_without_config, ["model.name", "config.json"]),
    "model-without-tokenizer": (
        _model_without_tokenizer,
        ["model.name", "no_tokenizer cannot be", "5 tokens against vocab_size 30522",
         "100% of the word tokens in the first 256 training examples are unknown"]),
    "model-hub-id-offline": (_hub_id, ["model.name", "'no-such-org-7/no-such-model'"]),
    "max-length-above-positions": (
        lambda c: ["validate", c.write(model={"max_length": 1024})],
        ["model.max_length", "1024", "512"]),
    "data-path-missing": (lambda c: ["validate", c.write(data={"path": str(c.tmp / "nope")})],
                          ["data.path", "nope"]),
    "train-file-missing": (
        lambda c: ["validate", c.files(train_file=str(c.tmp / "missing.csv"))],
        ["data.train_file", "missing.csv", "does not exist"]),
    "text-column-missing": (lambda c: ["validate", c.files(text_columns=["sentence"])],
                            ["data.text_columns", "'sentence'", PRESENT]),
    "label-column-missing": (lambda c: ["validate", c.files(label_column="gold")],
                             ["data.label_column", "'gold'", PRESENT]),
    "eval-label-outside-set": (
        lambda c: ["validate", c.files(eval_rows=[("odd film", 7), ("good film", 1)])],
        ["data.eval_file", "'7'", "['0', '1']"]),
    "glue-label-outside-set": (_glue_with_bad_label, ["data.path", "'2'", "['0', '1']"]),
    "too-many-cpus": (lambda c: ["tune", c.write(resources={"cpus_per_trial": BIG})],
                      ["resources.cpus_per_trial", str(BIG)]),
    "gpus-absent": (lambda c: ["tune", c.write(resources={"gpus_per_trial": 64})],
                    ["resources.gpus_per_trial", "64"]),
    "storage-not-writable": (_storage_under_file, ["run.storage_path", "a_file"]),
    "experiment-exists": (_existing, ["name", "raytune-ft resume", "--overwrite"]),
    "set-bad-value": (lambda c: ["validate", c.write(), "--set", "train.max_epochs=-1"],
                      ["train.max_epochs", "-1", "(from --set train.max_epochs=-1)"]),
    "set-unknown-key": (lambda c: ["validate", c.write(), "--set", "train.max_epoch=1"],
                        ["train.max_epoch", "did you mean 'max_epochs'"]),
    "set-malformed": (lambda c: ["validate", c.write(), "--set", "train.max_epochs"],
                      ["--set", "dotted.key=value"]),
}


@pytest.fixture
def no_ray(monkeypatch, tmp_path):
    """`ray.init` raises if called; Ray's temp folder is the test's own, to check afterwards."""
    import ray

    calls = []

    def spy(*args, **kwargs):
        calls.append((args, kwargs))
        raise RuntimeError("ray.init was called during validation")

    monkeypatch.setattr(ray, "init", spy)
    monkeypatch.setenv("RAY_TMPDIR", str(tmp_path / "ray_tmp"))
    yield calls
    assert not calls, "Ray was started"
    assert not ray.is_initialized()
    assert not (tmp_path / "ray_tmp").exists(), "a Ray session folder was created"


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input_is_one_line_before_ray(name, tmp_path, tiny_bert, glue_dir, no_ray, capsys):
    build, fragments = CASES[name]
    argv = build(Case(tmp_path, tiny_bert, glue_dir))
    code = cli.main(argv)
    err = capsys.readouterr().err
    assert code == cli.EXIT_BAD_INPUT, err
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    for fragment in fragments:
        assert fragment in lines[0], f"{fragment!r} not in {lines[0]!r}"


def test_config_errors_start_with_the_file(tmp_path, tiny_bert, glue_dir, no_ray, capsys):
    case = Case(tmp_path, tiny_bert, glue_dir)
    for argv in (["validate", case.write(train={"batch_size": 0})],
                 ["validate", case.write(model={"max_length": 4096})]):
        assert cli.main(argv) == cli.EXIT_BAD_INPUT
        assert capsys.readouterr().err.startswith(f"error: {case.yaml}: ")


def test_debug_shows_the_traceback(tmp_path, tiny_bert, glue_dir, no_ray, capsys):
    path = Case(tmp_path, tiny_bert, glue_dir).write(train={"batch_size": 0})
    assert cli.main(["--debug", "validate", path]) == cli.EXIT_BAD_INPUT
    err = capsys.readouterr().err
    assert "Traceback" in err and "train.batch_size" in err.strip().splitlines()[-1]


def test_a_good_experiment_validates(tmp_path, tiny_bert, glue_dir, no_ray, capsys):
    path = Case(tmp_path, tiny_bert, glue_dir).write()
    assert cli.main(["validate", path]) == cli.EXIT_OK
    assert "ok: the experiment is valid" in capsys.readouterr().out


def _cli(argv: list[str], tmp_path: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "RAY_TMPDIR": str(tmp_path / "ray_tmp"), "HF_HUB_OFFLINE": "1"}
    exe = Path(sys.executable).with_name("raytune-ft")
    return subprocess.run([str(exe), *argv], capture_output=True, text=True, env=env,
                          timeout=120, cwd=tmp_path)


@pytest.mark.parametrize("name", ["yaml-syntax", "too-many-cpus", "set-bad-value",
                                  "model-without-tokenizer"])
def test_real_cli(name, tmp_path, tiny_bert, glue_dir):
    build, fragments = CASES[name]
    proc = _cli(build(Case(tmp_path, tiny_bert, glue_dir)), tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and all(f in lines[0] for f in fragments), proc.stderr
    assert not (tmp_path / "ray_tmp").exists(), "a Ray session folder was created"


def test_set_override_reaches_the_message(tmp_path, tiny_bert, glue_dir, no_ray, capsys):
    path = Case(tmp_path, tiny_bert, glue_dir).write()
    code = cli.main(["validate", path, "--set", "search.batch_size={choice: [16, -1]}"])
    assert code == cli.EXIT_BAD_INPUT
    assert "search.batch_size: value -1" in capsys.readouterr().err
    raw = yaml.safe_load(Path(path).read_text())
    assert raw["search"]["batch_size"] == {"choice": [16, 32]}  # the file is not touched


LR = {"learning_rate": {"loguniform": [1e-4, 1e-3]}}
GROW = {"grow": [[0.0, 8], [0.5, 32]]}
SCHEDULE_TEXT = ("schedule grow: 8 (accumulation 1 x <= 8) from progress 0, "
                 "32 (accumulation 4 x <= 8) from progress 0.5")
# id -> (experiment sections, the text after "batch        effective ")
BATCHES = {
    "fixed": ({"search": LR, "train": {"batch_size": 16}}, "16 (accumulation 2 x <= 8)"),
    "search-constant": ({"search": {**LR, "batch_size": 16}}, "16 (accumulation 2 x <= 8)"),
    "choice": ({"search": {**LR, "batch_size": {"choice": [32, 16]}}},
               "16 (accumulation 2 x <= 8), 32 (accumulation 4 x <= 8)"),
    "randint": ({"search": {**LR, "batch_size": {"randint": [8, 40]}}},
                "8..40 (accumulation 1..5 x <= 8)"),
    "other-int-choice": ({"search": {**LR, "batch_size": {"choice": [16]},
                                     "freeze_layers": {"choice": [0, 1]}}},
                         "16 (accumulation 2 x <= 8)"),  # 0 and 1 are not batch sizes
    "schedule": ({"search": LR, "batch_schedules": GROW, "train": {"batch_schedule": "grow"}},
                 SCHEDULE_TEXT),
    "schedule-searched": ({"search": {**LR, "batch_schedule": {"choice": ["none", "grow"]}},
                           "batch_schedules": GROW, "train": {"batch_size": 16}},
                          f"no schedule: 16 (accumulation 2 x <= 8); {SCHEDULE_TEXT}"),
    "inline-phases": ({"search": LR, "train": {"batch_schedule": [[0.0, 16], [0.25, 24]]}},
                      "schedule: 16 (accumulation 2 x <= 8) from progress 0, "
                      "24 (accumulation 3 x <= 8) from progress 0.25"),
    "micro-searched": ({"search": {**LR, "max_micro_batch": {"choice": [8, 16]}}},
                       "32 (accumulation 2..4 x <= 8..16)"),
}


def _header_lines(out: str) -> dict[str, str]:
    """The header's lines by their first word (warnings in order under 'warning:')."""
    lines = {}
    for line in out.splitlines():
        key, _, rest = line.partition(" ")
        lines.setdefault(key, []).append(rest.strip())
    return lines


@pytest.mark.parametrize("name", list(BATCHES))
def test_header_prints_every_effective_batch(name, tmp_path, tiny_bert, glue_dir, no_ray,
                                             capsys):
    sections, expected = BATCHES[name]
    sections = {**sections, "train": {"max_micro_batch": 8, **sections.get("train", {})}}
    path = Case(tmp_path, tiny_bert, glue_dir).write(replace=("search",), **sections)
    assert cli.main(["validate", path]) == cli.EXIT_OK
    header = _header_lines(capsys.readouterr().out)
    assert header["batch"] == [f"effective {expected}"]
    assert "warning:" not in header  # 256 training examples, both SST-2 labels among them
    assert header["labels"] == ["0 -> '0', 1 -> '1'"]  # SST-2: no F1, so no positive class


def test_header_warns_and_names_labels_through_the_real_cli(tmp_path, tiny_bert, glue_dir):
    case = Case(tmp_path, tiny_bert, glue_dir)
    rows = [(f"film {i}", 10 if i < 4 else 2) for i in range(8)]  # rows 5 and 7 are kept
    path = case.files(rows, rows, {"train": {"batch_size": 4, "max_micro_batch": 4},
                                   "search": {**LR, "batch_size": {"choice": [2, 4]}}},
                      max_train_samples=2, subset_seed=0)
    env = {**os.environ, "RAY_TMPDIR": str(tmp_path / "ray_tmp"), "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, "-m", "raytune_ft", "validate", path],
                          capture_output=True, text=True, env=env, timeout=120, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    header = _header_lines(proc.stdout)
    assert header["data"] == ["train: 2 train, 8 eval, 2 labels"]
    assert header["labels"] == ["0 -> '2', 1 -> '10'; eval_f1 counts 1 -> '10' as the positive "
                                "class"]
    assert header["batch"] == ["effective 2 (accumulation 1 x <= 4), 4 (accumulation 1 x <= 4)"]
    assert header["warning:"] == [
        "the training split has 2 examples, fewer than one batch of 4: a step then repeats "
        "examples",
        "no training example has label(s) 1 -> '10' (data.max_train_samples 2 left none)"]
    assert not (tmp_path / "ray_tmp").exists(), "a Ray session folder was created"
