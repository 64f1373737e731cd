# pyright: reportPrivateUsage=false
"""Handler discovery: integration events only, through decorators and proxies."""

import functools
from collections.abc import Callable
from typing import Any

import pytest
from spakky.core.common.mutability import immutable
from spakky.domain.models.event import AbstractDomainEvent, AbstractIntegrationEvent
from spakky.event.stereotype.event_handler import EventHandler, on_event

import spakky.plugins.rabbitmq.consumer as consumer_package
from spakky.plugins.rabbitmq.consumer import HandlerRegistrationError, RabbitMQHandlerRegistry
from spakky.plugins.rabbitmq.consumer.headers import text_headers
from spakky.plugins.rabbitmq.consumer.interceptor import HandlerInfo
from spakky.plugins.rabbitmq.consumer.registry import _integration_routes


@immutable
class OrderPlaced(AbstractIntegrationEvent):
    order_id: int


@immutable
class OrderValidated(AbstractDomainEvent):
    order_id: int


def passthrough(function: Callable[..., Any]) -> Callable[..., Any]:
    """A decorator like an auth guard: wraps and keeps ``__wrapped__``."""

    @functools.wraps(function)
    async def wrapper(*args: Any, **kwargs: Any) -> Any:
        return await function(*args, **kwargs)

    return wrapper


@EventHandler()
class Orders:
    @on_event(OrderPlaced)
    async def outermost(self, event: OrderPlaced) -> None: ...

    @passthrough
    @on_event(OrderPlaced)
    async def inside_a_decorator(self, event: OrderPlaced) -> None: ...

    @on_event(OrderPlaced)
    def synchronous(self, event: OrderPlaced) -> None: ...

    @on_event(OrderValidated)
    async def domain_event(self, event: OrderValidated) -> None: ...

    async def not_a_handler(self, event: OrderPlaced) -> None: ...


def test_routes_are_found_through_decorators_and_domain_events_skipped() -> None:
    routes = {name: (event, is_async) for name, event, is_async in _integration_routes(Orders)}

    assert routes == {
        "outermost": (OrderPlaced, True),
        "inside_a_decorator": (OrderPlaced, True),
        "synchronous": (OrderPlaced, False),
    }


def test_event_with_any_async_handler_belongs_to_the_async_consumer() -> None:
    registry = RabbitMQHandlerRegistry()

    registry.add(HandlerInfo("a", OrderPlaced, is_async=False, call=print))
    registry.add(HandlerInfo("b", OrderPlaced, is_async=True, call=print))

    assert list(registry.events_for(is_async=True)) == [OrderPlaced]
    assert registry.events_for(is_async=False) == {}
    assert [h.handler_id for h in registry.events_for(is_async=True)[OrderPlaced]] == ["a", "b"]


def test_domain_events_cannot_be_registered_by_hand() -> None:
    registry = RabbitMQHandlerRegistry()

    with pytest.raises(HandlerRegistrationError, match="domain events"):
        registry.add_callback(OrderValidated, print, is_async=False)


def test_registration_after_start_is_refused() -> None:
    registry = RabbitMQHandlerRegistry()
    registry.freeze()

    with pytest.raises(HandlerRegistrationError, match=r"before app\.start"):
        registry.add_callback(OrderPlaced, print, is_async=False)


def test_same_handler_twice_is_registered_once() -> None:
    registry = RabbitMQHandlerRegistry()

    registry.add_callback(OrderPlaced, print, is_async=False)
    registry.add_callback(OrderPlaced, print, is_async=False)

    assert len(registry.events_for(is_async=False)[OrderPlaced]) == 1


def test_headers_become_text_and_odd_values_are_left_out() -> None:
    headers = text_headers(
        {
            "traceparent": "00-abc",
            "bytes": b"caf\xc3\xa9",
            "not-utf8": b"\xff\xfe",
            "count": 3,
            "flag": True,
            "table": {"nested": 1},
            "array": [1, 2],
        }
    )

    assert headers == {"traceparent": "00-abc", "bytes": "café", "count": "3", "flag": "True"}


def test_public_names_are_pinned() -> None:
    assert sorted(consumer_package.__all__) == sorted(
        [
            "HEADER_ATTEMPT",
            "HEADER_DEAD_LETTERED_AT",
            "HEADER_ERROR_MESSAGE",
            "HEADER_ERROR_TYPE",
            "HEADER_HANDLERS",
            "HEADER_ORIGINAL_QUEUE",
            "HEADER_REASON",
            "AsyncRabbitMQEventConsumer",
            "HandlerEscapedError",
            "HandlerInfo",
            "HandlerRegistrationError",
            "IConsumeInterceptor",
            "InboundMessage",
            "MessageRejected",
            "RabbitMQConsumerError",
            "RabbitMQEventConsumer",
            "RabbitMQHandlerRegistrationPostProcessor",
            "RabbitMQHandlerRegistry",
        ]
    )
