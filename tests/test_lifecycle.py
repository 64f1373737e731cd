"""Startup, shutdown, and what the transports say outside the lifecycle."""

import asyncio
import logging
import subprocess
import threading
import time
import uuid
from typing import Any

import pytest
from spakky.core.common.mutability import immutable
from spakky.domain.models.event import AbstractDomainEvent
from spakky.event.error import EventDeliveryRejectedError, EventTransportNotRunningError
from spakky.event.event_publisher import (
    IAsyncEventPublisher,
    IAsyncEventTransport,
    IEventPublisher,
    IEventTransport,
)
from spakky.event.stereotype.event_handler import EventHandler, on_event

from conftest import BrokerAdmin
from spakky.plugins.rabbitmq.config import (
    RabbitMQAuthenticationError,
    RabbitMQConnectionError,
    RabbitMQTopologyError,
)
from spakky.plugins.rabbitmq.consumer import AsyncRabbitMQEventConsumer, RabbitMQEventConsumer
from spakky.plugins.rabbitmq.transport import (
    AsyncRabbitMQEventTransport,
    RabbitMQEventTransport,
)

pytestmark = pytest.mark.broker

SECRET = "wr0ng-p@ss:/%#"


@immutable
class AuditTrailUpdated(AbstractDomainEvent):
    entry: str


def test_all_plugins_start_cleanly_and_domain_events_stay_in_process(
    broker_env: Any, event_type: type, run_app: Any
) -> None:
    seen: list[str] = []
    arrived = threading.Event()

    @EventHandler()
    class Both:
        @on_event(AuditTrailUpdated)
        def on_domain(self, event: AuditTrailUpdated) -> None:
            seen.append("domain:" + event.entry)

        @on_event(event_type)
        def on_integration(self, event: Any) -> None:
            seen.append(f"integration:{event.user_id}")
            arrived.set()

    app = run_app(Both)  # load_plugins() without a filter
    publisher = app.container.get(IEventPublisher)

    publisher.publish(AuditTrailUpdated(entry="e1"))
    assert seen == ["domain:e1"]  # dispatched synchronously, in process
    publisher.publish(event_type(user_id=3, email="x@example.com"))
    assert arrived.wait(10)

    assert seen == ["domain:e1", "integration:3"]
    assert isinstance(app.container.get(IEventTransport), RabbitMQEventTransport)
    assert isinstance(app.container.get(IAsyncEventTransport), AsyncRabbitMQEventTransport)


def test_wrong_password_fails_startup_without_the_password(
    broker_env: Any,
    monkeypatch: pytest.MonkeyPatch,
    run_app: Any,
    caplog: pytest.LogCaptureFixture,
) -> None:
    monkeypatch.setenv("SPAKKY_RABBITMQ__PASSWORD", SECRET)
    caplog.set_level(logging.DEBUG)

    with pytest.raises(RabbitMQAuthenticationError) as caught:
        run_app()

    assert "SPAKKY_RABBITMQ__PASSWORD" in str(caught.value)
    assert SECRET not in str(caught.value)
    assert SECRET not in caplog.text
    assert all(SECRET not in repr(record.args) for record in caplog.records)


def test_unreachable_broker_fails_startup_in_bounded_time(
    broker_env: Any, monkeypatch: pytest.MonkeyPatch, run_app: Any
) -> None:
    monkeypatch.setenv("SPAKKY_RABBITMQ__PORT", "1")  # nothing listens on loopback port 1
    monkeypatch.setenv("SPAKKY_RABBITMQ__CONNECT_TIMEOUT", "3")
    started = time.monotonic()

    with pytest.raises(RabbitMQConnectionError, match=r"127\.0\.0\.1:1"):
        run_app()

    assert time.monotonic() - started < 10


