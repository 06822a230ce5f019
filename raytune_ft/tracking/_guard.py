"""A tracker that is down or refuses never stops a trial: its first failure is one warning,
the tracker goes quiet for the rest of the run, and the end summary says what it missed.

The ledger lives in the driver process, where Tune calls its callbacks. It is module state on
purpose: a resumed run's callbacks are unpickled by Tune from the experiment folder, so the
runner holds no reference to them, yet reads what they missed here.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from raytune_ft.errors import last_line

log = logging.getLogger(__name__)


@dataclass
class Failure:
    tracker: str
    first: str  # what it was doing when it failed: "trial train_x_00001: iteration metrics"
    error: str  # one line
    skipped: dict[str, int] = field(default_factory=dict)  # what -> how many, since then

    def line(self) -> str:
        missed = ", ".join(f"{count} {what}" for what, count in self.skipped.items())
        return (f"{self.tracker}: not logged from {self.first} on ({self.error})"
                + (f"; skipped {missed}" if missed else ""))


_failures: dict[str, Failure] = {}


def reset() -> None:
    """A new run in this process starts with a clean ledger."""
    _failures.clear()


def broken(tracker: str) -> bool:
    return tracker in _failures


def fail(tracker: str, doing: str, error: BaseException) -> None:
    """Record a tracker's first failure and warn once; later calls only count."""
    if tracker in _failures:
        return
    _failures[tracker] = Failure(tracker, doing, last_line(error))
    log.warning("%s tracking failed while logging %s (%s); training goes on without it",
                tracker, doing, last_line(error))
    log.debug("%s tracking failure", tracker, exc_info=error)


def skip(tracker: str, what: str) -> None:
    failure = _failures[tracker]
    failure.skipped[what] = failure.skipped.get(what, 0) + 1


def not_logged() -> list[str]:
    """One line per tracker that failed during this run."""
    return [failure.line() for failure in _failures.values()]


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
