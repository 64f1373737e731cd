"""A Spakky application publishes integration events and its handlers receive them."""

import asyncio
import json
import threading
from typing import Any

import pytest
from spakky.event.event_publisher import IAsyncEventPublisher, IEventPublisher
from spakky.event.stereotype.event_handler import EventHandler, on_event

from conftest import BrokerAdmin
from spakky.plugins.rabbitmq.transport import AsyncRabbitMQEventTransport

pytestmark = pytest.mark.broker


class Received:
    """Thread-safe record of what handlers saw."""

    def __init__(self) -> None:
        self.items: list[tuple[str, Any]] = []
        self.condition = threading.Condition()

    def add(self, who: str, event: Any) -> None:
        with self.condition:
            self.items.append((who, event))
            self.condition.notify_all()

    def wait(self, count: int, timeout: float = 10.0) -> list[tuple[str, Any]]:
        with self.condition:
            self.condition.wait_for(lambda: len(self.items) >= count, timeout)
            return list(self.items)


def handler_pods(event_type: type, received: Received) -> tuple[type, ...]:
    @EventHandler()
    class AsyncAndSync:
        @on_event(event_type)
        async def on_async(self, event: Any) -> None:
            received.add("async", event)

        @on_event(event_type)
        def on_sync(self, event: Any) -> None:
            received.add("sync", event)

    @EventHandler()
    class Second:
        @on_event(event_type)
        async def on_other(self, event: Any) -> None:
            received.add("other", event)

    return (AsyncAndSync, Second)


async def test_every_handler_gets_every_event_once(
    broker_env: dict[str, str], event_type: type, run_app: Any, broker: BrokerAdmin
) -> None:
    received = Received()
    app = run_app(*handler_pods(event_type, received))
    publisher = app.container.get(IAsyncEventPublisher)
    events = [event_type(user_id=i, email=f"{i}@example.com") for i in range(20)]

    for event in events:
        await publisher.publish(event)
    seen = await asyncio.to_thread(received.wait, 60)
    await asyncio.sleep(0.3)  # would let duplicates arrive

    assert len(received.items) == 60
    for who in ("async", "sync", "other"):
        assert sorted(e.user_id for w, e in seen if w == who) == list(range(20))


def test_sync_publisher_from_threads(
    broker_env: dict[str, str], event_type: type, run_app: Any
) -> None:
    received = Received()
    app = run_app(*handler_pods(event_type, received))
    publisher = app.container.get(IEventPublisher)

    def publish(start: int) -> None:
        for i in range(start, start + 10):
            publisher.publish(event_type(user_id=i, email="x@example.com"))

    threads = [threading.Thread(target=publish, args=(n * 10,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    seen = received.wait(120)

    assert sorted(e.user_id for w, e in seen if w == "sync") == list(range(40))


async def test_message_carries_the_documented_properties(
    broker_env: dict[str, str], event_type: type, unique_name: str, run_app: Any, broker: Any
) -> None:
    app = await asyncio.to_thread(run_app)
    event = event_type(user_id=7, email="p@example.com")

    await app.container.get(IAsyncEventPublisher).publish(event)
    message = await broker.get(unique_name)

    assert message is not None
    properties = message.header.properties
    assert properties.content_type == "application/json"
    assert properties.delivery_mode == 2
    assert properties.message_id == str(event.event_id)
    assert properties.message_type == unique_name
    assert properties.timestamp is not None
    assert isinstance(properties.headers, dict)
    assert json.loads(message.body)["user_id"] == 7


def test_async_publisher_from_callers_own_loops_keeps_one_connection_per_loop(
    broker_env: dict[str, str], event_type: type, unique_name: str, run_app: Any
) -> None:
    received = Received()
    app = run_app(*handler_pods(event_type, received))
    publisher = app.container.get(IAsyncEventPublisher)
    transport = app.container.get(AsyncRabbitMQEventTransport)

    async def web_request(n: int) -> None:
        for i in range(n, n + 5):
            await publisher.publish(event_type(user_id=i, email="w@example.com"))

    def web_server_thread(n: int) -> None:
        with asyncio.Runner() as runner:  # closing it cancels our tasks: connection closed
            runner.run(web_request(n))
            runner.run(web_request(n + 5))
            assert len(transport._publishers) == 2  # pyright: ignore[reportPrivateUsage]

    worker = threading.Thread(target=web_server_thread, args=(0,))
    worker.start()
    worker.join(30)
    seen = received.wait(30)

    assert sorted(e.user_id for w, e in seen if w == "async") == list(range(10))


async def test_a_burst_larger_than_one_write_arrives_whole_and_in_order(
    broker_env: dict[str, str], unique_name: str, run_app: Any, broker: BrokerAdmin
) -> None:
    # Publishes made before the connection's writer runs share one socket write up to a
    # size limit; this burst spans many such writes, with a 1 MiB body in the middle.
    app = await asyncio.to_thread(run_app)
    transport = app.container.get(AsyncRabbitMQEventTransport)
    sizes = [10, 4_000, 70_000] * 20 + [1 << 20] + [100, 140_000] * 10
    payloads = [
        json.dumps({"seq": seq, "fill": "x" * size}).encode() for seq, size in enumerate(sizes)
    ]

    for payload in payloads:
        await transport.send(unique_name, payload, {})
    await transport.flush()

    assert await broker.wait_for_count(unique_name, len(payloads)) == len(payloads)
    received = [await broker.get(unique_name) for _ in payloads]
    assert [message.body if message else None for message in received] == payloads
