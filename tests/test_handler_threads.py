"""Fresh attacks on HandlerThreads: sync handlers on worker threads of the consumer."""

import asyncio
import contextvars
import threading
import time
from collections import Counter
from typing import Any

import pytest
from pydantic import TypeAdapter
from spakky.core.application.application import SpakkyApplication
from spakky.event.event_publisher import IAsyncEventPublisher
from spakky.event.stereotype.event_handler import EventHandler, on_event
from spakky.tracing.context import TraceContext

from conftest import BrokerAdmin, build_app, make_event_type
from spakky.plugins.rabbitmq.consumer import HEADER_ERROR_TYPE, HEADER_REASON

pytestmark = pytest.mark.broker

_marker: contextvars.ContextVar[int | None] = contextvars.ContextVar("fresh_marker", default=None)


def worker_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("spakky-rabbitmq-")]


async def wait_for(check: Any, within: float = 15.0) -> bool:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if check():
            return True
        await asyncio.sleep(0.05)
    return bool(check())


@pytest.mark.parametrize("with_async", [False, True], ids=["sync-consumer", "async-consumer"])
async def test_many_sync_handlers_of_several_events(
    broker_env: Any, unique_name: str, run_app: Any, broker: BrokerAdmin, with_async: bool
) -> None:
    events: list[Any] = [make_event_type(f"{unique_name}-{n}", user_id=int) for n in range(3)]
    for event in events:
        for suffix in ("", ".dlq"):
            broker.track("queue", event_name_of(event) + suffix)
    seen = Counter[tuple[str, int, int]]()
    lock = threading.Lock()
    per_event = 60

    def record(who: str, index: int, event: Any) -> None:
        with lock:
            seen[(who, index, event.user_id)] += 1

    handler_classes: list[type] = []
    for index, event in enumerate(events):

        def make(index: int = index, event: Any = event) -> type:
            class Handlers:
                @on_event(event)
                def a(self, ev: Any) -> None:
                    time.sleep(0.002)
                    record("a", index, ev)

                @on_event(event)
                def b(self, ev: Any) -> None:
                    record("b", index, ev)

                @on_event(event)
                def c(self, ev: Any) -> None:
                    if ev.user_id % 10 == 0:
                        time.sleep(0.05)
                    record("c", index, ev)

            if with_async:

                class WithAsync(Handlers):
                    @on_event(event)
                    async def d(self, ev: Any) -> None:
                        record("d", index, ev)

                WithAsync.__name__ = WithAsync.__qualname__ = f"WithAsync{index}"
                return EventHandler()(WithAsync)
            Handlers.__name__ = Handlers.__qualname__ = f"Handlers{index}"
            return EventHandler()(Handlers)

        handler_classes.append(make())

    app = await asyncio.to_thread(run_app, *handler_classes)
    publisher = app.container.get(IAsyncEventPublisher)
    await asyncio.gather(
        *(
            asyncio.create_task(publisher.publish(event(user_id=n)))
            for event in events
            for n in range(per_event)
        )
    )
    kinds = 4 if with_async else 3
    total = kinds * len(events) * per_event
    assert await wait_for(lambda: sum(seen.values()) >= total, 30)
    await asyncio.sleep(0.3)
    assert sum(seen.values()) == total
    assert all(count == 1 for count in seen.values())
    for event in events:
        assert await broker.message_count(event_name_of(event) + ".dlq") == 0


def event_name_of(event: Any) -> str:
    from spakky.plugins.rabbitmq.config.topology import event_name_of as name_of

    return name_of(event)


@pytest.mark.parametrize("with_async", [False, True], ids=["sync-consumer", "async-consumer"])
async def test_sync_handler_blocking_past_drain_is_redelivered_and_stop_is_bounded(
    broker_env: Any,
    monkeypatch: pytest.MonkeyPatch,
    event_type: type,
    unique_name: str,
    run_app: Any,
    broker: BrokerAdmin,
    with_async: bool,
) -> None:
    monkeypatch.setenv("SPAKKY_RABBITMQ__DRAIN_TIMEOUT", "1")
    before = {t.ident for t in worker_threads()}
    started = threading.Event()
    finished = threading.Event()

    class SlowBase:
        @on_event(event_type)
        def handle(self, event: Any) -> None:
            started.set()
            time.sleep(4)
            finished.set()

    class SlowMixed(SlowBase):
        @on_event(event_type)
        async def quick(self, event: Any) -> None:
            pass

    Slow = EventHandler()(SlowMixed if with_async else SlowBase)

    app = await asyncio.to_thread(run_app, Slow)
    await app.container.get(IAsyncEventPublisher).publish(event_type(user_id=1, email="e"))
    assert await asyncio.to_thread(started.wait, 10)
    t0 = time.monotonic()
    await asyncio.to_thread(app.stop)
    took = time.monotonic() - t0
    assert took < 4, f"stop took {took:.1f}s, drain is 1s"
    assert not finished.is_set()
    # Unacknowledged, so back on the queue.
    assert await broker.wait_for_count(unique_name, 1, timeout=10) == 1
    # The blocked thread ends after its call; nothing stays behind.
    assert await asyncio.to_thread(finished.wait, 10)
    assert await wait_for(lambda: {t.ident for t in worker_threads()} <= before, 5), [
        t.name for t in worker_threads()
    ]


