"""Raw aiormq baselines: the same broker, messages and sizes, without Spakky."""

import asyncio
import gc
import time
from collections.abc import AsyncGenerator, Awaitable
from contextlib import asynccontextmanager, suppress
from datetime import UTC, datetime
from typing import Protocol

import aiormq
import aiormq.abc
from pamqp import commands as spec

from tools.bench._common import (
    BROKER_URL,
    PREFETCH,
    Counts,
    Deadline,
    Figure,
    Tally,
    make_event_type,
    make_events,
    payloads_of,
    percentile,
    rate_figure,
    rss_bytes,
    unique_name,
)

_PERSISTENT = 2
_TRANSIENT = 1


class Broker:
    """One raw connection for a round: declares, fills and deletes bench queues."""

    def __init__(self, connection: aiormq.abc.AbstractConnection) -> None:
        self.connection = connection
        self._queues: list[str] = []

    async def queue(self, scenario: str) -> str:
        """Declare a durable queue with a fresh name; it is deleted by `cleanup`."""
        name = unique_name(scenario)
        self.track(name)
        channel = await self.connection.channel()
        await channel.queue_declare(name, durable=True)
        await channel.close()
        return name

    def track(self, name: str) -> None:
        """Delete ``name`` and its dead-letter queue at cleanup."""
        self._queues += [name, f"{name}.dlq"]

    async def fill(self, queue: str, payloads: list[bytes], deadline: Deadline) -> int:
        """Publish ``payloads`` to ``queue`` with confirms; returns how many went."""
        channel = await self.connection.channel(publisher_confirms=True)
        try:
            return await _pipelined(channel, queue, payloads, 1000, _PERSISTENT, deadline)
        finally:
            await channel.close()

    async def cleanup(self) -> None:
        """Delete every queue this round made (a missing one is fine)."""
        channel = await self.connection.channel()
        for name in self._queues:
            await channel.queue_delete(name)
        await channel.close()
        self._queues.clear()


@asynccontextmanager
async def broker() -> AsyncGenerator[Broker]:
    """A raw connection to the local broker that removes its queues on exit."""
    connection = await aiormq.connect(BROKER_URL)
    admin = Broker(connection)
    try:
        yield admin
    finally:
        try:
            await admin.cleanup()
        finally:
            await connection.close()


def _properties(payload_id: str, delivery_mode: int) -> spec.Basic.Properties:
    return spec.Basic.Properties(
        content_type="application/json",
        delivery_mode=delivery_mode,
        message_id=payload_id,
        timestamp=datetime.now(UTC),
        message_type="bench",
        headers={},
    )


async def _pipelined(
    channel: aiormq.abc.AbstractChannel,
    queue: str,
    payloads: list[bytes],
    window: int,
    delivery_mode: int,
    deadline: Deadline,
) -> int:
    sent = 0
    for start in range(0, len(payloads), window):
        if deadline.passed:
            break
        chunk = payloads[start : start + window]
        publishes: list[Awaitable[object]] = [
            channel.basic_publish(
                body,
                routing_key=queue,
                properties=_properties(str(start + offset), delivery_mode),
                mandatory=True,
            )
            for offset, body in enumerate(chunk)
        ]
        await asyncio.gather(*publishes)
        sent += len(chunk)
    return sent


def _payloads(scenario: str, count: int) -> list[bytes]:
    return payloads_of(make_events(make_event_type(scenario), count))


async def pipelined(admin: Broker, counts: Counts) -> Figure:
    """Publish with confirms, ``batch`` messages gathered at a time."""
    queue = await admin.queue("raw-pipelined")
    payloads = _payloads(queue, counts.pipelined)
    channel = await admin.connection.channel(publisher_confirms=True)
    deadline = Deadline(counts.timeout)

    started, cpu = time.perf_counter(), time.process_time()
    sent = await _pipelined(channel, queue, payloads, counts.batch, _PERSISTENT, deadline)
    elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu

    await channel.close()
    return rate_figure("raw_pipelined", sent, elapsed, timed_out=sent < len(payloads), cpu=cpu)


