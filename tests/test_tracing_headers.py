"""Fresh attacks on spakky-rabbitmq-tracing's _otel helpers and odd traceparent headers."""

import asyncio
import os
import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from pydantic import TypeAdapter
from spakky.core.pod.annotations.pod import Pod
from spakky.domain.models.event import AbstractEvent
from spakky.event.stereotype.event_handler import EventHandler, on_event
from spakky.tracing.context import TraceContext
from spakky.tracing.propagator import ITracePropagator

from conftest import BrokerAdmin
from spakky.plugins.rabbitmq.consumer.interceptor import HandlerInfo, InboundMessage
from spakky.plugins.rabbitmq.tracing import TracingConsumeInterceptor
from spakky.plugins.rabbitmq.tracing._otel import child_of, ids_of  # internals under test

TRACE = "0af7651916cd43dd8448eb211c80319c"
SPAN = "b7ad6b7169203331"

ODD_HEADERS: dict[str, Any] = {
    "upper": f"00-{TRACE.upper()}-{SPAN.upper()}-01",
    "short-trace": f"00-{TRACE[:30]}-{SPAN}-01",
    "long-trace": f"00-{TRACE}00-{SPAN}-01",
    "short-span": f"00-{TRACE}-{SPAN[:15]}-01",
    "zero-trace": f"00-{'0' * 32}-{SPAN}-01",
    "zero-span": f"00-{TRACE}-{'0' * 16}-01",
    "non-hex": f"00-{'zz' * 16}-{SPAN}-01",
    "max-ids": f"00-{'f' * 32}-{'f' * 16}-ff",
    "huge": "00-" + "a" * 8000 + f"-{SPAN}-01",
    "spaces-around": f"  00-{TRACE}-{SPAN}-01 \t",
    "newline-end": f"00-{TRACE}-{SPAN}-01\n",
    "inner-space": f"00- {TRACE[1:]}-{SPAN}-01",
    "plus-sign": f"00-+{TRACE[1:]}-{SPAN}-01",
    "version-ff": f"ff-{TRACE}-{SPAN}-01",
    "extra-field": f"00-{TRACE}-{SPAN}-01-xx",
    "int-header": 12345,
    "bytes-valid": bytearray(f"00-{TRACE}-{SPAN}-01".encode()),
    "not-utf8": bytearray(b"\xff\xfe"),
    "empty": "",
}


class Recorder:
    def __init__(self) -> None:
        self.items: dict[int, tuple[TraceContext | None, str, str]] = {}
        self.condition = threading.Condition()

    def record(self, user_id: int) -> None:
        span_context = trace.get_current_span().get_span_context()
        with self.condition:
            self.items[user_id] = (
                TraceContext.get(),
                format(span_context.trace_id, "032x"),
                format(span_context.span_id, "016x"),
            )
            self.condition.notify_all()

    def wait(self, count: int, timeout: float = 20.0) -> dict[int, Any]:
        with self.condition:
            self.condition.wait_for(lambda: len(self.items) >= count, timeout)
            return dict(self.items)


@pytest.fixture
def sdk() -> Iterator[tuple[TracerProvider, InMemorySpanExporter]]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    yield provider, exporter
    provider.shutdown()


