"""The worker's app threads and the hand-off between them and the event loop.

Towards the threads, calls go through a ``queue.SimpleQueue`` (implemented in C: a put
is one lock operation, no future and no task per call). Back towards the loop, the
threads append events to one ``deque`` and wake the loop only when it is not already
due to look: a burst of answers costs one wake-up (one write to the loop's self-pipe),
and the loop drains everything that arrived in one pass.

Rules for the wake-up flag (``_scheduled``): a thread appends first, then checks the
flag; the loop clears the flag first, then drains. So an event appended after the
drain started is either seen by that drain or finds the flag clear and schedules
another; none is left behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import threading
import traceback
from collections import deque
from collections.abc import Callable
from typing import Any


class AppPool:
    def __init__(self, loop: asyncio.AbstractEventLoop, threads: int, name: str = "app") -> None:
        self.loop = loop
        self.size = threads
        self.jobs: queue.SimpleQueue[Callable[[], None] | None] = queue.SimpleQueue()
        self.ready: deque[tuple[Any, int, Any]] = deque()  # (answer, kind, payload)
        self._scheduled = False
        self._threads: list[threading.Thread] = []
        self._name = name

    def _start_threads(self) -> None:
        for i in range(self.size):
            thread = threading.Thread(
                target=self._work, name=f"portico-{self._name}-{i}", daemon=True
            )
            thread.start()
            self._threads.append(thread)

    def submit(self, job: Callable[[], None]) -> None:
        if not self._threads:
            self._start_threads()
        self.jobs.put(job)

    def _work(self) -> None:
        jobs = self.jobs
        while True:
            job = jobs.get()
            if job is None:
                return
            # a job reports its own errors; the thread must survive anything
            with contextlib.suppress(BaseException):
                job()

    # -- the hand-off back to the loop ---------------------------------------------------

    def deliver(self, answer: Any, kind: int, payload: Any) -> None:
        """From an app thread: queue an event for ``answer`` (answer.py), on the loop."""
        self.ready.append((answer, kind, payload))
        if not self._scheduled:
            self._scheduled = True
            with contextlib.suppress(RuntimeError):  # the loop is closed: we are exiting
                self.loop.call_soon_threadsafe(self._drain)

    def _drain(self) -> None:
        self._scheduled = False
        ready = self.ready
        while ready:
            answer, kind, payload = ready.popleft()
            try:
                answer.handle(kind, payload)
            except Exception:  # one broken answer must not lose the others' events
                answer.fail(traceback.format_exc())

    def shutdown(self, timeout: float = 5.0) -> None:
        for _ in self._threads:
            self.jobs.put(None)
        for thread in self._threads:
            thread.join(timeout)
        self._threads.clear()
