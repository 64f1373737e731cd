"""A private event loop on its own thread, for the sync transport and consumer."""

import asyncio
import threading
from collections.abc import Callable, Coroutine
from typing import Any

_JOIN_TIMEOUT = 15.0


class IOThread:
    """Runs an asyncio loop on a daemon thread until `stop` is called.

    Example:
        io = IOThread("spakky-rabbitmq-publisher")
        result = io.run(some_coroutine(), timeout=10)
        io.stop()
    """

    def __init__(self, name: str) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    @classmethod
    def start_with[T](
        cls, name: str, opener: Callable[[], Coroutine[Any, Any, T]]
    ) -> "tuple[IOThread, T]":
        """Start a thread and run ``opener()`` on it; stop the thread again if that fails."""
        io = cls(name)
        try:
            return io, io.run(opener())
        except BaseException:
            io.stop()
            raise

    def finish(self, closer: Coroutine[Any, Any, object], timeout: float) -> None:
        """Run ``closer`` (bounded by ``timeout``), then stop the thread whatever happened."""
        try:
            self.run(closer, timeout)
        finally:
            self.stop()

    def run[T](self, coroutine: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
        """Run ``coroutine`` on the IO loop and wait for its result, at most ``timeout`` s."""
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout)

    def call_soon(self, callback: Callable[[], object]) -> None:
        """Schedule ``callback`` on the IO loop from any thread.

        Raises:
            RuntimeError: The loop is already closed.
        """
        self.loop.call_soon_threadsafe(callback)

    def stop(self) -> None:
        """Stop the loop and wait for the thread, bounded."""
        if self.loop.is_closed():
            return
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(_JOIN_TIMEOUT)

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        try:
            self.loop.run_forever()
        finally:
            self.loop.run_until_complete(self.loop.shutdown_asyncgens())
            self.loop.close()
