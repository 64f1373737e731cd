"""Publishing through faults: a channel the broker closes mid-burst, a cut mid-burst or
while a queue is being declared, returned messages among confirmed ones."""

import asyncio
import json
import time
from typing import Any

import pytest

from conftest import BrokerAdmin, CuttableProxy
from spakky.plugins.rabbitmq.config import RabbitMQConnectionError
from spakky.plugins.rabbitmq.config.publisher import PublishRejectedError
from spakky.plugins.rabbitmq.config.settings import RabbitMQConnectionConfig
from spakky.plugins.rabbitmq.transport import AsyncRabbitMQEventTransport
from spakky.plugins.rabbitmq.transport._publisher import LoopPublisher  # internals under test
from spakky.plugins.rabbitmq.transport.errors import RabbitMQDeliveryRejectedError

pytestmark = pytest.mark.broker


def body(seq: int, fill: int = 0) -> bytes:
    return json.dumps(
        {"event_id": f"00000000-0000-4000-8000-{seq:012d}", "seq": seq, "fill": "x" * fill}
    ).encode()


async def drain(broker: BrokerAdmin, queue: str, limit: int) -> list[bytes]:
    channel = await broker.channel()
    out: list[bytes] = []
    try:
        for _ in range(limit):
            message = await channel.basic_get(queue, no_ack=True)
            if message.delivery_tag is None:
                break
            out.append(message.body)
    finally:
        await channel.close()
    return out


async def test_confirms_map_to_the_right_message_when_some_are_returned(
    broker_env: Any, unique_name: str, broker: BrokerAdmin
) -> None:
    """Interleave routable and unroutable (mandatory) publishes; each future must match."""
    publisher = LoopPublisher(RabbitMQConnectionConfig.from_values(), (), role="test-publisher")
    await publisher.open()
    dead = unique_name + "-gone"
    broker.track("queue", dead)
    try:
        await publisher.publish(unique_name, body(0), {})
        await publisher.publish(dead, body(1), {})
        ch = await broker.channel()
        await ch.queue_delete(dead)  # now unroutable; publisher thinks it is declared
        await ch.close()
        await drain(broker, unique_name, 10)
        futures: list[tuple[str, asyncio.Future[None]]] = []
        for i in range(2000):
            target = dead if i % 3 == 0 else unique_name
            futures.append((target, publisher.publish(target, body(10 + i, i % 50), {})))
        await asyncio.wait([f for _, f in futures], timeout=30)
        wrong: list[tuple[int, str, BaseException | None]] = []
        for i, (target, future) in enumerate(futures):
            assert future.done()
            error = future.exception()
            if target == dead and not isinstance(error, PublishRejectedError):
                wrong.append((i, "dead but", error))
            if target != dead and error is not None:
                wrong.append((i, "live but", error))
        assert wrong == []
    finally:
        await publisher.close()
    got = await drain(broker, unique_name, 3000)
    expect = [body(10 + i, i % 50) for i in range(2000) if i % 3 != 0]
    assert got == expect


async def test_burst_to_deleted_exchange_fails_fast_and_recovers(
    broker_env: Any, monkeypatch: pytest.MonkeyPatch, unique_name: str, broker: BrokerAdmin
) -> None:
    exchange = unique_name + "-x"
    monkeypatch.setenv("SPAKKY_RABBITMQ__EXCHANGE_NAME", exchange)
    broker.track("exchange", exchange)
    monkeypatch.setenv("SPAKKY_RABBITMQ__CONFIRM_TIMEOUT", "10")
    transport = AsyncRabbitMQEventTransport(RabbitMQConnectionConfig.from_values())
    await transport.start_async()
    try:
        await transport.send(unique_name, body(0), {})
        await transport.flush()
        ch = await broker.channel()
        await ch.exchange_delete(exchange)
        await ch.close()
        started = time.monotonic()
        for i in range(3000):
            await transport.send(unique_name, body(1 + i, i % 100), {})
        with pytest.raises(RabbitMQDeliveryRejectedError):
            await asyncio.wait_for(transport.flush(), 20)
        assert time.monotonic() - started < 8
        # put the exchange back (and its binding) and publish again
        ch = await broker.channel()
        await ch.exchange_declare(exchange, exchange_type="direct", durable=True)
        await ch.queue_bind(unique_name, exchange, routing_key=unique_name)
        await ch.close()
        await drain(broker, unique_name, 10)
        after = [body(100_000 + i) for i in range(500)]
        for p in after:
            await transport.send(unique_name, p, {})
        await asyncio.wait_for(transport.flush(), 20)
    finally:
        await transport.stop_async()
    got = await drain(broker, unique_name, 1000)
    assert got == after


