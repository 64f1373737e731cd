"""Entry point of ``spakky-rabbitmq-transport``."""

from spakky.core.application.application import SpakkyApplication

from spakky.plugins.rabbitmq.config.main import add_config
from spakky.plugins.rabbitmq.transport.transport import (
    AsyncRabbitMQEventTransport,
    RabbitMQEventTransport,
)


def initialize(app: SpakkyApplication) -> None:
    """Register both transports; Spakky's event buses pick them up as their transport."""
    add_config(app)
    app.add(RabbitMQEventTransport)
    app.add(AsyncRabbitMQEventTransport)
