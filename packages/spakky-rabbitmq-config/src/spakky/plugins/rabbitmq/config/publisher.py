"""Pipelined publishing with publisher confirms on one channel."""

import asyncio
import logging
from functools import partial
from typing import Any

import aiormq.abc
import aiormq.exceptions
from pamqp import commands as spec

from spakky.plugins.rabbitmq.config._frames import FrameWriter, frame_writer_for
from spakky.plugins.rabbitmq.config.connection import RabbitMQConnection

logger = logging.getLogger(__name__)


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
        self._connection = connection
        self._ready_timeout = ready_timeout
        self._channel: aiormq.abc.AbstractChannel | None = None
        self._frames: FrameWriter | None = None
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
        frames = self._frames
        if frames is not None and frames.channel is self._channel and not frames.channel.is_closed:
            confirmation = frames.publish(
                body,
                exchange=exchange,
                routing_key=routing_key,
                properties=properties,
                mandatory=mandatory,
            )
            outcome: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            confirmation.add_done_callback(
                partial(_settle, outcome, exchange=exchange, routing_key=routing_key)
            )
            return outcome
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
            raise PublishRejectedError(
                f"the broker nacked the message to {routing_key!r} on exchange {exchange!r}"
            ) from None
        if not isinstance(confirmation, spec.Basic.Ack):
            raise PublishRejectedError(
                f"the broker nacked the message to {routing_key!r} on exchange {exchange!r}"
            )

    def _drop_frames(self) -> None:
        frames, self._frames = self._frames, None
        if frames is not None:
            frames.close()

    async def _ready_channel(self) -> aiormq.abc.AbstractChannel:
        channel = self._channel
        if channel is not None and not channel.is_closed:
            return channel
        if self._opening is None or self._opening.done():
            self._opening = asyncio.ensure_future(self._open_channel())
        return await asyncio.shield(self._opening)

    async def _open_channel(self) -> aiormq.abc.AbstractChannel:
        await self._connection.ready(self._ready_timeout)
        channel = await self._connection.channel(confirms=True)
        self._frames = frame_writer_for(channel)
        self._channel = channel
        return channel

    async def _reopen(self) -> None:
        self._drop_frames()
        self._channel = None
        self._opening = None
        await self._ready_channel()

    async def close(self) -> None:
        """Close the channel; the connection stays with its owner."""
        self._drop_frames()
        channel, self._channel = self._channel, None
        if channel is not None and not channel.is_closed:
            try:
                await asyncio.wait_for(channel.close(), 5)
            except (TimeoutError, aiormq.exceptions.AMQPError, OSError) as error:
                logger.debug("closing the confirm channel ended with %s", type(error).__name__)


def _settle(
    outcome: asyncio.Future[None],
    confirmation: asyncio.Future[Any],
    *,
    exchange: str,
    routing_key: str,
) -> None:
    """Give ``outcome`` what ``basic_publish`` would have raised or returned."""
    if outcome.done():
        return
    if confirmation.cancelled():
        outcome.cancel()
        return
    error = confirmation.exception()
    if isinstance(error, aiormq.exceptions.PublishError):
        reply = getattr(error.frame, "reply_text", "returned")
        outcome.set_exception(
            PublishRejectedError(
                f"{routing_key!r} on exchange {exchange!r} is unroutable ({reply})"
            )
        )
    elif isinstance(error, aiormq.exceptions.DeliveryError) or (
        error is None and not isinstance(confirmation.result(), spec.Basic.Ack)
    ):
        outcome.set_exception(
            PublishRejectedError(
                f"the broker nacked the message to {routing_key!r} on exchange {exchange!r}"
            )
        )
    elif error is not None:
        outcome.set_exception(error)
    else:
        outcome.set_result(None)
