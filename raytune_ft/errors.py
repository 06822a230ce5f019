"""One exception hierarchy for everything a user can cause, and the exit codes it maps to.

The CLIs (`raytune-ft`, `python -m raytune_ft.analysis`) map every `RaytuneFtError` to exit
code 2 and print its message as one line. Messages name the dotted field path, the value
received and what is allowed.
"""

from __future__ import annotations

# 0 success; 1 every trial failed (or a command failed at run time); 2 bad input (one line,
# no traceback); 130 interrupted (128 + SIGINT, as a shell reports a Ctrl-C).
EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT, EXIT_INTERRUPTED = 0, 1, 2, 130


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


def one_line(text: str) -> str:
    """Messages from libraries (transformers, pandas) can span lines; the CLIs print one."""
    return " ".join(line.strip() for line in text.strip().splitlines() if line.strip())


def exit_code(error: BaseException) -> int | None:
    """The exit code a CLI ends with for `error`; None for an error that is not the user's
    (a bug, shown with its traceback)."""
    if isinstance(error, RaytuneFtError):
        return EXIT_BAD_INPUT
    if isinstance(error, KeyboardInterrupt):
        return EXIT_INTERRUPTED
    return None


def error_line(error: BaseException) -> str:
    """The one line a CLI prints (to stderr) for an error `exit_code` maps."""
    if isinstance(error, KeyboardInterrupt):
        return "interrupted"
    return f"error: {one_line(str(error))}"
