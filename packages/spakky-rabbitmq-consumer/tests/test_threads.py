"""HandlerThreads: sync calls on worker threads, results settled on the loop in batches."""

import asyncio
import threading

import pytest

from spakky.plugins.rabbitmq.consumer._threads import HandlerThreads  # internals under test


async def test_every_result_and_error_reaches_its_own_future() -> None:
    threads = HandlerThreads[int](4, "test-handlers")
    try:

        def call(number: int) -> int:
            if number % 7 == 0:
                raise ValueError(number)
            return number * 2

        futures = [threads.run(lambda number=number: call(number)) for number in range(2000)]
        results = await asyncio.wait_for(
            asyncio.gather(*futures, return_exceptions=True), timeout=30
        )
    finally:
        threads.shutdown()

    for number, result in enumerate(results):
        if number % 7 == 0:
            assert isinstance(result, ValueError)
            assert result.args == (number,)
        else:
            assert result == number * 2


async def test_calls_run_on_the_named_worker_threads_not_the_loop() -> None:
    threads = HandlerThreads[str](2, "test-handlers")
    try:
        names = await asyncio.gather(
            *(threads.run(lambda: threading.current_thread().name) for _ in range(20))
        )
    finally:
        threads.shutdown()

    assert set(names) <= {"test-handlers-0", "test-handlers-1"}


async def test_shutdown_cancels_calls_that_did_not_start() -> None:
    threads = HandlerThreads[None](1, "test-handlers")
    release = threading.Event()
    began = threading.Event()
    started: list[int] = []

    def blocking(number: int) -> None:
        started.append(number)
        began.set()
        release.wait(10)

    running = threads.run(lambda: blocking(0))
    queued = [threads.run(lambda number=number: blocking(number)) for number in range(1, 4)]
    assert await asyncio.to_thread(began.wait, 10)
    threads.shutdown()
    release.set()
    await asyncio.wait_for(running, timeout=10)

    assert all(future.cancelled() for future in queued)
    assert started == [0]


async def test_a_cancelled_waiter_does_not_break_later_results() -> None:
    threads = HandlerThreads[int](1, "test-handlers")
    release = threading.Event()
    try:
        slow = threads.run(lambda: release.wait(10) and 1)
        slow.cancel()
        release.set()
        assert await asyncio.wait_for(threads.run(lambda: 2), timeout=10) == 2
        with pytest.raises(asyncio.CancelledError):
            await slow
    finally:
        threads.shutdown()
