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


class Threaded(Guarded):
    """A tracker callback whose calls run on its own `Worker` thread (the driver only queues
    them). What lives only in this driver (the thread, clients, open runs) is set by
    `_reset` and left out when Tune pickles the callback into the experiment folder."""

    TRANSIENT: tuple[str, ...] = ()  # a subclass's attributes that `_reset` sets

    def _reset(self) -> None:
        self._worker: Worker | None = None

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        for key in ("_worker", *self.TRANSIENT):
            state.pop(key, None)
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._reset()

    def _submit(self, what: str, doing: str, fn, *args, always: bool = False) -> None:
        if self._worker is None:  # Tune calls setup first; a guard for callers that do not
            self.setup()
        self._worker.submit(what, doing, fn, *args, always=always)
