"""Delivery survives faults: retries, cut connections, slow handlers, shutdown mid-work.

Faults here touch only the test's own connections (through a loopback proxy) or
its own queues, so they run beside other tests; broker-wide faults are in
``test_broker_faults.py``, which runs in its own serial stage.
"""

import asyncio
import json
import logging
import threading
import time
from collections import Counter
from typing import Any

import pytest
from spakky.event.event_publisher import (
    IAsyncEventPublisher,
    IAsyncEventTransport,
    IEventTransport,
)
from spakky.event.stereotype.event_handler import EventHandler, on_event

from conftest import BrokerAdmin, CuttableProxy, make_event_type
from spakky.plugins.rabbitmq.consumer import (
    HEADER_ATTEMPT,
    HEADER_ERROR_MESSAGE,
    HEADER_ERROR_TYPE,
    HEADER_REASON,
)

pytestmark = pytest.mark.broker


async def test_handler_failing_twice_then_succeeding_is_retried_with_delays(
    broker_env: Any,
    monkeypatch: pytest.MonkeyPatch,
    event_type: type,
    unique_name: str,
    run_app: Any,
    broker: BrokerAdmin,
) -> None:
    monkeypatch.setenv("SPAKKY_RABBITMQ__RETRY_DELAYS", "0.2,0.4")
    attempts: list[float] = []
    done = threading.Event()

    @EventHandler()
    class Flaky:
        @on_event(event_type)
        async def handle(self, event: Any) -> None:
            attempts.append(time.monotonic())
            if len(attempts) < 3:
                raise TimeoutError("mail server busy")
            done.set()

    app = await asyncio.to_thread(run_app, Flaky)
    await app.container.get(IAsyncEventPublisher).publish(event_type(user_id=1, email="e"))

    assert await asyncio.to_thread(done.wait, 10)
    assert len(attempts) == 3
    assert attempts[1] - attempts[0] >= 0.2
    assert attempts[2] - attempts[1] >= 0.4
    assert await broker.message_count(unique_name + ".dlq") == 0
    assert await broker.wait_for_count(unique_name + ".retry.0.2s", 0) == 0


async def test_handler_that_always_fails_is_dead_lettered_after_the_last_attempt(
    broker_env: Any,
    monkeypatch: pytest.MonkeyPatch,
    event_type: type,
    unique_name: str,
    run_app: Any,
    broker: BrokerAdmin,
) -> None:
    monkeypatch.setenv("SPAKKY_RABBITMQ__RETRY_DELAYS", "0.2,0.2")
    calls = Counter[int]()

    @EventHandler()
    class Broken:
        @on_event(event_type)
        def handle(self, event: Any) -> None:
            calls[event.user_id] += 1
            raise ValueError(f"cannot handle user {event.user_id}")

    app = await asyncio.to_thread(run_app, Broken)
    await app.container.get(IAsyncEventPublisher).publish(event_type(user_id=8, email="e"))

    assert await broker.wait_for_count(unique_name + ".dlq", 1) == 1
    dead = await broker.get(unique_name + ".dlq")
    assert dead is not None
    headers = dead.header.properties.headers or {}
    assert calls[8] == 3
    assert headers[HEADER_ATTEMPT] == "3"
    assert headers[HEADER_REASON] == "handler_error"
    assert headers[HEADER_ERROR_TYPE] == "ValueError"
    assert headers[HEADER_ERROR_MESSAGE] == "cannot handle user 8"


