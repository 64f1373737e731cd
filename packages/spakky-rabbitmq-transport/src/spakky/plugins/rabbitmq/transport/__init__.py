"""Publish Spakky integration events to RabbitMQ.

Installing this package is enough: ``load_plugins()`` registers both transports,
and ``IEventPublisher`` / ``IAsyncEventPublisher`` publish through them.

Example:
    app = SpakkyApplication(ApplicationContext()).load_plugins().scan(my_service)
    app.start()
    app.container.get(IEventPublisher).publish(UserCreatedEvent(user_id=1, email="a@b.c"))
"""

from spakky.plugins.rabbitmq.transport.errors import (
    RabbitMQBrokerBlockedError,
    RabbitMQDeliveryRejectedError,
    RabbitMQPublishTimeoutError,
    RabbitMQTransportNotRunningError,
)
from spakky.plugins.rabbitmq.transport.interceptor import (
    IPublishInterceptor,
    OutboundMessage,
    PublishCompletion,
)
from spakky.plugins.rabbitmq.transport.transport import (
    AsyncRabbitMQEventTransport,
    RabbitMQEventTransport,
)

__all__ = [
    "AsyncRabbitMQEventTransport",
    "IPublishInterceptor",
    "OutboundMessage",
    "PublishCompletion",
    "RabbitMQBrokerBlockedError",
    "RabbitMQDeliveryRejectedError",
    "RabbitMQEventTransport",
    "RabbitMQPublishTimeoutError",
    "RabbitMQTransportNotRunningError",
]
