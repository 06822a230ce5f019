"""The experiment folder in one place: file names, the experiment record, atomic writes, the
raw trial rows, the one rule that ranks trials and the one summary of a confirm run.

`<storage_path>/<name>/` is Ray Tune's own layout (a folder per trial with `params.json`,
`result.json` and `checkpoint_*/`; `pbt_policy_<trial_id>.txt` under PBT) plus CONFIG_FILE
and ANALYSIS_DIR; `raytune-ft confirm` runs in `<name>-confirm` beside it. Nothing here knows
about training or needs Ray; pandas and the config schema are imported where they are used.
"""

from __future__ import annotations

import json
import logging
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from raytune_ft.errors import ExperimentError

if TYPE_CHECKING:
    import pandas as pd

    from raytune_ft.schema import ExperimentConfig

log = logging.getLogger(__name__)

# ---------------------------------------------------------------------------- file names

CONFIG_FILE = "raytune_ft.json"  # the validated experiment and what `prepare` derived
ANALYSIS_DIR = "analysis"  # the Parquet tables, report.html and confirm.parquet
REPORT_FILE = "report.html"  # in ANALYSIS_DIR
CONFIRM_FILE = "confirm.parquet"  # in ANALYSIS_DIR: one row per confirmed config and seed
CONFIRM_SUFFIX = "-confirm"  # the confirm run's folder: `<name>-confirm`, beside the experiment
PLAN_FILE = "raytune_ft_confirm.json"  # in the confirm folder: source, seeds, schedules
EXPORT_RECORD = "raytune_ft_export.json"  # in an exported model folder: where it came from
HP = "hp_"  # prefix of the hyperparameter columns of the analysis and confirm tables
RESULT_FILE = "result.json"  # Ray's, per trial: one JSON object per reported iteration
PARAMS_FILE = "params.json"  # Ray's, per trial: the config it started with
ERROR_FILE = "error.txt"  # Ray's, per trial: the traceback of its last failure
STOP_FILE = "stop_reason.json"  # which `run.stop` rule ended the search, when one did


def pbt_policy_file(experiment_dir: Path, trial_id: str) -> Path:
    """Ray's PBT policy of one trial: its config changes at each exploit (absent: none)."""
    return experiment_dir / f"pbt_policy_{trial_id}.txt"


def confirm_folder(experiment_dir: Path, name: str) -> Path:
    """Where `raytune-ft confirm` runs experiment `name`'s configurations again."""
    return experiment_dir.parent / f"{name}{CONFIRM_SUFFIX}"


# ---------------------------------------------------------------------------- the record

# Keys the runner adds to the validated config; the rest of the record is the config itself.
DERIVED_KEYS = ("budget_samples", "model_path", "label_names", "train_samples", "eval_samples",
                "train_examples", "eval_examples",  # examples where samples are parts of them
                "plan", "warm_start",  # warm_start: [{experiment, trials, skipped, why}]
                "model_paths")  # model_paths: model.name -> path, when searched


def write_record(experiment_dir: str, config: ExperimentConfig, derived: dict) -> None:
    """CONFIG_FILE beside Ray's files (a path or a URI): the validated config, then `derived`
    (DERIVED_KEYS: the budget, the model path, the labels, split sizes and the trial plan)."""
    from raytune_ft.storage import write_text

    record = {**config.model_dump(mode="json"), **derived}
    write_text(f"{experiment_dir}/{CONFIG_FILE}", json.dumps(record, indent=1))


def read_record(experiment_dir: str) -> tuple[ExperimentConfig, dict]:
    """The experiment's validated config and the whole record, DERIVED_KEYS included."""
    from raytune_ft.schema import validate_record
    from raytune_ft.storage import read_text

    path = f"{experiment_dir.rstrip('/')}/{CONFIG_FILE}"
    try:
        text = read_text(path)
    except (OSError, ValueError):  # pyarrow: FileNotFoundError; a bad URI: ArrowInvalid
        raise ExperimentError(f"{experiment_dir}: not a raytune_ft experiment ({CONFIG_FILE} "
                              "not found)") from None
    try:
        record = json.loads(text)
    except json.JSONDecodeError as error:
        raise ExperimentError(f"{path}: not valid JSON ({error})") from None
    settings = {key: value for key, value in record.items() if key not in DERIVED_KEYS}
    return validate_record(settings, source=str(path)), record


