"""Read what each trial of an experiment folder reported (result.json), for confirm and export.

The analysis package builds typed tables from the same files; this is the raw per-trial view:
every reported row with Ray's fields (config, checkpoint_dir_name) as they were written.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

log = logging.getLogger(__name__)


def trial_results(experiment_dir: Path) -> dict[str, tuple[Path, list[dict]]]:
    """trial_id -> (trial folder, reported rows) for every trial that reported."""
    trials = {}
    for folder in sorted(p for p in experiment_dir.iterdir() if (p / "result.json").is_file()):
        rows = []
        for line in (folder / "result.json").read_text().splitlines():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                log.warning("%s: skipping a truncated line", folder / "result.json")
        if rows:
            trials[rows[-1]["trial_id"]] = (folder, rows)
    return trials
