"""Bad input never kills a consumer and is never silently lost."""

import asyncio
import json
import threading
import uuid
from typing import Any

import pytest
from spakky.event.event_publisher import IAsyncEventPublisher
from spakky.event.stereotype.event_handler import EventHandler, on_event

from conftest import BrokerAdmin
from spakky.plugins.rabbitmq.consumer import (
    HEADER_ERROR_MESSAGE,
    HEADER_ERROR_TYPE,
    HEADER_HANDLERS,
    HEADER_ORIGINAL_QUEUE,
    HEADER_REASON,
)

pytestmark = pytest.mark.broker


class Inbox:
    def __init__(self) -> None:
        self.events: list[Any] = []
        self.arrived = threading.Event()

    def add(self, event: Any) -> None:
        self.events.append(event)
        self.arrived.set()

    async def wait(self, timeout: float = 10.0) -> None:
        assert await asyncio.to_thread(self.arrived.wait, timeout), "no event arrived"


def good_body(user_id: int = 1) -> bytes:
    payload = {
        "event_id": str(uuid.uuid4()),
        "timestamp": "2026-12-04T10:00:00Z",
        "user_id": user_id,
        "email": "a@example.com",
    }
    return json.dumps(payload).encode()


def recording_handler(event_type: type, inbox: Inbox) -> type:
    @EventHandler()
    class Recorder:
        @on_event(event_type)
        async def record(self, event: Any) -> None:
            inbox.add(event)

    return Recorder


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"{not json", "malformed_json"),
        (b"", "malformed_json"),
        (b'{"user_id": "not a number", "email": 5}', "schema_mismatch"),
        (b"[1, 2, 3]", "schema_mismatch"),
    ],
)
async def test_unreadable_body_goes_to_the_dead_letter_queue(
    broker_env: Any,
    event_type: type,
    unique_name: str,
    run_app: Any,
    broker: BrokerAdmin,
    body: bytes,
    reason: str,
) -> None:
    inbox = Inbox()
    run_app(recording_handler(event_type, inbox))

    await broker.publish(unique_name, body, properties={"message_id": "bad-1"})
    await broker.publish(unique_name, good_body(7))
    await inbox.wait()

    assert [event.user_id for event in inbox.events] == [7]
    assert await broker.wait_for_count(unique_name + ".dlq", 1) == 1
    dead = await broker.get(unique_name + ".dlq")
    assert dead is not None
    assert dead.body == body
    headers = dead.header.properties.headers or {}
    assert headers[HEADER_REASON] == reason
    assert headers[HEADER_ORIGINAL_QUEUE] == unique_name
    assert dead.header.properties.message_id == "bad-1"
    assert await broker.message_count(unique_name) == 0


async def test_malformed_payload_action_ack_drops_it(
    broker_env: Any,
    monkeypatch: pytest.MonkeyPatch,
    event_type: type,
    unique_name: str,
    run_app: Any,
    broker: BrokerAdmin,
) -> None:
    monkeypatch.setenv("SPAKKY_RABBITMQ__MALFORMED_PAYLOAD_ACTION", "ack")
    inbox = Inbox()
    run_app(recording_handler(event_type, inbox))

    await broker.publish(unique_name, b"garbage")
    await broker.publish(unique_name, good_body(3))
    await inbox.wait()
    await asyncio.sleep(0.2)

    assert await broker.message_count(unique_name) == 0
    assert await broker.message_count(unique_name + ".dlq") == 0


