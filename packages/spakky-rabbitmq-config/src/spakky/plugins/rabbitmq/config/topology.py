"""The queues, exchanges and bindings the plugin uses, planned first and then declared.

Compatible mode (no ``SERVICE_NAME``): one durable queue per event, named after the
event, on the default exchange; with ``EXCHANGE_NAME`` that exchange routes the event
name to it, and the publisher declares the queue too.

Pub/sub mode (``SERVICE_NAME`` set): each service consumes its own queue
``<service>.<event>``, bound to the exchange (``EXCHANGE_NAME``, default
``spakky.events``, type ``topic``) by the event name; publishers declare only the
exchange. Replicas of one service share their queue; different services each get
every event.

Either way, dead letters of queue ``Q`` go to ``Q.dlq``; a retry after ``N`` seconds
waits in ``Q.retry.Ns``, whose message TTL dead-letters it back to ``Q`` (plain AMQP,
no plugin, RabbitMQ 3.x and 4.x). Quorum queues always carry an explicit delivery
limit and dead-letter target, so the broker never drops a message by itself.
"""

import asyncio
import re
from collections.abc import AsyncGenerator, Awaitable, Callable, Iterable
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass, field
from typing import Any

import aiormq.abc
import aiormq.exceptions
from spakky.domain.models.event import AbstractEvent

from spakky.plugins.rabbitmq.config.connection import RabbitMQConnection
from spakky.plugins.rabbitmq.config.errors import RabbitMQTopologyError, describe_error
from spakky.plugins.rabbitmq.config.settings import (
    RabbitMQConnectionConfig,
    RabbitMQQueueType,
    RabbitMQTopologyMode,
)

DEAD_LETTER_SUFFIX = ".dlq"

# What pamqp accepts in queue and exchange names (a subset of what RabbitMQ allows).
_AMQP_NAME = re.compile(r"[a-zA-Z0-9-_.:@#,/+ ]+")
_AMQP_NAME_LIMIT = 255
_RESERVED_SUFFIX = re.compile(r"(\.dlq|\.retry\.[0-9.e+-]+s)$")

_QUEUE_SETTINGS = "SPAKKY_RABBITMQ__QUEUE_TYPE and SPAKKY_RABBITMQ__DELIVERY_LIMIT"
_EXCHANGE_SETTINGS = "SPAKKY_RABBITMQ__EXCHANGE_TYPE and SPAKKY_RABBITMQ__EXCHANGE_DURABLE"


@dataclass(frozen=True, slots=True)
class ExchangeSpec:
    """An exchange to declare."""

    name: str
    type: str
    durable: bool


@dataclass(frozen=True, slots=True)
class QueueSpec:
    """A queue to declare, with the setting that controls its arguments."""

    name: str
    role: str
    """``events``, ``dead-letter`` or ``retry``."""

    arguments: dict[str, Any] = field(default_factory=dict[str, Any], hash=False)
    settings: str = _QUEUE_SETTINGS


@dataclass(frozen=True, slots=True)
class BindingSpec:
    """A binding of a queue to an exchange by routing key."""

    queue: str
    exchange: str
    routing_key: str


@dataclass(frozen=True, slots=True)
class Topology:
    """Everything to declare, in order: exchanges, then queues, then bindings."""

    exchanges: tuple[ExchangeSpec, ...] = ()
    queues: tuple[QueueSpec, ...] = ()
    bindings: tuple[BindingSpec, ...] = ()

    def __add__(self, other: "Topology") -> "Topology":
        return Topology(
            exchanges=_unique(self.exchanges + other.exchanges),
            queues=_unique(self.queues + other.queues, key=_queue_key),
            bindings=_unique(self.bindings + other.bindings),
        )

    def as_dict(self) -> dict[str, Any]:
        """A JSON-ready description."""
        return {
            "exchanges": [
                {"name": e.name, "type": e.type, "durable": e.durable} for e in self.exchanges
            ],
            "queues": [
                {"name": q.name, "role": q.role, "durable": True, "arguments": q.arguments}
                for q in self.queues
            ],
            "bindings": [
                {"queue": b.queue, "exchange": b.exchange, "routing_key": b.routing_key}
                for b in self.bindings
            ],
        }

    def as_text(self) -> str:
        """A description for people, one object per line."""
        lines = [f"exchange {e.name} type={e.type} durable={e.durable}" for e in self.exchanges]
        for queue in self.queues:
            arguments = " ".join(f"{key}={value!r}" for key, value in queue.arguments.items())
            lines.append(f"queue {queue.name} ({queue.role}) durable=True {arguments}".rstrip())
        lines.extend(
            f"binding {b.exchange} --[{b.routing_key}]--> {b.queue}" for b in self.bindings
        )
        return "\n".join(lines)


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


