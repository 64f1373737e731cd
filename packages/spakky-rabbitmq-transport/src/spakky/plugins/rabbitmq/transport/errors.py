"""Errors raised by the RabbitMQ event transports."""

from spakky.plugins.rabbitmq.config.errors import RabbitMQConnectionError


class RabbitMQPublishTimeoutError(RabbitMQConnectionError, TimeoutError):
    """The broker did not confirm every message of a flush in time.

    The unconfirmed messages may or may not have reached the broker; publishing
    them again can deliver them twice.
    """

    def __init__(self, unconfirmed: int, total: int, timeout: float) -> None:
        self.unconfirmed = unconfirmed
        self.total = total
        super().__init__(
            f"{unconfirmed} of {total} messages were not confirmed by RabbitMQ within "
            f"{timeout:g} s (SPAKKY_RABBITMQ__CONFIRM_TIMEOUT); the broker may be blocked "
            "by a resource alarm or the connection may be down"
        )
