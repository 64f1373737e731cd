"""Run the demo: ``bash tools/demo.sh`` (broker on 127.0.0.1:5672, guest/guest by default)."""

import asyncio
import logging
import os
import sys
import uuid

from spakky.core.application.application import SpakkyApplication
from spakky.core.application.application_context import ApplicationContext

from tools.demo import app as demo


def main() -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    os.environ.setdefault("SPAKKY_RABBITMQ__HOST", "127.0.0.1")
    os.environ.setdefault("SPAKKY_RABBITMQ__PORT", "5672")
    os.environ.setdefault("SPAKKY_RABBITMQ__USER", "guest")
    os.environ.setdefault("SPAKKY_RABBITMQ__PASSWORD", "guest")

    application = SpakkyApplication(ApplicationContext()).load_plugins().scan(demo)
    application.start()
    print("started: plugins loaded, consumers subscribed")
    try:
        container = application.container
        inbox = container.get(demo.Inbox)
        run = uuid.uuid4().hex[:6]

        sent = [container.get(demo.UserService).create_user(1, f"ada-{run}@example.com")]
        print(f"published (IEventPublisher):      {sent[-1].email} id={sent[-1].event_id}")

        async def publish_async() -> demo.UserCreatedEvent:
            return await container.get(demo.AsyncUserService).create_user(
                2, f"grace-{run}@example.com"
            )

        sent.append(asyncio.run(publish_async()))
        print(f"published (IAsyncEventPublisher): {sent[-1].email} id={sent[-1].event_id}")

        expected = 2 * len(sent)
        if not inbox.wait_for(expected, timeout=15):
            print(f"only {len(inbox.received)} of {expected} deliveries arrived", file=sys.stderr)
            return 1
        mine = {event.event_id for event in sent}
        for handler, event in sorted(inbox.received, key=lambda item: (item[1].user_id, item[0])):
            marker = "" if event.event_id in mine else "  (left in the queue by an earlier run)"
            print(f"received by {handler:27} user_id={event.user_id} {event.email}{marker}")
    finally:
        application.stop()
    print("stopped cleanly")
    return 0


if __name__ == "__main__":
    sys.exit(main())
