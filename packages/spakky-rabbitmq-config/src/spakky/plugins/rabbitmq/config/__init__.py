"""Settings and the shared AMQP connection of the Spakky RabbitMQ plugin.

Example:
    import os
    os.environ["SPAKKY_RABBITMQ__URL"] = "amqp://guest:guest@127.0.0.1:5672/"
    config = RabbitMQConnectionConfig()
    print(config.safe_url)  # amqp://guest:***@127.0.0.1:5672/
"""

from spakky.plugins.rabbitmq.config.connection import RabbitMQConnection
from spakky.plugins.rabbitmq.config.errors import (
    RabbitMQAuthenticationError,
    RabbitMQConfigurationError,
    RabbitMQConnectionError,
    RabbitMQError,
    RabbitMQTopologyError,
)
from spakky.plugins.rabbitmq.config.settings import (
    RabbitMQAuthFailureAction,
    RabbitMQConnectionConfig,
    RabbitMQExchangeType,
    RabbitMQMessageAction,
)

__all__ = [
    "RabbitMQAuthFailureAction",
    "RabbitMQAuthenticationError",
    "RabbitMQConfigurationError",
    "RabbitMQConnection",
    "RabbitMQConnectionConfig",
    "RabbitMQConnectionError",
    "RabbitMQError",
    "RabbitMQExchangeType",
    "RabbitMQMessageAction",
    "RabbitMQTopologyError",
]
