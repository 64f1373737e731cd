"""What ``spakky-rabbitmq-tracing`` costs when no OpenTelemetry SDK is configured.

Two applications run side by side, one with the tracing package loaded and one
without; rounds of publishing and consuming alternate between them after a warm-up.
Prints each side's median throughput, the ratio, and the interceptors' own CPU time
per message, which the broker's noise does not blur.
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
import timeit
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
from spakky.tracing.w3c_propagator import W3CTracePropagator

from spakky.plugins.rabbitmq.consumer.interceptor import HandlerInfo, InboundMessage
from spakky.plugins.rabbitmq.tracing import TracingConsumeInterceptor, TracingPublishInterceptor
from spakky.plugins.rabbitmq.transport.interceptor import OutboundMessage
from tools.demo.app import NoDatabaseAsyncTransaction, NoDatabaseTransaction

BROKER_URL = "amqp://guest:guest@127.0.0.1:5672/"
TRACING_PLUGIN = "spakky-rabbitmq-tracing"
PUBLISHERS = 16
PHASE_TIMEOUT = 120.0


def event_type(name: str) -> type[Any]:
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


class Side:
    """One running application (traced or not) with its publish and consume queues."""

    def __init__(self, traced: bool, run: str, messages: int) -> None:
        self.traced = traced
        self.publish_queue = f"bench-tracing-{run}-{int(traced)}-publish"
        self.consume_queue = f"bench-tracing-{run}-{int(traced)}-consume"
        self.publish_event = event_type(self.publish_queue)
        self.consume_event = event_type(self.consume_queue)
        self.counter = Counter(messages)
        counter = self

        @EventHandler()
        class Handler:
            @on_event(self.consume_event)
            async def count(self, received: AbstractIntegrationEvent) -> None:
                del received
                counter.counter.hit()

        self.app = start_app(traced, Handler)

    @property
    def queues(self) -> list[str]:
        return [
            self.publish_queue,
            self.consume_queue,
            self.consume_queue + ".dlq",
        ]


async def publish_round(side: Side, messages: int) -> float:
    """Publishes ``messages`` events from 16 tasks, each with its own trace; events per second."""
    publisher = side.app.container.get(IAsyncEventPublisher)

    async def worker(offset: int) -> None:
        TraceContext.set(TraceContext.new_root())
        for user_id in range(offset, messages, PUBLISHERS):
            await publisher.publish(side.publish_event(user_id=user_id))

    started = time.perf_counter()
    async with asyncio.timeout(PHASE_TIMEOUT):
        await asyncio.gather(*(worker(n) for n in range(PUBLISHERS)))
    return messages / (time.perf_counter() - started)


async def consume_round(side: Side, messages: int, channel: Any) -> float:
    """Handles ``messages`` events with trace headers, sent faster than they are handled."""
    side.counter = Counter(messages)
    adapter = TypeAdapter(side.consume_event)
    bodies = [adapter.dump_json(side.consume_event(user_id=n)) for n in range(messages)]
    # All at once on a channel without confirms: the broker outpaces the consumer.
    await asyncio.gather(
        *(
            channel.basic_publish(
                body,
                routing_key=side.consume_queue,
                properties=aiormq.spec.Basic.Properties(
                    headers={"traceparent": TraceContext.new_root().to_traceparent()},
                    delivery_mode=2,
                ),
            )
            for body in bodies
        )
    )
    counter = side.counter
    if not await asyncio.to_thread(counter.done.wait, PHASE_TIMEOUT):
        raise TimeoutError(f"only {counter.count} of {messages} messages were handled")
    return (messages - 1) / (counter.last - counter.first)


def interceptor_cost(repeat: int = 20_000) -> tuple[float, float]:
    """CPU time in microseconds of one publish and one handler call in the interceptors."""
    propagator = W3CTracePropagator()
    publish = TracingPublishInterceptor(propagator)
    consume = TracingConsumeInterceptor(propagator)
    traceparent = TraceContext.new_root().to_traceparent()
    handler = HandlerInfo("bench.Handler.count", AbstractIntegrationEvent, True, lambda e: None)
    inbound = InboundMessage("bench", "bench", "id", {"traceparent": traceparent}, 64, False, 1)
    event = event_type("bench")(user_id=1)

    def one_publish() -> None:
        publish.before_publish(
            OutboundMessage("bench", "", "bench", "id", b"{}", {"traceparent": traceparent})
        )

    def one_handler_call() -> None:
        with consume.intercept(inbound, handler, event):
            pass

    return (
        timeit.timeit(one_publish, number=repeat) / repeat * 1e6,
        timeit.timeit(one_handler_call, number=repeat) / repeat * 1e6,
    )


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
        "SPAKKY_RABBITMQ__RETRY_DELAYS": "",
    }.items():
        os.environ.setdefault(name, value)
    run = uuid.uuid4().hex[:8]
    sides = [await asyncio.to_thread(Side, traced, run, messages) for traced in (True, False)]
    results: dict[tuple[str, bool], list[float]] = {}
    connection = await aiormq.connect(BROKER_URL)
    try:
        channel = await connection.channel()
        for number in range(rounds + 1):
            # Alternate which side goes first so drift in the broker hits both alike.
            for side in sides if number % 2 else reversed(sides):
                rates = (
                    await publish_round(side, messages),
                    await consume_round(side, messages, channel),
                )
                if number == 0:
                    continue  # warm-up: connections, declarations, caches
                for phase, rate in zip(("publish", "consume"), rates, strict=True):
                    results.setdefault((phase, side.traced), []).append(rate)
                print(
                    f"round {number} traced={side.traced!s:5} "
                    f"publish {rates[0]:6.0f} msg/s  consume {rates[1]:6.0f} msg/s"
                )
    finally:
        for side in sides:
            await asyncio.to_thread(side.app.stop)  # stopping closes this loop's publisher
        await connection.close()
        await delete_queues([queue for side in sides for queue in side.queues])

    print()
    per_message: dict[str, float] = {}
    for phase in ("publish", "consume"):
        plain = statistics.median(results[(phase, False)])
        traced = statistics.median(results[(phase, True)])
        per_message[phase] = 1e6 / plain
        print(
            f"{phase:7} median without tracing {plain:6.0f} msg/s, with {traced:6.0f} msg/s: "
            f"ratio {traced / plain:.3f} ({(1 - traced / plain) * 100:+.1f} % slower)"
        )
    costs = dict(zip(("publish", "consume"), interceptor_cost(), strict=True))
    for phase, cost in costs.items():
        share = cost / per_message[phase] * 100
        print(
            f"{phase:7} interceptor CPU {cost:5.1f} us per message, "
            f"{share:.1f} % of the {per_message[phase]:.0f} us a message takes without tracing"
        )
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--messages", type=int, default=2000, help="per round and phase")
    parser.add_argument("--rounds", type=int, default=5)
    arguments = parser.parse_args()
    if not 1 < arguments.messages <= 50_000 or not 1 <= arguments.rounds <= 20:
        parser.error("--messages must be 2..50000 and --rounds 1..20")
    sys.exit(asyncio.run(main(arguments.messages, arguments.rounds)))
