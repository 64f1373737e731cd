"""The boundary in a running worker, against the local broker and a real signer/verifier."""

import asyncio
import logging
import random
import shutil
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from pydantic import TypeAdapter
from spakky.auth import (
    AuthCapability,
    AuthContext,
    AuthorizationDecision,
    AuthorizationReasonCode,
    AuthProviderContribution,
    AuthSubject,
    IRoleChecker,
    RoleCheckRequest,
    SnapshotSignRequest,
    protected,
    require_auth_context,
    require_role,
    store_auth_context,
)
from spakky.core.application.application import SpakkyApplication
from spakky.core.pod.annotations.pod import Pod
from spakky.core.pod.interfaces.application_context import IApplicationContext
from spakky.event.event_publisher import IAsyncEventPublisher
from spakky.event.stereotype.event_handler import EventHandler, on_event
from spakky.plugins.cryptography.auth_provider import (
    CryptographyAuthProvider,
    CryptographyAuthProviderConfig,
)
from spakky.plugins.cryptography.key import Key

from conftest import BrokerAdmin

pytestmark = pytest.mark.broker

BOUNDARY_LOGGER = "spakky.plugins.rabbitmq.auth.boundary"
SNAPSHOT_HEADER = "spakky.auth.context_snapshot"


@Pod()
class RolesFromSnapshot(IRoleChecker):
    """Test role checker: a role is granted when the verified snapshot lists it."""

    def check_role(self, request: RoleCheckRequest) -> AuthorizationDecision:
        if request.role in request.auth_context.roles:
            return AuthorizationDecision.allow()
        return AuthorizationDecision.deny(AuthorizationReasonCode.INSUFFICIENT_ROLE)


@Pod(name="tests_role_check_contribution")
def role_check_contribution() -> AuthProviderContribution:
    return AuthProviderContribution(
        provider_id="provider:tests-roles",
        capabilities=frozenset({AuthCapability.ROLE_CHECK}),
    )


class Seen:
    """Thread-safe record of (handler, user_id, subject id or None)."""

    def __init__(self) -> None:
        self.items: list[tuple[str, int, str | None]] = []
        self.condition = threading.Condition()
        self.contexts: list[IApplicationContext] = []

    def add(self, who: str, event: Any) -> None:
        value = self.contexts[0].get_context_value("spakky.auth.context")
        subject = value.subject.id if isinstance(value, AuthContext) else None
        with self.condition:
            self.items.append((who, event.user_id, subject))
            self.condition.notify_all()

    def subject(self) -> str:
        return require_auth_context(self.contexts[0]).subject.id

    def wait(self, count: int, timeout: float = 20.0) -> list[tuple[str, int, str | None]]:
        with self.condition:
            self.condition.wait_for(lambda: len(self.items) >= count, timeout)
            return list(self.items)


