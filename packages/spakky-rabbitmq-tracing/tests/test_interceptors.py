"""The interceptors called directly, without a broker."""

import asyncio
from collections.abc import Iterator

import pytest
from opentelemetry import trace
from opentelemetry.trace import NoOpTracerProvider, SpanKind, StatusCode
from spakky.core.common.mutability import immutable
from spakky.domain.models.event import AbstractIntegrationEvent
from spakky.tracing.context import TraceContext
from spakky.tracing.w3c_propagator import W3CTracePropagator

from spakky.plugins.rabbitmq.consumer.interceptor import HandlerInfo, InboundMessage
from spakky.plugins.rabbitmq.tracing import TracingConsumeInterceptor, TracingPublishInterceptor
from spakky.plugins.rabbitmq.transport.interceptor import OutboundMessage

from .tracing_support import Spans, hex_id, parent_of, span_of, trace_of

TRACE_ID = "0af7651916cd43dd8448eb211c80319c"
SPAN_ID = "b7ad6b7169203331"
VALID = f"00-{TRACE_ID}-{SPAN_ID}-01"

MALFORMED = {
    "short trace id": f"00-{TRACE_ID[:-2]}-{SPAN_ID}-01",
    "long span id": f"00-{TRACE_ID}-{SPAN_ID}00-01",
    "upper-case hex": f"00-{TRACE_ID.upper()}-{SPAN_ID}-01",
    "zero trace id": f"00-{'0' * 32}-{SPAN_ID}-01",
    "zero span id": f"00-{TRACE_ID}-{'0' * 16}-01",
    "garbage": "not a traceparent",
    "empty": "",
}


@immutable
class Pinged(AbstractIntegrationEvent):
    user_id: int

    @property
    def event_name(self) -> str:
        return "pinged"


@pytest.fixture
def spans() -> Iterator[Spans]:
    spans = Spans()
    yield spans
    spans.close()


def outbound(headers: dict[str, str]) -> OutboundMessage:
    return OutboundMessage(
        event_name="pinged",
        exchange="",
        routing_key="pinged",
        message_id="4b9a3c1e-0000-4000-8000-000000000001",
        body=b'{"user_id":1}',
        headers=headers,
    )


def inbound(headers: dict[str, str]) -> InboundMessage:
    return InboundMessage(
        event_name="pinged",
        queue="pinged",
        message_id="4b9a3c1e-0000-4000-8000-000000000001",
        headers=headers,
        body_size=13,
        redelivered=False,
        attempt=1,
    )


def handler_info() -> HandlerInfo:
    return HandlerInfo(
        handler_id="tests.Handler.on_pinged",
        event_type=Pinged,
        is_async=False,
        call=lambda event: None,
    )


def test_publish_span_is_child_of_header_context_and_named_in_headers(spans: Spans) -> None:
    interceptor = TracingPublishInterceptor(W3CTracePropagator(), spans.provider)
    message = outbound({"traceparent": VALID})

    completion = interceptor.before_publish(message)
    assert completion is not None
    completion(None)

    (span,) = spans.finished()
    assert span.kind is SpanKind.PRODUCER
    assert span.name == "publish pinged"
    assert span.parent is not None
    assert parent_of(span) == SPAN_ID
    assert trace_of(span) == TRACE_ID
    assert message.headers["traceparent"] == f"00-{TRACE_ID}-{span_of(span)}-01"
    assert span.attributes == {
        "messaging.system": "rabbitmq",
        "messaging.operation.type": "send",
        "messaging.operation.name": "publish",
        "messaging.destination.name": "",
        "messaging.rabbitmq.destination.routing_key": "pinged",
        "messaging.message.id": "4b9a3c1e-0000-4000-8000-000000000001",
        "messaging.message.body.size": 13,
        "spakky.event.name": "pinged",
    }


def test_publish_without_context_starts_a_root_span(spans: Spans) -> None:
    interceptor = TracingPublishInterceptor(W3CTracePropagator(), spans.provider)
    message = outbound({})

    completion = interceptor.before_publish(message)
    assert completion is not None
    completion(None)

    (span,) = spans.finished()
    assert span.parent is None
    assert message.headers["traceparent"].split("-")[1] == trace_of(span)


