"""Entry point of ``spakky-rabbitmq-consumer``."""

from spakky.core.application.application import SpakkyApplication

from spakky.plugins.rabbitmq.config.main import add_config
from spakky.plugins.rabbitmq.consumer.consumer import (
    AsyncRabbitMQEventConsumer,
    RabbitMQEventConsumer,
)
from spakky.plugins.rabbitmq.consumer.registry import (
    RabbitMQHandlerRegistrationPostProcessor,
    RabbitMQHandlerRegistry,
)


def initialize(app: SpakkyApplication) -> None:
    """Register the handler registry, its post-processor and both consumers."""
    add_config(app)
    app.add(RabbitMQHandlerRegistry)
    app.add(RabbitMQHandlerRegistrationPostProcessor)
    app.add(RabbitMQEventConsumer)
    app.add(AsyncRabbitMQEventConsumer)
