"""Conversions between Spakky's TraceContext and OpenTelemetry, and the shared span helpers."""

import logging
import random
import re
import time
from importlib.metadata import PackageNotFoundError, version

from opentelemetry import trace
from opentelemetry.trace import Span, SpanContext, Status, StatusCode, TraceFlags
from spakky.tracing.context import TraceContext
from spakky.tracing.propagator import ITracePropagator

from spakky.plugins.rabbitmq.tracing.attributes import ERROR_TYPE

logger = logging.getLogger(__name__)

_INSTRUMENTATION_NAME = "spakky.plugins.rabbitmq.tracing"
_NO_SDK = (trace.ProxyTracerProvider, trace.NoOpTracerProvider)
_GLOBAL_PROVIDER_RECHECK = 0.5
"""Seconds after which a global SDK set while the application runs starts recording."""
_TRACE_ID = re.compile("[0-9a-f]{32}")
_SPAN_ID = re.compile("[0-9a-f]{16}")
_FLAGS = tuple(TraceFlags(value) for value in range(256))


class Tracing:
    """This package's tracer, and whether anything would record its spans."""

    def __init__(self, provider: trace.TracerProvider | None) -> None:
        try:
            instrumentation_version = version("spakky-rabbitmq-tracing")
        except PackageNotFoundError:
            instrumentation_version = None
        self._provider = provider
        self._recording = False
        self._ask_again_at = 0.0
        # Without a provider this is a proxy that records once the application sets an SDK.
        self.tracer = trace.get_tracer(_INSTRUMENTATION_NAME, instrumentation_version, provider)

    def is_off(self) -> bool:
        """True while no SDK is configured, so that spans would be no-ops anyway."""
        if self._recording:
            return False
        if self._provider is None:
            # OpenTelemetry tells whether a global SDK is set only by get_tracer_provider(),
            # which searches os.environ on every call: ask again at most every so often.
            now = time.monotonic()
            if now < self._ask_again_at:
                return True
            self._ask_again_at = now + _GLOBAL_PROVIDER_RECHECK
        provider = self._provider if self._provider is not None else trace.get_tracer_provider()
        # OpenTelemetry sets its global provider once, so a real one stays: remember it.
        self._recording = not isinstance(provider, _NO_SDK)
        return not self._recording


def extract_trace_context(
    propagator: ITracePropagator, headers: dict[str, str]
) -> TraceContext | None:
    """The valid trace context in ``headers``, or None; never raises."""
    try:
        context = propagator.extract(headers)
    except Exception:  # a custom propagator must not fail the message
        logger.debug("reading trace headers failed; a new trace starts", exc_info=True)
        return None
    if context is None or ids_of(context) is None:
        return None
    return context


def ids_of(context: TraceContext) -> tuple[int, int] | None:
    """The trace and span ids of ``context`` as numbers, or None unless both are valid.

    Valid means what W3C Trace Context allows: 32 and 16 lower-case hex digits, not all
    zero. A custom propagator may hand over anything; only valid ids are carried on.
    """
    trace_id, span_id = context.trace_id, context.span_id
    try:
        if not (_TRACE_ID.fullmatch(trace_id) and _SPAN_ID.fullmatch(span_id)):
            return None
    except TypeError:  # not a string at all
        return None
    ids = int(trace_id, 16), int(span_id, 16)
    return ids if all(ids) else None


def span_context_of(context: TraceContext, *, remote: bool = True) -> SpanContext | None:
    """``context`` as an OpenTelemetry span context, or None when its ids are not valid."""
    ids = ids_of(context)
    if ids is None:
        return None
    return SpanContext(
        trace_id=ids[0],
        span_id=ids[1],
        is_remote=remote,
        trace_flags=_FLAGS[context.trace_flags & 0xFF],
    )


def child_of(parent: TraceContext | None) -> tuple[TraceContext, SpanContext]:
    """A new span under ``parent`` (a valid one) or a new trace, in both forms.

    This is what runs for every handler call when no SDK makes spans, so the ids are
    drawn the way OpenTelemetry's SDK draws them rather than from the OS.
    """
    span_id = 0
    while not span_id:
        span_id = random.getrandbits(64)
    if parent is None:
        trace_id = 0
        while not trace_id:
            trace_id = random.getrandbits(128)
        trace_hex, parent_span_id, flags = trace_id.to_bytes(16).hex(), None, 1
    else:
        trace_hex, parent_span_id = parent.trace_id, parent.span_id
        flags = parent.trace_flags & 0xFF  # the 8 bits a traceparent header can carry
        trace_id = int(trace_hex, 16)
    current = TraceContext(
        trace_id=trace_hex,
        span_id=span_id.to_bytes(8).hex(),
        parent_span_id=parent_span_id,
        trace_flags=flags,
    )
    own = SpanContext(
        trace_id=trace_id, span_id=span_id, is_remote=False, trace_flags=_FLAGS[flags]
    )
    return current, own


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
