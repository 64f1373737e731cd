"""Names of the span attributes this package writes.

They follow the OpenTelemetry semantic conventions for messaging and RabbitMQ: the
destination is the exchange (empty for the default exchange), the routing key is its
own attribute, a consumer names the queue it reads as the subscription.
"""

MESSAGING_SYSTEM = "messaging.system"
MESSAGING_OPERATION_TYPE = "messaging.operation.type"
MESSAGING_OPERATION_NAME = "messaging.operation.name"
MESSAGING_DESTINATION_NAME = "messaging.destination.name"
MESSAGING_SUBSCRIPTION_NAME = "messaging.destination.subscription.name"
MESSAGING_ROUTING_KEY = "messaging.rabbitmq.destination.routing_key"
MESSAGING_MESSAGE_ID = "messaging.message.id"
MESSAGING_BODY_SIZE = "messaging.message.body.size"
SPAKKY_EVENT_NAME = "spakky.event.name"
SPAKKY_HANDLER_ID = "spakky.event.handler"
"""The handler a process span belongs to, ``module.Class.method``."""

ERROR_TYPE = "error.type"

SYSTEM_RABBITMQ = "rabbitmq"
