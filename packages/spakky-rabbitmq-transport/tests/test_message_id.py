# pyright: reportPrivateUsage=false
"""The AMQP message_id is the event id, read cheaply from the serialized event."""

import uuid

from pydantic import TypeAdapter
from spakky.core.common.mutability import immutable
from spakky.domain.models.event import AbstractIntegrationEvent

import spakky.plugins.rabbitmq.transport as transport_package
from spakky.plugins.rabbitmq.transport._publisher import message_id_of


@immutable
class Shipped(AbstractIntegrationEvent):
    parcel: str


def test_message_id_is_the_event_id_of_a_pydantic_payload() -> None:
    event = Shipped(parcel="p-1")

    payload = TypeAdapter(Shipped).dump_json(event)

    assert message_id_of(payload) == str(event.event_id)


def test_other_field_orders_fall_back_to_parsing() -> None:
    event_id = str(uuid.uuid4())

    assert message_id_of(f'{{"parcel": "x", "event_id": "{event_id}"}}'.encode()) == event_id


def test_payload_without_event_id_gets_no_message_id() -> None:
    assert message_id_of(b"[1, 2]") == ""
    assert message_id_of(b"not json") == ""


def test_public_names_are_pinned() -> None:
    assert sorted(transport_package.__all__) == [
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
