"""Entry points of ``spakky-rabbitmq-tracing``."""

from spakky.core.application.application import SpakkyApplication

from spakky.plugins.rabbitmq.tracing.consume import TracingConsumeInterceptor
from spakky.plugins.rabbitmq.tracing.publish import TracingPublishInterceptor


def initialize(app: SpakkyApplication) -> None:
    """Plugin entry point: marks the package as loaded and registers nothing itself.

    Spakky runs `contribute` only when this plugin and ``spakky-tracing`` are both
    loaded, which is when an `ITracePropagator` is there to inject.
    """
    del app


def contribute(app: SpakkyApplication) -> None:
    """Contribution to ``spakky-tracing``: register both interceptors as pods."""
    app.add(TracingPublishInterceptor)
    app.add(TracingConsumeInterceptor)
