"""A PRODUCER span for every event published, ended by the broker's confirm."""

import contextvars
import logging
from functools import partial
from typing import override

from opentelemetry import trace
from opentelemetry.trace import NonRecordingSpan, Span, SpanKind
from opentelemetry.util.types import AttributeValue
from spakky.core.pod.annotations.pod import Pod
from spakky.tracing.context import TraceContext
from spakky.tracing.propagator import ITracePropagator

from spakky.plugins.rabbitmq.tracing import attributes as attr
from spakky.plugins.rabbitmq.tracing._otel import (
    Tracing,
    extract_trace_context,
    record_failure,
    span_context_of,
    trace_context_of,
)
from spakky.plugins.rabbitmq.transport.interceptor import (
    IPublishInterceptor,
    OutboundMessage,
    PublishCompletion,
)

logger = logging.getLogger(__name__)

_OPERATION = "publish"


@Pod()
class TracingPublishInterceptor(IPublishInterceptor):
    """Starts a ``publish <destination>`` span per message and sends its context along.

    The span's parent is the trace context already in the headers (Spakky's event bus
    puts the ambient one there), else the current OpenTelemetry span. When the span has
    its own id, the headers are rewritten to name it, so consumers become its children.
    """

    def __init__(
        self,
        propagator: ITracePropagator,
        tracer_provider: trace.TracerProvider | None = None,
    ) -> None:
        self._propagator = propagator
        self._tracing = Tracing(tracer_provider)
        self._fields = tuple(propagator.fields())

    @override
    def before_publish(self, message: OutboundMessage) -> PublishCompletion | None:
        headers = message.headers
        if self._tracing.is_off():
            # No spans: only make sure the ambient context travels, as the event bus does.
            if not any(field in headers for field in self._fields):
                self._inject(headers, None)
            return None

        parent = extract_trace_context(self._propagator, headers)
        if parent is None and self._inject(headers, None):
            parent = extract_trace_context(self._propagator, headers)

        parent_span_context = span_context_of(parent) if parent is not None else None
        otel_parent = (
            trace.set_span_in_context(NonRecordingSpan(parent_span_context))
            if parent_span_context is not None
            else None
        )
        span = self._tracing.tracer.start_span(
            _span_name(message),
            context=otel_parent,
            kind=SpanKind.PRODUCER,
            attributes=_attributes(message),
        )

        span_context = span.get_span_context()
        if span_context.is_valid and (
            parent_span_context is None or span_context.span_id != parent_span_context.span_id
        ):
            own = trace_context_of(span_context, parent.span_id if parent is not None else None)
            self._inject(headers, own)
        if not span.is_recording():
            return None
        return partial(_end, span)

    def _inject(self, headers: dict[str, str], context: TraceContext | None) -> bool:
        """Write ``context`` (the ambient one when None) into ``headers``; True if it changed."""
        before = dict(headers)
        try:
            contextvars.copy_context().run(self._inject_as, headers, context)
        except Exception:  # telemetry never changes delivery
            logger.debug("writing trace headers failed", exc_info=True)
        return headers != before

    def _inject_as(self, headers: dict[str, str], context: TraceContext | None) -> None:
        if context is not None:
            TraceContext.set(context)  # only inside the copied context of `_inject`
        self._propagator.inject(headers)


def _end(span: Span, error: BaseException | None) -> None:
    if error is not None:
        record_failure(span, error)
    span.end()


def _span_name(message: OutboundMessage) -> str:
    # The default exchange has an empty name; the routing key (the queue) names the target.
    return f"{_OPERATION} {message.exchange or message.routing_key}"


def _attributes(message: OutboundMessage) -> dict[str, AttributeValue]:
    attributes: dict[str, AttributeValue] = {
        attr.MESSAGING_SYSTEM: attr.SYSTEM_RABBITMQ,
        attr.MESSAGING_OPERATION_TYPE: "send",
        attr.MESSAGING_OPERATION_NAME: _OPERATION,
        attr.MESSAGING_DESTINATION_NAME: message.exchange,
        attr.MESSAGING_BODY_SIZE: len(message.body),
        attr.SPAKKY_EVENT_NAME: message.event_name,
    }
    if message.routing_key:
        attributes[attr.MESSAGING_ROUTING_KEY] = message.routing_key
    if message.message_id:
        attributes[attr.MESSAGING_MESSAGE_ID] = message.message_id
    return attributes
