"""Names and declarations of the queues and exchanges the plugin uses.

Compatible topology: one durable queue per event, named after the event, on the
default exchange. With ``EXCHANGE_NAME`` the exchange routes each event to that
queue by the event name. Dead letters of queue ``Q`` go to the durable queue
``Q.dlq``; a retry after ``N`` seconds waits in ``Q.retry.Ns``, whose message TTL
dead-letters it back to ``Q`` (plain AMQP: no plugin needed on RabbitMQ 3.x or 4.x).
"""

import asyncio
from collections.abc import AsyncGenerator, Awaitable
from contextlib import asynccontextmanager, suppress

import aiormq.abc
import aiormq.exceptions
from spakky.domain.models.event import AbstractEvent

from spakky.plugins.rabbitmq.config.connection import RabbitMQConnection
from spakky.plugins.rabbitmq.config.errors import RabbitMQTopologyError, describe_error
from spakky.plugins.rabbitmq.config.settings import RabbitMQConnectionConfig

DEAD_LETTER_SUFFIX = ".dlq"


def event_name_of(event_type: type[AbstractEvent]) -> str:
    """The name an event type is published under: its ``event_name`` property.

    The property is read on a bare instance, so an override must not depend on
    field values (the consumer needs the name before any event exists).
    """
    probe = object.__new__(event_type)
    try:
        name = event_type.event_name.fget(probe)  # type: ignore[attr-defined]
    except AttributeError as error:
        raise RabbitMQTopologyError(
            f"{event_type.__qualname__}.event_name reads instance data ({error}); "
            "return a constant or use type(self) so queues can be named before events exist"
        ) from None
    if not isinstance(name, str) or not name:
        raise RabbitMQTopologyError(
            f"{event_type.__qualname__}.event_name must return a non-empty string"
        )
    return name


def queue_name(config: RabbitMQConnectionConfig, event_name: str) -> str:
    """The queue that receives ``event_name``."""
    del config  # the compatible topology names the queue after the event alone
    return event_name


def dead_letter_queue_name(queue: str) -> str:
    """The queue where messages of ``queue`` go when they cannot be handled."""
    return queue + DEAD_LETTER_SUFFIX


def retry_queue_name(queue: str, delay: float) -> str:
    """The queue where messages of ``queue`` wait ``delay`` seconds before a retry."""
    return f"{queue}.retry.{delay:g}s"


@asynccontextmanager
async def declaration_channel(
    connection: RabbitMQConnection,
) -> AsyncGenerator[aiormq.abc.AbstractChannel]:
    """A throwaway channel: a failed declaration closes it, not a working channel."""
    channel = await connection.channel(confirms=False)
    try:
        yield channel
    finally:
        if not channel.is_closed:
            with suppress(TimeoutError, aiormq.exceptions.AMQPError, OSError):
                await asyncio.wait_for(channel.close(), 5)


async def declare_event_queue(
    channel: aiormq.abc.AbstractChannel, config: RabbitMQConnectionConfig, event_name: str
) -> str:
    """Declare the queue of ``event_name`` (and its exchange binding); return its name."""
    queue = queue_name(config, event_name)
    timeout = config.connect_timeout
    await _declare(channel.queue_declare(queue, durable=True, timeout=timeout), "queue", queue)
    if config.exchange_name is not None:
        await declare_exchange(channel, config)
        await channel.queue_bind(
            queue, config.exchange_name, routing_key=event_name, timeout=timeout
        )
    return queue


async def declare_exchange(
    channel: aiormq.abc.AbstractChannel, config: RabbitMQConnectionConfig
) -> None:
    """Declare ``EXCHANGE_NAME`` with the configured type and durability."""
    assert config.exchange_name is not None
    await _declare(
        channel.exchange_declare(
            config.exchange_name,
            exchange_type=config.exchange_type.value,
            durable=config.exchange_durable,
            timeout=config.connect_timeout,
        ),
        "exchange",
        config.exchange_name,
        hint="SPAKKY_RABBITMQ__EXCHANGE_TYPE and SPAKKY_RABBITMQ__EXCHANGE_DURABLE",
    )


async def declare_dead_letter_queue(
    channel: aiormq.abc.AbstractChannel, config: RabbitMQConnectionConfig, queue: str
) -> str:
    """Declare the dead-letter queue of ``queue``; return its name."""
    name = dead_letter_queue_name(queue)
    await _declare(
        channel.queue_declare(name, durable=True, timeout=config.connect_timeout),
        "queue",
        name,
    )
    return name


async def _declare(
    declaration: Awaitable[object], kind: str, name: str, hint: str = "the queue's arguments"
) -> None:
    try:
        await declaration
    except aiormq.exceptions.ChannelPreconditionFailed as error:
        raise RabbitMQTopologyError(
            f"{kind} {name!r} already exists with other settings ({describe_error(error)}); "
            f"delete it or change {hint} to match"
        ) from None
    except aiormq.exceptions.ChannelAccessRefused:
        raise RabbitMQTopologyError(
            f"the RabbitMQ user may not declare {kind} {name!r} (ACCESS_REFUSED)"
        ) from None


async def declare_retry_queue(
    channel: aiormq.abc.AbstractChannel,
    config: RabbitMQConnectionConfig,
    queue: str,
    delay: float,
) -> str:
    """Declare the queue that holds messages of ``queue`` for ``delay`` s, then returns them."""
    name = retry_queue_name(queue, delay)
    arguments: dict[str, object] = {
        "x-message-ttl": max(1, round(delay * 1000)),
        "x-dead-letter-exchange": "",
        "x-dead-letter-routing-key": queue,
    }
    await _declare(
        channel.queue_declare(
            name,
            durable=True,
            arguments=arguments,  # type: ignore[arg-type]
            timeout=config.connect_timeout,
        ),
        "queue",
        name,
        hint="SPAKKY_RABBITMQ__RETRY_DELAYS",
    )
    return name
