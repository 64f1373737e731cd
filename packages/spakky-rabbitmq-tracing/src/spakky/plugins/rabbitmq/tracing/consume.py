"""A CONSUMER span and an ambient child trace context for every handler call."""

from collections.abc import Generator
from contextlib import AbstractContextManager, contextmanager
from typing import override

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.trace import NonRecordingSpan, Span, SpanKind
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
    extract_trace_context,
    record_failure,
    span_context_of,
    trace_context_of,
    tracer_of,
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

    def __init__(
        self,
        propagator: ITracePropagator,
        tracer_provider: trace.TracerProvider | None = None,
    ) -> None:
        self._propagator = propagator
        self._tracer = tracer_of(tracer_provider)

    @override
    def intercept(
        self, message: InboundMessage, handler: HandlerInfo, event: AbstractEvent
    ) -> AbstractContextManager[None]:
        del event  # the span describes the delivery, not the payload
        return self._process(message, handler)

    @contextmanager
    def _process(self, message: InboundMessage, handler: HandlerInfo) -> Generator[None]:
        parent = extract_trace_context(self._propagator, message.headers)
        parent_span_context = span_context_of(parent) if parent is not None else None
        # A fresh context, never the ambient one: the trace of a message comes from it alone.
        otel_parent = Context()
        if parent_span_context is not None:
            otel_parent = trace.set_span_in_context(
                NonRecordingSpan(parent_span_context), otel_parent
            )
        span: Span = self._tracer.start_span(
            f"{_OPERATION} {message.queue}",
            context=otel_parent,
            kind=SpanKind.CONSUMER,
            attributes=_attributes(message, handler),
        )

        span_context = span.get_span_context()
        if span_context.is_valid and (
            parent_span_context is None or span_context.span_id != parent_span_context.span_id
        ):
            current = trace_context_of(span_context, parent.span_id if parent else None)
        else:
            # No SDK: Spakky makes the ids, and OpenTelemetry sees them as the current span.
            current = parent.child() if parent is not None else TraceContext.new_root()
            own = span_context_of(current, remote=False)
            span = NonRecordingSpan(own) if own is not None else span

        token = otel_context.attach(trace.set_span_in_context(span, otel_parent))
        TraceContext.set(current)
        try:
            yield
        except BaseException as error:
            record_failure(span, error)
            raise
        finally:
            TraceContext.clear()
            otel_context.detach(token)
            span.end()


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
