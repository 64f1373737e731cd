"""The one long-lived AMQP connection a transport or consumer keeps per event loop."""

import asyncio
import logging
import os
import random
import sys
from collections.abc import Awaitable, Callable
from contextlib import suppress
from typing import Any

import aiormq
import aiormq.abc
import aiormq.exceptions
from pamqp import commands as spec

from spakky.plugins.rabbitmq.config.errors import (
    RabbitMQAuthenticationError,
    RabbitMQConnectionError,
    describe_error,
)
from spakky.plugins.rabbitmq.config.settings import RabbitMQConnectionConfig

logger = logging.getLogger(__name__)

ReconnectListener = Callable[[], Awaitable[None]]

_BACKOFF_FIRST = 0.2
_BACKOFF_MAX = 15.0
_CLOSE_TIMEOUT = 5.0


class _AlarmAwareConnection(aiormq.Connection):
    """aiormq's connection, remembering why the broker blocks publishers (AMQP extension
    ``connection.blocked``). aiormq 7.x only logs it; checked against aiormq 7.2."""

    blocked_reason: str | None = None

    async def _Connection__handle_connection_blocked(self, frame: spec.Connection.Blocked) -> None:
        self.blocked_reason = frame.reason or "resource alarm"
        parent: Any = super()
        await parent._Connection__handle_connection_blocked(frame)

    async def _Connection__handle_connection_unblocked(
        self, frame: spec.Connection.Unblocked
    ) -> None:
        self.blocked_reason = None
        parent: Any = super()
        await parent._Connection__handle_connection_unblocked(frame)


