"""Entry point of ``spakky-rabbitmq-config``."""

from spakky.core.application.application import SpakkyApplication

from spakky.plugins.rabbitmq.config.settings import RabbitMQConnectionConfig


def initialize(app: SpakkyApplication) -> None:
    """Register `RabbitMQConnectionConfig` once, whichever package asks first."""
    add_config(app)


def add_config(app: SpakkyApplication) -> None:
    """Add the settings pod unless another RabbitMQ package already did."""
    if not app.container.contains(RabbitMQConnectionConfig):
        app.add(RabbitMQConnectionConfig)