async def test_failing_handler_dead_letters_with_the_error_and_spares_the_others(
    broker_env: Any, event_type: type, unique_name: str, run_app: Any, broker: BrokerAdmin
) -> None:
    inbox = Inbox()

    @EventHandler()
    class Mixed:
        @on_event(event_type)
        async def works(self, event: Any) -> None:
            inbox.add(event)

        @on_event(event_type)
        def breaks(self, event: Any) -> None:
            raise LookupError(f"no mailbox for user {event.user_id}")

    run_app(Mixed)
    publisher_app = run_app()

    await publisher_app.container.get(IAsyncEventPublisher).publish(
        event_type(user_id=42, email="x@example.com")
    )
    await inbox.wait()

    assert await broker.wait_for_count(unique_name + ".dlq", 1) == 1
    dead = await broker.get(unique_name + ".dlq")
    assert dead is not None
    headers = dead.header.properties.headers or {}
    assert headers[HEADER_REASON] == "handler_error"
    assert headers[HEADER_ERROR_TYPE] == "LookupError"
    assert headers[HEADER_ERROR_MESSAGE] == "no mailbox for user 42"
    assert str(headers[HEADER_HANDLERS]).endswith("Mixed.breaks")
    assert json.loads(dead.body)["user_id"] == 42
    assert len(inbox.events) == 1


async def test_dead_lettered_copy_replayed_runs_only_the_failed_handler(
    broker_env: Any, event_type: type, unique_name: str, run_app: Any, broker: BrokerAdmin
) -> None:
    inbox = Inbox()
    calls: list[str] = []

    @EventHandler()
    class Pair:
        @on_event(event_type)
        async def first(self, event: Any) -> None:
            calls.append("first")

        @on_event(event_type)
        async def second(self, event: Any) -> None:
            calls.append("second")
            inbox.add(event)

    run_app(Pair)
    handler_id = f"{Pair.__module__}.{Pair.__qualname__}.second"

    await broker.publish(unique_name, good_body(5), headers={HEADER_HANDLERS: handler_id})
    await inbox.wait()
    await asyncio.sleep(0.2)

    assert calls == ["second"]


async def test_odd_headers_and_a_large_payload_are_handled(
    broker_env: Any, event_type: type, unique_name: str, run_app: Any, broker: BrokerAdmin
) -> None:
    inbox = Inbox()
    run_app(recording_handler(event_type, inbox))
    big_email = "x" * (8 * 1024 * 1024) + "@example.com"
    payload = json.loads(good_body(9))
    payload["email"] = big_email

    await broker.publish(
        unique_name,
        json.dumps(payload).encode(),
        headers={
            "traceparent": bytearray(b"\xff\xfe not utf-8"),
            "nested": {"a": 1, "b": [1, 2]},
            "number": 12,
            "x-spakky-attempt": "many",
        },
    )
    await inbox.wait(timeout=30)

    assert inbox.events[0].user_id == 9
    assert len(inbox.events[0].email) == len(big_email)
    assert await broker.wait_for_count(unique_name, 0) == 0


@pytest.mark.parametrize("kind", ["async-exit", "async-interrupt", "async-cancel", "sync-exit"])
async def test_handler_raising_base_exceptions_fails_only_that_message(
    broker_env: Any,
    event_type: type,
    unique_name: str,
    run_app: Any,
    broker: BrokerAdmin,
    kind: str,
) -> None:
    inbox = Inbox()
    escape: BaseException = {
        "async-exit": SystemExit(3),
        "async-interrupt": KeyboardInterrupt(),
        "async-cancel": asyncio.CancelledError(),
        "sync-exit": SystemExit(4),
    }[kind]

    if kind.startswith("async"):

        @EventHandler()
        class Escaping:  # pyright: ignore[reportRedeclaration]
            @on_event(event_type)
            async def handle(self, event: Any) -> None:
                if event.user_id == 1:
                    raise escape
                inbox.add(event)

    else:

        @EventHandler()
        class Escaping:
            @on_event(event_type)
            def handle(self, event: Any) -> None:
                if event.user_id == 1:
                    raise escape
                inbox.add(event)

    app = await asyncio.to_thread(run_app, Escaping)
    await broker.publish(unique_name, good_body(1))
    await broker.publish(unique_name, good_body(2))
    await inbox.wait()

    assert [event.user_id for event in inbox.events] == [2]
    assert await broker.wait_for_count(unique_name + ".dlq", 1) == 1
    dead = await broker.get(unique_name + ".dlq")
    assert dead is not None
    assert (dead.header.properties.headers or {})[HEADER_ERROR_TYPE] == "HandlerEscapedError"
    await asyncio.wait_for(asyncio.to_thread(app.stop), 20)
