"""Pub/sub mode: each service gets every event, replicas share, topology is explicit."""

import asyncio
import json
import subprocess
import sys
import threading
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from spakky.event.error import EventDeliveryRejectedError
from spakky.event.event_publisher import IAsyncEventPublisher, IAsyncEventTransport
from spakky.event.stereotype.event_handler import EventHandler, on_event

from conftest import BrokerAdmin, make_event_type
from spakky.plugins.rabbitmq.config import RabbitMQTopologyError

pytestmark = pytest.mark.broker

ROOT = Path(__file__).resolve().parents[1]


def track_service(broker: BrokerAdmin, service: str, event: str) -> None:
    for suffix in ("", ".dlq"):
        broker.track("queue", f"{service}.{event}{suffix}")


def counting(event_type: type, counts: Counter[str], name: str, lock: threading.Lock) -> type:
    @EventHandler()
    class Count:
        @on_event(event_type)
        async def handle(self, event: Any) -> None:
            with lock:
                counts[name] += 1

    Count.__qualname__ = f"Count_{name}"
    return Count


async def test_services_each_get_every_event_and_replicas_share(
    broker_env: Any,
    monkeypatch: pytest.MonkeyPatch,
    event_type: type,
    unique_name: str,
    run_app: Any,
    broker: BrokerAdmin,
) -> None:
    exchange = unique_name + "-x"
    broker.track("exchange", exchange)
    monkeypatch.setenv("SPAKKY_RABBITMQ__EXCHANGE_NAME", exchange)
    counts, lock = Counter[str](), threading.Lock()
    for service in ("billing", "mailer"):
        track_service(broker, f"{unique_name}-{service}", unique_name)
        monkeypatch.setenv("SPAKKY_RABBITMQ__SERVICE_NAME", f"{unique_name}-{service}")
        for replica in (1, 2):
            handler = counting(event_type, counts, f"{service}-{replica}", lock)
            await asyncio.to_thread(run_app, handler)
    monkeypatch.setenv("SPAKKY_RABBITMQ__SERVICE_NAME", f"{unique_name}-api")
    publisher = (await asyncio.to_thread(run_app)).container.get(IAsyncEventPublisher)

    for n in range(200):
        await publisher.publish(event_type(user_id=n, email="e"))
    for _ in range(200):
        if sum(counts.values()) >= 400:
            break
        await asyncio.sleep(0.05)
    await asyncio.sleep(0.3)

    assert counts["billing-1"] + counts["billing-2"] == 200
    assert counts["mailer-1"] + counts["mailer-2"] == 200
    assert min(counts.values()) > 0, counts  # both replicas of each service got work
    assert not await broker.queue_exists(unique_name)  # publishers declare no queues


async def test_no_subscriber_is_fine_unless_mandatory_is_asked(
    broker_env: Any,
    monkeypatch: pytest.MonkeyPatch,
    unique_name: str,
    run_app: Any,
    broker: BrokerAdmin,
) -> None:
    exchange = unique_name + "-x"
    broker.track("exchange", exchange)
    monkeypatch.setenv("SPAKKY_RABBITMQ__EXCHANGE_NAME", exchange)
    monkeypatch.setenv("SPAKKY_RABBITMQ__SERVICE_NAME", unique_name + "-api")
    quiet = (await asyncio.to_thread(run_app)).container.get(IAsyncEventTransport)
    monkeypatch.setenv("SPAKKY_RABBITMQ__MANDATORY", "true")
    strict = (await asyncio.to_thread(run_app)).container.get(IAsyncEventTransport)

    await quiet.send("nobody.listens", b"{}", {})
    await quiet.flush()
    await strict.send("nobody.listens", b"{}", {})
    with pytest.raises(EventDeliveryRejectedError, match="unroutable"):
        await strict.flush()


