"""What ``spakky-rabbitmq-tracing`` costs when no OpenTelemetry SDK is configured.

Runs publish and consume rounds with the tracing package loaded and without it,
alternating in one process, and prints each mode's median throughput and the ratio.
Only the local broker is used; every queue is deleted afterwards.

    .venv/bin/python -m tools.bench.tracing_overhead [--messages 2000] [--rounds 5]
"""

import argparse
import asyncio
import os
import statistics
import sys
import threading
import time
import uuid
from importlib.metadata import entry_points
from typing import Any

import aiormq
from pydantic import TypeAdapter
from spakky.core.application.application import SpakkyApplication
from spakky.core.application.application_context import ApplicationContext
from spakky.core.application.plugin import Plugin
from spakky.core.common.mutability import immutable
from spakky.domain.models.event import AbstractIntegrationEvent
from spakky.event.event_publisher import IAsyncEventPublisher
from spakky.event.stereotype.event_handler import EventHandler, on_event
from spakky.tracing.context import TraceContext

from tools.demo.app import NoDatabaseAsyncTransaction, NoDatabaseTransaction

BROKER_URL = "amqp://guest:guest@127.0.0.1:5672/"
TRACING_PLUGIN = "spakky-rabbitmq-tracing"
PUBLISHERS = 16
PHASE_TIMEOUT = 120.0


def event_type(name: str) -> type[AbstractIntegrationEvent]:
    """An event class published as ``name``."""
    namespace: dict[str, Any] = {"__annotations__": {"user_id": int}}
    namespace["event_name"] = property(lambda self: name)
    return immutable(type(f"Bench_{uuid.uuid4().hex[:6]}", (AbstractIntegrationEvent,), namespace))


class Counter:
    """Counts handled messages; notes when the first and the last arrived."""

    def __init__(self, expected: int) -> None:
        self.expected = expected
        self.count = 0
        self.first = 0.0
        self.last = 0.0
        self.done = threading.Event()
        self._lock = threading.Lock()

    def hit(self) -> None:
        with self._lock:
            self.count += 1
            now = time.perf_counter()
            if self.count == 1:
                self.first = now
            if self.count == self.expected:
                self.last = now
                self.done.set()


def start_app(traced: bool, *pods: object) -> SpakkyApplication:
    """An application with every installed plugin, less the tracing one when not ``traced``."""
    names = {ep.name for ep in entry_points(group="spakky.plugins")}
    if not traced:
        names.discard(TRACING_PLUGIN)
    app = SpakkyApplication(ApplicationContext()).load_plugins(
        include={Plugin(name=name) for name in names}
    )
    for pod in (NoDatabaseTransaction, NoDatabaseAsyncTransaction, *pods):
        app.add(pod)  # type: ignore[arg-type]
    app.start()
    return app


async def publish_round(traced: bool, messages: int, queue: str) -> float:
    """Publishes ``messages`` events from 16 tasks, each with its own trace; events per second."""
    app = await asyncio.to_thread(start_app, traced)
    try:
        publisher = app.container.get(IAsyncEventPublisher)
        event = event_type(queue)

        async def worker(offset: int) -> None:
            TraceContext.set(TraceContext.new_root())
            for user_id in range(offset, messages, PUBLISHERS):
                await publisher.publish(event(user_id=user_id))

        started = time.perf_counter()
        async with asyncio.timeout(PHASE_TIMEOUT):
            await asyncio.gather(*(worker(n) for n in range(PUBLISHERS)))
        return messages / (time.perf_counter() - started)
    finally:
        # From another thread: stopping closes this loop's publisher on this loop.
        await asyncio.to_thread(app.stop)


async def consume_round(traced: bool, messages: int, queue: str) -> float:
    """Handles ``messages`` events waiting in the queue, with trace headers; events per second."""
    event = event_type(queue)
    adapter = TypeAdapter(event)
    connection = await aiormq.connect(BROKER_URL)
    try:
        channel = await connection.channel()
        await channel.queue_declare(queue, durable=True)
        for user_id in range(messages):
            headers = {"traceparent": TraceContext.new_root().to_traceparent()}
            await channel.basic_publish(
                adapter.dump_json(event(user_id=user_id)),
                routing_key=queue,
                properties=aiormq.spec.Basic.Properties(headers=headers, delivery_mode=2),
            )
        await channel.close()
    finally:
        await connection.close()

    counter = Counter(messages)

    @EventHandler()
    class Handler:
        @on_event(event)
        async def count(self, received: AbstractIntegrationEvent) -> None:
            del received
            counter.hit()

    app = await asyncio.to_thread(start_app, traced, Handler)
    try:
        if not await asyncio.to_thread(counter.done.wait, PHASE_TIMEOUT):
            raise TimeoutError(f"only {counter.count} of {messages} messages were handled")
        return (messages - 1) / (counter.last - counter.first)
    finally:
        await asyncio.to_thread(app.stop)


async def delete_queues(queues: list[str]) -> None:
    connection = await aiormq.connect(BROKER_URL)
    try:
        channel = await connection.channel()
        for queue in queues:
            await channel.queue_delete(queue)
        await channel.close()
    finally:
        await connection.close()


async def main(messages: int, rounds: int) -> int:
    for name, value in {
        "SPAKKY_RABBITMQ__HOST": "127.0.0.1",
        "SPAKKY_RABBITMQ__PORT": "5672",
        "SPAKKY_RABBITMQ__USER": "guest",
        "SPAKKY_RABBITMQ__PASSWORD": "guest",
    }.items():
        os.environ.setdefault(name, value)
    results: dict[tuple[str, bool], list[float]] = {}
    queues: list[str] = []
    run = uuid.uuid4().hex[:8]
    try:
        for number in range(rounds):
            # Alternate which mode goes first so drift in the broker hits both alike.
            for traced in (number % 2 == 0, number % 2 != 0):
                for phase, measure in (("publish", publish_round), ("consume", consume_round)):
                    queue = f"bench-tracing-{run}-{phase}-{number}-{int(traced)}"
                    queues += [queue, queue + ".dlq"]
                    rate = await measure(traced, messages, queue)
                    results.setdefault((phase, traced), []).append(rate)
                    print(f"round {number + 1} {phase:7} traced={traced!s:5} {rate:9.0f} msg/s")
    finally:
        await delete_queues(queues)

    print()
    for phase in ("publish", "consume"):
        plain = statistics.median(results[(phase, False)])
        traced = statistics.median(results[(phase, True)])
        print(
            f"{phase:7} median without tracing {plain:9.0f} msg/s, with {traced:9.0f} msg/s, "
            f"ratio {traced / plain:.3f} ({(1 - traced / plain) * 100:+.1f} % slower)"
        )
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=2000, help="per round and phase")
    parser.add_argument("--rounds", type=int, default=5)
    arguments = parser.parse_args()
    if not 1 < arguments.messages <= 50_000 or not 1 <= arguments.rounds <= 20:
        parser.error("--messages must be 2..50000 and --rounds 1..20")
    sys.exit(asyncio.run(main(arguments.messages, arguments.rounds)))
