"""What every scenario shares: settings, the event, timing, results and memory."""

import os
import time
import uuid
from dataclasses import asdict, dataclass, field
from typing import Any

from pydantic import TypeAdapter
from spakky.core.common.mutability import immutable
from spakky.domain.models.event import AbstractIntegrationEvent

BROKER_URL = "amqp://guest:guest@127.0.0.1:5672/"
BROKER_ENV = {
    "SPAKKY_RABBITMQ__HOST": "127.0.0.1",
    "SPAKKY_RABBITMQ__PORT": "5672",
    "SPAKKY_RABBITMQ__USER": "guest",
    "SPAKKY_RABBITMQ__PASSWORD": "guest",
}
PREFETCH = 32
"""The plugin's default ``PREFETCH_COUNT``; the raw consumer uses the same."""


@dataclass(slots=True)
class Counts:
    """How many messages each scenario moves; every loop also stops at ``timeout``."""

    pipelined: int = 20_000
    each: int = 2_000
    sync: int = 2_000
    threads: int = 4
    batch: int = 500
    consume: int = 20_000
    latency: int = 3_000
    rate: float = 1_000.0
    memory: int = 20_000
    timeout: float = 30.0

    def scaled(self, factor: float) -> "Counts":
        """The same settings with every message count multiplied by ``factor``."""
        scale = {"pipelined", "each", "sync", "consume", "latency", "memory"}
        values = {
            name: max(20, int(value * factor)) if name in scale else value
            for name, value in asdict(self).items()
        }
        return Counts(**values)


@dataclass(slots=True)
class Figure:
    """One measured number of one scenario in one round."""

    scenario: str
    value: float
    unit: str
    count: int
    seconds: float
    timed_out: bool = False
    extra: dict[str, float] = field(default_factory=dict[str, float])

    def as_json(self) -> dict[str, Any]:
        """The figure as a JSON-ready dictionary."""
        return asdict(self)


def rate_figure(
    scenario: str, count: int, seconds: float, *, timed_out: bool, cpu: float | None = None
) -> Figure:
    """A throughput figure in messages per second.

    ``cpu`` is the process's CPU time over the same span (all threads): as µs per
    message it is steadier than the rate on a machine that other work shares.
    """
    value = count / seconds if seconds > 0 else 0.0
    figure = Figure(scenario, value, "msg/s", count, seconds, timed_out)
    if cpu is not None and count:
        figure.extra["cpu_us_per_msg"] = cpu / count * 1e6
    return figure


SLICES = 10
"""Slices into which the one-at-a-time scenarios are cut to alternate with their baseline."""


@dataclass(slots=True)
class Tally:
    """Messages, wall time and CPU time of one scenario, summed over the slices it ran in."""

    sent: int = 0
    seconds: float = 0.0
    cpu: float = 0.0
    _started: float = 0.0
    _cpu_started: float = 0.0

    def start(self) -> None:
        """Begin timing a slice."""
        self._started, self._cpu_started = time.perf_counter(), time.process_time()

    def stop(self, sent: int) -> None:
        """End the slice begun by `start`, in which ``sent`` messages went."""
        self.seconds += time.perf_counter() - self._started
        self.cpu += time.process_time() - self._cpu_started
        self.sent += sent

    def figure(self, scenario: str, expected: int) -> Figure:
        """The rate over all slices."""
        timed_out = self.sent < expected
        return rate_figure(scenario, self.sent, self.seconds, timed_out=timed_out, cpu=self.cpu)


def merged(scenario: str, figures: list[Figure]) -> Figure:
    """One rate figure from several runs of a scenario: all messages over all their time."""
    count = sum(figure.count for figure in figures)
    cpu = sum(figure.extra.get("cpu_us_per_msg", 0.0) * figure.count for figure in figures)
    return rate_figure(
        scenario,
        count,
        sum(figure.seconds for figure in figures),
        timed_out=any(figure.timed_out for figure in figures),
        cpu=cpu / 1e6,
    )


def unique_name(scenario: str) -> str:
    """A queue name no other run uses, so runs never collide and leftovers are obvious."""
    return f"bench-{scenario}-{uuid.uuid4().hex[:8]}"


def set_broker_env() -> None:
    """Point the plugin at the local broker unless the environment already says where."""
    for name, value in BROKER_ENV.items():
        os.environ.setdefault(name, value)
    os.environ.setdefault("SPAKKY_RABBITMQ__DRAIN_TIMEOUT", "5")
    os.environ.setdefault("SPAKKY_RABBITMQ__RETRY_DELAYS", "")  # no retry queues to leave behind


@immutable
class BenchEvent(AbstractIntegrationEvent):
    """About 200 bytes of JSON, like a typical integration event."""

    seq: int
    sent_at: float
    email: str
    note: str


def make_event_type(event_name: str) -> type[BenchEvent]:
    """A `BenchEvent` subclass published and consumed as ``event_name``."""
    namespace: dict[str, Any] = {"__annotations__": {}}
    namespace["event_name"] = property(lambda self: event_name)
    cls = type(f"BenchEvent_{event_name.replace('-', '_')}", (BenchEvent,), namespace)
    return immutable(cls)


def make_events(event_type: type[BenchEvent], count: int, first: int = 0) -> list[BenchEvent]:
    """``count`` events numbered from ``first``, stamped with the current time."""
    now = time.perf_counter()
    return [
        event_type(seq=seq, sent_at=now, email=f"user{seq}@example.com", note="n" * 40)
        for seq in range(first, first + count)
    ]


def payloads_of(events: list[BenchEvent]) -> list[bytes]:
    """The JSON bodies Spakky's event bus would write for ``events``."""
    if not events:
        return []
    adapter = TypeAdapter(type(events[0]))
    return [adapter.dump_json(event) for event in events]


def rss_bytes() -> int:
    """Resident set size of this process, from /proc (Linux)."""
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


class Deadline:
    """A wall-clock bound for one scenario."""

    def __init__(self, seconds: float) -> None:
        self.end = time.perf_counter() + seconds

    @property
    def passed(self) -> bool:
        """True once the bound is reached."""
        return time.perf_counter() >= self.end

    def left(self) -> float:
        """Seconds until the bound, at least zero."""
        return max(0.0, self.end - time.perf_counter())


def percentile(values: list[float], fraction: float) -> float:
    """The nearest-rank percentile of ``values`` (0.0 when empty)."""
    if not values:
        return 0.0
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(fraction * len(ordered)) - 1))
    return ordered[index]
