"""The same workloads through Spakky's public interfaces and the installed plugins."""

import asyncio
import gc
import importlib.util
import threading
import time
from collections.abc import Awaitable, Callable, Generator
from contextlib import contextmanager
from functools import partial
from importlib.metadata import entry_points
from typing import Any

from spakky.core.application.application import SpakkyApplication
from spakky.core.application.application_context import ApplicationContext
from spakky.core.application.plugin import Plugin
from spakky.event.event_publisher import (
    IAsyncEventPublisher,
    IAsyncEventTransport,
    IEventPublisher,
)
from spakky.event.stereotype.event_handler import EventHandler, on_event

from tools.bench._common import (
    SLICES,
    BenchEvent,
    Counts,
    Deadline,
    Figure,
    Tally,
    make_event_type,
    make_events,
    payloads_of,
    rate_figure,
    rss_bytes,
    unique_name,
)
from tools.bench._raw import Broker, EachConfirm, latency_figure, memory_figure, span_figure
from tools.demo.app import NoDatabaseAsyncTransaction, NoDatabaseTransaction

EXTRA_MODULES = ("spakky.plugins.rabbitmq.tracing", "spakky.plugins.rabbitmq.auth")
"""The packages of the "tracing and auth active" scenario."""
_EXTRA_PLUGIN_MARKERS = ("rabbitmq-tracing", "rabbitmq-auth")


def extras_available() -> list[str]:
    """Which of `EXTRA_MODULES` this environment can import."""
    return [name for name in EXTRA_MODULES if importlib.util.find_spec(name) is not None]


def _plugins(*, extras: bool) -> set[Plugin]:
    names = {entry.name for entry in entry_points(group="spakky.plugins")}
    if not extras:
        names = {name for name in names if not any(m in name for m in _EXTRA_PLUGIN_MARKERS)}
    return {Plugin(name=name) for name in names}


def start_app(*pods: type, extras: bool = False) -> SpakkyApplication:
    """Start an application with the installed plugins (tracing and auth only if ``extras``).

    With ``extras`` both are active as they are in a service: tracing because spakky-tracing
    is loaded (every publish and handler call gets its trace context; no OpenTelemetry SDK
    is configured), auth because spakky-auth is loaded (every handler call reads and checks
    the snapshot headers; the bench's handlers are unprotected and its messages carry none).
    """
    app = SpakkyApplication(ApplicationContext()).load_plugins(include=_plugins(extras=extras))
    for pod in (NoDatabaseTransaction, NoDatabaseAsyncTransaction, *pods):
        app.add(pod)
    app.start()
    return app


@contextmanager
def running(*pods: type, extras: bool = False) -> Generator[SpakkyApplication]:
    """A started application that is stopped on exit (call from a thread, not a loop)."""
    app = start_app(*pods, extras=extras)
    try:
        yield app
    finally:
        app.stop()


class Probe:
    """What the handlers saw: how many events, when, and how late."""

    def __init__(self, expected: int) -> None:
        self.expected = expected
        self.handled = 0
        self.first = 0.0
        self.last = 0.0
        self.cpu_first = self.cpu_last = 0.0
        self.latencies: list[float] = []
        self.stamped = False
        self.done = threading.Event()
        self._lock = threading.Lock()

    def hit(self, event: BenchEvent) -> None:
        """Record one handled event."""
        now = time.perf_counter()
        with self._lock:
            if self.stamped:
                self.latencies.append(now - event.sent_at)
            self.handled += 1
            if self.handled == 1:
                self.first, self.cpu_first = now, time.process_time()
            self.last, self.cpu_last = now, time.process_time()
            if self.handled >= self.expected:
                self.done.set()

    def expect(self, expected: int) -> None:
        """Lower the target to what was actually sent (a scenario that hit its time bound)."""
        with self._lock:
            self.expected = expected
            if self.handled >= expected:
                self.done.set()

    def reset(self, expected: int) -> None:
        """Start counting again towards ``expected``."""
        with self._lock:
            self.expected = expected
            self.handled = 0
            self.latencies.clear()
            self.done.clear()