@pytest.mark.broker
@pytest.mark.parametrize("with_sdk", [False, True], ids=["no-sdk", "sdk"])
@pytest.mark.parametrize("kind", ["async", "sync"])
async def test_odd_traceparent_headers_never_fail_a_message_and_ids_agree(
    broker_env: Any,
    event_type: type,
    unique_name: str,
    run_app: Any,
    broker: BrokerAdmin,
    sdk: tuple[TracerProvider, InMemorySpanExporter],
    with_sdk: bool,
    kind: str,
) -> None:
    recorder = Recorder()

    @EventHandler()
    class AsyncHandler:
        @on_event(event_type)
        async def handle(self, event: Any) -> None:
            recorder.record(event.user_id)

    @EventHandler()
    class SyncHandler:
        @on_event(event_type)
        def handle(self, event: Any) -> None:
            recorder.record(event.user_id)

    pods: list[Any] = [AsyncHandler if kind == "async" else SyncHandler]
    if with_sdk:
        provider = sdk[0]

        @Pod()
        def tracer_provider() -> trace.TracerProvider:
            return provider

        pods.append(tracer_provider)
    await asyncio.to_thread(run_app, *pods)
    names = list(ODD_HEADERS)
    for index, name in enumerate(names):
        body = TypeAdapter(event_type).dump_json(event_type(user_id=index, email="e"))
        await broker.publish(unique_name, body, headers={"traceparent": ODD_HEADERS[name]})
    seen = await asyncio.to_thread(recorder.wait, len(names))
    problems: list[str] = []
    for index, name in enumerate(names):
        if index not in seen:
            problems.append(f"{name}: handler never ran")
            continue
        context, otel_trace, otel_span = seen[index]
        if context is None:
            problems.append(f"{name}: no TraceContext")
            continue
        if (context.trace_id, context.span_id) != (otel_trace, otel_span):
            problems.append(
                f"{name}: TraceContext {context.trace_id}/{context.span_id} "
                f"!= otel {otel_trace}/{otel_span}"
            )
        if len(context.trace_id) != 32 or len(context.span_id) != 16:
            problems.append(f"{name}: id lengths {context}")
    assert problems == []
    assert await broker.wait_for_count(unique_name, 0) == 0
    assert await broker.message_count(unique_name + ".dlq") == 0


# ---- the helpers directly, as a custom ITracePropagator would feed them ----------------


@pytest.mark.parametrize(
    ("trace_id", "span_id"),
    [
        (TRACE.upper(), SPAN),
        (f" {TRACE[1:]}", SPAN),
        (f"0x{TRACE[2:]}", SPAN),
        (f"+{TRACE[1:]}", SPAN),
        (f"{TRACE[:4]}_{TRACE[5:]}", SPAN),
        ("1", "1"),
    ],
    ids=["upper", "leading-space", "0x", "plus", "underscore", "short"],
)
def test_ids_of_accepts_only_canonical_hex(trace_id: str, span_id: str) -> None:
    """tracing README: 'wrong length, upper-case hex ... start a new root trace'."""
    assert ids_of(TraceContext(trace_id=trace_id, span_id=span_id)) is None


@pytest.mark.parametrize("flags", [0, 1, 256, -1])
def test_child_of_names_the_same_ids_in_both_forms(flags: int) -> None:
    parent = TraceContext(trace_id=TRACE, span_id=SPAN, trace_flags=flags)
    current, own = child_of(parent)
    assert current.trace_id == format(own.trace_id, "032x") == TRACE
    assert current.span_id == format(own.span_id, "016x") != SPAN
    assert current.parent_span_id == SPAN
    assert current.trace_flags == int(own.trace_flags) == flags & 0xFF
    TraceContext.from_traceparent(current.to_traceparent())  # a header the next hop accepts


def test_child_of_without_parent_is_canonical() -> None:
    for _ in range(2000):
        current, own = child_of(None)
        assert current.trace_id == format(own.trace_id, "032x")
        assert current.span_id == format(own.span_id, "016x")
        assert own.is_valid


class _OddPropagator(ITracePropagator):
    def __init__(self, context: TraceContext | None, raises: bool = False) -> None:
        self.context, self.raises = context, raises

    def inject(self, carrier: dict[str, str]) -> None:
        pass

    def extract(self, carrier: dict[str, str]) -> TraceContext | None:
        if self.raises:
            raise RuntimeError("broken propagator")
        return self.context

    def fields(self) -> list[str]:
        return ["traceparent"]


def _inbound() -> InboundMessage:
    return InboundMessage(
        event_name="e", queue="q", message_id="m", headers={}, body_size=1,
        redelivered=False, attempt=1,
    )  # fmt: skip


