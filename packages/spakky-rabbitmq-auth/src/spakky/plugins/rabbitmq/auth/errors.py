"""Errors of the RabbitMQ auth boundary."""

from spakky.plugins.rabbitmq.config.errors import RabbitMQError


class RabbitMQAuthError(RabbitMQError):
    """Base class of the auth boundary's own errors."""


class AmbiguousAuthSnapshotError(RabbitMQAuthError):
    """A message carries both snapshot headers with different values.

    Which one a sender meant cannot be known, so the message is treated like an
    invalid snapshot (CHALLENGE) rather than trusting either header.
    """
