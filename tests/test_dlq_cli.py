"""The dead-letter CLI lists, replays and purges what the consumer dead-lettered."""

import asyncio
import json
import os
import subprocess
import sys
from typing import Any

import pytest

from conftest import BROKER_ENV, BrokerAdmin
from spakky.plugins.rabbitmq.consumer import (
    HEADER_ERROR_TYPE,
    HEADER_HANDLERS,
    HEADER_ORIGINAL_QUEUE,
    HEADER_REASON,
)

pytestmark = pytest.mark.broker

CLI = [sys.executable, "-m", "spakky.plugins.rabbitmq.consumer"]


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CLI, *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **BROKER_ENV},
    )


def test_help_names_the_commands() -> None:
    result = cli("dlq", "--help")

    assert result.returncode == 0
    for command in ("list", "replay", "purge"):
        assert command in result.stdout


async def test_list_replay_and_purge(unique_name: str, broker: BrokerAdmin) -> None:
    dlq = unique_name + ".dlq"
    for n in range(3):
        await broker.publish(
            dlq,
            json.dumps({"n": n}).encode(),
            headers={
                HEADER_REASON: "handler_error",
                HEADER_ERROR_TYPE: "ValueError",
                HEADER_HANDLERS: "app.Mail.send",
                HEADER_ORIGINAL_QUEUE: unique_name,
            },
            properties={"message_id": f"m{n}"},
        )
    await broker.publish(unique_name, b"{}")  # makes the event queue exist
    await broker.get(unique_name)

    listed = await asyncio.to_thread(cli, "dlq", "list", "--queue", unique_name, "--json")
    rows = [json.loads(line) for line in listed.stdout.splitlines()]
    assert listed.returncode == 0, listed.stderr
    assert [row["message_id"] for row in rows] == ["m0", "m1", "m2"]
    assert rows[0]["reason"] == "handler_error"
    assert rows[0]["handlers"] == "app.Mail.send"
    assert await broker.wait_for_count(dlq, 3) == 3  # listing removes nothing

    replayed = await asyncio.to_thread(cli, "dlq", "replay", "--queue", dlq, "--limit", "2")
    assert replayed.returncode == 0, replayed.stderr
    assert "replayed 2" in replayed.stdout
    assert await broker.wait_for_count(unique_name, 2) == 2
    back = await broker.get(unique_name)
    assert back is not None
    headers: dict[str, Any] = back.header.properties.headers or {}
    assert headers[HEADER_HANDLERS] == "app.Mail.send"
    assert HEADER_REASON not in headers

    refused = await asyncio.to_thread(cli, "dlq", "purge", "--queue", unique_name)
    assert refused.returncode == 1
    purged = await asyncio.to_thread(cli, "dlq", "purge", "--queue", unique_name, "--yes")
    assert purged.returncode == 0
    assert "purged 1" in purged.stdout
    assert await broker.message_count(dlq) == 0


def test_bad_settings_give_a_clear_error() -> None:
    result = subprocess.run(
        [*CLI, "dlq", "list", "--queue", "q"],
        capture_output=True,
        text=True,
        timeout=60,
        env={"PATH": os.environ["PATH"]},
    )

    assert result.returncode == 2
    assert "SPAKKY_RABBITMQ__HOST" in result.stderr
    assert "Traceback" not in result.stderr
