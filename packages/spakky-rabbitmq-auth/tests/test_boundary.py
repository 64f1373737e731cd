"""RabbitMQAuthBoundary on its own, with the real cryptography verifier (no broker)."""

import asyncio
import functools
import json
import logging
import threading
from base64 import urlsafe_b64decode, urlsafe_b64encode
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from spakky.auth import (
    AUTH_CONTEXT_CONTEXT_KEY,
    AuthContext,
    AuthInvocation,
    AuthorizationDecision,
    AuthorizationReasonCode,
    AuthRequirementDeniedError,
    AuthSubject,
    IAuthContextSnapshotVerifier,
    SnapshotSignRequest,
    protected,
    public_access,
    require_role,
)
from spakky.core.application.application_context import ApplicationContext
from spakky.event.stereotype.event_handler import on_event
from spakky.plugins.cryptography.auth_provider import (
    CryptographyAuthProvider,
    CryptographyAuthProviderConfig,
)
from spakky.plugins.cryptography.key import Key

from conftest import make_event_type
from spakky.plugins.rabbitmq.auth import RabbitMQAuthBoundary
from spakky.plugins.rabbitmq.config.settings import RabbitMQConnectionConfig, RabbitMQMessageAction
from spakky.plugins.rabbitmq.consumer.interceptor import (
    HandlerInfo,
    InboundMessage,
    MessageRejected,
)

Event = make_event_type("unit-auth-event", user_id=int)
EVENT = Event(user_id=1)  # pyright: ignore[reportCallIssue]
ACTIONS = [
    RabbitMQMessageAction.ACK,
    RabbitMQMessageAction.NACK_REQUEUE,
    RabbitMQMessageAction.NACK_DROP,
]


class Handlers:
    @on_event(Event)
    @protected
    async def route_outside(self, event: Any) -> None: ...

    @protected
    @on_event(Event)
    def route_inside(self, event: Any) -> None: ...

    @require_role("admin")
    @on_event(Event)
    async def admin_only(self, event: Any) -> None: ...

    @on_event(Event)
    async def open(self, event: Any) -> None: ...

    @public_access
    @on_event(Event)
    async def public(self, event: Any) -> None: ...


@protected
class GuardedClass:
    @on_event(Event)
    async def anything(self, event: Any) -> None: ...


