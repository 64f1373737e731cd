"""Worker threads for sync handlers, with fewer wake-ups of the event loop than an executor."""

import asyncio
import logging
import queue
import threading
from collections import deque
from collections.abc import Callable

logger = logging.getLogger(__name__)

type _Job[T] = tuple[asyncio.Future[T], Callable[[], T]]


class HandlerThreads[T]:
    """A fixed set of threads that run calls for one event loop and return their results.

    ``loop.run_in_executor`` wakes the loop once for every call that finishes. Here a
    thread that finishes a call wakes the loop only if no wake-up is pending, and the
    loop then settles every finished call at once: when handlers are short and many
    messages are in flight, most results ride on a wake-up that was due anyway.
    """

    def __init__(self, workers: int, name: str) -> None:
        """Start ``workers`` daemon threads called ``name-<n>``; call from the loop."""
        self._loop = asyncio.get_running_loop()
        self._jobs: queue.SimpleQueue[_Job[T] | None] = queue.SimpleQueue()
        self._finished: deque[tuple[asyncio.Future[T], T | None, BaseException | None]] = deque()
        self._wake_pending = False
        self._threads = [
            threading.Thread(target=self._work, name=f"{name}-{number}", daemon=True)
            for number in range(workers)
        ]
        for thread in self._threads:
            thread.start()

    def run(self, call: Callable[[], T]) -> asyncio.Future[T]:
        """Run ``call`` on a worker thread; the future settles on this loop."""
        future: asyncio.Future[T] = self._loop.create_future()
        self._jobs.put((future, call))
        return future

    def shutdown(self) -> None:
        """Cancel calls that have not started; threads end after their current call."""
        while True:
            try:
                job = self._jobs.get_nowait()
            except queue.Empty:
                break
            if job is not None:
                job[0].cancel()
        for _ in self._threads:
            self._jobs.put(None)

    def _work(self) -> None:
        while (job := self._jobs.get()) is not None:
            future, call = job
            if future.done():
                continue  # cancelled while queued: its message goes back to the broker
            result: T | None = None
            error: BaseException | None = None
            try:
                result = call()
            except BaseException as raised:  # handed to the awaiting task, never lost here
                error = raised
            self._finished.append((future, result, error))
            if not self._wake_pending:
                self._wake_pending = True
                try:
                    self._loop.call_soon_threadsafe(self._settle_finished)
                except RuntimeError:  # the loop closed; nobody waits for the result
                    logger.debug("a handler finished after its event loop closed")

    def _settle_finished(self) -> None:
        # Cleared before draining: a thread that finishes from here on schedules
        # another pass, one that finished before is drained by this one.
        self._wake_pending = False
        while self._finished:
            future, result, error = self._finished.popleft()
            if future.done():
                continue
            if error is not None:
                future.set_exception(error)
            else:
                future.set_result(result)  # type: ignore[arg-type]  # None only with error
