"""One exception hierarchy for everything a user can cause.

The CLI maps every `RaytuneFtError` to exit code 2 and prints its message as one line.
Messages name the dotted field path, the value received and what is allowed.
"""

from __future__ import annotations


class RaytuneFtError(Exception):
    """Base class: a problem with the user's input, reported without a traceback."""


class ConfigError(RaytuneFtError):
    """The experiment file or an override is invalid."""


class DataError(RaytuneFtError):
    """A data file or folder is missing, unreadable or inconsistent with the config."""


class ModelError(RaytuneFtError):
    """A model cannot be loaded, or its layout is not supported by a requested feature."""


class ResourceError(RaytuneFtError):
    """The cluster cannot give one trial what it asks for, or storage is not writable."""


class ExperimentError(RaytuneFtError):
    """An experiment directory is missing, incomplete or already exists."""


def last_line(error: BaseException) -> str:
    """The message of an error that arrives with a traceback (a trial's, Ray's): its last
    non-blank line."""
    lines = [line.strip() for line in str(error).strip().splitlines() if line.strip()]
    return lines[-1] if lines else type(error).__name__