class RabbitMQConnection:
    """Owns one aiormq connection on the loop that opened it, and reopens it after a drop.

    After a reconnect every listener runs in registration order so that channels,
    topology and consumers come back. Use it only from the loop that called `open`.

    Example:
        connection = RabbitMQConnection(config, role="publisher")
        await connection.open()
        channel = await connection.channel(confirms=True)
    """

    def __init__(self, config: RabbitMQConnectionConfig, *, role: str) -> None:
        self._config = config
        self._role = role
        self._connection: aiormq.abc.AbstractConnection | None = None
        self._listeners: list[ReconnectListener] = []
        self._supervisor: asyncio.Task[None] | None = None
        self._open = asyncio.Event()
        self._closed = False

    def __repr__(self) -> str:
        return f"<RabbitMQConnection {self._role} {self._config.safe_url}>"

    @property
    def blocked_reason(self) -> str | None:
        """Why the broker blocks publishers right now (memory or disk alarm), else None."""
        connection = self._connection
        if isinstance(connection, _AlarmAwareConnection):
            return connection.blocked_reason
        return None

    @property
    def is_open(self) -> bool:
        """True while the AMQP connection is up and restored (listeners have run)."""
        connection = self._connection
        if connection is None or connection.is_closed or self._closed:
            return False
        return self._open.is_set()

    def add_reconnect_listener(self, listener: ReconnectListener) -> None:
        """Run ``listener`` after every successful reconnect."""
        self._listeners.append(listener)

    async def open(self) -> None:
        """Connect once, bounded by ``CONNECT_TIMEOUT``, and start watching the connection.

        Raises:
            RabbitMQAuthenticationError: The broker refused the credentials or vhost.
            RabbitMQConnectionError: The broker did not answer in time or at all.
        """
        self._connection = await self._connect()
        self._open.set()
        self._supervisor = asyncio.create_task(
            self._supervise(), name=f"spakky-rabbitmq-{self._role}-supervisor"
        )

    async def ready(self, timeout: float) -> aiormq.abc.AbstractConnection:
        """Return the open connection, waiting up to ``timeout`` seconds while it reconnects.

        Raises:
            RabbitMQConnectionError: The connection is closed for good or did not come back.
        """
        connection = self._connection
        if connection is not None and self._open.is_set() and not connection.is_closed:
            return connection
        if self._closed:
            raise RabbitMQConnectionError(f"{self!r} is closed")
        try:
            async with asyncio.timeout(timeout):
                await self._open.wait()
        except TimeoutError:
            raise RabbitMQConnectionError(
                f"RabbitMQ at {self._config.safe_url} did not come back within {timeout:g} s"
            ) from None
        return await self.ready(timeout)

    async def channel(
        self, *, confirms: bool, prefetch_count: int | None = None
    ) -> aiormq.abc.AbstractChannel:
        """Open a channel on the current connection, bounded by ``CONNECT_TIMEOUT``.

        Reconnect listeners call this while the new connection is being restored,
        so it waits only when there is no live connection at all.
        """
        timeout = self._config.connect_timeout
        connection = self._connection
        if connection is None or connection.is_closed:
            connection = await self.ready(timeout)
        channel = await connection.channel(
            publisher_confirms=confirms, on_return_raises=True, timeout=timeout
        )
        if prefetch_count is not None:
            await channel.basic_qos(prefetch_count=prefetch_count, timeout=timeout)
        return channel

    async def close(self) -> None:
        """Close the connection and stop reconnecting; safe to call twice."""
        self._closed = True
        self._open.clear()
        supervisor, self._supervisor = self._supervisor, None
        if supervisor is not None:
            supervisor.cancel()
            await asyncio.gather(supervisor, return_exceptions=True)
        connection, self._connection = self._connection, None
        if connection is not None and not connection.is_closed:
            try:
                await asyncio.wait_for(connection.close(), _CLOSE_TIMEOUT)
            except (TimeoutError, aiormq.exceptions.AMQPError, OSError) as error:
                logger.debug("closing %r ended with %s", self, type(error).__name__)

    async def _connect(self) -> aiormq.abc.AbstractConnection:
        config = self._config
        connection = _AlarmAwareConnection(
            config.amqp_url.update_query(heartbeat=config.heartbeat),
            client_properties={"connection_name": self._connection_name()},
        )
        try:
            untyped: Any = connection  # aiormq leaves connect()'s return type open
            await asyncio.wait_for(untyped.connect(), config.connect_timeout)
        except (
            aiormq.exceptions.AuthenticationError,
            aiormq.exceptions.ProbableAuthenticationError,
            aiormq.exceptions.ConnectionNotAllowed,
        ) as error:
            await _abandon(connection)
            raise RabbitMQAuthenticationError(
                f"RabbitMQ at {config.safe_url} refused the login "
                f"({type(error).__name__}); check SPAKKY_RABBITMQ__USER, "
                "SPAKKY_RABBITMQ__PASSWORD and SPAKKY_RABBITMQ__VHOST"
            ) from None
        except aiormq.exceptions.InvalidFrameError as error:
            await _abandon(connection)
            if "Connection.OpenOk" not in str(error):
                raise RabbitMQConnectionError(
                    f"cannot connect to RabbitMQ at {config.safe_url}: {describe_error(error)}"
                ) from None
            # The broker answered connection.open with connection.close: NOT_ALLOWED.
            raise RabbitMQAuthenticationError(
                f"RabbitMQ at {config.safe_url} refused to open the virtual host (it does not "
                "exist or the user has no permission on it); check SPAKKY_RABBITMQ__VHOST"
            ) from None
        except TimeoutError:
            await _abandon(connection)
            raise RabbitMQConnectionError(
                f"RabbitMQ at {config.safe_url} did not answer within "
                f"{config.connect_timeout:g} s (SPAKKY_RABBITMQ__CONNECT_TIMEOUT)"
            ) from None
        except (OSError, aiormq.exceptions.AMQPError) as error:
            await _abandon(connection)
            raise RabbitMQConnectionError(
                f"cannot connect to RabbitMQ at {config.safe_url}: {describe_error(error)}"
            ) from None
        return connection

    async def _supervise(self) -> None:
        while not self._closed:
            connection = self._connection
            assert connection is not None
            try:
                await connection.closing  # pyright: ignore[reportUnknownMemberType]
            except asyncio.CancelledError:
                # Our close(), or the loop itself is ending (asyncio.run returning):
                # either way the connection goes with it, closed properly.
                self._closed = True
                self._open.clear()
                await _abandon(connection)
                raise
            except Exception as error:  # the reason it closed; we only log it
                reason = describe_error(error)
            else:
                reason = "closed"
            if self._closed:
                return
            self._open.clear()
            logger.warning("%r lost its connection (%s); reconnecting", self, reason)
            await self._reconnect()

    async def _reconnect(self) -> None:
        delay = _BACKOFF_FIRST
        attempt = 0
        loop = asyncio.get_running_loop()
        started = loop.time()
        while not self._closed:
            attempt += 1
            try:
                self._connection = await self._connect()
            except RabbitMQConnectionError as error:
                if attempt == 1 or attempt % 10 == 0:
                    logger.warning("%r reconnect attempt %d failed: %s", self, attempt, error)
                await asyncio.sleep(delay * random.uniform(0.5, 1.0))
                delay = min(delay * 2, _BACKOFF_MAX)
                continue
            try:
                for listener in self._listeners:
                    await listener()
            except Exception as error:  # a listener failed: drop and start over
                logger.warning("%r could not restore its channels: %s", self, describe_error(error))
                await _abandon(self._connection)
                continue
            self._open.set()
            logger.warning(
                "%r reconnected after %d attempt(s) in %.1f s",
                self,
                attempt,
                loop.time() - started,
            )
            return

    def _connection_name(self) -> str:
        if self._config.connection_name:
            return f"{self._config.connection_name} ({self._role})"
        program = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else "python"
        return f"{program}[{os.getpid()}] spakky-rabbitmq {self._role}"


async def _abandon(connection: aiormq.abc.AbstractConnection | None) -> None:
    if connection is None or connection.is_closed:
        return
    with suppress(TimeoutError, aiormq.exceptions.AMQPError, OSError):
        await asyncio.wait_for(connection.close(), _CLOSE_TIMEOUT)
