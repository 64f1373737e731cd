"""Receive Spakky integration events from RabbitMQ in ``@EventHandler`` classes.

Installing this package is enough: ``load_plugins()`` registers both consumers,
and every ``@on_event`` method for an ``AbstractIntegrationEvent`` receives each
message of that event's queue once. Domain events stay in process.

Example:
    @EventHandler()
    class WelcomeMail:
        @on_event(UserCreatedEvent)
        async def send(self, event: UserCreatedEvent) -> None:
            ...
"""

from spakky.plugins.rabbitmq.consumer.consumer import (
    AsyncRabbitMQEventConsumer,
    RabbitMQEventConsumer,
)
from spakky.plugins.rabbitmq.consumer.errors import (
    HandlerEscapedError,
    HandlerRegistrationError,
    RabbitMQConsumerError,
)
from spakky.plugins.rabbitmq.consumer.headers import (
    HEADER_ATTEMPT,
    HEADER_DEAD_LETTERED_AT,
    HEADER_ERROR_MESSAGE,
    HEADER_ERROR_TYPE,
    HEADER_HANDLERS,
    HEADER_ORIGINAL_QUEUE,
    HEADER_REASON,
)
from spakky.plugins.rabbitmq.consumer.interceptor import (
    HandlerInfo,
    IConsumeInterceptor,
    InboundMessage,
    MessageRejected,
)
from spakky.plugins.rabbitmq.consumer.registry import (
    RabbitMQHandlerRegistrationPostProcessor,
    RabbitMQHandlerRegistry,
)

__all__ = [
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
