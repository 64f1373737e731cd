"""Each package works alone: a venv with only the transport publishes, only the consumer consumes.

The venvs get the package from its folder and its declared dependencies from the
package index (uv's cache on a warm machine), so an import of a sibling that is
not declared fails here.
"""

import asyncio
import json
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path

import aiormq
import pytest

from conftest import BROKER_URL, BrokerAdmin

pytestmark = [pytest.mark.broker, pytest.mark.isolated]

ROOT = Path(__file__).resolve().parents[1]
UV = ["bash", str(ROOT / "tools" / "uv.sh")]

APP_PRELUDE = textwrap.dedent(
    """
    import importlib.metadata, importlib.util, json, os, sys, threading
    from typing import override
    from spakky.core.application.application import SpakkyApplication
    from spakky.core.application.application_context import ApplicationContext
    from spakky.core.common.mutability import immutable
    from spakky.core.pod.annotations.pod import Pod
    from spakky.data.persistency.transaction import AbstractAsyncTransaction, AbstractTransaction
    from spakky.domain.models.event import AbstractIntegrationEvent

    QUEUE = sys.argv[1]

    @immutable
    class Ping(AbstractIntegrationEvent):
        n: int

        @property
        def event_name(self) -> str:
            return QUEUE

    @Pod()
    class NoTx(AbstractTransaction):
        def initialize(self): ...
        def dispose(self): ...
        def commit(self): ...
        def rollback(self): ...

    @Pod()
    class NoAsyncTx(AbstractAsyncTransaction):
        async def initialize(self): ...
        async def dispose(self): ...
        async def commit(self): ...
        async def rollback(self): ...

    plugins = sorted(e.name for e in importlib.metadata.entry_points(group="spakky.plugins"))
    installed = {
        part: importlib.util.find_spec(f"spakky.plugins.rabbitmq.{part}") is not None
        for part in ("config", "transport", "consumer")
    }
    """
)

PUBLISHER_ONLY = APP_PRELUDE + textwrap.dedent(
    """
    from spakky.event.event_publisher import IEventPublisher

    app = SpakkyApplication(ApplicationContext()).load_plugins()
    app.add(NoTx); app.add(NoAsyncTx)
    app.start()
    app.container.get(IEventPublisher).publish(Ping(n=1))
    app.stop()
    print(json.dumps({"plugins": plugins, "installed": installed}))
    """
)

CONSUMER_ONLY = APP_PRELUDE + textwrap.dedent(
    """
    from spakky.event.stereotype.event_handler import EventHandler, on_event

    received = threading.Event()

    @EventHandler()
    class Pong:
        @on_event(Ping)
        def handle(self, event: Ping) -> None:
            received.set()

    app = SpakkyApplication(ApplicationContext()).load_plugins()
    app.add(NoTx); app.add(NoAsyncTx); app.add(Pong)
    app.start()
    print("ready", flush=True)
    sys.stdin.readline()  # the test publishes, then writes a line
    ok = received.wait(20)
    app.stop()
    print(json.dumps({"plugins": plugins, "installed": installed, "received": ok}))
    """
)


def make_venv(tmp_path: Path, *packages: str) -> Path:
    venv = tmp_path / "venv"
    subprocess.run([*UV, "venv", "--quiet", "--python", sys.executable, str(venv)], check=True)
    python = venv / "bin" / "python"
    folders = [str(ROOT / "packages" / package) for package in packages]
    subprocess.run(
        [*UV, "pip", "install", "--quiet", "--python", str(python), *folders],
        check=True,
        timeout=300,
    )
    return python


BROKER = {
    "SPAKKY_RABBITMQ__HOST": "127.0.0.1",
    "SPAKKY_RABBITMQ__USER": "guest",
    "SPAKKY_RABBITMQ__PASSWORD": "guest",
    "SPAKKY_RABBITMQ__RETRY_DELAYS": "",  # no retry queues to clean up
    "PATH": "/usr/bin:/bin",
}


async def test_transport_alone_is_a_publisher_only_service(
    tmp_path: Path, broker: BrokerAdmin
) -> None:
    queue = f"t-iso-pub-{uuid.uuid4().hex[:8]}"
    broker.track("queue", queue)
    python = await asyncio.to_thread(make_venv, tmp_path, "spakky-rabbitmq-transport")
    script = tmp_path / "publisher.py"
    script.write_text(PUBLISHER_ONLY)

    result = await asyncio.to_thread(
        subprocess.run,
        [str(python), str(script), queue],
        capture_output=True,
        text=True,
        env=BROKER,
        timeout=120,
    )

    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert "spakky-rabbitmq-transport" in report["plugins"]
    assert "spakky-rabbitmq-config" in report["plugins"]
    assert "spakky-rabbitmq-consumer" not in report["plugins"]
    assert report["installed"] == {"config": True, "transport": True, "consumer": False}
    assert await broker.message_count(queue) == 1


async def test_consumer_alone_is_a_worker(tmp_path: Path, broker: BrokerAdmin) -> None:
    queue = f"t-iso-con-{uuid.uuid4().hex[:8]}"
    broker.track("queue", queue)
    broker.track("queue", queue + ".dlq")
    python = await asyncio.to_thread(make_venv, tmp_path, "spakky-rabbitmq-consumer")
    script = tmp_path / "worker.py"
    script.write_text(CONSUMER_ONLY)
    body = json.dumps({"event_id": str(uuid.uuid4()), "timestamp": "2026-12-04T00:00:00Z", "n": 1})

    def run_worker() -> tuple[int, str, str]:
        worker = subprocess.Popen(
            [str(python), str(script), queue],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=BROKER,
        )
        try:
            assert worker.stdout is not None
            assert worker.stdout.readline().strip() == "ready"
            asyncio.run(publish_raw(queue, body.encode()))
            out, err = worker.communicate("go\n", timeout=60)
        finally:
            if worker.poll() is None:
                worker.kill()
        return worker.returncode, out, err

    returncode, out, err = await asyncio.to_thread(run_worker)

    assert returncode == 0, err
    report = json.loads(out.strip().splitlines()[-1])
    assert report["received"] is True
    assert "spakky-rabbitmq-consumer" in report["plugins"]
    assert "spakky-rabbitmq-transport" not in report["plugins"]
    assert report["installed"] == {"config": True, "transport": False, "consumer": True}


async def publish_raw(queue: str, body: bytes) -> None:
    connection = await aiormq.connect(BROKER_URL)
    try:
        channel = await connection.channel()
        await channel.basic_publish(body, routing_key=queue)
    finally:
        await connection.close()