def _logged(function: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(function)
    def wrapper(*args: Any) -> Any:
        return function(*args)

    return wrapper


class Wrapped:
    @_logged
    @protected
    @on_event(Event)
    def inner(self, event: Any) -> None: ...


def handler(owner: type, name: str) -> HandlerInfo:
    return HandlerInfo(
        handler_id=f"{owner.__qualname__}.{name}",
        event_type=Event,
        is_async=True,
        call=lambda event: None,
        owner_type=owner,
        method_name=name,
    )


PROTECTED = handler(Handlers, "route_outside")
OPEN = handler(Handlers, "open")


def message(headers: dict[str, str] | None = None) -> InboundMessage:
    return InboundMessage(
        event_name="unit-auth-event",
        queue="unit-auth-event",
        message_id="m-1",
        headers=headers or {},
        body_size=0,
        redelivered=False,
        attempt=1,
    )


@pytest.fixture
def provider(monkeypatch: pytest.MonkeyPatch) -> CryptographyAuthProvider:
    monkeypatch.setenv("SPAKKY_CRYPTOGRAPHY_SNAPSHOT_KEY", Key(size=32).b64_urlsafe)
    return CryptographyAuthProvider(CryptographyAuthProviderConfig())


def sign(provider: CryptographyAuthProvider, subject: str, *roles: str) -> str:
    context = AuthContext(subject=AuthSubject(id=subject), issuer="tests", roles=roles)
    return provider.sign_snapshot(
        SnapshotSignRequest(auth_context=context)
    ).base64url_canonical_json()


def config(**values: Any) -> RabbitMQConnectionConfig:
    return RabbitMQConnectionConfig.from_values(
        host="127.0.0.1", user="guest", password="guest", **values
    )


class Harness:
    """A boundary with its own application context, and a way to run one handler call."""

    def __init__(self, verifier: IAuthContextSnapshotVerifier | None, **settings: Any) -> None:
        self.context = ApplicationContext()
        self.boundary = RabbitMQAuthBoundary(config(**settings), verifier)
        self.boundary.set_application_context(self.context)
        self.seen: list[AuthContext | None] = []

    def current(self) -> AuthContext | None:
        value = self.context.get_context_value(AUTH_CONTEXT_CONTEXT_KEY)
        assert value is None or isinstance(value, AuthContext)
        return value

    def call(
        self,
        headers: dict[str, str] | None = None,
        info: HandlerInfo = PROTECTED,
        body: Callable[[], None] | None = None,
    ) -> AuthContext | None:
        self.context.clear_context()
        with self.boundary.intercept(message(headers), info, EVENT):
            seen = self.current()
            self.seen.append(seen)
            if body is not None:
                body()
        return seen


def rejected(harness: Harness, *args: Any, **kwargs: Any) -> MessageRejected:
    with pytest.raises(MessageRejected) as caught:
        harness.call(*args, **kwargs)
    assert harness.seen == [], "the handler must not run"
    return caught.value


def test_valid_snapshot_is_stored_for_the_call_only(provider: CryptographyAuthProvider) -> None:
    harness = Harness(provider)

    seen = harness.call({"spakky.auth.context_snapshot": sign(provider, "alice", "user")})

    assert seen is not None
    assert seen.subject.id == "alice"
    assert seen.roles == ("user",)
    assert harness.current() is None


def test_the_http_style_header_is_read_too(provider: CryptographyAuthProvider) -> None:
    harness = Harness(provider)

    seen = harness.call({"x-spakky-auth-context-snapshot": sign(provider, "bob")})

    assert seen is not None
    assert seen.subject.id == "bob"


def _tampered(provider: CryptographyAuthProvider) -> str:
    text = sign(provider, "mallory", "user")
    payload = json.loads(urlsafe_b64decode(text + "=" * (-len(text) % 4)))
    payload["roles"] = ["admin"]
    return urlsafe_b64encode(json.dumps(payload).encode()).decode().rstrip("=")


def _expired(provider: CryptographyAuthProvider) -> str:
    past = CryptographyAuthProviderConfig()
    past.clock = lambda: datetime.now(UTC) - timedelta(hours=1)
    return sign(CryptographyAuthProvider(past), "late")


def _other_key(provider: CryptographyAuthProvider) -> str:
    other = CryptographyAuthProviderConfig()
    other.snapshot_key = Key(size=32)
    return sign(CryptographyAuthProvider(other), "forger")


BAD_SNAPSHOTS: dict[str, Callable[[CryptographyAuthProvider], dict[str, str]]] = {
    "missing": lambda p: {},
    "empty": lambda p: {"spakky.auth.context_snapshot": ""},
    "bad_signature": lambda p: {"spakky.auth.context_snapshot": _other_key(p)},
    "tampered": lambda p: {"spakky.auth.context_snapshot": _tampered(p)},
    "wrong_schema": lambda p: {
        "spakky.auth.context_snapshot": urlsafe_b64encode(b'{"subject": 1}').decode()
    },
    "not_base64url": lambda p: {"spakky.auth.context_snapshot": "%%% not base64 %%%"},
    "expired": lambda p: {"spakky.auth.context_snapshot": _expired(p)},
    "two_different": lambda p: {
        "spakky.auth.context_snapshot": sign(p, "a"),
        "x-spakky-auth-context-snapshot": sign(p, "b"),
    },
}


@pytest.mark.parametrize("kind", sorted(BAD_SNAPSHOTS))
def test_bad_snapshot_on_protected_handler_is_a_challenge(
    provider: CryptographyAuthProvider, kind: str
) -> None:
    harness = Harness(provider, auth_challenge_action="nack_drop")

    error = rejected(harness, BAD_SNAPSHOTS[kind](provider))

    assert error.action is RabbitMQMessageAction.NACK_DROP
    assert error.reason.startswith("auth_challenge:SNAPSHOT_")
    assert harness.current() is None


def test_expired_and_missing_keep_their_reason(provider: CryptographyAuthProvider) -> None:
    harness = Harness(provider)

    expired = rejected(harness, BAD_SNAPSHOTS["expired"](provider))
    missing = rejected(harness, {})

    assert expired.reason == "auth_challenge:SNAPSHOT_EXPIRED"
    assert missing.reason == "auth_challenge:SNAPSHOT_MISSING"


@pytest.mark.parametrize("action", ACTIONS)
def test_each_outcome_uses_its_configured_action(
    provider: CryptographyAuthProvider, action: RabbitMQMessageAction
) -> None:
    others = {
        "auth_challenge_action": "dead_letter",
        "auth_deny_action": "dead_letter",
        "auth_error_action": "dead_letter",
    }
    denied = AuthRequirementDeniedError(
        AuthorizationDecision.deny(AuthorizationReasonCode.INSUFFICIENT_ROLE)
    )
    valid = {"spakky.auth.context_snapshot": sign(provider, "carol")}

    def deny() -> None:
        raise denied

    challenge = Harness(provider, **{**others, "auth_challenge_action": action})
    deny_harness = Harness(provider, **{**others, "auth_deny_action": action})
    unavailable = CryptographyAuthProviderConfig()
    unavailable.verification_available = False
    error = Harness(
        CryptographyAuthProvider(unavailable), **{**others, "auth_error_action": action}
    )

    assert rejected(challenge, {}).action is action
    with pytest.raises(MessageRejected) as caught:
        deny_harness.call(valid, body=deny)
    assert caught.value.action is action
    assert caught.value.reason == "auth_deny:INSUFFICIENT_ROLE"
    assert deny_harness.current() is None
    assert rejected(error, valid).action is action
    assert rejected(error, valid).reason == "auth_error:VERIFICATION_PROVIDER_UNAVAILABLE"


def test_defaults_follow_the_brief(provider: CryptographyAuthProvider) -> None:
    harness = Harness(None)
    plain = Harness(provider)

    assert rejected(plain, {}).action is RabbitMQMessageAction.ACK
    assert rejected(harness, {"spakky.auth.context_snapshot": "x"}).action is (
        RabbitMQMessageAction.NACK_REQUEUE
    )


def test_denial_decided_as_error_uses_the_error_action(
    provider: CryptographyAuthProvider,
) -> None:
    harness = Harness(provider, auth_error_action="nack_drop")

    def fail() -> None:
        raise AuthRequirementDeniedError(
            AuthorizationDecision.error(AuthorizationReasonCode.INTERNAL_ERROR)
        )

    with pytest.raises(MessageRejected) as caught:
        harness.call({"spakky.auth.context_snapshot": sign(provider, "d")}, body=fail)

    assert caught.value.action is RabbitMQMessageAction.NACK_DROP


def test_verifier_that_breaks_is_an_error(provider: CryptographyAuthProvider) -> None:
    class Broken(IAuthContextSnapshotVerifier):
        def verify_snapshot(self, snapshot_envelope: str, invocation: AuthInvocation) -> Any:
            raise ConnectionError("key service down")

    harness = Harness(Broken())

    error = rejected(harness, {"spakky.auth.context_snapshot": sign(provider, "e")})

    assert error.reason == "auth_error:INTERNAL_ERROR"
    assert error.action is RabbitMQMessageAction.NACK_REQUEUE


def test_unprotected_handler_runs_as_before(provider: CryptographyAuthProvider) -> None:
    harness = Harness(provider)

    assert harness.call({}, info=OPEN) is None
    seen = harness.call({"spakky.auth.context_snapshot": sign(provider, "f")}, info=OPEN)

    assert seen is not None
    assert seen.subject.id == "f"
    assert harness.current() is None


def test_unprotected_handler_with_a_bad_snapshot_is_a_challenge(
    provider: CryptographyAuthProvider,
) -> None:
    harness = Harness(provider, auth_challenge_action="nack_drop")

    error = rejected(harness, BAD_SNAPSHOTS["tampered"](provider), info=OPEN)

    assert error.action is RabbitMQMessageAction.NACK_DROP


def test_unprotected_handler_without_a_verifier_ignores_the_snapshot() -> None:
    harness = Harness(None)

    assert harness.call({"spakky.auth.context_snapshot": "anything"}, info=OPEN) is None


def test_unprotected_handler_errors_pass_through(provider: CryptographyAuthProvider) -> None:
    harness = Harness(provider)

    def deny() -> None:
        raise AuthRequirementDeniedError()

    with pytest.raises(AuthRequirementDeniedError):
        harness.call({"spakky.auth.context_snapshot": sign(provider, "g")}, OPEN, deny)
    assert harness.current() is None


@pytest.mark.parametrize(
    ("owner", "name", "expected"),
    [
        (Handlers, "route_outside", True),
        (Handlers, "route_inside", True),
        (Handlers, "admin_only", True),
        (Handlers, "open", False),
        (Handlers, "public", False),
        (GuardedClass, "anything", True),
        (Wrapped, "inner", True),
    ],
)
def test_protection_is_found_through_decorators(owner: type, name: str, expected: bool) -> None:
    boundary = RabbitMQAuthBoundary(config(), None)

    assert boundary.is_protected(handler(owner, name)) is expected


def test_callbacks_registered_by_hand_are_checked_too() -> None:
    boundary = RabbitMQAuthBoundary(config(), None)

    @protected
    def guarded(event: Any) -> None: ...

    def plain(event: Any) -> None: ...

    infos = [
        HandlerInfo(handler_id=f.__name__, event_type=Event, is_async=False, call=f)
        for f in (guarded, plain)
    ]

    assert [boundary.is_protected(info) for info in infos] == [True, False]


def test_snapshot_never_reaches_the_log(
    provider: CryptographyAuthProvider, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    harness = Harness(provider)
    snapshots = [headers for build in BAD_SNAPSHOTS.values() for headers in [build(provider)]]
    valid = {"spakky.auth.context_snapshot": sign(provider, "h")}

    for headers in snapshots:
        with pytest.raises(MessageRejected):
            harness.call(headers)
    harness.call(valid)
    harness.call(valid, info=OPEN)
    text = "\n".join(record.getMessage() for record in caplog.records)

    assert "auth CHALLENGE" in text
    for headers in [*snapshots, valid]:
        for value in headers.values():
            if len(value) > 8:
                assert value not in text


def test_requeue_without_delay_is_warned_about(caplog: pytest.LogCaptureFixture) -> None:
    RabbitMQAuthBoundary(config(requeue_delay=0), None)
    RabbitMQAuthBoundary(config(requeue_delay=0, auth_error_action="ack"), None)

    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]

    assert len(warnings) == 1
    assert "SPAKKY_RABBITMQ__REQUEUE_DELAY" in warnings[0].getMessage()


async def test_concurrent_async_calls_see_only_their_own_context(
    provider: CryptographyAuthProvider,
) -> None:
    harness = Harness(provider)

    async def one(index: int) -> tuple[int, str | None, AuthContext | None]:
        harness.context.clear_context()
        headers = {"spakky.auth.context_snapshot": sign(provider, f"s{index}")}
        with harness.boundary.intercept(message(headers), PROTECTED, EVENT):
            await asyncio.sleep(0.01 * (index % 3))
            seen = harness.current()
        return index, seen.subject.id if seen else None, harness.current()

    results = await asyncio.gather(*(one(i) for i in range(30)))

    assert all(subject == f"s{index}" for index, subject, _ in results)
    assert all(after is None for _, _, after in results)


def test_sync_calls_on_reused_threads_do_not_leak(provider: CryptographyAuthProvider) -> None:
    harness = Harness(provider)
    sync_protected = handler(Handlers, "route_inside")
    results: list[tuple[int, str | None]] = []
    lock = threading.Lock()
    barrier = threading.Barrier(4, timeout=10)

    def worker(start: int) -> None:
        barrier.wait()
        for index in range(start, start + 20):
            signed = index % 2 == 0
            headers = {"spakky.auth.context_snapshot": sign(provider, f"s{index}")}
            info = sync_protected if signed else OPEN
            seen = harness.call(headers if signed else {}, info=info)
            with lock:
                results.append((index, seen.subject.id if seen else None))

    threads = [threading.Thread(target=worker, args=(n * 20,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)

    assert len(results) == 80
    for index, subject in results:
        assert subject == (f"s{index}" if index % 2 == 0 else None)
