"""The content header frame is byte for byte what pamqp marshals, for any properties."""

import random
import string
from datetime import UTC, datetime, timedelta, timezone

import pamqp.frame
import pytest
from pamqp import commands as spec
from pamqp.header import ContentHeader

from spakky.plugins.rabbitmq.config._frames import content_header_frame  # internals under test


def pamqp_bytes(properties: spec.Basic.Properties, body_size: int, number: int) -> bytes:
    return pamqp.frame.marshal(ContentHeader(properties=properties, body_size=body_size), number)


def text(rng: random.Random, longest: int) -> str:
    alphabet = string.ascii_letters + string.digits + "-_.:/ é漢🙂"
    return "".join(rng.choice(alphabet) for _ in range(rng.randint(0, longest)))


def test_the_plugins_own_properties_match_pamqp() -> None:
    properties = spec.Basic.Properties(
        content_type="application/json",
        delivery_mode=2,
        message_id="0f8fad5b-d9cb-469f-a165-70867728950e",
        timestamp=datetime.now(UTC),
        message_type="UserCreatedEvent",
        headers={"traceparent": "00-" + "a" * 32 + "-" + "b" * 16 + "-01", "x-b": "2"},
    )

    assert content_header_frame(properties, 212, 7) == pamqp_bytes(properties, 212, 7)


def test_random_properties_match_pamqp() -> None:
    rng = random.Random(6)
    timestamps = [
        datetime.now(UTC),
        datetime(2001, 2, 3, 4, 5, 6),
        datetime(2030, 1, 1, tzinfo=timezone(timedelta(hours=9))),
        None,
    ]
    for _ in range(3000):
        headers: dict[str, object] | None = rng.choice(
            [
                None,
                {},
                {text(rng, 20): text(rng, 300) for _ in range(rng.randint(1, 5))},
                {"n": rng.randint(-5, 5), "s": "x"},
                {"k" * 200: "long key"},
            ]
        )
        properties = spec.Basic.Properties(
            content_type=rng.choice([None, "", "application/json", text(rng, 40)]),
            delivery_mode=rng.choice([None, 1, 2]),
            message_id=rng.choice([None, "", text(rng, 60)]),
            timestamp=rng.choice(timestamps),
            message_type=rng.choice([None, "", text(rng, 60)]),
            headers=headers,  # type: ignore[arg-type]  # pamqp's FieldTable
            correlation_id=rng.choice([None, None, None, "c-1"]),
            priority=rng.choice([None, None, None, 3]),
        )
        size, number = rng.randint(0, 1 << 40), rng.randint(1, 2047)

        assert content_header_frame(properties, size, number) == pamqp_bytes(
            properties, size, number
        ), properties


def test_values_pamqp_rejects_are_still_rejected_by_pamqp() -> None:
    properties = spec.Basic.Properties(message_id="x" * 256)

    with pytest.raises(TypeError):
        pamqp_bytes(properties, 1, 1)
    with pytest.raises(TypeError):
        content_header_frame(properties, 1, 1)
