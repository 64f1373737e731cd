"""Publish interceptors see each message before it is written and learn its outcome."""

from typing import override

import pytest

from conftest import BrokerAdmin
from spakky.plugins.rabbitmq.config.settings import RabbitMQConnectionConfig
from spakky.plugins.rabbitmq.transport._publisher import LoopPublisher  # internals under test
from spakky.plugins.rabbitmq.transport.interceptor import (
    IPublishInterceptor,
    OutboundMessage,
    PublishCompletion,
)

pytestmark = pytest.mark.broker


class Recording(IPublishInterceptor):
    """Adds a header and records the outcome it is told."""

    def __init__(self) -> None:
        self.outcomes: list[BaseException | None] = []

    @override
    def before_publish(self, message: OutboundMessage) -> PublishCompletion | None:
        message.headers["x-seen-by"] = "recording"
        return self.outcomes.append


class Broken(IPublishInterceptor):
    """Breaks the rule that interceptors never raise."""

    @override
    def before_publish(self, message: OutboundMessage) -> PublishCompletion | None:
        raise RuntimeError("telemetry bug")


async def test_interceptor_headers_travel_and_the_outcome_is_reported(
    broker_env: dict[str, str], unique_name: str, broker: BrokerAdmin
) -> None:
    recording = Recording()
    publisher = LoopPublisher(
        RabbitMQConnectionConfig.from_values(), (recording,), role="test-publisher"
    )
    await publisher.open()
    try:
        await publisher.publish(unique_name, b'{"n": 1}', {"x-caller": "test"})
    finally:
        await publisher.close()

    message = await broker.get(unique_name)
    assert message is not None
    headers = message.header.properties.headers or {}
    assert headers["x-seen-by"] == "recording"
    assert headers["x-caller"] == "test"
    assert recording.outcomes == [None]


async def test_a_raising_interceptor_stops_the_publish_and_ends_the_others(
    broker_env: dict[str, str], unique_name: str, broker: BrokerAdmin
) -> None:
    recording = Recording()
    publisher = LoopPublisher(
        RabbitMQConnectionConfig.from_values(), (recording, Broken()), role="test-publisher"
    )
    await publisher.open()
    try:
        with pytest.raises(RuntimeError, match="telemetry bug"):
            publisher.publish(unique_name, b'{"n": 1}', {})
    finally:
        await publisher.close()

    assert len(recording.outcomes) == 1
    assert isinstance(recording.outcomes[0], RuntimeError)
    assert (
        not await broker.queue_exists(unique_name) or await broker.message_count(unique_name) == 0
    )
