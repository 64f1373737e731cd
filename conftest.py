"""Fixtures shared by every test of the workspace.

Broker tests use the RabbitMQ on 127.0.0.1:5672 (guest/guest), give every
queue and exchange a name unique to the test, and delete them afterwards, so
they are safe under ``pytest -n auto``.
"""

import asyncio
import os
import threading
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from typing import TYPE_CHECKING, Any

import aiormq
import aiormq.abc
import aiormq.exceptions
import pytest
from spakky.core.common.mutability import immutable
from spakky.domain.models.event import AbstractIntegrationEvent

if TYPE_CHECKING:
    from spakky.core.application.application import SpakkyApplication

BROKER_URL = "amqp://guest:guest@127.0.0.1:5672/"
RETRY_DELAYS_IN_TESTS = ("0.2", "0.4", "1", "10", "60")
"""Retry queues a test may create; the ``broker`` fixture deletes them."""

BROKER_ENV = {
    "SPAKKY_RABBITMQ__HOST": "127.0.0.1",
    "SPAKKY_RABBITMQ__PORT": "5672",
    "SPAKKY_RABBITMQ__USER": "guest",
    "SPAKKY_RABBITMQ__PASSWORD": "guest",
}


@pytest.fixture(autouse=True)
def _scrub_rabbitmq_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No test sees ``SPAKKY_RABBITMQ__*`` values it did not set itself."""
    for name in list(os.environ):
        if name.upper().startswith("SPAKKY_RABBITMQ__"):
            monkeypatch.delenv(name)


@pytest.fixture
def broker_env(monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """Point the plugin at the local broker through its environment variables."""
    for name, value in BROKER_ENV.items():
        monkeypatch.setenv(name, value)
    # Short delays keep failure-path tests quick; tests that measure them set their own.
    monkeypatch.setenv("SPAKKY_RABBITMQ__REQUEUE_DELAY", "0.05")
    monkeypatch.setenv("SPAKKY_RABBITMQ__DRAIN_TIMEOUT", "5")
    monkeypatch.setenv("SPAKKY_RABBITMQ__RETRY_DELAYS", "")  # retry tests set their own
    return dict(BROKER_ENV)


@pytest.fixture
def unique_name(request: pytest.FixtureRequest) -> str:
    """A name no other test (or xdist worker) uses: ``t-<test>-<random>``."""
    test = "".join(ch if ch.isalnum() else "-" for ch in request.node.name)[:40]
    return f"t-{test}-{uuid.uuid4().hex[:8]}"


def make_event_type(event_name: str, **fields: type) -> type[AbstractIntegrationEvent]:
    """An integration event class published and consumed as ``event_name``."""
    namespace: dict[str, Any] = {"__annotations__": dict(fields) or {"user_id": int}}
    namespace["event_name"] = property(lambda self: event_name)
    cls = type(f"Event_{event_name.replace('-', '_')}", (AbstractIntegrationEvent,), namespace)
    return immutable(cls)


@pytest.fixture
def event_type(unique_name: str) -> type[AbstractIntegrationEvent]:
    """An event ``{user_id: int, email: str}`` with a queue name unique to this test."""
    return make_event_type(unique_name, user_id=int, email=str)


class BrokerAdmin:
    """Raw aiormq access for arranging and inspecting the broker in tests."""

    def __init__(self, connection: aiormq.abc.AbstractConnection) -> None:
        self.connection = connection
        self.created: list[tuple[str, str]] = []

    async def channel(self) -> aiormq.abc.AbstractChannel:
        return await self.connection.channel()

    async def reconnect(self) -> None:
        """Open a new admin connection after a fault closed the old one."""
        if not self.connection.is_closed:
            await self.connection.close()
        self.connection = await aiormq.connect(BROKER_URL)

    def track(self, kind: str, name: str) -> None:
        """Delete this queue or exchange when the test ends."""
        self.created.append((kind, name))

    async def message_count(self, queue: str) -> int:
        channel = await self.channel()
        try:
            ok = await channel.queue_declare(queue, passive=True)
            return int(ok.message_count or 0)
        finally:
            await channel.close()

    async def consumer_count(self, queue: str) -> int:
        channel = await self.channel()
        try:
            ok = await channel.queue_declare(queue, passive=True)
            return int(ok.consumer_count or 0)
        finally:
            await channel.close()

    async def consumer_count_or_zero(self, queue: str) -> int:
        """Consumers of ``queue``, or 0 when it does not exist."""
        if not await self.queue_exists(queue):
            return 0
        return await self.consumer_count(queue)

    async def queue_exists(self, queue: str) -> bool:
        channel = await self.channel()
        try:
            await channel.queue_declare(queue, passive=True)
        except aiormq.exceptions.ChannelNotFoundEntity:
            return False
        await channel.close()
        return True

    async def get(self, queue: str) -> aiormq.abc.DeliveredMessage | None:
        """Take one message off ``queue`` (acknowledged), or None when it is empty."""
        channel = await self.channel()
        try:
            message = await channel.basic_get(queue, no_ack=True)
            if message.body == b"" and message.delivery_tag is None:
                return None
            return message
        finally:
            await channel.close()

    async def wait_for_count(self, queue: str, count: int, timeout: float = 10.0) -> int:
        """Poll until ``queue`` holds ``count`` messages or ``timeout`` passes; return it."""
        deadline = asyncio.get_running_loop().time() + timeout
        current = -1
        while asyncio.get_running_loop().time() < deadline:
            current = await self.message_count(queue)
            if current == count:
                return current
            await asyncio.sleep(0.05)
        return current

    async def publish(
        self,
        queue: str,
        body: bytes,
        *,
        headers: dict[str, Any] | None = None,
        properties: dict[str, Any] | None = None,
    ) -> None:
        """Publish raw bytes to ``queue`` through the default exchange."""
        channel = await self.channel()
        try:
            await channel.queue_declare(queue, durable=True)
            await channel.basic_publish(
                body,
                routing_key=queue,
                properties=aiormq.spec.Basic.Properties(
                    headers=headers, delivery_mode=2, **(properties or {})
                ),
            )
        finally:
            await channel.close()

    async def publish_to_exchange(self, exchange: str, routing_key: str, body: bytes) -> None:
        """Publish raw bytes to ``exchange`` with ``routing_key``."""
        channel = await self.channel()
        try:
            await channel.basic_publish(body, exchange=exchange, routing_key=routing_key)
        finally:
            await channel.close()

    async def cleanup(self) -> None:
        if self.connection.is_closed:
            self.connection = await aiormq.connect(BROKER_URL)
        channel = await self.channel()
        for kind, name in reversed(self.created):
            try:
                if kind == "queue":
                    await channel.queue_delete(name)
                else:
                    await channel.exchange_delete(name)
            except aiormq.exceptions.AMQPError:
                channel = await self.channel()
        await channel.close()


@pytest.fixture
async def broker(unique_name: str) -> AsyncIterator[BrokerAdmin]:
    """Admin access to the local broker; deletes ``unique_name*`` queues afterwards."""
    connection = await aiormq.connect(BROKER_URL)
    admin = BrokerAdmin(connection)
    for suffix in ("", ".dlq", *(f".retry.{delay}s" for delay in RETRY_DELAYS_IN_TESTS)):
        admin.track("queue", unique_name + suffix)
    try:
        yield admin
    finally:
        await admin.cleanup()
        await admin.connection.close()


@pytest.fixture
def run_app(broker: BrokerAdmin) -> Iterator[Callable[..., Any]]:
    """Start a Spakky application with all installed plugins; stopped after the test.

    Depends on ``broker`` so that applications stop before their queues are deleted.
    """
    del broker
    from spakky.core.application.application import SpakkyApplication

    started: list[SpakkyApplication] = []

    def start(*pods: type, plugins: set[str] | None = None) -> SpakkyApplication:
        app = build_app(*pods, plugins=plugins)
        app.start()
        started.append(app)
        return app

    yield start
    for app in reversed(started):
        if app.application_context.is_started:
            app.stop()


def build_app(*pods: type, plugins: set[str] | None = None) -> "SpakkyApplication":
    """A Spakky application with the installed plugins (or only ``plugins``) and ``pods``,
    plus the pods a service without a database needs; not started."""
    from spakky.core.application.application import SpakkyApplication
    from spakky.core.application.application_context import ApplicationContext
    from spakky.core.application.plugin import Plugin

    include = {Plugin(name=name) for name in plugins} if plugins is not None else None
    app = SpakkyApplication(ApplicationContext()).load_plugins(include=include)
    for pod in (*_NO_DATABASE, *pods):
        app.add(pod)
    return app


def _no_database_pods() -> tuple[type, ...]:
    from tools.demo.app import NoDatabaseAsyncTransaction, NoDatabaseTransaction

    return (NoDatabaseTransaction, NoDatabaseAsyncTransaction)


_NO_DATABASE = _no_database_pods()


class CuttableProxy:
    """A loopback TCP proxy to the broker that a test can cut, like a network fault.

    Only the connections made through it are affected, so a test using it is safe
    beside others under ``pytest -n auto``.
    """

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._pairs: set[asyncio.StreamWriter] = set()
        self._refusing = False
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()
        self._server = asyncio.run_coroutine_threadsafe(
            asyncio.start_server(self._serve, "127.0.0.1", 0), self.loop
        ).result(10)
        self.port: int = self._server.sockets[0].getsockname()[1]
        self.cuts = 0

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._refusing:
            writer.close()
            return
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", 5672)
        except OSError:
            writer.close()
            return
        self._pairs.update((writer, up_writer))
        await asyncio.gather(
            self._pipe(reader, up_writer), self._pipe(up_reader, writer), return_exceptions=True
        )

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        finally:
            self._pairs.discard(writer)
            writer.close()

    def cut(self, *, refuse_for: float = 0.0) -> None:
        """Drop every connection through the proxy; refuse new ones for ``refuse_for`` s."""

        async def cut_all() -> None:
            self._refusing = refuse_for > 0
            for writer in list(self._pairs):
                writer.transport.abort()
            self._pairs.clear()
            if refuse_for > 0:
                await asyncio.sleep(refuse_for)
                self._refusing = False

        self.cuts += 1
        asyncio.run_coroutine_threadsafe(cut_all(), self.loop).result(refuse_for + 10)

    def close(self) -> None:
        async def shutdown() -> None:
            self._server.close()
            for writer in list(self._pairs):
                writer.transport.abort()

        asyncio.run_coroutine_threadsafe(shutdown(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        self.loop.close()


@pytest.fixture
def proxy(broker_env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> Iterator[CuttableProxy]:
    """Route the plugin's connections through a `CuttableProxy`."""
    del broker_env
    cuttable = CuttableProxy()
    monkeypatch.setenv("SPAKKY_RABBITMQ__PORT", str(cuttable.port))
    try:
        yield cuttable
    finally:
        cuttable.close()