@pytest.fixture
def auth_env(broker_env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """Broker settings plus one snapshot key shared by the test, its publisher and worker."""
    env = {**broker_env, "SPAKKY_CRYPTOGRAPHY_SNAPSHOT_KEY": Key(size=32).b64_urlsafe}
    monkeypatch.setenv("SPAKKY_CRYPTOGRAPHY_SNAPSHOT_KEY", env["SPAKKY_CRYPTOGRAPHY_SNAPSHOT_KEY"])
    monkeypatch.setenv("SPAKKY_RABBITMQ__REQUEUE_DELAY", "0.2")
    return env


def signed(subject: str, *roles: str) -> str:
    """A snapshot signed with the test's key, as another service would send it."""
    provider = CryptographyAuthProvider(CryptographyAuthProviderConfig())
    context = AuthContext(subject=AuthSubject(id=subject), issuer="tests", roles=roles)
    snapshot = provider.sign_snapshot(SnapshotSignRequest(auth_context=context))
    return snapshot.base64url_canonical_json()


def body(event_type: type, user_id: int) -> bytes:
    event = event_type(user_id=user_id, email=f"{user_id}@example.com")
    return TypeAdapter(event_type).dump_json(event)


def rejections(caplog: pytest.LogCaptureFixture, message_id: str) -> int:
    return sum(
        1
        for record in caplog.records
        if record.name == BOUNDARY_LOGGER and message_id in record.getMessage()
    )


async def wait_until(check: Callable[[], bool], within: float = 15.0) -> bool:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if check():
            return True
        await asyncio.sleep(0.05)
    return check()


async def _rabbitmqctl(*args: str) -> None:
    process = await asyncio.create_subprocess_exec(
        "rabbitmqctl",
        *args,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    async with asyncio.timeout(60):
        _, error = await process.communicate()
    assert process.returncode == 0, error.decode(errors="replace")


@pytest.fixture
async def dropped_queue(unique_name: str, broker: BrokerAdmin) -> AsyncIterator[str]:
    """A broker policy dead-letters what is nacked without requeue here, to see it happen."""
    assert shutil.which("rabbitmqctl"), "rabbitmqctl is needed to watch nack_drop"
    dropped = f"{unique_name}.dropped"
    channel = await broker.channel()
    await channel.queue_declare(dropped, durable=True)
    await channel.close()
    broker.track("queue", dropped)
    definition = f'{{"dead-letter-exchange":"","dead-letter-routing-key":"{dropped}"}}'
    await _rabbitmqctl(
        "set_policy", "--apply-to", "queues", unique_name, f"^{unique_name}$", definition
    )
    try:
        yield dropped
    finally:
        await _rabbitmqctl("clear_policy", unique_name)


def worker_pods(event_type: type, seen: Seen, outcome: str) -> tuple[object, ...]:
    if outcome == "deny":

        @EventHandler()
        class AdminsOnly:
            @on_event(event_type)
            @require_role("admin")
            async def handle(self, event: Any) -> None:
                seen.add("handler", event)

        return (AdminsOnly, RolesFromSnapshot, role_check_contribution)

    @EventHandler()
    class Guarded:
        @protected
        @on_event(event_type)
        async def handle(self, event: Any) -> None:
            seen.add("handler", event)

    return (Guarded,)


OUTCOME_ENV = {"challenge": "AUTH_CHALLENGE_ACTION", "deny": "AUTH_DENY_ACTION"}


@pytest.mark.parametrize("action", ["ack", "nack_requeue", "nack_drop", "dead_letter"])
@pytest.mark.parametrize("outcome", ["challenge", "deny", "error"])
async def test_outcome_settles_with_configured_action(
    auth_env: dict[str, str],
    event_type: type,
    run_app: Callable[..., SpakkyApplication],
    broker: BrokerAdmin,
    dropped_queue: str,
    unique_name: str,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    outcome: str,
    action: str,
) -> None:
    caplog.set_level(logging.WARNING, logger=BOUNDARY_LOGGER)
    monkeypatch.setenv(f"SPAKKY_RABBITMQ__{OUTCOME_ENV.get(outcome, 'AUTH_ERROR_ACTION')}", action)
    headers = {
        "challenge": {},
        "deny": {SNAPSHOT_HEADER: signed("user-1", "user")},
        "error": {SNAPSHOT_HEADER: signed("user-1", "admin")},
    }[outcome]
    seen = Seen()
    if outcome == "error":
        monkeypatch.setenv("SPAKKY_CRYPTOGRAPHY_VERIFICATION_AVAILABLE", "false")
    app = run_app(*worker_pods(event_type, seen, outcome))
    message_id = uuid.uuid4().hex

    await broker.publish(
        unique_name,
        body(event_type, 7),
        headers=headers,
        properties={"message_id": message_id, "content_type": "application/json"},
    )
    wanted = 2 if action == "nack_requeue" else 1
    assert await wait_until(lambda: rejections(caplog, message_id) >= wanted)
    await asyncio.to_thread(app.stop)

    assert seen.items == []
    assert f"auth {outcome.upper()}" in caplog.records[0].getMessage()
    counts = {
        "queue": await broker.wait_for_count(unique_name, 1 if action == "nack_requeue" else 0),
        "dropped": await broker.wait_for_count(dropped_queue, 1 if action == "nack_drop" else 0),
        "dlq": await broker.wait_for_count(
            f"{unique_name}.dlq", 1 if action == "dead_letter" else 0
        ),
    }
    expected = {
        "ack": {"queue": 0, "dropped": 0, "dlq": 0},
        "nack_requeue": {"queue": 1, "dropped": 0, "dlq": 0},
        "nack_drop": {"queue": 0, "dropped": 1, "dlq": 0},
        "dead_letter": {"queue": 0, "dropped": 0, "dlq": 1},
    }[action]
    assert counts == expected
    if action == "nack_drop":
        dropped = await broker.get(dropped_queue)
        assert dropped is not None
        deaths: Any = (dropped.header.properties.headers or {})["x-death"]
        assert str(deaths[0]["reason"]).strip("b'") == "rejected"
    if action == "dead_letter":
        dead = await broker.get(f"{unique_name}.dlq")
        assert dead is not None
        reason = (dead.header.properties.headers or {})["x-spakky-dead-letter-reason"]
        assert str(reason).startswith(f"auth_{outcome}:")


async def test_requeued_errors_are_paced_not_spun(
    auth_env: dict[str, str],
    event_type: type,
    run_app: Callable[..., SpakkyApplication],
    broker: BrokerAdmin,
    unique_name: str,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger=BOUNDARY_LOGGER)
    monkeypatch.setenv("SPAKKY_RABBITMQ__REQUEUE_DELAY", "0.5")
    monkeypatch.setenv("SPAKKY_CRYPTOGRAPHY_VERIFICATION_AVAILABLE", "false")
    seen = Seen()
    app = run_app(*worker_pods(event_type, seen, "error"))
    message_id = uuid.uuid4().hex

    await broker.publish(
        unique_name,
        body(event_type, 1),
        headers={SNAPSHOT_HEADER: signed("u")},
        properties={"message_id": message_id},
    )
    assert await wait_until(lambda: rejections(caplog, message_id) >= 1)
    await asyncio.sleep(2.0)
    attempts = rejections(caplog, message_id)
    await asyncio.to_thread(app.stop)

    # 2 s at one attempt per 0.5 s: about 5; a spinning requeue would show hundreds.
    assert 3 <= attempts <= 7
    assert await broker.wait_for_count(unique_name, 1) == 1


async def test_publisher_auth_context_reaches_protected_handlers(
    auth_env: dict[str, str],
    event_type: type,
    run_app: Callable[..., SpakkyApplication],
    broker: BrokerAdmin,
    unique_name: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("SPAKKY_AUTH_SNAPSHOT_PROPAGATION_ENABLED", "true")
    seen = Seen()

    @EventHandler()
    class RouteOutside:
        @on_event(event_type)
        @protected
        async def handle(self, event: Any) -> None:
            seen.add(f"outside:{seen.subject()}", event)

    @EventHandler()
    class RouteInside:
        @protected
        @on_event(event_type)
        def handle(self, event: Any) -> None:
            seen.add(f"inside:{seen.subject()}", event)

    @protected
    @EventHandler()
    class WholeClass:
        @on_event(event_type)
        async def handle(self, event: Any) -> None:
            seen.add(f"class:{seen.subject()}", event)

    worker = run_app(RouteOutside, RouteInside, WholeClass)
    seen.contexts.append(worker.application_context)
    publisher_app = run_app()
    publisher = publisher_app.container.get(IAsyncEventPublisher)
    context = AuthContext(subject=AuthSubject(id="alice"), issuer="api", roles=("user",))

    publisher_app.application_context.clear_context()
    store_auth_context(publisher_app.application_context, context)
    await publisher.publish(event_type(user_id=1, email="alice@example.com"))
    items = await asyncio.to_thread(seen.wait, 3)

    assert sorted(who for who, _, _ in items) == ["class:alice", "inside:alice", "outside:alice"]
    assert await broker.consumer_count(unique_name) == 1


def concurrent_handlers(event_type: type, seen: Seen, *, with_async: bool) -> type:
    class Handlers:
        @on_event(event_type)
        @protected
        def guarded_sync(self, event: Any) -> None:
            time.sleep(random.uniform(0, 0.05))
            seen.add("guarded_sync", event)

        @on_event(event_type)
        def open_sync(self, event: Any) -> None:
            time.sleep(random.uniform(0, 0.05))
            seen.add("open_sync", event)

    class WithAsync(Handlers):
        @on_event(event_type)
        @protected
        async def guarded_async(self, event: Any) -> None:
            await asyncio.sleep(random.uniform(0, 0.05))
            seen.add("guarded_async", event)

        @on_event(event_type)
        async def open_async(self, event: Any) -> None:
            await asyncio.sleep(random.uniform(0, 0.05))
            seen.add("open_async", event)

    return EventHandler()(WithAsync if with_async else Handlers)


@pytest.mark.parametrize("consumer", ["async", "sync"])
async def test_concurrent_messages_each_see_their_own_subject(
    auth_env: dict[str, str],
    event_type: type,
    run_app: Callable[..., SpakkyApplication],
    broker: BrokerAdmin,  # deletes the queue and its dead-letter queue afterwards
    monkeypatch: pytest.MonkeyPatch,
    consumer: str,
) -> None:
    """Even messages carry subject-<id>, odd ones none; the sync consumer is used
    when the event has only sync handlers, the async one (with worker threads) otherwise."""
    monkeypatch.setenv("SPAKKY_AUTH_SNAPSHOT_PROPAGATION_ENABLED", "true")
    seen = Seen()
    Handlers = concurrent_handlers(event_type, seen, with_async=consumer == "async")
    kinds = ("async", "sync") if consumer == "async" else ("sync",)

    worker = run_app(Handlers)
    seen.contexts.append(worker.application_context)
    publisher_app = run_app()
    publisher = publisher_app.container.get(IAsyncEventPublisher)
    application_context = publisher_app.application_context

    async def publish(user_id: int) -> None:
        application_context.clear_context()
        if user_id % 2 == 0:
            subject = AuthSubject(id=f"subject-{user_id}")
            store_auth_context(application_context, AuthContext(subject=subject, issuer="api"))
        await publisher.publish(event_type(user_id=user_id, email="x@example.com"))

    await asyncio.gather(*(asyncio.create_task(publish(i)) for i in range(40)))
    items = await asyncio.to_thread(seen.wait, 60 * len(kinds), 30.0)
    await asyncio.sleep(0.2)  # would let duplicates arrive

    assert len(seen.items) == 60 * len(kinds)
    for kind in kinds:
        guarded = sorted((i, subject) for who, i, subject in items if who == f"guarded_{kind}")
        assert guarded == [(i, f"subject-{i}") for i in range(0, 40, 2)]
        opened = sorted((i, subject) for who, i, subject in items if who == f"open_{kind}")
        assert opened == [(i, f"subject-{i}" if i % 2 == 0 else None) for i in range(40)]