@pytest.mark.parametrize("mixed", [False, True])
async def test_sync_handler_raising_is_dead_lettered_others_not_rerun(
    broker_env: Any,
    event_type: type,
    unique_name: str,
    run_app: Any,
    broker: BrokerAdmin,
    mixed: bool,
) -> None:
    calls = Counter[str]()

    class Handlers:
        @on_event(event_type)
        def bad(self, event: Any) -> None:
            calls["bad"] += 1
            raise KeyError("nope")

        @on_event(event_type)
        def good(self, event: Any) -> None:
            calls["good"] += 1

    if mixed:

        class Mixed(Handlers):
            @on_event(event_type)
            async def agood(self, event: Any) -> None:
                calls["agood"] += 1

        cls = EventHandler()(Mixed)
    else:
        cls = EventHandler()(Handlers)
    app = await asyncio.to_thread(run_app, cls)
    await app.container.get(IAsyncEventPublisher).publish(event_type(user_id=1, email="e"))
    assert await broker.wait_for_count(unique_name + ".dlq", 1) == 1
    dead = await broker.get(unique_name + ".dlq")
    assert dead is not None
    headers = dead.header.properties.headers or {}
    assert headers[HEADER_REASON] == "handler_error"
    assert headers[HEADER_ERROR_TYPE] == "KeyError"
    assert str(headers["x-spakky-handlers"]).endswith(".bad")
    assert calls["bad"] == 1
    assert calls["good"] == 1


@pytest.mark.parametrize("with_async", [False, True], ids=["sync-consumer", "async-consumer"])
async def test_contexts_do_not_leak_between_messages_on_one_worker_thread(
    broker_env: Any,
    monkeypatch: pytest.MonkeyPatch,
    event_type: type,
    unique_name: str,
    run_app: Any,
    broker: BrokerAdmin,
    with_async: bool,
) -> None:
    monkeypatch.setenv("SPAKKY_RABBITMQ__CONCURRENCY", "1")  # one worker thread
    seen: list[tuple[int, str, object, object, TraceContext | None]] = []
    app_holder: list[SpakkyApplication] = []

    class Handlers:
        @on_event(event_type)
        def sync(self, event: Any) -> None:
            context = app_holder[0].application_context
            seen.append(
                (
                    event.user_id,
                    threading.current_thread().name,
                    _marker.get(),
                    context.get_context_value("fresh.leak"),
                    TraceContext.get(),
                )
            )
            _marker.set(event.user_id)  # never reset: must not reach the next message
            context.set_context_value("fresh.leak", event.user_id)
            TraceContext.set(TraceContext.new_root())

    if with_async:

        class Mixed(Handlers):
            @on_event(event_type)
            async def other(self, event: Any) -> None:
                pass

        cls = EventHandler()(Mixed)
    else:
        cls = EventHandler()(Handlers)

    body = TypeAdapter(event_type).dump_json
    app = await asyncio.to_thread(run_app, cls)
    app_holder.append(app)
    for n in range(20):
        await broker.publish(unique_name, body(event_type(user_id=n, email="e")))
    assert await wait_for(lambda: len(seen) >= 20, 20)
    assert len({name for _, name, *_ in seen}) == 1
    for user_id, _, marker, leak, trace_context in seen:
        assert marker is None, f"message {user_id} saw contextvar of {marker}"
        assert leak is None, f"message {user_id} saw application context of {leak}"
        assert trace_context is not None  # the tracing plugin's own
        assert trace_context.parent_span_id is None or len(trace_context.parent_span_id) == 16


async def test_two_apps_one_after_another_leave_no_threads(
    broker_env: Any, event_type: type, unique_name: str, broker: BrokerAdmin
) -> None:
    before = {t.ident for t in worker_threads()}
    counts = Counter[int]()

    @EventHandler()
    class Sync:
        @on_event(event_type)
        def handle(self, event: Any) -> None:
            counts[event.user_id] += 1

    def run_once(user_id: int) -> None:
        app = build_app(Sync)
        app.start()
        try:
            from spakky.event.event_publisher import IEventPublisher

            app.container.get(IEventPublisher).publish(event_type(user_id=user_id, email="e"))
            deadline = time.monotonic() + 10
            while counts[user_id] == 0 and time.monotonic() < deadline:
                time.sleep(0.05)
        finally:
            app.stop()

    for round_ in range(2):
        await asyncio.to_thread(run_once, round_)
    assert counts == Counter({0: 1, 1: 1})
    assert await wait_for(lambda: {t.ident for t in worker_threads()} <= before, 5), [
        t.name for t in worker_threads()
    ]


@pytest.mark.parametrize("with_async", [False, True], ids=["sync-consumer", "async-consumer"])
async def test_failed_start_leaves_no_worker_threads(
    broker_env: Any,
    monkeypatch: pytest.MonkeyPatch,
    event_type: type,
    unique_name: str,
    broker: BrokerAdmin,
    with_async: bool,
) -> None:
    """TOPOLOGY_MODE=passive and a queue that does not exist: app.start() fails."""
    monkeypatch.setenv("SPAKKY_RABBITMQ__TOPOLOGY_MODE", "passive")
    before = {t.ident for t in threading.enumerate()}

    class Handlers:
        @on_event(event_type)
        def sync(self, event: Any) -> None:
            pass

    if with_async:

        class Mixed(Handlers):
            @on_event(event_type)
            async def other(self, event: Any) -> None:
                pass

        cls = EventHandler()(Mixed)
    else:
        cls = EventHandler()(Handlers)

    def start() -> None:
        app = build_app(cls)
        with pytest.raises(Exception):  # noqa: B017 - any start failure will do
            app.start()

    await asyncio.to_thread(start)
    await asyncio.sleep(1)
    left = [
        t.name
        for t in threading.enumerate()
        if t.ident not in before and not t.name.startswith("asyncio_")
    ]
    assert left == [], f"threads left after a failed start: {left}"
