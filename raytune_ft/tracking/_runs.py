"""The experiment folder's tracker record (`TRACKING_FILE`): which tracker runs belong to this
experiment and the last step each logged per trial, so `raytune-ft resume` continues those
runs and logs no point twice.

It lives in a subfolder, where Ray's syncing cannot roll it back. At `Tuner.restore` Ray 2.60
copies every top-level `*.json` and `*.pkl` of the experiment into the driver's staging folder
(`_ExperimentCheckpointManager.sync_down_experiment_state`, which lists the top level only),
and every snapshot uploads that whole staging folder over the experiment
(`sync_up_experiment_state`, pyarrow's `copy_files`, not atomic). A top-level record was so
replaced, again and again, by the copy of the resume's start: run ids lost, last steps
rolled back (points logged twice), a half-copied file read. A subfolder is neither listed at
a restore nor ever written into the staging folder, so Ray never touches it.

No credentials: run ids, the tracking URI as configured, and the last step logged per trial.
"""

from __future__ import annotations

import json
import logging
import threading

from raytune_ft.experiment import LEGACY_TRACKING_FILE, TRACKING_FILE
from raytune_ft.storage import read_text, write_text

log = logging.getLogger(__name__)


def read_runs(experiment_dir: str) -> dict:
    """The record; {} for a new experiment. An experiment started before the record moved
    has it at the top level (`LEGACY_TRACKING_FILE`): read from there, and written to the
    subfolder at the next write (the old file is left as Ray keeps copying it).

    A file that exists but cannot be read raises (the tracker then fails with a warning):
    read as empty, the next write would drop the other trackers' run ids, and a resume would
    open duplicate runs."""
    for name in (TRACKING_FILE, LEGACY_TRACKING_FILE):
        try:
            text = read_text(f"{experiment_dir}/{name}")
        except FileNotFoundError:
            continue
        if name == LEGACY_TRACKING_FILE:
            log.info("%s/%s: tracker runs read from the file of an earlier version; kept in "
                     "%s from now on", experiment_dir, name, TRACKING_FILE)
        return json.loads(text)
    return {}  # a new experiment


_lock = threading.Lock()  # trackers write from their own threads: one read-modify-write at a time


def write_runs(experiment_dir: str, tracker: str, runs: dict) -> None:
    """Replace `tracker`'s entry, atomically (a local file is written aside, then moved in)."""
    with _lock:
        record = read_runs(experiment_dir)
        record[tracker] = runs
        write_text(f"{experiment_dir}/{TRACKING_FILE}", json.dumps(record, indent=1))
