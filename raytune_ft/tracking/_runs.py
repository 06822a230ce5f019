"""The experiment folder's `raytune_ft_tracking.json`: which tracker runs belong to this
experiment, so `raytune-ft resume` continues them rather than opening new ones.

No credentials: run ids, the tracking URI as configured, and the last step logged per trial.
"""

from __future__ import annotations

import json
import threading

from raytune_ft.storage import read_text, write_text

TRACKING_FILE = "raytune_ft_tracking.json"  # in the experiment folder


def read_runs(experiment_dir: str) -> dict:
    """The file's record; {} for a new experiment. A file that exists but cannot be read
    raises (the tracker then fails with a warning): read as empty, the next write would drop
    the other trackers' run ids, and a resume would open duplicate runs."""
    try:
        text = read_text(f"{experiment_dir}/{TRACKING_FILE}")
    except FileNotFoundError:  # none yet: a new experiment
        return {}
    return json.loads(text)


_lock = threading.Lock()  # trackers write from their own threads: one read-modify-write at a time


def write_runs(experiment_dir: str, tracker: str, runs: dict) -> None:
    """Replace `tracker`'s entry, atomically (a local file is written aside, then moved in)."""
    with _lock:
        record = read_runs(experiment_dir)
        record[tracker] = runs
        write_text(f"{experiment_dir}/{TRACKING_FILE}", json.dumps(record, indent=1))
