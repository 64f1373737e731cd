"""Traces across a real broker: publish and consume through a Spakky application."""

import asyncio
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.trace import SpanKind, StatusCode
from pydantic import TypeAdapter
from spakky.event.error import EventDeliveryRejectedError
from spakky.event.event_publisher import IAsyncEventPublisher, IEventPublisher
from spakky.event.stereotype.event_handler import EventHandler, on_event
from spakky.tracing.context import TraceContext

from conftest import BrokerAdmin

from .tracing_support import Recorder, Spans, handler_of, parent_of, span_of, trace_of

pytestmark = pytest.mark.broker


@pytest.fixture
def spans() -> Iterator[Spans]:
    spans = Spans()
    yield spans
    spans.close()


def by_kind(spans: list[ReadableSpan], kind: SpanKind) -> list[ReadableSpan]:
    return [span for span in spans if span.kind is kind]


def assert_agrees(seen_context: TraceContext | None, span: ReadableSpan) -> None:
    """The handler's TraceContext names exactly its process span."""
    assert seen_context is not None
    assert seen_context.trace_id == trace_of(span)
    assert seen_context.span_id == span_of(span)


def sample(spans: list[ReadableSpan]) -> str:
    """The spans as a short text, printed for the record with ``pytest -s``."""
    lines: list[str] = []
    for span in sorted(spans, key=lambda s: s.start_time or 0):
        parent = parent_of(span) if span.parent else "-"
        lines.append(
            f"{span.name} kind={span.kind.name} trace={trace_of(span)} "
            f"span={span_of(span)} parent={parent} "
            f"status={span.status.status_code.name} attributes={dict(span.attributes or {})}"
        )
    return "\n".join(lines)


async def test_async_publish_to_several_handlers(
    broker_env: dict[str, str],
    event_type: type,
    run_app: Any,
    broker: BrokerAdmin,
    spans: Spans,
    unique_name: str,
) -> None:
    recorder = Recorder()

    @EventHandler()
    class Handlers:
        @on_event(event_type)
        async def first(self, event: Any) -> None:
            recorder.record("first", event.user_id)

        @on_event(event_type)
        def second(self, event: Any) -> None:
            recorder.record("second", event.user_id)

    @EventHandler()
    class Other:
        @on_event(event_type)
        async def third(self, event: Any) -> None:
            recorder.record("third", event.user_id)

    app = run_app(Handlers, Other, spans.pod())
    root = TraceContext.new_root()
    TraceContext.set(root)

    await app.container.get(IAsyncEventPublisher).publish(event_type(user_id=1, email="a@b.c"))
    seen = await asyncio.to_thread(recorder.wait, 3)
    finished = await asyncio.to_thread(spans.wait, 4)

    print(sample(finished))
    (producer,) = by_kind(finished, SpanKind.PRODUCER)
    consumers = by_kind(finished, SpanKind.CONSUMER)
    assert producer.name == f"publish {unique_name}"
    assert producer.parent is not None
    assert parent_of(producer) == root.span_id
    assert trace_of(producer) == root.trace_id
    assert producer.status.status_code is StatusCode.UNSET
    assert len(consumers) == 3
    for consumer in consumers:
        assert consumer.parent is not None
        assert parent_of(consumer) == span_of(producer)
        assert trace_of(consumer) == trace_of(producer)
    by_handler = {handler_of(span): span for span in consumers}
    for item in seen:
        span = by_handler[item.who]
        assert_agrees(item.trace_context, span)
        assert item.otel_span_id == span_of(span)


def test_sync_publish_to_sync_handler(
    broker_env: dict[str, str],
    event_type: type,
    run_app: Any,
    broker: BrokerAdmin,
    spans: Spans,
) -> None:
    recorder = Recorder()

    @EventHandler()
    class Handler:
        @on_event(event_type)
        def on_event(self, event: Any) -> None:
            recorder.record("sync", event.user_id)

    app = run_app(Handler, spans.pod())
    root = TraceContext.new_root()

    def publish() -> None:
        TraceContext.set(root)
        app.container.get(IEventPublisher).publish(event_type(user_id=2, email="a@b.c"))

    thread = threading.Thread(target=publish)
    thread.start()
    thread.join(30)
    (seen,) = recorder.wait(1)
    finished = spans.wait(2)

    (producer,) = by_kind(finished, SpanKind.PRODUCER)
    (consumer,) = by_kind(finished, SpanKind.CONSUMER)
    assert producer.parent is not None
    assert parent_of(producer) == root.span_id
    assert consumer.parent is not None
    assert parent_of(consumer) == span_of(producer)
    assert trace_of(consumer) == root.trace_id
    assert_agrees(seen.trace_context, consumer)
    assert seen.trace_context is not None
    assert seen.trace_context.parent_span_id == span_of(producer)


async def test_handler_that_raises_marks_only_its_span(
    broker_env: dict[str, str],
    event_type: type,
    run_app: Any,
    broker: BrokerAdmin,
    spans: Spans,
    unique_name: str,
) -> None:
    recorder = Recorder()

    @EventHandler()
    class Handlers:
        @on_event(event_type)
        async def works(self, event: Any) -> None:
            recorder.record("works", event.user_id)

        @on_event(event_type)
        async def fails(self, event: Any) -> None:
            recorder.record("fails", event.user_id)
            raise ValueError("handler failed on purpose")

    app = run_app(Handlers, spans.pod())

    await app.container.get(IAsyncEventPublisher).publish(event_type(user_id=3, email="a@b.c"))
    await asyncio.to_thread(recorder.wait, 2)
    finished = await asyncio.to_thread(spans.wait, 3)
    dead = await broker.wait_for_count(unique_name + ".dlq", 1)

    consumers = {handler_of(span): span for span in by_kind(finished, SpanKind.CONSUMER)}
    assert consumers["works"].status.status_code is StatusCode.UNSET
    failed = consumers["fails"]
    assert failed.status.status_code is StatusCode.ERROR
    assert failed.attributes is not None
    assert failed.attributes["error.type"] == "ValueError"
    (exception,) = [event for event in failed.events if event.name == "exception"]
    assert exception.attributes is not None
    assert exception.attributes["exception.message"] == "handler failed on purpose"
    assert dead == 1  # the failure policy is unchanged: the message went to the DLQ


