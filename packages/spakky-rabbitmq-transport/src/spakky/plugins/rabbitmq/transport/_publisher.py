"""Event publishing on one event loop: topology, properties, confirms."""

import asyncio
import json
import logging
from datetime import UTC, datetime
from functools import partial

import aiormq.exceptions
from pamqp import commands as spec

from spakky.plugins.rabbitmq.config.connection import RabbitMQConnection
from spakky.plugins.rabbitmq.config.publisher import ConfirmPublisher
from spakky.plugins.rabbitmq.config.settings import RabbitMQConnectionConfig
from spakky.plugins.rabbitmq.config.topology import (
    declare,
    exchange_topology,
    publisher_topology,
)
from spakky.plugins.rabbitmq.transport.interceptor import (
    IPublishInterceptor,
    OutboundMessage,
    PublishCompletion,
)

logger = logging.getLogger(__name__)

_EVENT_ID_PREFIX = b'{"event_id":"'
_UUID_LENGTH = 36
_PERSISTENT = 2
_DECLARE_ATTEMPTS = 5
_CONNECTION_LOST = (ConnectionError, aiormq.exceptions.ChannelInvalidStateError)
"""Errors of a declaration whose connection went (aiormq's AMQPConnectionError is one)."""


def message_id_of(payload: bytes) -> str:
    """The event id of a serialized event, which becomes the AMQP ``message_id``.

    Pydantic writes ``event_id`` first, so the common case is a slice; anything
    else falls back to parsing the JSON.
    """
    if payload.startswith(_EVENT_ID_PREFIX):
        end = len(_EVENT_ID_PREFIX) + _UUID_LENGTH
        if payload[end : end + 1] == b'"':
            return payload[len(_EVENT_ID_PREFIX) : end].decode("ascii")
    try:
        document = json.loads(payload)
    except ValueError:
        return ""
    if isinstance(document, dict):
        event_id = document.get("event_id")  # type: ignore[union-attr]
        if isinstance(event_id, str):
            return event_id
    return ""


class LoopPublisher:
    """Publishes events over one connection on the loop that opened it."""

    def __init__(
        self,
        config: RabbitMQConnectionConfig,
        interceptors: tuple[IPublishInterceptor, ...],
        *,
        role: str,
    ) -> None:
        self._config = config
        self._interceptors = interceptors
        self._connection = RabbitMQConnection(config, role=role)
        self._publisher = ConfirmPublisher(self._connection, ready_timeout=config.reconnect_timeout)
        self._declared: dict[str, asyncio.Future[None]] = {}
        self._exchange = config.effective_exchange or ""
        self._mandatory = config.effective_mandatory
        self._connection.add_reconnect_listener(self._forget_topology)
        self.loop = asyncio.get_running_loop()

    @property
    def blocked_reason(self) -> str | None:
        """Why the broker blocks this connection's publishers, if it does."""
        return self._connection.blocked_reason

    async def open(self) -> None:
        """Connect and open the confirm channel; fails fast on bad settings."""
        await self._connection.open()
        try:
            await self._publisher.open()
            await declare(self._connection, self._config, exchange_topology(self._config))
        except BaseException:
            await self.close()
            raise

    async def close(self) -> None:
        """Close channel and connection."""
        await self._publisher.close()
        await self._connection.close()

    def publish(
        self, event_name: str, payload: bytes, headers: dict[str, str]
    ) -> asyncio.Future[None]:
        """Start publishing one event; the future resolves on the broker's confirm."""
        declared = self._declaration(event_name)
        message_id = message_id_of(payload)
        completions: list[PublishCompletion] = []
        if self._interceptors:
            headers, completions = self._intercept(event_name, message_id, payload, headers)
        if declared.done():
            outcome = self._publish(event_name, message_id, payload, headers)
        else:
            outcome = asyncio.ensure_future(self._after(event_name, message_id, payload, headers))
        if completions:
            outcome.add_done_callback(partial(_complete, completions))
        return outcome

    def _publish(
        self, event_name: str, message_id: str, payload: bytes, headers: dict[str, str]
    ) -> asyncio.Future[None]:
        properties = spec.Basic.Properties(
            content_type="application/json",
            delivery_mode=_PERSISTENT,
            message_id=message_id or None,
            timestamp=datetime.now(UTC),
            message_type=event_name,
            headers=dict(headers),
        )
        return self._publisher.publish(
            payload,
            exchange=self._exchange,
            routing_key=event_name,
            properties=properties,
            mandatory=self._mandatory,
        )

    async def _after(
        self, event_name: str, message_id: str, payload: bytes, headers: dict[str, str]
    ) -> None:
        for attempt in range(1, _DECLARE_ATTEMPTS + 1):
            try:
                # Shielded: the declaration is shared by every publish of this event.
                await asyncio.shield(self._declaration(event_name))
                break
            except _CONNECTION_LOST:
                if attempt == _DECLARE_ATTEMPTS:
                    raise
                # The connection went while declaring: declare again once it is back
                # (the wait is bounded by RECONNECT_TIMEOUT), like any other publish.
                await self._connection.ready(self._config.reconnect_timeout)
        await self._publish(event_name, message_id, payload, headers)

    def _declaration(self, event_name: str) -> asyncio.Future[None]:
        """The declaration of ``event_name``'s topology: done, under way, or started now."""
        declared = self._declared.get(event_name)
        if declared is None or (
            declared.done() and (declared.cancelled() or declared.exception() is not None)
        ):
            declared = asyncio.ensure_future(self._declare(event_name))
            self._declared[event_name] = declared
        return declared

    def _intercept(
        self, event_name: str, message_id: str, payload: bytes, headers: dict[str, str]
    ) -> tuple[dict[str, str], list[PublishCompletion]]:
        """Show the message to every interceptor; returns its headers and their callbacks."""
        message = OutboundMessage(
            event_name=event_name,
            exchange=self._exchange,
            routing_key=event_name,
            message_id=message_id,
            body=payload,
            headers=dict(headers),
        )
        completions: list[PublishCompletion] = []
        try:
            for interceptor in self._interceptors:
                completion = interceptor.before_publish(message)
                if completion is not None:
                    completions.append(completion)
        except BaseException as error:  # the contract says they must not; nothing is sent
            _call_all(completions, error)
            raise
        return message.headers, completions

    async def _declare(self, event_name: str) -> None:
        await declare(self._connection, self._config, publisher_topology(self._config, event_name))

    async def _forget_topology(self) -> None:
        self._declared.clear()
        await declare(self._connection, self._config, exchange_topology(self._config))


def _complete(completions: list[PublishCompletion], outcome: asyncio.Future[None]) -> None:
    error = asyncio.CancelledError() if outcome.cancelled() else outcome.exception()
    _call_all(completions, error)


def _call_all(completions: list[PublishCompletion], error: BaseException | None) -> None:
    for completion in completions:
        try:
            completion(error)
        except Exception:  # telemetry never changes delivery
            logger.warning("a publish interceptor's completion failed", exc_info=True)
