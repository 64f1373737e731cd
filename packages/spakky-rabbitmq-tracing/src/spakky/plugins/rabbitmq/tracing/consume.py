"""A CONSUMER span and an ambient child trace context for every handler call."""

from contextvars import Token
from types import TracebackType
from typing import override

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.trace import INVALID_SPAN, NonRecordingSpan, Span, SpanKind
from opentelemetry.util.types import AttributeValue
from spakky.core.pod.annotations.pod import Pod
from spakky.domain.models.event import AbstractEvent
from spakky.tracing.context import TraceContext
from spakky.tracing.propagator import ITracePropagator

from spakky.plugins.rabbitmq.consumer.interceptor import (
    HandlerInfo,
    IConsumeInterceptor,
    InboundMessage,
)
from spakky.plugins.rabbitmq.tracing import attributes as attr
from spakky.plugins.rabbitmq.tracing._otel import (
    Tracing,
    child_of,
    extract_trace_context,
    record_failure,
    span_context_of,
    trace_context_of,
)

_OPERATION = "process"


@Pod()
class TracingConsumeInterceptor(IConsumeInterceptor):
    """Runs each handler inside a ``process <queue>`` span and a child `TraceContext`.

    The parent comes from the message headers through the container's
    `ITracePropagator`; missing or invalid headers start a new root trace. The handler
    sees the same trace and span ids in `TraceContext.get()` and in OpenTelemetry's
    current span. Both are cleared when the handler returns.
    """

    order = -100  # outermost: a call that another interceptor rejects still gets its span

    def __init__(
        self,
        propagator: ITracePropagator,
        tracer_provider: trace.TracerProvider | None = None,
    ) -> None:
        self._propagator = propagator
        self._tracing = Tracing(tracer_provider)

    @override
    def intercept(
        self, message: InboundMessage, handler: HandlerInfo, event: AbstractEvent
    ) -> "_HandlerScope":
        del event  # the span describes the delivery, not the payload
        return _HandlerScope(self, message, handler)

    def begin(self, message: InboundMessage, handler: HandlerInfo) -> tuple[Span, Token[Context]]:
        """Start the handler's span; make it and its TraceContext current.

        Returns:
            The span and the token that `end` needs to restore OpenTelemetry's context.
        """
        parent = extract_trace_context(self._propagator, message.headers)
        span: Span | None = None
        current: TraceContext | None = None
        if not self._tracing.is_off():
            span, current = self._start_span(message, handler, parent)

        if span is None or current is None:
            # No SDK: the ids are made here, and OpenTelemetry sees them as the current span.
            current, own = child_of(parent)
            span = NonRecordingSpan(own)

        token = otel_context.attach(trace.set_span_in_context(span, Context()))
        TraceContext.set(current)
        return span, token

    @staticmethod
    def end(span: Span, token: Token[Context], error: BaseException | None) -> None:
        """Record ``error`` if any, end the span and clear both contexts."""
        if error is not None:
            record_failure(span, error)
        TraceContext.clear()
        otel_context.detach(token)
        span.end()

    def _start_span(
        self, message: InboundMessage, handler: HandlerInfo, parent: TraceContext | None
    ) -> tuple[Span | None, TraceContext | None]:
        parent_span_context = span_context_of(parent) if parent is not None else None
        # A fresh context, never the ambient one: the trace of a message comes from it alone.
        otel_parent = Context()
        if parent_span_context is not None:
            otel_parent = trace.set_span_in_context(
                NonRecordingSpan(parent_span_context), otel_parent
            )
        span = self._tracing.tracer.start_span(
            f"{_OPERATION} {message.queue}",
            context=otel_parent,
            kind=SpanKind.CONSUMER,
            attributes=_attributes(message, handler),
        )

        span_context = span.get_span_context()
        if not span_context.is_valid or (
            parent_span_context is not None and span_context.span_id == parent_span_context.span_id
        ):
            return None, None  # a tracer that makes no spans of its own
        return span, trace_context_of(span_context, parent.span_id if parent else None)


class _HandlerScope:
    """The context manager around one handler call."""

    __slots__ = ("_handler", "_interceptor", "_message", "_span", "_token")

    def __init__(
        self, interceptor: TracingConsumeInterceptor, message: InboundMessage, handler: HandlerInfo
    ) -> None:
        self._interceptor = interceptor
        self._message = message
        self._handler = handler
        self._span: Span = INVALID_SPAN
        self._token: Token[Context] | None = None

    def __enter__(self) -> None:
        self._span, self._token = self._interceptor.begin(self._message, self._handler)

    def __exit__(
        self,
        error_type: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if self._token is not None:
            self._interceptor.end(self._span, self._token, error)  # never suppresses the error


def _attributes(message: InboundMessage, handler: HandlerInfo) -> dict[str, AttributeValue]:
    attributes: dict[str, AttributeValue] = {
        attr.MESSAGING_SYSTEM: attr.SYSTEM_RABBITMQ,
        attr.MESSAGING_OPERATION_TYPE: _OPERATION,
        attr.MESSAGING_OPERATION_NAME: _OPERATION,
        attr.MESSAGING_SUBSCRIPTION_NAME: message.queue,
        attr.MESSAGING_ROUTING_KEY: message.event_name,
        attr.MESSAGING_BODY_SIZE: message.body_size,
        attr.SPAKKY_EVENT_NAME: message.event_name,
        attr.SPAKKY_HANDLER_ID: handler.handler_id,
    }
    if message.message_id:
        attributes[attr.MESSAGING_MESSAGE_ID] = message.message_id
    return attributes
