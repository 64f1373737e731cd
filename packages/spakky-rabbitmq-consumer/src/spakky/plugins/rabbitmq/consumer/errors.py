"""Errors raised by the RabbitMQ event consumers."""

from spakky.plugins.rabbitmq.config.errors import RabbitMQError


class RabbitMQConsumerError(RabbitMQError):
    """Base class of the consumer's own errors."""


class HandlerRegistrationError(RabbitMQConsumerError, ValueError):
    """A handler cannot be registered as asked."""
