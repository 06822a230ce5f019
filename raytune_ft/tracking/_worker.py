"""One background thread per tracker, so a slow or unreachable server never holds up Tune's
event loop (and with it every trial): the driver only queues calls."""

from __future__ import annotations

import logging
import queue
import threading

from raytune_ft.tracking._guard import Guarded

log = logging.getLogger(__name__)
_STOP = object()


class Worker(Guarded):
    """Runs queued calls in order, each under the tracker's guard (`_guard.Guarded`)."""

    def __init__(self, tracker: str):
        self.tracker = tracker
        self._queue: queue.Queue = queue.Queue()
        self._thread = threading.Thread(target=self._run, name=f"raytune_ft-{tracker}",
                                         daemon=True)
        self._thread.start()

    def submit(self, what: str, doing: str, fn, *args, always: bool = False) -> None:
        """`always`: run it even after the tracker failed (closing what is open), still
        under the guard's try."""
        self._queue.put((what, doing, fn, args, always))

    def close(self, timeout_s: float) -> bool:
        """Finish what is queued (at most `timeout_s`); False if it did not finish."""
        self._queue.put(_STOP)
        self._thread.join(timeout_s)
        return not self._thread.is_alive()

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is _STOP:
                return
            what, doing, fn, args, always = item
            (self._attempt if always else self._guard)(what, doing, fn, *args)