async def test_connection_cut_mid_burst_loses_nothing(
    proxy: CuttableProxy, unique_name: str, broker: BrokerAdmin
) -> None:
    transport = AsyncRabbitMQEventTransport(RabbitMQConnectionConfig.from_values())
    await transport.start_async()
    n = 4000
    payloads = [body(i, (i * 37) % 2000) for i in range(n)]
    try:
        await transport.send(unique_name, body(-1 + 10**6), {})
        await transport.flush()
        await drain(broker, unique_name, 5)
        for i, p in enumerate(payloads):
            await transport.send(unique_name, p, {})
            if i == n // 2:
                await asyncio.to_thread(proxy.cut, refuse_for=0.3)
        await asyncio.wait_for(transport.flush(), 40)
    finally:
        await transport.stop_async()
    got = await drain(broker, unique_name, 3 * n)
    seqs = [json.loads(g)["seq"] for g in got]
    assert set(seqs) == set(range(n)), sorted(set(range(n)) - set(seqs))[:20]
    # payloads intact
    by_seq = {json.loads(g)["seq"]: g for g in got}
    assert all(by_seq[i] == payloads[i] for i in range(n))


@pytest.mark.parametrize("yield_every", [1, 3])
async def test_channel_closed_by_broker_while_publishing_every_loop_pass(
    broker_env: Any,
    monkeypatch: pytest.MonkeyPatch,
    unique_name: str,
    broker: BrokerAdmin,
    caplog: pytest.LogCaptureFixture,
    yield_every: int,
) -> None:
    """Publishes keep arriving one per loop pass while the broker closes the channel.

    Frames must never be written for a channel after its CloseOk: the broker would
    close the whole connection (CHANNEL_ERROR 504).
    """
    exchange = unique_name + "-x"
    monkeypatch.setenv("SPAKKY_RABBITMQ__EXCHANGE_NAME", exchange)
    broker.track("exchange", exchange)
    publisher = LoopPublisher(RabbitMQConnectionConfig.from_values(), (), role="test-publisher")
    await publisher.open()
    try:
        await publisher.publish(unique_name, body(0), {})
        ch = await broker.channel()
        await ch.exchange_delete(exchange)
        await ch.close()
        futures: list[asyncio.Future[None]] = []
        deadline = time.monotonic() + 1.5
        i = 0
        while time.monotonic() < deadline and i < 20000:
            futures.append(publisher.publish(unique_name, body(i, 10), {}))
            i += 1
            if i % yield_every == 0:
                await asyncio.sleep(0)
        done, pending = await asyncio.wait(futures, timeout=20)
        assert not pending
        errors = {type(future.exception()).__name__ for future in done}
        assert errors <= {"PublishRejectedError"}, errors
    finally:
        await publisher.close()
    lost = [r.getMessage() for r in caplog.records if "lost its connection" in r.getMessage()]
    assert lost == []


async def test_cut_during_first_declaration_is_resent_not_failed(
    proxy: CuttableProxy, unique_name: str, broker: BrokerAdmin
) -> None:
    transport = AsyncRabbitMQEventTransport(RabbitMQConnectionConfig.from_values())
    await transport.start_async()
    try:
        for i in range(200):
            body = json.dumps({"event_id": f"00000000-0000-4000-8000-{i:012d}", "seq": i})
            await transport.send(unique_name, body.encode(), {})
        await asyncio.to_thread(proxy.cut, refuse_for=0.3)
        await asyncio.wait_for(transport.flush(), 20)  # README: resent on the next connection
    finally:
        await transport.stop_async()
    assert await broker.wait_for_count(unique_name, 200) >= 200


async def test_sends_made_in_tasks_of_their_own_and_never_flushed_are_reported(
    broker_env: Any, unique_name: str, broker: BrokerAdmin, caplog: pytest.LogCaptureFixture
) -> None:
    # flush() covers the calling task's sends; gather() runs each send in its own task.
    transport = AsyncRabbitMQEventTransport(RabbitMQConnectionConfig.from_values())
    await transport.start_async()
    try:
        await transport.send(unique_name, body(0), {})
        await transport.flush()  # declares the queue
        await asyncio.gather(*(transport.send(unique_name, body(i), {}) for i in range(1, 4)))
        await transport.flush()
        assert await broker.wait_for_count(unique_name, 4) == 4
    finally:
        await transport.stop_async()

    warnings = [r.getMessage() for r in caplog.records if "never flushed" in r.getMessage()]
    assert len(warnings) == 3
    assert warnings[0].startswith("1 event(s) sent by task")


async def test_declaration_cut_for_longer_than_reconnect_timeout_fails_flush_in_time(
    proxy: CuttableProxy,
    monkeypatch: pytest.MonkeyPatch,
    unique_name: str,
    broker: BrokerAdmin,
) -> None:
    monkeypatch.setenv("SPAKKY_RABBITMQ__RECONNECT_TIMEOUT", "1")
    transport = AsyncRabbitMQEventTransport(RabbitMQConnectionConfig.from_values())
    await transport.start_async()
    try:
        for i in range(50):
            await transport.send(unique_name, body(i), {})
        outage = asyncio.ensure_future(asyncio.to_thread(proxy.cut, refuse_for=4))
        started = time.monotonic()
        with pytest.raises(RabbitMQConnectionError, match="did not come back"):
            await asyncio.wait_for(transport.flush(), 20)
        assert time.monotonic() - started < 4  # bounded by RECONNECT_TIMEOUT, not the outage
        await outage
    finally:
        await transport.stop_async()