class EachConfirm:
    """Raw aiormq publishing one message at a time, awaiting each confirm.

    It runs in slices, so that a Spakky scenario can alternate with it: the broker's
    confirm latency for persistent messages (a disk sync) drifts over seconds, and
    alternating slices puts both sides under the same drift.
    """

    def __init__(self, admin: Broker, counts: Counts, *, persistent: bool) -> None:
        self.kind = "persistent" if persistent else "transient"
        self._admin = admin
        self._count = counts.each
        self._mode = _PERSISTENT if persistent else _TRANSIENT
        self._deadline = Deadline(counts.timeout)
        self._tally = Tally()
        self._queue = ""
        self._payloads: list[bytes] = []
        self._channel: aiormq.abc.AbstractChannel | None = None

    async def open(self) -> None:
        """Declare the queue and open the confirm channel."""
        self._queue = await self._admin.queue(f"raw-each-{self.kind}")
        self._payloads = _payloads(self._queue, self._count)
        self._channel = await self._admin.connection.channel(publisher_confirms=True)

    async def run(self, count: int) -> None:
        """Publish the next ``count`` messages (fewer at the end or past the time bound)."""
        assert self._channel is not None, "open() first"
        start = self._tally.sent
        chunk = self._payloads[start : start + count]
        self._tally.start()
        sent = 0
        for body in chunk:
            if self._deadline.passed:
                break
            properties = _properties(str(start + sent), self._mode)
            await self._channel.basic_publish(
                body, routing_key=self._queue, properties=properties, mandatory=True
            )
            sent += 1
        self._tally.stop(sent)

    async def close(self) -> Figure:
        """Close the channel; the figure over every slice run."""
        if self._channel is not None:
            await self._channel.close()
        return self._tally.figure(f"raw_each_{self.kind}", self._count)


async def each_confirm(admin: Broker, counts: Counts, *, persistent: bool) -> Figure:
    """Publish one message and await its confirm before the next, in one go."""
    raw = EachConfirm(admin, counts, persistent=persistent)
    await raw.open()
    await raw.run(counts.each)
    return await raw.close()


class _Receiver:
    """Counts deliveries on a raw consumer, acknowledging each one."""

    def __init__(self, channel: aiormq.abc.AbstractChannel, expected: int) -> None:
        self.channel = channel
        self.expected = expected
        self.handled = 0
        self.first = 0.0
        self.last = 0.0
        self.cpu_first = self.cpu_last = 0.0
        self.latencies: list[float] = []
        self.done = asyncio.Event()
        self.stamped = False

    async def __call__(self, message: aiormq.abc.DeliveredMessage) -> None:
        now = time.perf_counter()
        if self.stamped:
            self.latencies.append(now - float(message.body.split(b" ", 1)[0]))
        tag = message.delivery.delivery_tag  # type: ignore[union-attr]
        await self.channel.basic_ack(tag)  # pyright: ignore[reportArgumentType]
        self.handled += 1
        if self.handled == 1:
            self.first, self.cpu_first = now, time.process_time()
        self.last, self.cpu_last = time.perf_counter(), time.process_time()
        if self.handled >= self.expected:
            self.done.set()


async def _consumer(
    admin: Broker, queue: str, expected: int
) -> tuple[aiormq.abc.AbstractChannel, _Receiver]:
    channel = await admin.connection.channel()
    await channel.basic_qos(prefetch_count=PREFETCH)
    receiver = _Receiver(channel, expected)
    await channel.basic_consume(queue, receiver)
    return channel, receiver


async def _wait(event: asyncio.Event, deadline: Deadline) -> None:
    with suppress(TimeoutError):
        await asyncio.wait_for(event.wait(), deadline.left())


async def consume(admin: Broker, counts: Counts) -> Figure:
    """Drain a backlog with prefetch `PREFETCH`, acknowledging one by one."""
    queue = await admin.queue("raw-consume")
    filled = await admin.fill(queue, _payloads(queue, counts.consume), Deadline(counts.timeout))
    deadline = Deadline(counts.timeout)

    channel, receiver = await _consumer(admin, queue, filled)
    await _wait(receiver.done, deadline)

    await channel.close()
    return span_figure("raw_consume", receiver, filled)


class Span(Protocol):
    """First and last handled message, in wall and process CPU time."""

    handled: int
    first: float
    last: float
    cpu_first: float
    cpu_last: float


