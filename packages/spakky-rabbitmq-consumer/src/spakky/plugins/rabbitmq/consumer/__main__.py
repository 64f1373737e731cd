"""Operator commands: ``python -m spakky.plugins.rabbitmq.consumer dlq|topology --help``.

The broker is the one ``SPAKKY_RABBITMQ__*`` points at, as for the application.
"""

import argparse
import asyncio
import json
import os
import sys
from importlib import import_module

import aiormq.exceptions

from spakky.plugins.rabbitmq.config.connection import RabbitMQConnection
from spakky.plugins.rabbitmq.config.errors import RabbitMQError
from spakky.plugins.rabbitmq.config.publisher import PublishRejectedError
from spakky.plugins.rabbitmq.config.settings import RabbitMQConnectionConfig, env_var
from spakky.plugins.rabbitmq.config.topology import declare
from spakky.plugins.rabbitmq.consumer.dlq import (
    dead_letter_queue_of,
    list_dead_letters,
    purge_dead_letters,
    replay_dead_letters,
)
from spakky.plugins.rabbitmq.consumer.registry import application_topology


def parser() -> argparse.ArgumentParser:
    """The command line: ``dlq list|replay|purge --queue QUEUE``."""
    root = argparse.ArgumentParser(
        prog="python -m spakky.plugins.rabbitmq.consumer",
        description="Operator commands of the Spakky RabbitMQ consumer. The broker is the "
        "one SPAKKY_RABBITMQ__* (URL, or HOST/USER/PASSWORD/VHOST) points at.",
    )
    commands = root.add_subparsers(dest="group", required=True)
    dlq = commands.add_parser(
        "dlq",
        help="dead-lettered messages",
        description="Look at, replay or purge the dead-letter queue <queue>.dlq.",
    )
    actions = dlq.add_subparsers(dest="action", required=True)

    listing = actions.add_parser("list", help="show messages without removing them")
    replay = actions.add_parser(
        "replay", help="move messages back to their queue (only failed handlers run again)"
    )
    purge = actions.add_parser("purge", help="delete every message of the dead-letter queue")
    for action in (listing, replay, purge):
        action.add_argument(
            "--queue", required=True, help="event queue (or its .dlq) whose dead letters to use"
        )
    for action in (listing, replay):
        action.add_argument(
            "--limit", type=_positive, default=100, help="at most this many (default 100)"
        )
    listing.add_argument("--json", action="store_true", help="one JSON object per line")
    purge.add_argument("--yes", action="store_true", help="really delete them")

    topology = commands.add_parser(
        "topology",
        help="queues, exchanges and bindings an application uses",
        description="Show, without connecting, or declare the topology of the @EventHandler "
        "classes in a module, as the current SPAKKY_RABBITMQ__* settings shape it.",
    )
    steps = topology.add_subparsers(dest="action", required=True)
    show = steps.add_parser("show", help="print it, without connecting")
    create = steps.add_parser("declare", help="declare it on the broker")
    for step in (show, create):
        step.add_argument(
            "--app", required=True, action="append", help="module to scan (repeatable)"
        )
    show.add_argument("--json", action="store_true", help="as JSON")
    return root


def main(argv: list[str] | None = None) -> int:
    """Run one command; return the process exit code."""
    arguments = parser().parse_args(argv)
    try:
        config = _settings(arguments)
        return asyncio.run(_run(arguments, config))
    except (RabbitMQError, PublishRejectedError, ImportError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except aiormq.exceptions.ChannelNotFoundEntity:
        print(
            f"error: the broker has no queue {dead_letter_queue_of(arguments.queue)!r}",
            file=sys.stderr,
        )
        return 2


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be 1 or more")
    return value


def _settings(arguments: argparse.Namespace) -> RabbitMQConnectionConfig:
    if arguments.group == "topology" and arguments.action == "show":
        # Showing needs no broker: placeholders stand in for missing connection settings.
        return RabbitMQConnectionConfig.from_values(
            **{
                name: "unused"
                for name in ("host", "user", "password")
                if not os.environ.get(env_var(name)) and not os.environ.get(env_var("url"))
            }
        )
    return RabbitMQConnectionConfig()


async def _topology(arguments: argparse.Namespace, config: RabbitMQConnectionConfig) -> int:
    plan = application_topology(config, [import_module(name) for name in arguments.app])
    if not plan.queues:
        print(f"no @EventHandler classes in {', '.join(arguments.app)}", file=sys.stderr)
        return 1
    if arguments.action == "show":
        print(json.dumps(plan.as_dict(), indent=2) if arguments.json else plan.as_text())
        return 0
    connection = RabbitMQConnection(config, role="topology")
    await connection.open()
    try:
        await declare(connection, config, plan)
    finally:
        await connection.close()
    print(plan.as_text())
    print(f"declared {len(plan.exchanges)} exchange(s) and {len(plan.queues)} queue(s)")
    return 0


async def _run(arguments: argparse.Namespace, config: RabbitMQConnectionConfig) -> int:
    if arguments.group == "topology":
        return await _topology(arguments, config)
    queue: str = arguments.queue
    if arguments.action == "list":
        letters = await list_dead_letters(config, queue, arguments.limit)
        for letter in letters:
            if arguments.json:
                print(json.dumps(letter.as_dict()))
            else:
                print(
                    _printable(
                        f"{letter.message_id or '-'}  {letter.reason or '-'}  "
                        f"{letter.error_type or '-'}: {letter.error_message[:80]}  "
                        f"handlers={letter.handlers or 'all'}  "
                        f"at={letter.dead_lettered_at or '-'}  {letter.size} bytes"
                    )
                )
        if not arguments.json:
            print(f"{len(letters)} message(s) shown from {dead_letter_queue_of(queue)}")
        return 0
    if arguments.action == "replay":
        replayed = await replay_dead_letters(config, queue, arguments.limit)
        print(f"replayed {replayed} message(s)")
        return 0
    if not arguments.yes:
        print("purge deletes messages for good; add --yes to do it", file=sys.stderr)
        return 1
    purged = await purge_dead_letters(config, queue)
    print(f"purged {purged} message(s)")
    return 0


def _printable(text: str) -> str:
    """Header text comes from messages: escape control characters before a terminal sees it."""
    return "".join(ch if ch.isprintable() else ch.encode("unicode_escape").decode() for ch in text)


if __name__ == "__main__":
    sys.exit(main())
