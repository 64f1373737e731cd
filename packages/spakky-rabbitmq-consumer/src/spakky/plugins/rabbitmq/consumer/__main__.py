"""Operator commands: ``python -m spakky.plugins.rabbitmq.consumer dlq --help``.

The broker is the one ``SPAKKY_RABBITMQ__*`` points at, as for the application.
"""

import argparse
import asyncio
import json
import sys

from spakky.plugins.rabbitmq.config.errors import RabbitMQError
from spakky.plugins.rabbitmq.config.settings import RabbitMQConnectionConfig
from spakky.plugins.rabbitmq.consumer.dlq import (
    list_dead_letters,
    purge_dead_letters,
    replay_dead_letters,
)


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
        action.add_argument("--limit", type=int, default=100, help="at most this many (100)")
    listing.add_argument("--json", action="store_true", help="one JSON object per line")
    purge.add_argument("--yes", action="store_true", help="really delete them")
    return root


def main(argv: list[str] | None = None) -> int:
    """Run one command; return the process exit code."""
    arguments = parser().parse_args(argv)
    try:
        config = RabbitMQConnectionConfig()
        return asyncio.run(_run(arguments, config))
    except RabbitMQError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2


async def _run(arguments: argparse.Namespace, config: RabbitMQConnectionConfig) -> int:
    queue: str = arguments.queue
    if arguments.action == "list":
        letters = await list_dead_letters(config, queue, arguments.limit)
        for letter in letters:
            if arguments.json:
                print(json.dumps(letter.as_dict()))
            else:
                print(
                    f"{letter.message_id or '-'}  {letter.reason or '-'}  "
                    f"{letter.error_type or '-'}: {letter.error_message[:80]}  "
                    f"handlers={letter.handlers or 'all'}  at={letter.dead_lettered_at or '-'}  "
                    f"{letter.size} bytes"
                )
        if not arguments.json:
            print(f"{len(letters)} message(s) shown from {queue}")
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


if __name__ == "__main__":
    sys.exit(main())
