"""Conversions between Spakky's TraceContext and OpenTelemetry, and the shared span helpers."""

import logging
from importlib.metadata import PackageNotFoundError, version

from opentelemetry import trace
from opentelemetry.trace import Span, SpanContext, Status, StatusCode, TraceFlags
from spakky.tracing.context import TraceContext
from spakky.tracing.propagator import ITracePropagator

from spakky.plugins.rabbitmq.tracing.attributes import ERROR_TYPE

logger = logging.getLogger(__name__)

_INSTRUMENTATION_NAME = "spakky.plugins.rabbitmq.tracing"


class Tracing:
    """This package's tracer, and whether anything would record its spans."""

    def __init__(self, provider: trace.TracerProvider | None) -> None:
        try:
            instrumentation_version = version("spakky-rabbitmq-tracing")
        except PackageNotFoundError:
            instrumentation_version = None
        self._provider = provider
        # Without a provider this is a proxy that records once the application sets an SDK.
        self.tracer = trace.get_tracer(_INSTRUMENTATION_NAME, instrumentation_version, provider)

    def is_off(self) -> bool:
        """True while no SDK is configured, so that spans would be no-ops anyway."""
        provider = self._provider if self._provider is not None else trace.get_tracer_provider()
        return isinstance(provider, trace.ProxyTracerProvider | trace.NoOpTracerProvider)


def extract_trace_context(
    propagator: ITracePropagator, headers: dict[str, str]
) -> TraceContext | None:
    """The valid trace context in ``headers``, or None; never raises."""
    try:
        context = propagator.extract(headers)
    except Exception:  # a custom propagator must not fail the message
        logger.debug("reading trace headers failed; a new trace starts", exc_info=True)
        return None
    if context is None or span_context_of(context) is None:
        return None
    return context


def span_context_of(context: TraceContext, *, remote: bool = True) -> SpanContext | None:
    """``context`` as an OpenTelemetry span context, or None when its ids are not valid."""
    try:
        span_context = SpanContext(
            trace_id=int(context.trace_id, 16),
            span_id=int(context.span_id, 16),
            is_remote=remote,
            trace_flags=TraceFlags(context.trace_flags & 0xFF),
        )
    except (TypeError, ValueError):
        return None
    return span_context if span_context.is_valid else None


def trace_context_of(span_context: SpanContext, parent_span_id: str | None) -> TraceContext:
    """The Spakky trace context that names the same span as ``span_context``."""
    return TraceContext(
        trace_id=format(span_context.trace_id, "032x"),
        span_id=format(span_context.span_id, "016x"),
        parent_span_id=parent_span_id,
        trace_flags=int(span_context.trace_flags),
    )


def record_failure(span: Span, error: BaseException) -> None:
    """Mark ``span`` failed with ``error``; the caller re-raises or reports it unchanged."""
    if not span.is_recording():
        return
    span.record_exception(error)
    span.set_attribute(ERROR_TYPE, type(error).__qualname__)
    span.set_status(Status(StatusCode.ERROR, f"{type(error).__qualname__}: {error}"))