def span_figure(scenario: str, span: Span, expected: int) -> Figure:
    """Rate from the first to the last handled message; set-up is not counted."""
    return rate_figure(
        scenario,
        max(0, span.handled - 1),
        span.last - span.first,
        timed_out=span.handled < expected,
        cpu=span.cpu_last - span.cpu_first,
    )


async def end_to_end(admin: Broker, counts: Counts) -> Figure:
    """Publish pipelined while a consumer on another channel drains the same queue."""
    queue = await admin.queue("raw-e2e")
    payloads = _payloads(queue, counts.consume)
    channel, receiver = await _consumer(admin, queue, len(payloads))
    publisher = await admin.connection.channel(publisher_confirms=True)
    deadline = Deadline(counts.timeout)

    started = time.perf_counter()
    sent = await _pipelined(publisher, queue, payloads, counts.batch, _PERSISTENT, deadline)
    receiver.expected = sent
    await _wait(receiver.done, deadline)
    elapsed = receiver.last - started

    await publisher.close()
    await channel.close()
    return rate_figure("raw_end_to_end", receiver.handled, elapsed, timed_out=sent < len(payloads))


async def latency(admin: Broker, counts: Counts) -> Figure:
    """Publish at ``rate`` msg/s (confirms not awaited in line) and time each delivery."""
    queue = await admin.queue("raw-latency")
    channel, receiver = await _consumer(admin, queue, counts.latency)
    receiver.stamped = True
    publisher = await admin.connection.channel(publisher_confirms=True)
    gc.collect()  # the garbage of earlier scenarios is not this one's to collect
    deadline = Deadline(counts.timeout)
    padding = b" " + b"p" * 180
    pending: set[asyncio.Task[object]] = set()

    started = time.perf_counter()
    for seq in range(counts.latency):
        if deadline.passed:
            break
        await _sleep_until(started + seq / counts.rate)
        body = repr(time.perf_counter()).encode() + padding
        task = asyncio.ensure_future(
            publisher.basic_publish(
                body, routing_key=queue, properties=_properties(str(seq), _PERSISTENT)
            )
        )
        pending.add(task)
        task.add_done_callback(pending.discard)
    await asyncio.gather(*pending)
    await _wait(receiver.done, deadline)

    await publisher.close()
    await channel.close()
    return latency_figure("raw_latency", receiver.latencies, counts.latency)


async def _sleep_until(moment: float) -> None:
    delay = moment - time.perf_counter()
    if delay > 0:
        await asyncio.sleep(delay)


def latency_figure(scenario: str, latencies: list[float], expected: int) -> Figure:
    """p99 in milliseconds as the value; p50 and max beside it."""
    milliseconds = [value * 1000 for value in latencies]
    return Figure(
        scenario,
        percentile(milliseconds, 0.99),
        "ms p99",
        len(milliseconds),
        0.0,
        timed_out=len(milliseconds) < expected,
        extra={
            "p50_ms": percentile(milliseconds, 0.50),
            "p99_ms": percentile(milliseconds, 0.99),
            "max_ms": max(milliseconds, default=0.0),
        },
    )


async def memory(admin: Broker, counts: Counts) -> Figure:
    """RSS growth while ``memory`` messages go through publish and consume."""
    queue = await admin.queue("raw-memory")
    event_type = make_event_type(queue)
    channel, receiver = await _consumer(admin, queue, counts.memory)
    publisher = await admin.connection.channel(publisher_confirms=True)
    deadline = Deadline(counts.timeout * 4)

    gc.collect()
    before = rss_bytes()
    sent = 0
    while sent < counts.memory and not deadline.passed:
        size = min(counts.batch, counts.memory - sent)
        chunk = payloads_of(make_events(event_type, size, sent))
        sent += await _pipelined(publisher, queue, chunk, size, _PERSISTENT, deadline)
    receiver.expected = sent
    await _wait(receiver.done, deadline)
    gc.collect()
    after = rss_bytes()

    await publisher.close()
    await channel.close()
    return memory_figure("raw_memory", receiver.handled, before, after, counts.memory)


def memory_figure(scenario: str, handled: int, before: int, after: int, expected: int) -> Figure:
    """RSS growth in MB as the value."""
    return Figure(
        scenario,
        (after - before) / 1e6,
        "MB growth",
        handled,
        0.0,
        timed_out=handled < expected,
        extra={"rss_before_mb": before / 1e6, "rss_after_mb": after / 1e6},
    )
