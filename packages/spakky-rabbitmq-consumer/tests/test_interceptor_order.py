# pyright: reportPrivateUsage=false
"""Interceptors nest by their ``order``: the lowest wraps all others."""

from collections.abc import Generator
from contextlib import AbstractContextManager, contextmanager
from typing import override

import pytest
from spakky.core.common.mutability import immutable
from spakky.domain.models.event import AbstractEvent, AbstractIntegrationEvent

from spakky.plugins.rabbitmq.config.settings import RabbitMQConnectionConfig
from spakky.plugins.rabbitmq.consumer._engine import ConsumerEngine
from spakky.plugins.rabbitmq.consumer.interceptor import (
    HandlerInfo,
    IConsumeInterceptor,
    InboundMessage,
)


@immutable
class Pinged(AbstractIntegrationEvent):
    user_id: int


class Recording(IConsumeInterceptor):
    def __init__(self, name: str, order: int, log: list[str]) -> None:
        self.name, self.order, self._log = name, order, log

    @override
    def intercept(
        self, message: InboundMessage, handler: HandlerInfo, event: AbstractEvent
    ) -> AbstractContextManager[None]:
        return self._around()

    @contextmanager
    def _around(self) -> Generator[None]:
        self._log.append(f"enter {self.name}")
        yield
        self._log.append(f"exit {self.name}")


def test_lower_order_wraps_higher_whatever_the_container_order(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("SPAKKY_RABBITMQ__HOST", "127.0.0.1")
    monkeypatch.setenv("SPAKKY_RABBITMQ__USER", "guest")
    monkeypatch.setenv("SPAKKY_RABBITMQ__PASSWORD", "guest")
    log: list[str] = []
    handler = HandlerInfo("h", Pinged, is_async=False, call=lambda event: log.append("handler"))
    interceptors = (
        Recording("auth", 0, log),
        Recording("tracing", -100, log),
        Recording("late", 5, log),
    )
    engine = ConsumerEngine(
        RabbitMQConnectionConfig.from_values(), {}, interceptors, None, role="test"
    )
    inbound = InboundMessage("e", "q", None, {}, 0, redelivered=False, attempt=1)

    engine._within_sync(0, handler, Pinged(user_id=1), inbound)

    assert log == [
        "enter tracing",
        "enter auth",
        "enter late",
        "handler",
        "exit late",
        "exit auth",
        "exit tracing",
    ]