async def test_quorum_queues_carry_delivery_limit_and_dead_letter_target(
    broker_env: Any,
    monkeypatch: pytest.MonkeyPatch,
    event_type: type,
    unique_name: str,
    run_app: Any,
    broker: BrokerAdmin,
) -> None:
    service = unique_name + "-svc"
    track_service(broker, service, unique_name)
    broker.track("exchange", unique_name + "-x")
    monkeypatch.setenv("SPAKKY_RABBITMQ__EXCHANGE_NAME", unique_name + "-x")
    monkeypatch.setenv("SPAKKY_RABBITMQ__SERVICE_NAME", service)
    monkeypatch.setenv("SPAKKY_RABBITMQ__QUEUE_TYPE", "quorum")
    monkeypatch.setenv("SPAKKY_RABBITMQ__DELIVERY_LIMIT", "7")
    await asyncio.to_thread(run_app, counting(event_type, Counter(), "q", threading.Lock()))

    listing = await asyncio.to_thread(
        subprocess.run,
        ["rabbitmqctl", "list_queues", "name", "type", "arguments", "--quiet"],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    rows = {line.split("\t")[0]: line for line in listing.stdout.splitlines()}

    main = rows[f"{service}.{unique_name}"]
    assert "\tquorum\t" in main
    assert '{"x-delivery-limit",7}' in main.replace(" ", "").replace("<<", "").replace(">>", "")
    assert f"{service}.{unique_name}.dlq" in main
    assert "\tquorum\t" in rows[f"{service}.{unique_name}.dlq"]


@pytest.mark.parametrize(
    ("existing", "setting"),
    [
        ({"x-queue-type": "quorum"}, "QUEUE_TYPE"),
        ({"x-max-length": 5}, "QUEUE_TYPE"),
    ],
)
async def test_queue_mismatch_names_queue_and_setting_and_spares_other_consumers(
    broker_env: Any,
    event_type: type,
    unique_name: str,
    run_app: Any,
    broker: BrokerAdmin,
    existing: dict[str, Any],
    setting: str,
) -> None:
    counts, lock = Counter[str](), threading.Lock()
    other_event: Any = make_event_type(unique_name + "-other")
    for suffix in ("", ".dlq"):
        broker.track("queue", unique_name + "-other" + suffix)
    app = await asyncio.to_thread(run_app, counting(other_event, counts, "other", lock))
    channel = await broker.channel()
    await channel.queue_declare(unique_name, durable=True, arguments=existing)

    with pytest.raises(RabbitMQTopologyError) as caught:
        await asyncio.to_thread(run_app, counting(event_type, Counter(), "x", lock))

    message = str(caught.value)
    assert repr(unique_name) in message
    assert f"SPAKKY_RABBITMQ__{setting}" in message
    assert "inequivalent arg" in message
    await app.container.get(IAsyncEventPublisher).publish(other_event(user_id=1))
    for _ in range(100):
        if counts["other"]:
            break
        await asyncio.sleep(0.05)
    assert counts["other"] == 1


async def test_exchange_type_mismatch_fails_startup(
    broker_env: Any,
    monkeypatch: pytest.MonkeyPatch,
    event_type: type,
    unique_name: str,
    run_app: Any,
    broker: BrokerAdmin,
) -> None:
    exchange = unique_name + "-x"
    broker.track("exchange", exchange)
    channel = await broker.channel()
    await channel.exchange_declare(exchange, exchange_type="fanout", durable=True)
    monkeypatch.setenv("SPAKKY_RABBITMQ__EXCHANGE_NAME", exchange)
    monkeypatch.setenv("SPAKKY_RABBITMQ__SERVICE_NAME", unique_name)

    with pytest.raises(RabbitMQTopologyError) as caught:
        await asyncio.to_thread(run_app)

    assert f"exchange {exchange!r}" in str(caught.value)
    assert "SPAKKY_RABBITMQ__EXCHANGE_TYPE" in str(caught.value)


async def test_passive_mode_reports_missing_topology(
    broker_env: Any,
    monkeypatch: pytest.MonkeyPatch,
    event_type: type,
    unique_name: str,
    run_app: Any,
) -> None:
    monkeypatch.setenv("SPAKKY_RABBITMQ__TOPOLOGY_MODE", "passive")

    with pytest.raises(RabbitMQTopologyError) as caught:
        await asyncio.to_thread(run_app, counting(event_type, Counter(), "p", threading.Lock()))

    assert repr(unique_name) in str(caught.value)
    assert "does not exist" in str(caught.value)
    assert "TOPOLOGY_MODE=passive" in str(caught.value)


def topology_command(*args: str, env: dict[str, str]) -> str:
    result = subprocess.run(
        [sys.executable, "-m", "spakky.plugins.rabbitmq.consumer", "topology", *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        env={"PATH": "/usr/bin:/bin", **env},
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


DEMO_COMPATIBLE = """\
queue UserCreatedEvent (events) durable=True
queue UserCreatedEvent.dlq (dead-letter) durable=True
queue UserCreatedEvent.retry.1s (retry) durable=True x-message-ttl=1000 \
x-dead-letter-exchange='' x-dead-letter-routing-key='UserCreatedEvent'
queue UserCreatedEvent.retry.10s (retry) durable=True x-message-ttl=10000 \
x-dead-letter-exchange='' x-dead-letter-routing-key='UserCreatedEvent'
queue UserCreatedEvent.retry.60s (retry) durable=True x-message-ttl=60000 \
x-dead-letter-exchange='' x-dead-letter-routing-key='UserCreatedEvent'
"""

DEMO_PUBSUB = {
    "exchanges": [{"name": "spakky.events", "type": "topic", "durable": True}],
    "queues": [
        {
            "name": "mailer.UserCreatedEvent",
            "role": "events",
            "durable": True,
            "arguments": {
                "x-queue-type": "quorum",
                "x-delivery-limit": 20,
                "x-dead-letter-exchange": "",
                "x-dead-letter-routing-key": "mailer.UserCreatedEvent.dlq",
            },
        },
        {
            "name": "mailer.UserCreatedEvent.dlq",
            "role": "dead-letter",
            "durable": True,
            "arguments": {"x-queue-type": "quorum"},
        },
        {
            "name": "mailer.UserCreatedEvent.retry.5s",
            "role": "retry",
            "durable": True,
            "arguments": {
                "x-message-ttl": 5000,
                "x-dead-letter-exchange": "",
                "x-dead-letter-routing-key": "mailer.UserCreatedEvent",
            },
        },
    ],
    "bindings": [
        {
            "queue": "mailer.UserCreatedEvent",
            "exchange": "spakky.events",
            "routing_key": "UserCreatedEvent",
        }
    ],
}


def test_topology_command_for_the_demo_in_both_modes() -> None:
    compatible = topology_command("show", "--app", "tools.demo.app", env={})
    pubsub = topology_command(
        "show",
        "--app",
        "tools.demo.app",
        "--json",
        env={
            "SPAKKY_RABBITMQ__SERVICE_NAME": "mailer",
            "SPAKKY_RABBITMQ__QUEUE_TYPE": "quorum",
            "SPAKKY_RABBITMQ__RETRY_DELAYS": "5",
        },
    )

    assert compatible == DEMO_COMPATIBLE
    assert json.loads(pubsub) == DEMO_PUBSUB


async def test_topology_declare_creates_what_show_prints(
    unique_name: str, broker: BrokerAdmin
) -> None:
    service = unique_name
    track_service(broker, service, "UserCreatedEvent")
    broker.track("exchange", unique_name + "-x")
    env = {
        "SPAKKY_RABBITMQ__URL": "amqp://guest:guest@127.0.0.1:5672/",
        "SPAKKY_RABBITMQ__SERVICE_NAME": service,
        "SPAKKY_RABBITMQ__EXCHANGE_NAME": unique_name + "-x",
        "SPAKKY_RABBITMQ__RETRY_DELAYS": "",
    }

    output = await asyncio.to_thread(
        topology_command, "declare", "--app", "tools.demo.app", env=env
    )

    assert "declared 1 exchange(s) and 2 queue(s)" in output
    assert await broker.queue_exists(f"{service}.UserCreatedEvent")
    assert await broker.queue_exists(f"{service}.UserCreatedEvent.dlq")
    await broker.publish_to_exchange(unique_name + "-x", "UserCreatedEvent", b"{}")
    assert await broker.wait_for_count(f"{service}.UserCreatedEvent", 1) == 1