def handler_pod(event_type: type[BenchEvent], probe: Probe, *, is_async: bool) -> type:
    """An ``@EventHandler`` class whose one handler reports to ``probe``."""
    if is_async:

        @EventHandler()
        class AsyncProbeHandler:
            @on_event(event_type)
            async def handle(self, event: BenchEvent) -> None:
                probe.hit(event)

        return AsyncProbeHandler

    @EventHandler()
    class SyncProbeHandler:
        @on_event(event_type)
        def handle(self, event: BenchEvent) -> None:
            probe.hit(event)

    return SyncProbeHandler


class Session:
    """The Spakky scenarios of one round, sharing one publishing application."""

    def __init__(self, admin: Broker, counts: Counts, app: SpakkyApplication) -> None:
        self.admin = admin
        self.counts = counts
        self.app = app

    def _event_type(self, scenario: str) -> type[BenchEvent]:
        name = unique_name(scenario)
        self.admin.track(name)
        return make_event_type(name)

    async def _warm(self, event_type: type[BenchEvent]) -> IAsyncEventPublisher:
        # The first publish on a loop opens its connection and declares the queue.
        publisher = self.app.container.get(IAsyncEventPublisher)
        await publisher.publish(make_events(event_type, 1)[0])
        return publisher

    async def async_each(self, raw: EachConfirm | None = None) -> Figure:
        """``await publisher.publish(event)`` one at a time, in slices alternating with ``raw``."""
        event_type = self._event_type("async-each")
        publisher = await self._warm(event_type)
        events = make_events(event_type, self.counts.each)
        deadline = Deadline(self.counts.timeout)
        size = -(-len(events) // SLICES)

        tally = Tally()

        async def ours(start: int) -> None:
            tally.start()
            sent = 0
            for event in events[start : start + size]:
                if deadline.passed:
                    break
                await publisher.publish(event)
                sent += 1
            tally.stop(sent)

        for number, start in enumerate(range(0, len(events), size)):
            if raw is None:
                await ours(start)
            elif number % 2:  # who goes first alternates, so that neither always follows
                await ours(start)
                await raw.run(size)
            else:
                await raw.run(size)
                await ours(start)
        return tally.figure("async_each", len(events))

    async def async_concurrent(self, twin: "Session | None" = None) -> list[Figure]:
        """``asyncio.gather`` of ``batch`` publishes at a time.

        With a ``twin`` (the same application with tracing and auth), the batches go to
        the two in turn, so that both see the same broker, and each gets its own figure.
        """
        sides: list[tuple[Session, str]] = [(self, "async_concurrent")]
        if twin is not None:
            sides.append((twin, "async_concurrent_extras"))
        runs: list[tuple[str, IAsyncEventPublisher, list[BenchEvent], Tally]] = []
        for session, scenario in sides:
            event_type = session._event_type(scenario.replace("_", "-"))
            publisher = await session._warm(event_type)
            events = make_events(event_type, self.counts.pipelined)
            runs.append((scenario, publisher, events, Tally()))
        deadline = Deadline(self.counts.timeout)

        for number, start in enumerate(range(0, self.counts.pipelined, self.counts.batch)):
            if deadline.passed:
                break
            for _, publisher, events, tally in runs if number % 2 else runs[::-1]:
                chunk = events[start : start + self.counts.batch]
                tally.start()
                await asyncio.gather(*(publisher.publish(event) for event in chunk))
                tally.stop(len(chunk))
        return [tally.figure(scenario, self.counts.pipelined) for scenario, _, _, tally in runs]

    async def transport_batch(self) -> Figure:
        """An outbox relay: ``send`` a batch of serialized events, then one ``flush``."""
        event_type = self._event_type("transport-batch")
        await self._warm(event_type)
        transport = self.app.container.get(IAsyncEventTransport)
        payloads = payloads_of(make_events(event_type, self.counts.pipelined))
        name = make_events(event_type, 1)[0].event_name
        deadline = Deadline(self.counts.timeout)

        started, cpu = time.perf_counter(), time.process_time()
        sent = 0
        for start in range(0, len(payloads), self.counts.batch):
            if deadline.passed:
                break
            chunk = payloads[start : start + self.counts.batch]
            for payload in chunk:
                await transport.send(name, payload, {})
            await transport.flush()
            sent += len(chunk)
        elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu

        timed_out = sent < len(payloads)
        return rate_figure("transport_batch", sent, elapsed, timed_out=timed_out, cpu=cpu)

    async def sync_threads(self, threads: int) -> Figure:
        """``publisher.publish(event)`` from ``threads`` threads, each its share in turn."""
        event_type = self._event_type(f"sync-{threads}")
        publisher = self.app.container.get(IEventPublisher)
        await asyncio.to_thread(publisher.publish, make_events(event_type, 1)[0])
        events = make_events(event_type, self.counts.sync)
        deadline = Deadline(self.counts.timeout)
        shares = [events[index::threads] for index in range(threads)]
        sent = [0] * threads

        def work(index: int) -> None:
            for event in shares[index]:
                if deadline.passed:
                    return
                publisher.publish(event)
                sent[index] += 1

        def run_all() -> float:
            workers = [threading.Thread(target=work, args=(n,)) for n in range(threads)]
            started = time.perf_counter()
            for worker in workers:
                worker.start()
            for worker in workers:
                worker.join(self.counts.timeout + 30)
            return time.perf_counter() - started

        cpu = time.process_time()
        elapsed = await asyncio.to_thread(run_all)
        cpu = time.process_time() - cpu
        scenario = "sync_one_thread" if threads == 1 else f"sync_{threads}_threads"
        timed_out = sum(sent) < len(events)
        return rate_figure(scenario, sum(sent), elapsed, timed_out=timed_out, cpu=cpu)


async def _gather_publish(
    publisher: IAsyncEventPublisher, events: list[BenchEvent], batch: int, deadline: Deadline
) -> int:
    sent = 0
    for start in range(0, len(events), batch):
        if deadline.passed:
            break
        chunk = events[start : start + batch]
        await asyncio.gather(*(publisher.publish(event) for event in chunk))
        sent += len(chunk)
    return sent


async def publishing(
    admin: Broker, counts: Counts, *, extras: bool = False, with_raw: bool = False
) -> list[Figure]:
    """Every publish scenario on one application, started and stopped off the loop.

    With ``with_raw``, the raw aiormq one-at-a-time baseline runs in slices alternating
    with ``async_each``; with ``extras``, a second application with tracing and auth
    alternates with the first in ``async_concurrent``.
    """
    app = await asyncio.to_thread(start_app)
    twin_app = await asyncio.to_thread(start_app, extras=True) if extras else None
    session = Session(admin, counts, app)
    twin = Session(admin, counts, twin_app) if twin_app is not None else None
    each_baseline = EachConfirm(admin, counts, persistent=True) if with_raw else None
    try:
        figures: list[Figure] = []
        if each_baseline is not None:
            await each_baseline.open()
        figures.append(await session.async_each(each_baseline))
        if each_baseline is not None:
            figures.append(await each_baseline.close())
        scenarios: list[Callable[[], Awaitable[list[Figure]]]] = [
            partial(session.async_concurrent, twin),
            _listed(session.transport_batch),
            _listed(partial(session.sync_threads, 1)),
            _listed(partial(session.sync_threads, counts.threads)),
        ]
        for scenario in scenarios:
            await admin.cleanup()  # every scenario starts on a broker without a backlog
            figures += await scenario()
        await admin.cleanup()
        return figures
    finally:
        await asyncio.to_thread(app.stop)
        if twin_app is not None:
            await asyncio.to_thread(twin_app.stop)


def _listed(scenario: Callable[[], Awaitable[Figure]]) -> Callable[[], Awaitable[list[Figure]]]:
    async def run() -> list[Figure]:
        return [await scenario()]

    return run


async def consume(admin: Broker, counts: Counts, *, is_async: bool, extras: bool = False) -> Figure:
    """Start an application on a backlog and time its handlers from first to last event."""
    kind = "async" if is_async else "sync"
    queue = await admin.queue(f"consume-{kind}")
    event_type = make_event_type(queue)
    filled = await admin.fill(
        queue, payloads_of(make_events(event_type, counts.consume)), Deadline(counts.timeout)
    )
    probe = Probe(filled)
    pod = handler_pod(event_type, probe, is_async=is_async)

    def run() -> None:
        with running(pod, extras=extras):
            probe.done.wait(counts.timeout)

    await asyncio.to_thread(run)
    scenario = f"consume_{kind}" + ("_extras" if extras else "")
    return span_figure(scenario, probe, filled)


async def flowing(admin: Broker, counts: Counts) -> list[Figure]:
    """End to end, latency at a fixed rate and memory, on one consuming application."""
    name = unique_name("flow")
    admin.track(name)
    event_type = make_event_type(name)
    probe = Probe(1)
    pod = handler_pod(event_type, probe, is_async=True)
    app = await asyncio.to_thread(start_app, pod)
    try:
        publisher = app.container.get(IAsyncEventPublisher)
        await publisher.publish(make_events(event_type, 1)[0])
        await asyncio.to_thread(probe.done.wait, counts.timeout)
        return [
            await _end_to_end(publisher, event_type, probe, counts),
            await _latency(publisher, event_type, probe, counts),
            await _memory(publisher, event_type, probe, counts),
        ]
    finally:
        await asyncio.to_thread(app.stop)


async def _end_to_end(
    publisher: IAsyncEventPublisher, event_type: type[BenchEvent], probe: Probe, counts: Counts
) -> Figure:
    events = make_events(event_type, counts.consume)
    probe.reset(len(events))
    deadline = Deadline(counts.timeout)

    started = time.perf_counter()
    sent = await _gather_publish(publisher, events, counts.batch, deadline)
    probe.expect(sent)
    await asyncio.to_thread(probe.done.wait, deadline.left())
    elapsed = probe.last - started

    return rate_figure("end_to_end", probe.handled, elapsed, timed_out=sent < len(events))


async def _latency(
    publisher: IAsyncEventPublisher, event_type: type[BenchEvent], probe: Probe, counts: Counts
) -> Figure:
    probe.reset(counts.latency)
    probe.stamped = True
    gc.collect()  # the garbage of earlier scenarios is not this one's to collect
    deadline = Deadline(counts.timeout)
    pending: set[asyncio.Task[Any]] = set()

    started = time.perf_counter()
    for seq in range(counts.latency):
        if deadline.passed:
            break
        delay = started + seq / counts.rate - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        event = make_events(event_type, 1, seq)[0]
        task = asyncio.ensure_future(publisher.publish(event))
        pending.add(task)
        task.add_done_callback(pending.discard)
    await asyncio.gather(*pending)
    await asyncio.to_thread(probe.done.wait, deadline.left())

    probe.stamped = False
    return latency_figure("latency", list(probe.latencies), counts.latency)


async def _memory(
    publisher: IAsyncEventPublisher, event_type: type[BenchEvent], probe: Probe, counts: Counts
) -> Figure:
    probe.reset(counts.memory)
    deadline = Deadline(counts.timeout * 4)

    gc.collect()
    before = rss_bytes()
    sent = 0
    while sent < counts.memory and not deadline.passed:
        size = min(counts.batch, counts.memory - sent)
        chunk = make_events(event_type, size, sent)
        sent += await _gather_publish(publisher, chunk, size, deadline)
    probe.expect(sent)
    await asyncio.to_thread(probe.done.wait, deadline.left())
    gc.collect()
    after = rss_bytes()

    return memory_figure("memory", probe.handled, before, after, counts.memory)
