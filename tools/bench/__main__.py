"""Command line: run every scenario for some rounds, print JSON lines and the table."""

import argparse
import asyncio
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import fields, replace
from functools import partial
from pathlib import Path

from tools.bench import _raw, _report, _spakky
from tools.bench._common import Counts, Figure, merged, set_broker_env


def _arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m tools.bench",
        description="Spakky RabbitMQ plugin vs raw aiormq, against 127.0.0.1:5672.",
    )
    parser.add_argument("--rounds", type=int, default=3, help="rounds; medians over them")
    defaults = Counts()
    for field in fields(Counts):
        default: int | float = getattr(defaults, field.name)
        parser.add_argument(
            f"--{field.name}",
            type=float if isinstance(default, float) else int,
            default=default,
            help=f"default {default}",
        )
    parser.add_argument("--scale", type=float, default=1.0, help="multiply message counts")
    parser.add_argument(
        "--with-tracing-auth",
        action="store_true",
        help="also run with the rabbitmq tracing and auth packages loaded, if importable",
    )
    parser.add_argument(
        "--only",
        default=",".join(GROUPS),
        help=f"comma-separated groups to run, of {', '.join(GROUPS)} (for profiling)",
    )
    parser.add_argument(
        "--out", type=Path, default=Path(".cache/bench"), help="results.jsonl and ratios.png"
    )
    return parser.parse_args(argv)


GROUPS = ("raw", "publish", "consume", "flow")


async def _round(counts: Counts, groups: set[str], *, extras: bool, number: int) -> list[Figure]:
    figures: list[Figure] = []
    raw = "raw" in groups
    async with _raw.broker() as admin:
        if raw and "publish" in groups:
            for scenario in (_raw.pipelined, partial(_raw.each_confirm, persistent=False)):
                figures.append(await scenario(admin, counts))
                await admin.cleanup()  # a backlog left on disk would slow the next scenario
        if "publish" in groups:
            figures += await _spakky.publishing(admin, counts, extras=extras, with_raw=raw)

        if "consume" in groups:
            figures += await _consuming(admin, counts, raw=raw, extras=extras, number=number)

        if raw and "flow" in groups:
            figures.append(await _raw.end_to_end(admin, counts))
            figures.append(await _raw.latency(admin, counts))
            if counts.memory:
                figures.append(await _raw.memory(admin, counts))
        if "flow" in groups:
            figures += await _spakky.flowing(admin, counts)
    return figures


CONSUME_SLICES = 4
"""Turns into which each consume scenario's backlog is cut."""


async def _consuming(
    admin: _raw.Broker, counts: Counts, *, raw: bool, extras: bool, number: int
) -> list[Figure]:
    """Every consume scenario, each on a quarter of the backlog at a time, taking turns.

    This machine's speed drifts by a third over tens of seconds; scenarios that take
    turns see the same drift, and who goes first rotates.
    """
    runs: list[tuple[str, Callable[[Counts], Awaitable[Figure]]]] = []
    if raw:
        runs.append(("raw_consume", partial(_raw.consume, admin)))
    runs.append(("consume_async", partial(_spakky.consume, admin, is_async=True)))
    if extras:
        runs.append(
            ("consume_async_extras", partial(_spakky.consume, admin, is_async=True, extras=True))
        )
    runs.append(("consume_sync", partial(_spakky.consume, admin, is_async=False)))
    share = replace(counts, consume=max(20, counts.consume // CONSUME_SLICES))
    results: dict[str, list[Figure]] = {name: [] for name, _ in runs}
    for turn in range(CONSUME_SLICES):
        shift = (turn + number) % len(runs)
        for name, run in runs[shift:] + runs[:shift]:
            results[name].append(await run(share))
    return [merged(name, figures) for name, figures in results.items()]


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; returns the exit status."""
    args = _arguments(argv)
    counts = Counts(**{field.name: getattr(args, field.name) for field in fields(Counts)})
    counts = counts.scaled(args.scale)
    extras = False
    if args.with_tracing_auth:
        found = _spakky.extras_available()
        extras = len(found) == len(_spakky.EXTRA_MODULES)
        if not extras:
            print(f"# tracing/auth scenario skipped: importable {found or 'none'}", flush=True)
    groups = {group.strip() for group in args.only.split(",") if group.strip()}
    if unknown := groups - set(GROUPS):
        print(f"unknown group(s) {sorted(unknown)}; choose from {', '.join(GROUPS)}")
        return 2
    set_broker_env()
    args.out.mkdir(parents=True, exist_ok=True)
    print(f"# counts: {counts}", flush=True)

    rounds: list[dict[str, Figure]] = []
    started = time.perf_counter()
    with (args.out / "results.jsonl").open("w", encoding="utf-8") as log:
        for number in range(1, args.rounds + 1):
            figures = asyncio.run(_round(counts, groups, extras=extras, number=number))
            for figure in figures:
                line = _report.json_line({"round": number, **figure.as_json()})
                print(line, flush=True)
                log.write(line + "\n")
            rounds.append({figure.scenario: figure for figure in figures})
        result = _report.rows(rounds)
        for row in result:
            log.write(_report.json_line(row.as_json()) + "\n")

    print()
    print(_report.table(result))
    print()
    print(_report.latency_details(rounds))
    chart = args.out / "ratios.png"
    if _report.chart(result, chart):
        print(f"# chart: {chart}")
    print(f"# {args.rounds} round(s) in {time.perf_counter() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
