"""Helpers for the tracing tests: an SDK provider per test and records of what handlers saw."""

import threading
import time
from dataclasses import dataclass

from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from spakky.core.pod.annotations.pod import Pod
from spakky.tracing.context import TraceContext


class Spans:
    """A tracer provider of its own (never the global one) and the spans it finished."""

    def __init__(self) -> None:
        self.exporter = InMemorySpanExporter()
        self.provider = TracerProvider()
        self.provider.add_span_processor(SimpleSpanProcessor(self.exporter))

    def pod(self) -> object:
        """A pod that hands this provider to the interceptors."""
        provider = self.provider

        @Pod()
        def tracer_provider() -> trace.TracerProvider:
            return provider

        return tracer_provider

    def finished(self) -> list[ReadableSpan]:
        return list(self.exporter.get_finished_spans())

    def wait(self, count: int, timeout: float = 10.0) -> list[ReadableSpan]:
        """Poll until ``count`` spans finished or ``timeout`` passes; return them."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            spans = self.finished()
            if len(spans) >= count:
                return spans
            time.sleep(0.02)
        return self.finished()

    def close(self) -> None:
        self.provider.shutdown()


@dataclass(frozen=True)
class Seen:
    """What one handler call saw: its name, the event's user id and both contexts."""

    who: str
    user_id: int
    trace_context: TraceContext | None
    otel_trace_id: str
    otel_span_id: str


class Recorder:
    """Thread-safe record of handler calls."""

    def __init__(self) -> None:
        self.items: list[Seen] = []
        self._condition = threading.Condition()

    def record(self, who: str, user_id: int) -> Seen:
        span_context = trace.get_current_span().get_span_context()
        seen = Seen(
            who=who,
            user_id=user_id,
            trace_context=TraceContext.get(),
            otel_trace_id=format(span_context.trace_id, "032x"),
            otel_span_id=format(span_context.span_id, "016x"),
        )
        with self._condition:
            self.items.append(seen)
            self._condition.notify_all()
        return seen

    def wait(self, count: int, timeout: float = 15.0) -> list[Seen]:
        with self._condition:
            self._condition.wait_for(lambda: len(self.items) >= count, timeout)
            return list(self.items)


def hex_id(value: int, width: int) -> str:
    return format(value, f"0{width}x")


def trace_of(span: ReadableSpan) -> str:
    """The span's trace id as hex."""
    assert span.context is not None
    return hex_id(span.context.trace_id, 32)


def span_of(span: ReadableSpan) -> str:
    """The span's own id as hex."""
    assert span.context is not None
    return hex_id(span.context.span_id, 16)


def parent_of(span: ReadableSpan) -> str | None:
    """The span id of the span's parent as hex, or None for a root span."""
    return hex_id(span.parent.span_id, 16) if span.parent is not None else None


def handler_of(span: ReadableSpan) -> str:
    """The method name of the handler a process span belongs to."""
    attributes = span.attributes or {}
    return str(attributes.get("spakky.event.handler", "")).rsplit(".", 1)[-1]