def read_experiment_record(experiment_dir: str) -> ExperimentConfig:
    """The validated config of an experiment folder (a path or a URI)."""
    return read_record(experiment_dir)[0]


def open_experiment(experiment_dir: str | Path) -> tuple[Path, ExperimentConfig, dict]:
    """A local experiment folder: its resolved path, validated config and whole record."""
    directory = Path(experiment_dir).expanduser().resolve()
    if not directory.is_dir():
        raise ExperimentError(f"{experiment_dir}: no such experiment directory")
    config, record = read_record(str(directory))
    return directory, config, record


# ---------------------------------------------------------------------------- trial rows


def result_lines(path: Path) -> bytes:
    """A trial's RESULT_FILE as its complete lines, one JSON object per reported iteration:
    blank lines go, and a truncated last line (a trial killed while writing) is dropped with
    a warning. The one reader of the format: `trial_results` parses these lines, the analysis
    its typed tables."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:  # a trial that never reported
        return b""
    except OSError as e:
        log.warning("%s: unreadable (%s); trial has no iterations", path, e)
        return b""
    if not data.endswith(b"\n") or b"\n\n" in data or data[:1].isspace():
        # blank lines would break the line count that maps rows back to files
        data = b"\n".join(line for line in data.split(b"\n") if line.strip())
        if not data:
            return b""
        data += b"\n"
    head, _, last = data[:-1].rpartition(b"\n")
    try:
        json.loads(last)
    except ValueError:
        log.warning("%s: skipping truncated or corrupt last line (%d bytes)", path, len(last))
        return head + b"\n" if head else b""
    return data


def trial_results(experiment_dir: Path) -> dict[str, tuple[Path, list[dict]]]:
    """trial_id -> (trial folder, reported rows) for every trial that reported.

    The raw view, every row with Ray's fields (config, checkpoint_dir_name) as written; the
    analysis package builds typed tables from the same files.
    """
    trials = {}
    for folder in sorted(p for p in experiment_dir.iterdir() if (p / RESULT_FILE).is_file()):
        rows = []
        for number, line in enumerate(result_lines(folder / RESULT_FILE).splitlines(), 1):
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                log.warning("%s: skipping corrupt line %d", folder / RESULT_FILE, number)
        if rows:
            trials[rows[-1]["trial_id"]] = (folder, rows)
    return trials


# ---------------------------------------------------------------------------- PBT logs

PBT_GLOBAL_FILE = "pbt_global.txt"  # Ray's, under PBT: every exploit of the experiment


@dataclass(frozen=True)
class PbtEntry:
    """One line of Ray's PBT logs (`pbt_global.txt`, `pbt_policy_<trial>.txt`), written by
    `PopulationBasedTraining._log_config_on_step`: the trial that exploited (target) and the
    one it cloned (donor), by their experiment tags, the iterations of both, the donor's
    config and the config the target continues with."""

    target_tag: str
    donor_tag: str
    target_iteration: int
    donor_iteration: int
    donor_config: dict
    new_config: dict


def read_pbt_log(path: Path, strict: bool) -> list[PbtEntry]:
    """Every entry of a PBT log, in the order Ray wrote them ([] when the file is absent).

    `strict`: a line that is not an entry is an ExperimentError naming it (a schedule to
    replay must be whole); otherwise it is skipped with a warning (the analysis of a run cut
    while writing)."""
    if not path.is_file():
        return []
    entries = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            target, donor, target_it, donor_it, donor_config, new_config = json.loads(line)
            entries.append(PbtEntry(str(target), str(donor), int(target_it), int(donor_it),
                                    donor_config or {}, new_config or {}))
        except (ValueError, TypeError) as error:
            if strict:
                raise ExperimentError(f"{path}: line {number} is not a PBT log entry "
                                      "[target_tag, donor_tag, target_iteration, "
                                      "donor_iteration, donor_config, new_config]") from None
            log.warning("%s: skipping corrupt line %d (%s)", path, number, error)
    return entries


# ---------------------------------------------------------------------------- ranking

FINISHED = ("terminated", "stopped")  # Ray ended the trial without an error (analysis status)
NEVER_BEST = ("errored", "diverged")  # their metric says nothing about their configuration


def ranking_column(config: ExperimentConfig | str | None) -> str:
    """`last_metric` under population-based schedulers, else `best_metric`.

    A PBT member's result is its final population member: its earlier best belongs to
    weights an exploit may since have replaced. Other trials keep one configuration, so
    their best evaluation is what that configuration reached.
    """
    from raytune_ft.schedulers import scheduler_spec

    if not config:  # an experiment without its record: no scheduler known
        return "best_metric"
    return "last_metric" if scheduler_spec(config).population else "best_metric"


def rank_trials(trials: pd.DataFrame, config: ExperimentConfig,
                finished_only: bool = False) -> pd.DataFrame:
    """THE ranking rule: the trials that can win, best first, with `rank` (1, 2, ...) and
    `search_metric` (the value they are ranked by).

    `trials` has the analysis trials table's `trial_id`, `status`, `best_metric`,
    `last_metric` and `trial_dir` (or `created`, Tune's creation order). Errored and diverged
    trials never win, nor a trial without the metric; `finished_only` keeps the FINISHED ones
    (confirm and export need a complete trial). A tie goes to the trial Tune created first,
    as Ray's `get_best_result` has it (small models tie often; so does accuracy on a small
    dev set), then to the smaller trial id.
    """
    return rank_by(trials, config.mode, ranking_column(config), finished_only)


def rank_by(trials: pd.DataFrame, mode: str, column: str,
            finished_only: bool = False) -> pd.DataFrame:
    """`rank_trials` given the mode and the column ranked by (analysis, which may have no
    validated config)."""
    eligible = ~trials["status"].isin(NEVER_BEST) & trials[column].notna()
    if finished_only:
        eligible &= trials["status"].isin(FINISHED)
    ranked = trials[eligible].assign(_created=creation_order(trials[eligible]))
    ranked = ranked.sort_values([column, "_created", "trial_id"],
                                ascending=[mode == "min", True, True],
                                na_position="last").drop(columns="_created")
    ranked = ranked.assign(rank=range(1, len(ranked) + 1), search_metric=ranked[column])
    return ranked.reset_index(drop=True)


def creation_order(trials: pd.DataFrame) -> pd.Series:
    """The order Tune created the trials in: `created` where given, else the trial number in
    the folder name Tune gives a trial (`<trainable>_<trial_id>_<number>_<params>_<date>`);
    NaN where neither is known."""
    import pandas as pd

    if "created" in trials:
        return trials["created"].astype("float64")
    folders = trials["trial_dir"] if "trial_dir" in trials else [None] * len(trials)
    numbers = []
    for trial_id, folder in zip(trials["trial_id"], folders, strict=True):
        found = re.search(rf"_{re.escape(str(trial_id))}_(\d+)(?:_|$)", f"_{folder}")
        numbers.append(int(found.group(1)) if found else math.nan)
    return pd.Series(numbers, index=trials.index, dtype="float64")


# ---------------------------------------------------------------------------- confirm runs


def read_confirm_rows(experiment_dir: Path) -> pd.DataFrame:
    """ANALYSIS_DIR/CONFIRM_FILE: one row per configuration and seed of `raytune-ft confirm`."""
    import pandas as pd

    path = experiment_dir / ANALYSIS_DIR / CONFIRM_FILE
    if not path.is_file():
        raise ExperimentError(f"{experiment_dir}: no {ANALYSIS_DIR}/{CONFIRM_FILE}; run "
                              f"`raytune-ft confirm {experiment_dir}` first")
    return pd.read_parquet(path)


def confirm_summary(rows: pd.DataFrame, mode: str) -> pd.DataFrame:
    """Per configuration: n, mean, sample sd (ddof=1), min and max of the metric, best mean
    first (`rank`), with `search_metric` where the rows have it.

    `n` counts the values the statistics are computed from: a planned seed that did not reach
    the end of its budget (metric NaN) is not one of them, so "sd over n seeds" stays true.
    """
    aggregations = dict(
        trial_id=("trial_id", "first"), n=("metric", "count"), mean=("metric", "mean"),
        sd=("metric", lambda v: v.std(ddof=1)), min=("metric", "min"), max=("metric", "max"))
    if "search_metric" in rows:
        aggregations["search_metric"] = ("search_metric", "first")
    summary = rows.groupby("config_rank").agg(**aggregations).reset_index()
    summary = summary.sort_values(["mean", "config_rank"], ascending=[mode == "min", True],
                                  na_position="last")
    return summary.assign(rank=range(1, len(summary) + 1)).reset_index(drop=True)
