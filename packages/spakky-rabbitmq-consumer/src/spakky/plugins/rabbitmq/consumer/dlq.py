"""Look at, replay and purge dead-lettered messages (``python -m ... dlq --help``)."""

import asyncio
from dataclasses import dataclass
from typing import Any

import aiormq.abc
from pamqp import commands as spec

from spakky.plugins.rabbitmq.config.connection import RabbitMQConnection
from spakky.plugins.rabbitmq.config.publisher import ConfirmPublisher, PublishRejectedError
from spakky.plugins.rabbitmq.config.settings import RabbitMQConnectionConfig
from spakky.plugins.rabbitmq.config.topology import DEAD_LETTER_SUFFIX, dead_letter_queue_name
from spakky.plugins.rabbitmq.consumer.headers import (
    HEADER_ATTEMPT,
    HEADER_DEAD_LETTERED_AT,
    HEADER_ERROR_MESSAGE,
    HEADER_ERROR_TYPE,
    HEADER_HANDLERS,
    HEADER_ORIGINAL_QUEUE,
    HEADER_REASON,
    text_headers,
)

_DEAD_LETTER_HEADERS = (
    HEADER_REASON,
    HEADER_ERROR_TYPE,
    HEADER_ERROR_MESSAGE,
    HEADER_DEAD_LETTERED_AT,
    HEADER_ORIGINAL_QUEUE,
    HEADER_ATTEMPT,
)


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """One dead-lettered message as an operator sees it."""

    message_id: str | None
    reason: str
    error_type: str
    error_message: str
    handlers: str
    dead_lettered_at: str
    original_queue: str
    size: int

    def as_dict(self) -> dict[str, Any]:
        """The fields as a JSON-ready dictionary."""
        return {name: getattr(self, name) for name in self.__slots__}


def dead_letter_queue_of(queue: str) -> str:
    """Accept the event queue or its dead-letter queue; return the dead-letter queue."""
    return queue if queue.endswith(DEAD_LETTER_SUFFIX) else dead_letter_queue_name(queue)


async def list_dead_letters(
    config: RabbitMQConnectionConfig, queue: str, limit: int
) -> list[DeadLetter]:
    """Read up to ``limit`` messages without removing them (they go back when we close)."""
    dlq = dead_letter_queue_of(queue)
    connection = RabbitMQConnection(config, role="dlq-list")
    await connection.open()
    try:
        channel = await connection.channel(confirms=False)
        letters: list[DeadLetter] = []
        while len(letters) < limit:
            message = await _get(channel, dlq)
            if message is None:
                break
            letters.append(_describe(message, dlq))
        return letters
    finally:
        await connection.close()


async def replay_dead_letters(config: RabbitMQConnectionConfig, queue: str, limit: int) -> int:
    """Move up to ``limit`` messages back to their queue; each is removed only once the
    broker confirmed the copy. The copy keeps ``x-spakky-handlers``, so only the
    handlers that failed run again, and starts again at attempt 1."""
    dlq = dead_letter_queue_of(queue)
    connection = RabbitMQConnection(config, role="dlq-replay")
    await connection.open()
    try:
        channel = await connection.channel(confirms=False)
        publisher = ConfirmPublisher(connection, ready_timeout=config.reconnect_timeout)
        replayed = 0
        while replayed < limit:
            message = await _get(channel, dlq)
            if message is None:
                break
            original = message.header.properties
            headers = {
                key: value
                for key, value in (original.headers or {}).items()
                if key not in _DEAD_LETTER_HEADERS
            }
            target = text_headers(original.headers).get(HEADER_ORIGINAL_QUEUE) or dlq.removesuffix(
                DEAD_LETTER_SUFFIX
            )
            properties = spec.Basic.Properties(
                content_type=original.content_type,
                content_encoding=original.content_encoding,
                correlation_id=original.correlation_id,
                app_id=original.app_id,
                headers=headers,
                delivery_mode=2,
                message_id=original.message_id,
                timestamp=original.timestamp,
                message_type=original.message_type,
            )
            try:
                await asyncio.wait_for(
                    publisher.publish(
                        message.body,
                        exchange="",
                        routing_key=target,
                        properties=properties,
                        mandatory=True,
                    ),
                    config.confirm_timeout,
                )
            except PublishRejectedError as error:
                raise PublishRejectedError(
                    f"message {original.message_id or '-'} could not go back to {target!r} "
                    f"({error.reason}); it stays in {dlq!r}, and so do the ones after it "
                    f"({replayed} replayed before it)"
                ) from None
            await channel.basic_ack(_tag(message))
            replayed += 1
        return replayed
    finally:
        await connection.close()


async def purge_dead_letters(config: RabbitMQConnectionConfig, queue: str) -> int:
    """Delete every message of the dead-letter queue; return how many there were."""
    dlq = dead_letter_queue_of(queue)
    connection = RabbitMQConnection(config, role="dlq-purge")
    await connection.open()
    try:
        channel = await connection.channel(confirms=False)
        purged = await channel.queue_purge(dlq, timeout=config.connect_timeout)
        return int(purged.message_count or 0)
    finally:
        await connection.close()


async def _get(
    channel: aiormq.abc.AbstractChannel, queue: str
) -> aiormq.abc.DeliveredMessage | None:
    message = await channel.basic_get(queue, no_ack=False, timeout=10)
    if isinstance(message.delivery, spec.Basic.GetEmpty):
        return None
    return message


def _tag(message: aiormq.abc.DeliveredMessage) -> int:
    delivery = message.delivery
    assert isinstance(delivery, spec.Basic.GetOk)
    assert delivery.delivery_tag is not None
    return delivery.delivery_tag


def _describe(message: aiormq.abc.DeliveredMessage, dlq: str) -> DeadLetter:
    headers = text_headers(message.header.properties.headers)
    return DeadLetter(
        message_id=message.header.properties.message_id,
        reason=headers.get(HEADER_REASON, ""),
        error_type=headers.get(HEADER_ERROR_TYPE, ""),
        error_message=headers.get(HEADER_ERROR_MESSAGE, ""),
        handlers=headers.get(HEADER_HANDLERS, ""),
        dead_lettered_at=headers.get(HEADER_DEAD_LETTERED_AT, ""),
        original_queue=headers.get(HEADER_ORIGINAL_QUEUE, dlq.removesuffix(DEAD_LETTER_SUFFIX)),
        size=len(message.body),
    )