async def test_cut_connections_lose_no_confirmed_event(
    proxy: CuttableProxy,
    event_type: type,
    unique_name: str,
    run_app: Any,
    broker: BrokerAdmin,
    capsys: pytest.CaptureFixture[str],
) -> None:
    total, batch = 20_000, 500
    handled = Counter[int]()
    lock = threading.Lock()

    @EventHandler()
    class Count:
        @on_event(event_type)
        async def handle(self, event: Any) -> None:
            with lock:
                handled[event.user_id] += 1

    app = await asyncio.to_thread(run_app, Count)
    transport = app.container.get(IAsyncEventTransport)
    confirmed: set[int] = set()
    started = time.monotonic()
    cut_at = {total // 4, total // 2, 3 * total // 4}
    recoveries: list[float] = []
    cut_time = 0.0

    for first in range(0, total, batch):
        numbers = range(first, first + batch)
        if first in cut_at:
            await asyncio.to_thread(proxy.cut, refuse_for=0.5)
            cut_time = time.monotonic()
        for attempt in range(20):  # the caller retries a failed flush, as an outbox would
            try:
                for n in numbers:
                    body = json.dumps(
                        {"event_id": f"00000000-0000-4000-8000-{n:012d}", "user_id": n, "email": ""}
                    )
                    await transport.send(unique_name, body.encode(), {})
                await transport.flush()
                break
            except Exception:
                assert attempt < 19, "publishing never recovered"
                await asyncio.sleep(0.2)
        confirmed.update(numbers)
        if first in cut_at:
            recoveries.append(time.monotonic() - cut_time)

    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and len(handled) < total:  # noqa: ASYNC110
        await asyncio.sleep(0.1)
    await asyncio.sleep(0.5)
    elapsed = time.monotonic() - started

    lost = confirmed - set(handled)
    duplicates = sum(count - 1 for count in handled.values())
    with capsys.disabled():
        print(
            f"\n[fault] proxy cut x{proxy.cuts}: sent {total}, confirmed {len(confirmed)}, "
            f"handled {len(handled)}, lost {len(lost)}, duplicates {duplicates}, "
            f"publish recovery {max(recoveries):.2f} s, run {elapsed:.1f} s"
        )
    assert lost == set()
    assert await broker.consumer_count(unique_name) == 1


async def test_sync_handler_blocking_past_two_heartbeats_keeps_the_connection(
    broker_env: Any,
    monkeypatch: pytest.MonkeyPatch,
    event_type: type,
    unique_name: str,
    run_app: Any,
    broker: BrokerAdmin,
    caplog: pytest.LogCaptureFixture,
) -> None:
    monkeypatch.setenv("SPAKKY_RABBITMQ__HEARTBEAT", "1")
    calls: list[int] = []
    done = threading.Event()

    @EventHandler()
    class Blocking:
        @on_event(event_type)
        def handle(self, event: Any) -> None:
            calls.append(event.user_id)
            time.sleep(3.5)  # blocks the worker thread, not the IO loop
            done.set()

    caplog.set_level(logging.WARNING)
    app = await asyncio.to_thread(run_app, Blocking)
    await app.container.get(IAsyncEventPublisher).publish(event_type(user_id=1, email="e"))

    assert await asyncio.to_thread(done.wait, 15)
    await asyncio.sleep(0.5)
    assert calls == [1]
    assert "reconnect" not in caplog.text
    assert await broker.message_count(unique_name) == 0


async def test_stop_returns_messages_that_did_not_start(
    broker_env: Any,
    monkeypatch: pytest.MonkeyPatch,
    event_type: type,
    unique_name: str,
    run_app: Any,
    broker: BrokerAdmin,
) -> None:
    monkeypatch.setenv("SPAKKY_RABBITMQ__CONCURRENCY", "1")
    finished: list[int] = []
    first_started = threading.Event()

    @EventHandler()
    class Slow:
        @on_event(event_type)
        async def handle(self, event: Any) -> None:
            first_started.set()
            await asyncio.sleep(0.5)
            finished.append(event.user_id)

    app = await asyncio.to_thread(run_app, Slow)
    publisher = app.container.get(IAsyncEventPublisher)
    for n in range(5):
        await publisher.publish(event_type(user_id=n, email="e"))
    assert await asyncio.to_thread(first_started.wait, 10)

    await asyncio.to_thread(app.stop)

    assert finished[:1] == [0]  # order kept with CONCURRENCY=1
    assert finished == sorted(finished)
    assert await broker.message_count(unique_name) == 5 - len(finished)
    assert await broker.message_count(unique_name + ".dlq") == 0


async def test_deleting_one_queue_does_not_stop_the_other_events(
    broker_env: Any,
    unique_name: str,
    run_app: Any,
    broker: BrokerAdmin,
) -> None:
    first_type: Any = make_event_type(unique_name + "-a")
    second_type: Any = make_event_type(unique_name + "-b")
    for name in (unique_name + "-a", unique_name + "-b"):
        for suffix in ("", ".dlq"):
            broker.track("queue", name + suffix)
    received: list[str] = []

    @EventHandler()
    class Two:
        @on_event(first_type)
        async def on_first(self, event: Any) -> None:
            received.append(f"a{event.user_id}")

        @on_event(second_type)
        async def on_second(self, event: Any) -> None:
            received.append(f"b{event.user_id}")

    app = await asyncio.to_thread(run_app, Two)
    publisher = app.container.get(IAsyncEventPublisher)
    channel = await broker.channel()
    await channel.queue_delete(unique_name + "-a")  # the broker cancels that consumer

    await publisher.publish(second_type(user_id=1))
    deadline = time.monotonic() + 10
    while await broker.consumer_count_or_zero(unique_name + "-a") == 0:
        assert time.monotonic() < deadline, "the deleted queue was never consumed again"
        await asyncio.sleep(0.1)
    await publisher.publish(first_type(user_id=2))
    while len(received) < 2 and time.monotonic() < deadline:  # noqa: ASYNC110
        await asyncio.sleep(0.05)

    assert sorted(received) == ["a2", "b1"]


def test_sync_publisher_and_sync_consumer_survive_a_cut(
    proxy: CuttableProxy,
    event_type: type,
    unique_name: str,
    run_app: Any,
    capsys: pytest.CaptureFixture[str],
) -> None:
    total, batch = 3000, 250
    handled = Counter[int]()
    lock = threading.Lock()

    @EventHandler()
    class SyncCount:
        @on_event(event_type)
        def handle(self, event: Any) -> None:
            with lock:
                handled[event.user_id] += 1

    app = run_app(SyncCount)
    transport = app.container.get(IEventTransport)
    confirmed: set[int] = set()

    for first in range(0, total, batch):
        if first == total // 2:
            proxy.cut(refuse_for=0.5)
        numbers = range(first, first + batch)
        for attempt in range(20):
            try:
                for n in numbers:
                    body = {"event_id": f"00000000-0000-4000-8000-{n:012d}", "user_id": n}
                    transport.send(unique_name, json.dumps(body | {"email": ""}).encode(), {})
                transport.flush()
                break
            except Exception:
                assert attempt < 19, "publishing never recovered"
                time.sleep(0.2)
        confirmed.update(numbers)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not confirmed <= set(handled):
        time.sleep(0.1)

    lost = confirmed - set(handled)
    with capsys.disabled():
        print(
            f"\n[fault] sync pair, proxy cut x{proxy.cuts}: sent {total}, lost {len(lost)}, "
            f"duplicates {sum(c - 1 for c in handled.values())}"
        )
    assert lost == set()
