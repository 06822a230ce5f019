"""Ray Tune's result loggers, without the loss of results on restore.

Ray 2.60's loggers write result.json and progress.csv in a driver staging folder and upload
them to storage at experiment snapshots. When a trial restarts from a checkpoint (a PBT
exploit, a retry), they first copy the storage copy over the staging file; the storage copy
can be several iterations stale, so the iterations since the last upload were lost. These
subclasses copy from storage only when the driver has no staging file (a `resume` in a new
driver process). TensorBoard event files are not written.
"""

from __future__ import annotations

from pathlib import Path

from ray.tune.logger import CSVLoggerCallback, JsonLoggerCallback


class _KeepStagingFile:
    def _restore_from_remote(self, file_name: str, trial) -> None:
        if Path(trial.local_path, file_name).exists():
            return  # this driver's own file is the newest copy
        super()._restore_from_remote(file_name, trial)


class JsonResultLogger(_KeepStagingFile, JsonLoggerCallback):
    """result.json, one line per reported iteration, kept across restores."""


class CsvResultLogger(_KeepStagingFile, CSVLoggerCallback):
    """progress.csv, kept across restores."""


def result_loggers() -> list:
    return [JsonResultLogger(), CsvResultLogger()]
