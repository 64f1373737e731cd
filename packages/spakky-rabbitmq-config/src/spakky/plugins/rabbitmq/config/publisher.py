"""Pipelined publishing with publisher confirms on one channel."""

import asyncio
import logging

import aiormq.abc
import aiormq.exceptions
from pamqp import commands as spec

from spakky.plugins.rabbitmq.config.connection import RabbitMQConnection

logger = logging.getLogger(__name__)

_ATTEMPTS = 5


def _nacked(exchange: str, routing_key: str) -> str:
    return f"the broker nacked the message to {routing_key!r} on exchange {exchange!r}"


class PublishRejectedError(Exception):
    """The broker nacked or returned one message; ``reason`` says which and why."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(reason)


class ConfirmPublisher:
    """Publishes on one confirm channel of a `RabbitMQConnection`, many messages in flight.

    `publish` returns at once with a future that resolves when the broker confirms
    the message, or fails with `PublishRejectedError` (nack, unroutable) or with the
    client's own error (channel or connection lost). The channel is reopened after
    a reconnect.
    """

    def __init__(self, connection: RabbitMQConnection, *, ready_timeout: float) -> None:
        """Publish on ``connection``; wait up to ``ready_timeout`` s for it after a drop."""
        self._connection = connection
        self._ready_timeout = ready_timeout
        self._channel: aiormq.abc.AbstractChannel | None = None
        self._opening: asyncio.Future[aiormq.abc.AbstractChannel] | None = None
        connection.add_reconnect_listener(self._reopen)

    async def open(self) -> None:
        """Open the confirm channel now rather than on the first publish."""
        await self._ready_channel()

    def publish(
        self,
        body: bytes,
        *,
        exchange: str,
        routing_key: str,
        properties: spec.Basic.Properties,
        mandatory: bool,
    ) -> asyncio.Future[None]:
        """Start publishing ``body``; the returned future resolves on the broker's confirm."""
        return asyncio.ensure_future(
            self._publish(body, exchange, routing_key, properties, mandatory)
        )

    async def _publish(
        self,
        body: bytes,
        exchange: str,
        routing_key: str,
        properties: spec.Basic.Properties,
        mandatory: bool,
    ) -> None:
        # A message the broker never confirmed is sent again on the next connection;
        # the caller's flush() bounds the whole wait. Delivery is at least once.
        for attempt in range(1, _ATTEMPTS + 1):
            channel = self._channel
            if channel is None or channel.is_closed:
                channel = await self._ready_channel()
            try:
                confirmation = await channel.basic_publish(
                    body,
                    exchange=exchange,
                    routing_key=routing_key,
                    properties=properties,
                    mandatory=mandatory,
                )
            except aiormq.exceptions.PublishError as error:
                reply = getattr(error.frame, "reply_text", "returned")
                raise PublishRejectedError(
                    f"{routing_key!r} on exchange {exchange!r} is unroutable ({reply})"
                ) from None
            except aiormq.exceptions.DeliveryError:
                raise PublishRejectedError(_nacked(exchange, routing_key)) from None
            except aiormq.exceptions.ChannelNotFoundEntity:
                raise PublishRejectedError(
                    f"exchange {exchange!r} does not exist (NOT_FOUND)"
                ) from None
            except (
                aiormq.exceptions.AMQPConnectionError,
                aiormq.exceptions.ChannelClosed,
                aiormq.exceptions.ChannelInvalidStateError,
                ConnectionError,
            ) as error:
                if attempt == _ATTEMPTS:
                    raise
                logger.debug("publish to %r interrupted (%s); sending again", routing_key, error)
                await asyncio.sleep(0)
                continue
            if not isinstance(confirmation, spec.Basic.Ack):
                raise PublishRejectedError(_nacked(exchange, routing_key))
            return

    async def _ready_channel(self) -> aiormq.abc.AbstractChannel:
        channel = self._channel
        if channel is not None and not channel.is_closed:
            return channel
        if self._opening is None or self._opening.done():
            self._opening = asyncio.ensure_future(self._open_channel())
        return await asyncio.shield(self._opening)

    async def _open_channel(self) -> aiormq.abc.AbstractChannel:
        if not self._connection.is_open:
            await self._connection.ready(self._ready_timeout)
            channel = self._channel
            if channel is not None and not channel.is_closed:
                return channel  # the reconnect listener opened it meanwhile
        self._channel = await self._connection.channel(confirms=True)
        return self._channel

    async def _reopen(self) -> None:
        # Runs inside the reconnect, before the connection counts as ready again.
        self._opening = None
        self._channel = await self._connection.channel(confirms=True)

    async def close(self) -> None:
        """Close the channel; the connection stays with its owner."""
        channel, self._channel = self._channel, None
        if channel is not None and not channel.is_closed:
            try:
                await asyncio.wait_for(channel.close(), 5)
            except (TimeoutError, aiormq.exceptions.AMQPError, OSError) as error:
                logger.debug("closing the confirm channel ended with %s", type(error).__name__)