def test_transports_refuse_use_before_start_and_after_stop(
    broker_env: Any, event_type: type, run_app: Any
) -> None:
    app = run_app()
    sync_transport = app.container.get(IEventTransport)
    async_transport = app.container.get(IAsyncEventTransport)
    publisher = app.container.get(IEventPublisher)
    async_publisher = app.container.get(IAsyncEventPublisher)

    app.stop()

    with pytest.raises(EventTransportNotRunningError, match=r"app\.start\(\)"):
        sync_transport.send("anything", b"{}", {})
    with pytest.raises(EventTransportNotRunningError):
        publisher.publish(event_type(user_id=1, email="x@example.com"))
    with pytest.raises(EventTransportNotRunningError):
        asyncio.run(async_transport.send("anything", b"{}", {}))
    with pytest.raises(EventTransportNotRunningError):
        asyncio.run(async_publisher.publish(event_type(user_id=1, email="x@example.com")))


async def test_unroutable_event_is_rejected_at_flush(
    broker_env: Any, unique_name: str, run_app: Any, broker: BrokerAdmin
) -> None:
    app = await asyncio.to_thread(run_app)
    transport = app.container.get(IAsyncEventTransport)
    await transport.send(unique_name, b"{}", {})
    await transport.flush()  # declares the queue, so this one is routable
    channel = await broker.channel()
    await channel.queue_delete(unique_name)

    await transport.send(unique_name, b"{}", {})
    with pytest.raises(EventDeliveryRejectedError) as caught:
        await transport.flush()

    assert unique_name in caught.value.reasons[0]
    assert "unroutable" in caught.value.reasons[0]


def test_broker_nack_is_rejected_at_flush(broker_env: Any, unique_name: str, run_app: Any) -> None:
    policy = f"{unique_name}-reject"
    _rabbitmqctl(
        "set_policy",
        policy,
        f"^{unique_name}$",
        '{"max-length": 0, "overflow": "reject-publish"}',
        "--apply-to",
        "queues",
    )
    try:
        app = run_app()
        transport = app.container.get(IEventTransport)

        transport.send(unique_name, b'{"n": 1}', {})
        transport.send(unique_name, b'{"n": 2}', {})
        with pytest.raises(EventDeliveryRejectedError) as caught:
            transport.flush()
    finally:
        _rabbitmqctl("clear_policy", policy)

    assert len(caught.value.reasons) == 2
    assert "nacked" in caught.value.reasons[0]


async def test_queue_with_other_arguments_fails_startup_with_its_name(
    broker_env: Any, event_type: type, unique_name: str, run_app: Any, broker: BrokerAdmin
) -> None:
    channel = await broker.channel()
    await channel.queue_declare(unique_name, durable=True, arguments={"x-max-length": 10})

    @EventHandler()
    class Handler:
        @on_event(event_type)
        async def handle(self, event: Any) -> None: ...

    with pytest.raises(RabbitMQTopologyError, match=unique_name):
        await asyncio.to_thread(run_app, Handler)


async def test_stop_waits_for_running_handlers_and_acks_them(
    broker_env: Any, event_type: type, unique_name: str, run_app: Any, broker: BrokerAdmin
) -> None:
    started = threading.Event()
    finished: list[int] = []

    @EventHandler()
    class Slow:
        @on_event(event_type)
        async def handle(self, event: Any) -> None:
            started.set()
            await asyncio.sleep(1.0)
            finished.append(event.user_id)

        @on_event(event_type)
        def handle_sync(self, event: Any) -> None:
            time.sleep(1.0)
            finished.append(-event.user_id)

    app = await asyncio.to_thread(run_app, Slow)
    await app.container.get(IAsyncEventPublisher).publish(event_type(user_id=5, email="e"))
    assert await asyncio.to_thread(started.wait, 10)

    await asyncio.to_thread(app.stop)

    assert sorted(finished) == [-5, 5]
    assert await broker.message_count(unique_name) == 0
    assert await broker.message_count(unique_name + ".dlq") == 0


