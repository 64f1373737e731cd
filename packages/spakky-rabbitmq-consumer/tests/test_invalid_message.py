# pyright: reportPrivateUsage=false
"""A delivery without consumer or delivery tag raises InvalidMessageError."""

from typing import Any

import pytest
from pamqp import commands as spec
from spakky.event.error import InvalidMessageError

from spakky.plugins.rabbitmq.config import RabbitMQConnectionConfig
from spakky.plugins.rabbitmq.consumer._engine import ConsumerEngine


class FakeDelivered:
    def __init__(self, delivery: Any) -> None:
        self.delivery = delivery
        self.body = b"{}"


@pytest.mark.parametrize(
    "delivery",
    [
        spec.Basic.Deliver(consumer_tag=None, delivery_tag=1),  # type: ignore[arg-type]
        spec.Basic.Deliver(consumer_tag="ctag", delivery_tag=None),  # type: ignore[arg-type]
        spec.Basic.GetEmpty(),
    ],
)
async def test_missing_tags_raise_invalid_message(delivery: Any) -> None:
    config = RabbitMQConnectionConfig.from_values(host="h", user="u", password="p")
    engine = ConsumerEngine(config, {}, (), None, role="test")

    message: Any = FakeDelivered(delivery)

    with pytest.raises(InvalidMessageError):
        await engine._on_message(None, message)  # type: ignore[arg-type]