@pytest.mark.parametrize(
    "parent",
    [
        TraceContext(trace_id=TRACE.upper(), span_id=SPAN),
        TraceContext(trace_id=" " + TRACE[1:], span_id=SPAN),
        TraceContext(trace_id=TRACE, span_id=SPAN, trace_flags=256),
        TraceContext(trace_id=TRACE, span_id=SPAN, trace_flags=-1),
        None,
    ],
    ids=["upper", "space", "flags-256", "flags-neg", "raises"],
)
@pytest.mark.parametrize("with_sdk", [False, True], ids=["no-sdk", "sdk"])
def test_custom_propagator_output_keeps_trace_context_and_otel_in_agreement(
    parent: TraceContext | None,
    with_sdk: bool,
    sdk: tuple[TracerProvider, InMemorySpanExporter],
) -> None:
    propagator = _OddPropagator(parent, raises=parent is None)
    interceptor = TracingConsumeInterceptor(propagator, sdk[0] if with_sdk else None)
    handler = HandlerInfo("h", AbstractEvent, is_async=False, call=lambda event: None)
    with interceptor.intercept(_inbound(), handler, None):  # type: ignore[arg-type]
        context = TraceContext.get()
        span_context = trace.get_current_span().get_span_context()
    assert context is not None
    assert context.trace_id == format(span_context.trace_id, "032x")
    assert context.span_id == format(span_context.span_id, "016x")
    # What a handler publishing a follow-up would send must be valid W3C again.
    TraceContext.from_traceparent(context.to_traceparent())
    assert TraceContext.get() is None


def test_global_provider_set_after_start_records_within_a_second(
    broker_env: Any, unique_name: str, broker: BrokerAdmin
) -> None:
    script = textwrap.dedent(
        f"""
        import sys, threading, time
        from opentelemetry import trace
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import SimpleSpanProcessor
        from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
        from spakky.core.application.application import SpakkyApplication
        from spakky.core.application.application_context import ApplicationContext
        from spakky.event.event_publisher import IEventPublisher
        from spakky.event.stereotype.event_handler import EventHandler, on_event
        from spakky.tracing.context import TraceContext
        from conftest import make_event_type, _NO_DATABASE

        Event = make_event_type({unique_name!r}, user_id=int)
        seen = {{}}
        done = threading.Condition()

        @EventHandler()
        class H:
            @on_event(Event)
            def handle(self, event):
                span = trace.get_current_span()
                ctx = TraceContext.get()
                with done:
                    seen[event.user_id] = (span.is_recording(), ctx.span_id,
                                           format(span.get_span_context().span_id, "016x"))
                    done.notify_all()

        app = SpakkyApplication(ApplicationContext()).load_plugins()
        for pod in (*_NO_DATABASE, H):
            app.add(pod)
        app.start()
        try:
            publisher = app.container.get(IEventPublisher)
            publisher.publish(Event(user_id=0))
            with done:
                assert done.wait_for(lambda: 0 in seen, 10)
            assert seen[0][0] is False, seen
            exporter = InMemorySpanExporter()
            provider = TracerProvider()
            provider.add_span_processor(SimpleSpanProcessor(exporter))
            trace.set_tracer_provider(provider)
            t0 = time.monotonic()
            first = None
            n = 1
            while time.monotonic() - t0 < 3:
                publisher.publish(Event(user_id=n))
                with done:
                    assert done.wait_for(lambda: n in seen, 10)
                if seen[n][0] and first is None:
                    first = time.monotonic() - t0
                    break
                n += 1
                time.sleep(0.05)
            print("recording after", first, "s;", len(exporter.get_finished_spans()), "spans")
            assert first is not None and first <= 1.2, first
            assert seen[n][1] == seen[n][2], seen[n]
            kinds = sorted(s.kind.name for s in exporter.get_finished_spans())
            print("kinds", kinds)
            assert "CONSUMER" in kinds
        finally:
            app.stop()
        """
    )
    env = {**os.environ, "SPAKKY_RABBITMQ__RETRY_DELAYS": ""}
    result = subprocess.run(
        [sys.executable, "-c", script],
        cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
        env=env,
        capture_output=True,
        text=True,
        timeout=50,
    )
    print(result.stdout, result.stderr[-3000:])
    assert result.returncode == 0
