"""Errors raised by the RabbitMQ event consumers."""

from spakky.plugins.rabbitmq.config.errors import RabbitMQError


class RabbitMQConsumerError(RabbitMQError):
    """Base class of the consumer's own errors."""


class HandlerRegistrationError(RabbitMQConsumerError, ValueError):
    """A handler cannot be registered as asked."""


class HandlerEscapedError(RabbitMQConsumerError):
    """A handler raised a `BaseException` (``SystemExit``, ``KeyboardInterrupt``, a stray
    ``CancelledError``). It counts as that handler's failure; the consumer carries on."""