def test_normal_stop_logs_no_warning(
    broker_env: Any, event_type: type, run_app: Any, caplog: pytest.LogCaptureFixture
) -> None:
    arrived = threading.Event()

    @EventHandler()
    class Handler:
        @on_event(event_type)
        def handle(self, event: Any) -> None:
            arrived.set()

    app = run_app(Handler)
    app.container.get(IEventPublisher).publish(event_type(user_id=1, email="e"))
    assert arrived.wait(10)
    caplog.set_level(logging.WARNING)

    app.stop()

    assert [r for r in caplog.records if r.levelno >= logging.WARNING] == []


def test_consumers_are_background_services_with_their_queues(
    broker_env: Any, event_type: type, unique_name: str, run_app: Any
) -> None:
    @EventHandler()
    class Handler:
        @on_event(event_type)
        def handle(self, event: Any) -> None: ...

    app = run_app(Handler)

    assert app.container.get(RabbitMQEventConsumer).queues == [unique_name]
    assert app.container.get(AsyncRabbitMQEventConsumer).queues == []


@pytest.fixture
def special_vhost() -> Any:
    suffix = uuid.uuid4().hex[:6]
    user, password, vhost = f"us@r:/%#{suffix}", f"p@ss:/%#w{suffix}", f"v/h@:%#{suffix}"
    _rabbitmqctl("add_vhost", vhost)
    _rabbitmqctl("add_user", user, password)
    _rabbitmqctl("set_permissions", "-p", vhost, user, ".*", ".*", ".*")
    try:
        yield user, password, vhost
    finally:
        _rabbitmqctl("delete_user", user)
        _rabbitmqctl("delete_vhost", vhost)


def test_special_characters_in_user_password_and_vhost(
    broker_env: Any,
    monkeypatch: pytest.MonkeyPatch,
    special_vhost: tuple[str, str, str],
    event_type: type,
    run_app: Any,
) -> None:
    user, password, vhost = special_vhost
    monkeypatch.setenv("SPAKKY_RABBITMQ__USER", user)
    monkeypatch.setenv("SPAKKY_RABBITMQ__PASSWORD", password)
    monkeypatch.setenv("SPAKKY_RABBITMQ__VHOST", vhost)
    arrived = threading.Event()

    @EventHandler()
    class Handler:
        @on_event(event_type)
        def handle(self, event: Any) -> None:
            arrived.set()

    app = run_app(Handler)
    app.container.get(IEventPublisher).publish(event_type(user_id=1, email="e"))

    assert arrived.wait(10)
    queues = _rabbitmqctl("list_queues", "-p", vhost, "name", "--quiet")
    assert event_type.event_name.fget(None) in queues  # type: ignore[attr-defined]


def _rabbitmqctl(*args: str) -> str:
    result = subprocess.run(
        ["rabbitmqctl", *args], capture_output=True, text=True, timeout=60, check=True
    )
    return result.stdout


def test_stop_from_inside_a_loop_that_published_does_not_hang(
    broker_env: Any, event_type: type, run_app: Any
) -> None:
    app = run_app()
    publisher = app.container.get(IAsyncEventPublisher)
    started = time.monotonic()

    async def request_then_shutdown() -> None:
        await publisher.publish(event_type(user_id=1, email="e"))
        app.stop()  # blocks this loop, which owns one of the transport's connections

    asyncio.run(request_then_shutdown())

    assert time.monotonic() - started < 10
    assert not app.application_context.is_started


def test_unknown_vhost_fails_startup_naming_the_setting(
    broker_env: Any, monkeypatch: pytest.MonkeyPatch, run_app: Any
) -> None:
    monkeypatch.setenv("SPAKKY_RABBITMQ__VHOST", f"no-such-vhost-{uuid.uuid4().hex[:6]}")

    with pytest.raises(RabbitMQAuthenticationError, match="SPAKKY_RABBITMQ__VHOST"):
        run_app()
