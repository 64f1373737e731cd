"""Pipelined publishing with publisher confirms on one channel."""

import asyncio
import logging
from functools import partial
from typing import Any

import aiormq.abc
import aiormq.exceptions
from pamqp import commands as spec

from spakky.plugins.rabbitmq.config._frames import FrameWriter, frame_writer_for, is_closing
from spakky.plugins.rabbitmq.config.connection import RabbitMQConnection

logger = logging.getLogger(__name__)

_ATTEMPTS = 5
_CONNECTION_LOSS = (
    aiormq.exceptions.AMQPConnectionError,
    aiormq.exceptions.ChannelClosed,
    aiormq.exceptions.ChannelInvalidStateError,
    ConnectionError,
)


class PublishRejectedError(Exception):
    """The broker nacked or returned one message; ``reason`` says which and why."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(reason)


class Outcome(asyncio.Future[None]):
    """What became of one publish: None once confirmed, or the error.

    ``reply`` is the client's own future for the broker's answer. It settles one
    loop pass before this one, and by the time a task awaiting ``reply`` wakes up
    this future is settled too, unless the message had to be sent again: a caller
    that awaits one message at a time saves a pass by awaiting ``reply`` first.
    """

    __slots__ = ("reply",)

    def __init__(self, reply: asyncio.Future[Any]) -> None:
        super().__init__(loop=reply.get_loop())
        self.reply = reply


class ConfirmPublisher:
    """Publishes on one confirm channel of a `RabbitMQConnection`, many messages in flight.

    `publish` returns at once with a future that resolves when the broker confirms
    the message, or fails with `PublishRejectedError` (nack, unroutable) or with the
    client's own error. A message that was not confirmed when the connection went is
    sent again on the next one (so delivery is at least once); the caller's own
    timeout (``flush()``) bounds the wait. The channel is reopened after a reconnect.
    """

    def __init__(self, connection: RabbitMQConnection, *, ready_timeout: float) -> None:
        """Publish on ``connection``; wait up to ``ready_timeout`` s for it after a drop."""
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
        message = _Message(body, exchange, routing_key, properties, mandatory)
        frames = self._frames
        if frames is None or frames.channel is not self._channel or is_closing(frames.channel):
            return asyncio.ensure_future(self._publish(message, first_attempt=1))
        confirmation = frames.publish(
            body,
            exchange=exchange,
            routing_key=routing_key,
            properties=properties,
            mandatory=mandatory,
        )
        outcome = Outcome(confirmation)
        confirmation.add_done_callback(partial(self._settle, outcome, message))
        return outcome

    def _settle(
        self, outcome: asyncio.Future[None], message: "_Message", confirmation: asyncio.Future[Any]
    ) -> None:
        if outcome.done():
            return
        if confirmation.cancelled():
            outcome.cancel()
            return
        error = confirmation.exception()
        if error is None:
            error = _refusal(confirmation.result(), message)
        if error is None:
            outcome.set_result(None)
            return
        if isinstance(error, _CONNECTION_LOSS):
            resend = asyncio.ensure_future(self._publish(message, first_attempt=2))
            resend.add_done_callback(partial(_copy_outcome, outcome))
            return
        outcome.set_exception(_translated(error, message))

    async def _publish(self, message: "_Message", *, first_attempt: int) -> None:
        for attempt in range(first_attempt, _ATTEMPTS + 1):
            try:
                channel = self._channel
                if channel is None or is_closing(channel):
                    channel = await self._ready_channel()
                frames = self._frames
                if frames is not None and frames.channel is channel:
                    confirmation = await frames.publish(
                        message.body,
                        exchange=message.exchange,
                        routing_key=message.routing_key,
                        properties=message.properties,
                        mandatory=message.mandatory,
                    )
                else:
                    confirmation = await channel.basic_publish(
                        message.body,
                        exchange=message.exchange,
                        routing_key=message.routing_key,
                        properties=message.properties,
                        mandatory=message.mandatory,
                    )
            except _CONNECTION_LOSS as error:
                if attempt == _ATTEMPTS or isinstance(
                    error, aiormq.exceptions.ChannelNotFoundEntity
                ):
                    raise _translated(error, message) from None
                logger.debug("publish to %r interrupted; sending again", message.routing_key)
                await asyncio.sleep(0)
                continue
            except aiormq.exceptions.AMQPError as error:
                raise _translated(error, message) from None
            refusal = _refusal(confirmation, message)
            if refusal is not None:
                raise refusal
            return

    def _use(self, channel: aiormq.abc.AbstractChannel) -> aiormq.abc.AbstractChannel:
        self._drop_frames()
        self._frames = frame_writer_for(channel)
        self._channel = channel
        return channel

    def _drop_frames(self) -> None:
        frames, self._frames = self._frames, None
        if frames is not None:
            frames.close()

    async def _ready_channel(self) -> aiormq.abc.AbstractChannel:
        channel = self._channel
        if channel is not None and not is_closing(channel):
            return channel
        if self._opening is None or self._opening.done():
            self._opening = asyncio.ensure_future(self._open_channel())
        return await asyncio.shield(self._opening)

    async def _open_channel(self) -> aiormq.abc.AbstractChannel:
        if not self._connection.is_open:
            await self._connection.ready(self._ready_timeout)
            channel = self._channel
            if channel is not None and not is_closing(channel):
                return channel  # the reconnect listener opened it meanwhile
        return self._use(await self._connection.channel(confirms=True))

    async def _reopen(self) -> None:
        # Runs inside the reconnect, before the connection counts as ready again.
        self._opening = None
        self._use(await self._connection.channel(confirms=True))

    async def close(self) -> None:
        """Close the channel; the connection stays with its owner."""
        self._drop_frames()
        channel, self._channel = self._channel, None
        if channel is not None and not channel.is_closed:
            try:
                await asyncio.wait_for(channel.close(), 5)
            except (TimeoutError, aiormq.exceptions.AMQPError, OSError) as error:
                logger.debug("closing the confirm channel ended with %s", type(error).__name__)


class _Message:
    """What is needed to send one message again."""

    __slots__ = ("body", "exchange", "mandatory", "properties", "routing_key")

    def __init__(
        self,
        body: bytes,
        exchange: str,
        routing_key: str,
        properties: spec.Basic.Properties,
        mandatory: bool,
    ) -> None:
        self.body = body
        self.exchange = exchange
        self.routing_key = routing_key
        self.properties = properties
        self.mandatory = mandatory


def _refusal(confirmation: object, message: _Message) -> PublishRejectedError | None:
    """None for a broker ack; otherwise the rejection it amounts to."""
    if isinstance(confirmation, spec.Basic.Ack):
        return None
    return PublishRejectedError(_nacked(message))


def _translated(error: BaseException, message: _Message) -> BaseException:
    """Record-specific refusals become `PublishRejectedError`; the rest keep their type."""
    if isinstance(error, aiormq.exceptions.PublishError):
        reply = getattr(error.frame, "reply_text", "returned")
        return PublishRejectedError(
            f"{message.routing_key!r} on exchange {message.exchange!r} is unroutable ({reply})"
        )
    if isinstance(error, aiormq.exceptions.DeliveryError):
        return PublishRejectedError(_nacked(message))
    if isinstance(error, aiormq.exceptions.ChannelNotFoundEntity):
        return PublishRejectedError(f"exchange {message.exchange!r} does not exist (NOT_FOUND)")
    return error


def _nacked(message: _Message) -> str:
    return (
        f"the broker nacked the message to {message.routing_key!r} on exchange {message.exchange!r}"
    )


def _copy_outcome(outcome: asyncio.Future[None], source: asyncio.Future[None]) -> None:
    if outcome.done():
        return
    if source.cancelled():
        outcome.cancel()
    elif (error := source.exception()) is not None:
        outcome.set_exception(error)
    else:
        outcome.set_result(None)