def check_event_name(config: RabbitMQConnectionConfig, event_name: str) -> None:
    """Refuse event names whose queues cannot be declared or would collide.

    Raises:
        RabbitMQTopologyError: naming the event, what is wrong, and the rule.
    """
    if event_name.startswith("amq."):
        raise RabbitMQTopologyError(
            f"event name {event_name!r} starts with 'amq.', which RabbitMQ reserves; rename it"
        )
    if _RESERVED_SUFFIX.search(event_name):
        raise RabbitMQTopologyError(
            f"event name {event_name!r} ends like the plugin's own dead-letter or retry queues "
            "(.dlq, .retry.<N>s); rename the event"
        )
    longest = queue_name(config, event_name) + ".retry." + "9" * 12 + "s"
    for name in (event_name, longest):
        if not _AMQP_NAME.fullmatch(name) or len(name.encode()) > _AMQP_NAME_LIMIT:
            raise RabbitMQTopologyError(
                f"event name {event_name!r} cannot name a queue: use letters, digits, spaces and "
                f"- _ . : @ # , / + only, and keep queue names with their suffixes (.dlq, "
                f".retry.<N>s) within {_AMQP_NAME_LIMIT} bytes"
            )


def queue_name(config: RabbitMQConnectionConfig, event_name: str) -> str:
    """The queue that receives ``event_name``: ``<service>.<event>`` in pub/sub mode."""
    if config.service_name is not None:
        return f"{config.service_name}.{event_name}"
    return event_name


def dead_letter_queue_name(queue: str) -> str:
    """The queue where messages of ``queue`` go when they cannot be handled."""
    return queue + DEAD_LETTER_SUFFIX


def retry_queue_name(queue: str, delay: float) -> str:
    """The queue where messages of ``queue`` wait ``delay`` seconds before a retry."""
    return f"{queue}.retry.{delay:g}s"


def exchange_topology(config: RabbitMQConnectionConfig) -> Topology:
    """The exchange events are published to, if any."""
    exchange = config.effective_exchange
    if exchange is None:
        return Topology()
    spec = ExchangeSpec(exchange, config.effective_exchange_type.value, config.exchange_durable)
    return Topology(exchanges=(spec,))


def publisher_topology(config: RabbitMQConnectionConfig, event_name: str) -> Topology:
    """What a publisher declares for ``event_name``: in compatible mode the event's queue
    too, so that events published before the first consumer starts wait for it."""
    if config.pubsub:
        return exchange_topology(config)
    return _event_queue_topology(config, event_name)


def consumer_topology(config: RabbitMQConnectionConfig, event_name: str) -> Topology:
    """What a consumer of ``event_name`` declares: its queue, dead-letter and retry queues."""
    queue = queue_name(config, event_name)
    dead_letters = QueueSpec(dead_letter_queue_name(queue), "dead-letter", _type_arguments(config))
    retries = tuple(
        QueueSpec(
            retry_queue_name(queue, delay),
            "retry",
            {
                "x-message-ttl": max(1, round(delay * 1000)),
                "x-dead-letter-exchange": "",
                "x-dead-letter-routing-key": queue,
            },
            settings="SPAKKY_RABBITMQ__RETRY_DELAYS",
        )
        for delay in config.retry_delays
    )
    extra = Topology(queues=(dead_letters, *retries))
    return _event_queue_topology(config, event_name) + extra