async def test_rejected_publish_ends_span_with_error(
    broker_env: dict[str, str],
    event_type: type,
    run_app: Any,
    broker: BrokerAdmin,
    spans: Spans,
    unique_name: str,
) -> None:
    app = run_app(spans.pod())
    publisher = app.container.get(IAsyncEventPublisher)
    await publisher.publish(event_type(user_id=1, email="a@b.c"))  # declares the queue
    channel = await broker.channel()
    await channel.queue_delete(unique_name)  # now the routing key leads nowhere
    await channel.close()

    with pytest.raises(EventDeliveryRejectedError):
        await publisher.publish(event_type(user_id=2, email="a@b.c"))
    finished = await asyncio.to_thread(spans.wait, 2)

    ok, rejected = sorted(by_kind(finished, SpanKind.PRODUCER), key=lambda s: s.start_time or 0)
    assert ok.status.status_code is StatusCode.UNSET
    assert rejected.status.status_code is StatusCode.ERROR
    assert rejected.attributes is not None
    assert rejected.attributes["error.type"] == "PublishRejectedError"
    assert any(event.name == "exception" for event in rejected.events)


@pytest.mark.parametrize(
    "header",
    [
        "00-0af7651916cd43dd8448eb211c80319c-b7ad6b71692033-01",
        "00-0AF7651916CD43DD8448EB211C80319C-B7AD6B7169203331-01",
        "00-00000000000000000000000000000000-b7ad6b7169203331-01",
        "00-0af7651916cd43dd8448eb211c80319c-0000000000000000-01",
        bytearray(b"00-\xff\xfe-not-utf8"),
        None,
    ],
    ids=["wrong-length", "upper-case", "zero-trace", "zero-span", "not-utf8", "absent"],
)
async def test_malformed_trace_headers_start_a_new_root(
    broker_env: dict[str, str],
    event_type: type,
    run_app: Any,
    broker: BrokerAdmin,
    spans: Spans,
    unique_name: str,
    header: str | bytearray | None,
) -> None:
    recorder = Recorder()

    @EventHandler()
    class Handler:
        @on_event(event_type)
        async def on_event(self, event: Any) -> None:
            recorder.record("handler", event.user_id)

    body = TypeAdapter(event_type).dump_json(event_type(user_id=5, email="a@b.c"))
    headers = {} if header is None else {"traceparent": header}
    await broker.publish(unique_name, body, headers=headers)
    run_app(Handler, spans.pod())

    (seen,) = await asyncio.to_thread(recorder.wait, 1)
    (consumer,) = await asyncio.to_thread(spans.wait, 1)

    assert consumer.parent is None
    assert seen.trace_context is not None
    assert seen.trace_context.parent_span_id is None
    assert seen.trace_context.trace_id != "0af7651916cd43dd8448eb211c80319c"
    assert_agrees(seen.trace_context, consumer)
    assert await broker.message_count(unique_name) == 0
    assert await broker.message_count(unique_name + ".dlq") == 0


async def test_no_context_leaks_between_concurrent_messages(
    broker_env: dict[str, str],
    event_type: type,
    run_app: Any,
    broker: BrokerAdmin,
    spans: Spans,
) -> None:
    recorder = Recorder()
    expected: dict[int, str] = {}

    @EventHandler()
    class Handlers:
        @on_event(event_type)
        async def slow_async(self, event: Any) -> None:
            before = TraceContext.get()
            await asyncio.sleep(0.05)  # other messages run meanwhile
            seen = recorder.record("async", event.user_id)
            assert seen.trace_context == before

        @on_event(event_type)
        def slow_sync(self, event: Any) -> None:
            before = TraceContext.get()
            threading.Event().wait(0.02)
            seen = recorder.record("sync", event.user_id)
            assert seen.trace_context == before

    app = run_app(Handlers, spans.pod())
    publisher = app.container.get(IAsyncEventPublisher)

    async def publish(user_id: int) -> None:
        if user_id % 4 != 0:  # every fourth message has no trace headers
            root = TraceContext.new_root()
            TraceContext.set(root)
            expected[user_id] = root.trace_id
        await publisher.publish(event_type(user_id=user_id, email="a@b.c"))

    await asyncio.gather(*(asyncio.create_task(publish(n)) for n in range(24)))
    seen = await asyncio.to_thread(recorder.wait, 48)

    assert len(seen) == 48
    roots: dict[int, set[str]] = {}
    for item in seen:
        assert item.trace_context is not None
        assert item.otel_trace_id == item.trace_context.trace_id
        if item.user_id in expected:
            assert item.trace_context.trace_id == expected[item.user_id]
        else:
            assert item.trace_context.trace_id not in expected.values()
            roots.setdefault(item.user_id, set()).add(item.trace_context.trace_id)
    # Both handlers of a headerless message share its one producer span's new trace.
    assert all(len(ids) == 1 for ids in roots.values())
    assert len({next(iter(ids)) for ids in roots.values()}) == len(roots)
