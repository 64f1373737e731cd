"""Errors raised by the RabbitMQ event transports."""

from spakky.event.error import EventDeliveryRejectedError, EventTransportNotRunningError

from spakky.plugins.rabbitmq.config.errors import RabbitMQConnectionError, RabbitMQError


class RabbitMQDeliveryRejectedError(EventDeliveryRejectedError, RabbitMQError):
    """Spakky's `EventDeliveryRejectedError`, saying which messages and why."""

    def __str__(self) -> str:
        count = len(self.reasons)
        return f"RabbitMQ rejected {count} message(s): " + "; ".join(self.reasons[:10])


class RabbitMQPublishTimeoutError(RabbitMQConnectionError, TimeoutError):
    """The broker did not confirm every message of a flush in time.

    The unconfirmed messages may or may not have reached the broker; publishing
    them again can deliver them twice.
    """

    def __init__(self, unconfirmed: int, total: int, timeout: float, cause: str) -> None:
        self.unconfirmed = unconfirmed
        self.total = total
        super().__init__(
            f"{unconfirmed} of {total} messages were not confirmed by RabbitMQ within "
            f"{timeout:g} s (SPAKKY_RABBITMQ__CONFIRM_TIMEOUT); {cause}"
        )


class RabbitMQBrokerBlockedError(RabbitMQPublishTimeoutError):
    """The broker blocks publishers because of a resource alarm (memory or disk)."""

    def __init__(self, unconfirmed: int, total: int, timeout: float, alarm: str) -> None:
        self.alarm = alarm
        super().__init__(
            unconfirmed,
            total,
            timeout,
            f"the broker is blocking publishers: {alarm} (a RabbitMQ memory or disk alarm; "
            "free resources or raise the watermark)",
        )


class RabbitMQTransportNotRunningError(EventTransportNotRunningError, RabbitMQError):
    """Spakky's `EventTransportNotRunningError`, saying what to do about it."""

    message = (
        "the RabbitMQ event transport is not running: publish between app.start() and "
        "app.stop(); a publisher or transport taken from the container before app.start() "
        "is never started, so take it after start"
    )

    def __str__(self) -> str:
        return self.message