def _event_queue_topology(config: RabbitMQConnectionConfig, event_name: str) -> Topology:
    check_event_name(config, event_name)
    queue = queue_name(config, event_name)
    arguments = _type_arguments(config)
    if config.queue_type is RabbitMQQueueType.QUORUM:
        arguments |= {
            "x-delivery-limit": config.delivery_limit,
            "x-dead-letter-exchange": "",
            "x-dead-letter-routing-key": dead_letter_queue_name(queue),
        }
    topology = Topology(queues=(QueueSpec(queue, "events", arguments),))
    exchange = config.effective_exchange
    if exchange is None:
        return topology
    binding = BindingSpec(queue, exchange, event_name)
    return exchange_topology(config) + topology + Topology(bindings=(binding,))


def _type_arguments(config: RabbitMQConnectionConfig) -> dict[str, Any]:
    if config.queue_type is RabbitMQQueueType.QUORUM:
        return {"x-queue-type": "quorum"}
    return {}


async def declare(
    connection: RabbitMQConnection, config: RabbitMQConnectionConfig, topology: Topology
) -> None:
    """Declare ``topology`` (or, in passive mode, check that it exists).

    Runs on a throwaway channel: a mismatch closes that channel, not a working
    one, and becomes `RabbitMQTopologyError` naming the object and the setting.
    """
    passive = config.topology_mode is RabbitMQTopologyMode.PASSIVE
    timeout = config.connect_timeout
    async with _throwaway_channel(connection) as channel:
        for exchange in topology.exchanges:
            await _checked(
                channel.exchange_declare(
                    exchange.name,
                    exchange_type=exchange.type,
                    durable=exchange.durable,
                    passive=passive,
                    timeout=timeout,
                ),
                "exchange",
                exchange.name,
                _EXCHANGE_SETTINGS,
                passive,
            )
        for queue in topology.queues:
            arguments: Any = None if passive else queue.arguments  # aiormq's FieldTable type
            await _checked(
                channel.queue_declare(
                    queue.name,
                    durable=True,
                    arguments=arguments,
                    passive=passive,
                    timeout=timeout,
                ),
                "queue",
                queue.name,
                queue.settings,
                passive,
            )
        if passive:
            return  # AMQP cannot check a binding without creating it
        for binding in topology.bindings:
            await channel.queue_bind(
                binding.queue, binding.exchange, routing_key=binding.routing_key, timeout=timeout
            )


@asynccontextmanager
async def _throwaway_channel(
    connection: RabbitMQConnection,
) -> AsyncGenerator[aiormq.abc.AbstractChannel]:
    channel = await connection.channel(confirms=False)
    try:
        yield channel
    finally:
        if not channel.is_closed:
            with suppress(TimeoutError, aiormq.exceptions.AMQPError, OSError):
                await asyncio.wait_for(channel.close(), 5)


async def _checked(
    declaration: Awaitable[object], kind: str, name: str, settings: str, passive: bool
) -> None:
    try:
        await declaration
    except aiormq.exceptions.ChannelPreconditionFailed as error:
        raise RabbitMQTopologyError(
            f"{kind} {name!r} already exists with other settings ({describe_error(error)}); "
            f"the plugin wants what {settings} say: change them to match, or delete the {kind}"
        ) from None
    except aiormq.exceptions.ChannelNotFoundEntity:
        if not passive:
            raise
        raise RabbitMQTopologyError(
            f"{kind} {name!r} does not exist and SPAKKY_RABBITMQ__TOPOLOGY_MODE=passive only "
            "checks; create it (python -m spakky.plugins.rabbitmq.consumer topology declare) "
            "or let the application declare it"
        ) from None
    except aiormq.exceptions.ChannelAccessRefused:
        raise RabbitMQTopologyError(
            f"the RabbitMQ user may not declare {kind} {name!r} (ACCESS_REFUSED); grant "
            "configure permission or use SPAKKY_RABBITMQ__TOPOLOGY_MODE=passive"
        ) from None


def _queue_key(queue: QueueSpec) -> object:
    return queue.name


def _unique[T](items: Iterable[T], key: Callable[[T], object] | None = None) -> tuple[T, ...]:
    seen: set[object] = set()
    kept: list[T] = []
    for item in items:
        marker = key(item) if key is not None else item
        if marker not in seen:
            seen.add(marker)
            kept.append(item)
    return tuple(kept)
