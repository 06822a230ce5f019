"""A tracker that is down or refuses never stops a trial: its first failure is one warning,
the tracker goes quiet for the rest of the run, and the end summary says what it missed.

The ledger lives in the driver process, where Tune calls its callbacks. It is module state on
purpose: a resumed run's callbacks are unpickled by Tune from the experiment folder, so the
runner holds no reference to them, yet reads what they missed here.
"""

from __future__ import annotations

import contextlib
import logging
import re
import threading
from dataclasses import dataclass, field

from raytune_ft.errors import last_line

log = logging.getLogger(__name__)
_LONGEST = 200  # characters of an error kept in a warning


@dataclass
class Failure:
    tracker: str
    first: str  # what it was doing when it failed: "trial train_x_00001: iteration metrics"
    error: str  # one line
    skipped: dict[str, int] = field(default_factory=dict)  # what -> how many, since then
    outcome: str = ""  # what became of its open runs at the end

    def line(self) -> str:
        missed = ", ".join(f"{count} {what}" for what, count in self.skipped.items())
        return (f"{self.tracker}: not logged from {self.first} on ({self.error})"
                + (f"; skipped {missed}" if missed else "")
                + (f"; {self.outcome}" if self.outcome else ""))


_failures: dict[str, Failure] = {}


def reset() -> None:
    """A new run in this process starts with a clean ledger."""
    _failures.clear()


def broken(tracker: str) -> bool:
    return tracker in _failures


def brief(error: BaseException) -> str:
    """An error in one short line. A network failure arrives as a chain (MLflow's
    "API request to <url> failed with exception HTTPConnectionPool(...): Max retries
    exceeded ... (Caused by NewConnectionError(...))" over requests' and urllib3's): kept
    is the request and the innermost cause, "API request to <url> failed: Connection
    refused". Anything else longer than `_LONGEST` characters is cut there."""
    text = last_line(error)
    root, seen = error, {id(error)}
    while (cause := root.__cause__ or root.__context__) is not None and id(cause) not in seen:
        seen.add(id(cause))
        root = cause
    if root is not error and isinstance(root, OSError):
        head = re.split(r" with (?:timeout )?exception ", text, maxsplit=1)[0]
        text = f"{head}: {root.strerror or last_line(root)}"
    return text if len(text) <= _LONGEST else text[:_LONGEST - 1] + "\u2026"


def fail(tracker: str, doing: str, error: BaseException) -> None:
    """Record a tracker's first failure and warn once, in one line; later calls count."""
    if tracker in _failures:
        return
    _failures[tracker] = Failure(tracker, doing, brief(error))
    log.warning("%s tracking failed while logging %s (%s); training goes on without it",
                tracker, doing, brief(error))
    log.debug("%s tracking failure", tracker, exc_info=error)


def failure(tracker: str) -> Failure | None:
    return _failures.get(tracker)


def skip(tracker: str, what: str) -> None:
    failure = _failures[tracker]
    failure.skipped[what] = failure.skipped.get(what, 0) + 1


def not_logged() -> list[str]:
    """One line per tracker that failed during this run."""
    return [failure.line() for failure in _failures.values()]


_quiet = threading.local()


class _NoRetryWarnings(logging.Filter):
    """urllib3 warns at every retry of a request ("Retrying (Retry(total=0, ...)) after
    connection broken by 'NewConnectionError(...)'"): for a tracker's requests the guard's
    one warning says it. Kept for everyone else's."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (getattr(_quiet, "on", False) or record.threadName.startswith("raytune_ft-"))


logging.getLogger("urllib3.connectionpool").addFilter(_NoRetryWarnings())


@contextlib.contextmanager
def quiet_retries():
    """A tracker's requests from the driver's own thread (the end step), without urllib3's
    retry warnings (the trackers' worker threads never have them)."""
    _quiet.on = True
    try:
        yield
    finally:
        _quiet.on = False


class Guarded:
    """Mixin for a tracker callback: `self._guard(what, doing, fn, *args)` runs `fn` unless the
    tracker already failed (then it counts `what` as skipped); an error marks it failed."""

    tracker = "tracker"

    def _guard(self, what: str, doing: str, fn, *args, **kwargs) -> None:
        if broken(self.tracker):
            skip(self.tracker, what)
            return
        self._attempt(what, doing, fn, *args, **kwargs)

    def _attempt(self, what: str, doing: str, fn, *args, **kwargs) -> None:
        """`fn` even after a failure (to close what is open); an error is recorded."""
        try:
            fn(*args, **kwargs)
        except Exception as error:  # noqa: BLE001 - any tracker error must spare the trial
            fail(self.tracker, doing, error)
            skip(self.tracker, what)
