"""Faults that hit the whole broker; ``tools/test.sh`` runs these alone, after the rest.

Each test puts the broker back as it found it, also when it fails.
"""

import asyncio
import json
import re
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Generator
from contextlib import contextmanager
from typing import Any

import pytest
from spakky.event.event_publisher import IAsyncEventTransport, IEventTransport
from spakky.event.stereotype.event_handler import EventHandler, on_event

from conftest import BrokerAdmin
from spakky.plugins.rabbitmq.transport import RabbitMQBrokerBlockedError

pytestmark = [pytest.mark.broker, pytest.mark.serial]


def rabbitmqctl(*args: str, timeout: float = 120) -> str:
    result = subprocess.run(
        ["rabbitmqctl", *args], capture_output=True, text=True, timeout=timeout, check=True
    )
    return result.stdout


def wait_for_broker(limit: float = 120) -> None:
    subprocess.run(["python3", "tools/wait_for_broker.py"], check=True, timeout=limit + 10)


def counting_handler(event_type: type, handled: Counter[int], lock: threading.Lock) -> type:
    @EventHandler()
    class Count:
        @on_event(event_type)
        async def handle(self, event: Any) -> None:
            with lock:
                handled[event.user_id] += 1

    return Count


async def publish_through(
    transport: Any, queue: str, numbers: range, *, batch: int = 200
) -> tuple[set[int], list[float]]:
    """Publish ``numbers`` in batches, retrying failed flushes; return what was confirmed
    and how long each failed stretch lasted."""
    confirmed: set[int] = set()
    outages: list[float] = []
    for first in range(numbers.start, numbers.stop, batch):
        chunk = range(first, min(first + batch, numbers.stop))
        failing_since: float | None = None
        for attempt in range(200):
            try:
                for n in chunk:
                    body = {"event_id": f"00000000-0000-4000-8000-{n:012d}", "user_id": n}
                    await transport.send(queue, json.dumps(body | {"email": ""}).encode(), {})
                await transport.flush()
                break
            except Exception:
                assert attempt < 199, "publishing never recovered"
                failing_since = failing_since or time.monotonic()
                await asyncio.sleep(0.25)
        if failing_since is not None:
            outages.append(time.monotonic() - failing_since)
        confirmed.update(chunk)
    return confirmed, outages


async def settle(handled: Counter[int], expected: set[int], limit: float = 60) -> None:
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline and not expected <= set(handled):  # noqa: ASYNC110
        await asyncio.sleep(0.1)
    await asyncio.sleep(0.5)


def report(capsys: pytest.CaptureFixture[str], fault: str, **numbers: object) -> None:
    with capsys.disabled():
        print(f"\n[fault] {fault}: " + ", ".join(f"{k} {v}" for k, v in numbers.items()))


async def test_operator_closing_all_connections(
    broker_env: Any,
    event_type: type,
    unique_name: str,
    run_app: Any,
    broker: BrokerAdmin,
    capsys: pytest.CaptureFixture[str],
) -> None:
    handled, lock = Counter[int](), threading.Lock()
    app = await asyncio.to_thread(run_app, counting_handler(event_type, handled, lock))
    transport = app.container.get(IAsyncEventTransport)
    total = 5000

    async def close_midway() -> None:
        await asyncio.sleep(0.3)
        await asyncio.to_thread(rabbitmqctl, "close_all_connections", "fault test")

    closer = asyncio.create_task(close_midway())
    confirmed, outages = await publish_through(transport, unique_name, range(total))
    await closer
    await broker.reconnect()
    await settle(handled, confirmed)

    lost = confirmed - set(handled)
    report(
        capsys,
        "close_all_connections",
        sent=total,
        confirmed=len(confirmed),
        handled=len(handled),
        lost=len(lost),
        duplicates=sum(c - 1 for c in handled.values()),
        publish_outage_s=f"{max(outages, default=0):.2f}",
    )
    assert lost == set()
    assert await broker.consumer_count(unique_name) == 1


async def test_broker_restart(
    broker_env: Any,
    event_type: type,
    unique_name: str,
    run_app: Any,
    broker: BrokerAdmin,
    capsys: pytest.CaptureFixture[str],
) -> None:
    handled, lock = Counter[int](), threading.Lock()
    app = await asyncio.to_thread(run_app, counting_handler(event_type, handled, lock))
    transport = app.container.get(IAsyncEventTransport)
    total = 3000
    restarted: list[float] = []

    async def restart_midway() -> None:
        await asyncio.sleep(0.3)
        started = time.monotonic()
        try:
            await asyncio.to_thread(rabbitmqctl, "stop_app")
        finally:
            await asyncio.to_thread(rabbitmqctl, "start_app")
            await asyncio.to_thread(wait_for_broker)
        restarted.append(time.monotonic() - started)

    restarter = asyncio.create_task(restart_midway())
    confirmed, outages = await publish_through(transport, unique_name, range(total))
    await restarter
    await broker.reconnect()
    await settle(handled, confirmed)

    lost = confirmed - set(handled)
    consumers = 0
    deadline = time.monotonic() + 30
    while consumers != 1 and time.monotonic() < deadline:
        consumers = await broker.consumer_count(unique_name)
        await asyncio.sleep(0.2)
    report(
        capsys,
        "stop_app/start_app",
        sent=total,
        confirmed=len(confirmed),
        handled=len(handled),
        lost=len(lost),
        duplicates=sum(c - 1 for c in handled.values()),
        broker_down_s=f"{restarted[0]:.2f}",
        publish_outage_s=f"{max(outages, default=0):.2f}",
    )
    assert lost == set()
    assert consumers == 1


@contextmanager
def memory_alarm() -> Generator[None]:
    """Raise a memory alarm by setting a tiny watermark; restore the original after."""
    original = rabbitmqctl("eval", "vm_memory_monitor:get_vm_memory_high_watermark().").strip()
    rabbitmqctl("set_vm_memory_high_watermark", "0.000001")
    try:
        yield
    finally:
        absolute = re.fullmatch(r"\{absolute,(\d+)\}", original)
        if absolute:
            rabbitmqctl("set_vm_memory_high_watermark", "absolute", absolute.group(1))
        else:
            rabbitmqctl("set_vm_memory_high_watermark", original)


def test_memory_alarm_gives_a_bounded_error_that_names_it(
    broker_env: Any,
    monkeypatch: pytest.MonkeyPatch,
    unique_name: str,
    run_app: Any,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("SPAKKY_RABBITMQ__CONFIRM_TIMEOUT", "3")
    app = run_app()
    transport = app.container.get(IEventTransport)
    transport.send(unique_name, b"{}", {})
    transport.flush()  # the queue exists before the alarm

    with memory_alarm():
        time.sleep(1)
        started = time.monotonic()
        transport.send(unique_name, b"{}", {})
        with pytest.raises(RabbitMQBrokerBlockedError) as caught:
            transport.flush()
        waited = time.monotonic() - started

    recovered_in = 0.0
    for attempt in range(20):
        try:
            transport.send(unique_name, b"{}", {})
            transport.flush()
            break
        except RabbitMQBrokerBlockedError:
            assert attempt < 19, "publishing did not recover after the alarm cleared"
            recovered_in += 3
    report(
        capsys,
        "memory alarm",
        error=str(caught.value),
        waited_s=f"{waited:.2f}",
        recovered_after_extra_s=recovered_in,
    )
    assert waited < 6
    assert "memory" in str(caught.value)
