"""Trace Spakky integration events through RabbitMQ, as TraceContext and as OpenTelemetry spans.

Installing this package is enough: with ``spakky-tracing`` loaded, every publish gets a
PRODUCER span that ends at the broker's confirm, and every handler call a CONSUMER span
whose ids are also the handler's ambient `TraceContext`. Spans go to the global
OpenTelemetry tracer provider, or to a ``TracerProvider`` pod when the container has one.

Example:
    trace.set_tracer_provider(TracerProvider())  # opentelemetry-sdk, set up by the app
    app = SpakkyApplication(ApplicationContext()).load_plugins().scan(my_service)
    app.start()
"""

from spakky.plugins.rabbitmq.tracing.consume import TracingConsumeInterceptor
from spakky.plugins.rabbitmq.tracing.publish import TracingPublishInterceptor

__all__ = [
    "TracingConsumeInterceptor",
    "TracingPublishInterceptor",
]