def test_publish_takes_the_ambient_trace_context_when_headers_have_none(spans: Spans) -> None:
    interceptor = TracingPublishInterceptor(W3CTracePropagator(), spans.provider)
    message = outbound({})

    async def publish() -> None:
        TraceContext.set(TraceContext(trace_id=TRACE_ID, span_id=SPAN_ID))
        completion = interceptor.before_publish(message)
        assert completion is not None
        completion(None)

    asyncio.run(publish())

    (span,) = spans.finished()
    assert span.parent is not None
    assert parent_of(span) == SPAN_ID
    assert TraceContext.get() is None


def test_rejected_publish_ends_the_span_with_the_error(spans: Spans) -> None:
    interceptor = TracingPublishInterceptor(W3CTracePropagator(), spans.provider)
    completion = interceptor.before_publish(outbound({"traceparent": VALID}))
    assert completion is not None

    completion(RuntimeError("nacked"))

    (span,) = spans.finished()
    assert span.status.status_code is StatusCode.ERROR
    assert span.attributes is not None
    assert span.attributes["error.type"] == "RuntimeError"
    assert [event.name for event in span.events] == ["exception"]


def test_process_span_and_trace_context_agree(spans: Spans) -> None:
    interceptor = TracingConsumeInterceptor(W3CTracePropagator(), spans.provider)

    with interceptor.intercept(inbound({"traceparent": VALID}), handler_info(), Pinged(user_id=1)):
        current = TraceContext.get()
        otel = trace.get_current_span().get_span_context()

    (span,) = spans.finished()
    assert current is not None
    assert span.kind is SpanKind.CONSUMER
    assert span.name == "process pinged"
    assert current.trace_id == TRACE_ID == hex_id(otel.trace_id, 32)
    assert current.span_id == span_of(span) == hex_id(otel.span_id, 16)
    assert current.parent_span_id == SPAN_ID
    assert span.parent is not None
    assert parent_of(span) == SPAN_ID
    assert TraceContext.get() is None
    assert not trace.get_current_span().get_span_context().is_valid


@pytest.mark.parametrize("header", MALFORMED.values(), ids=MALFORMED.keys())
def test_malformed_headers_start_a_new_root(spans: Spans, header: str) -> None:
    interceptor = TracingConsumeInterceptor(W3CTracePropagator(), spans.provider)

    with interceptor.intercept(inbound({"traceparent": header}), handler_info(), Pinged(user_id=1)):
        current = TraceContext.get()

    (span,) = spans.finished()
    assert current is not None
    assert span.parent is None
    assert current.parent_span_id is None
    assert current.trace_id != TRACE_ID
    assert current.trace_id == trace_of(span)


def test_handler_error_is_recorded_and_passes_unchanged(spans: Spans) -> None:
    interceptor = TracingConsumeInterceptor(W3CTracePropagator(), spans.provider)
    error = ValueError("boom")

    with (
        pytest.raises(ValueError) as raised,
        interceptor.intercept(inbound({}), handler_info(), Pinged(user_id=1)),
    ):
        raise error

    (span,) = spans.finished()
    assert raised.value is error
    assert span.status.status_code is StatusCode.ERROR
    assert span.events[0].name == "exception"
    assert TraceContext.get() is None


def test_without_sdk_trace_context_still_flows_and_agrees() -> None:
    interceptor = TracingConsumeInterceptor(W3CTracePropagator(), NoOpTracerProvider())

    with interceptor.intercept(inbound({"traceparent": VALID}), handler_info(), Pinged(user_id=1)):
        child = TraceContext.get()
        otel = trace.get_current_span().get_span_context()
    with interceptor.intercept(inbound({}), handler_info(), Pinged(user_id=1)):
        root = TraceContext.get()

    assert child is not None
    assert root is not None
    assert child.trace_id == TRACE_ID
    assert child.parent_span_id == SPAN_ID
    assert child.span_id == hex_id(otel.span_id, 16) != SPAN_ID
    assert hex_id(otel.trace_id, 32) == TRACE_ID
    assert root.parent_span_id is None
    assert root.trace_id != TRACE_ID


def test_without_sdk_publish_leaves_headers_alone() -> None:
    interceptor = TracingPublishInterceptor(W3CTracePropagator(), NoOpTracerProvider())
    message = outbound({"traceparent": VALID})

    assert interceptor.before_publish(message) is None
    assert message.headers == {"traceparent": VALID}
