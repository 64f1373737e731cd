"""Medians, ratios to the raw figure of the same round, the table and the chart."""

import json
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tools.bench._common import Figure


@dataclass(frozen=True, slots=True)
class Comparison:
    """One row of the table: a Spakky scenario beside its raw aiormq baseline."""

    scenario: str
    baseline: str
    target: float | None = None
    """Minimum ratio, or for ``absolute`` rows the maximum value."""
    absolute: bool = False


COMPARISONS = (
    Comparison("async_each", "raw_each_persistent", 0.90),
    Comparison("async_concurrent", "raw_pipelined", 0.80),
    Comparison("transport_batch", "raw_pipelined", 0.85),
    Comparison("sync_one_thread", "raw_each_persistent", 0.70),
    Comparison("sync_4_threads", "raw_pipelined"),
    Comparison("consume_async", "raw_consume", 0.90),
    Comparison("consume_sync", "raw_consume", 0.60),
    Comparison("end_to_end", "raw_end_to_end"),
    Comparison("latency", "raw_latency", 5.0, absolute=True),
    Comparison("memory", "raw_memory", 20.0, absolute=True),
    Comparison("async_concurrent_extras", "async_concurrent", 0.95),
    Comparison("consume_async_extras", "consume_async", 0.95),
    Comparison("raw_each_transient", "raw_each_persistent"),
    Comparison("raw_pipelined", "raw_pipelined"),
)


@dataclass(slots=True)
class Row:
    """A comparison over all rounds."""

    comparison: Comparison
    values: list[float]
    baselines: list[float]
    unit: str
    timed_out: bool
    cpu: list[float]
    """CPU µs per message of the scenario and its baseline (median over rounds), if known."""

    @property
    def ratios(self) -> list[float]:
        """Scenario over baseline, round by round."""
        return [v / b if b else 0.0 for v, b in zip(self.values, self.baselines, strict=True)]

    @property
    def median(self) -> float:
        """Median value of the scenario."""
        return statistics.median(self.values)

    @property
    def median_ratio(self) -> float:
        """Median of the per-round ratios."""
        return statistics.median(self.ratios)

    @property
    def met(self) -> str:
        """``yes``, ``no`` or blank (no target)."""
        target = self.comparison.target
        if target is None:
            return ""
        if self.comparison.absolute:
            return "yes" if self.median <= target else "no"
        return "yes" if self.median_ratio >= target else "no"

    def as_json(self) -> dict[str, Any]:
        """The row as a JSON-ready dictionary."""
        return {
            "summary": self.comparison.scenario,
            "baseline": self.comparison.baseline,
            "unit": self.unit,
            "values": self.values,
            "baselines": self.baselines,
            "ratios": self.ratios,
            "median": self.median,
            "median_ratio": self.median_ratio,
            "target": self.comparison.target,
            "met": self.met,
            "timed_out": self.timed_out,
            "cpu_us_per_msg": self.cpu,
        }


def rows(rounds: list[dict[str, Figure]]) -> list[Row]:
    """Rows for every comparison whose scenario and baseline ran in every round."""
    result: list[Row] = []
    for comparison in COMPARISONS:
        if not all(comparison.scenario in r and comparison.baseline in r for r in rounds):
            continue
        figures = [r[comparison.scenario] for r in rounds]
        result.append(
            Row(
                comparison,
                [figure.value for figure in figures],
                [r[comparison.baseline].value for r in rounds],
                figures[0].unit,
                any(figure.timed_out for figure in figures),
                _cpu(figures, [r[comparison.baseline] for r in rounds]),
            )
        )
    return result


def _cpu(figures: list[Figure], baselines: list[Figure]) -> list[float]:
    result: list[float] = []
    for group in (figures, baselines):
        values = [f.extra["cpu_us_per_msg"] for f in group if "cpu_us_per_msg" in f.extra]
        if len(values) != len(group):
            return []
        result.append(statistics.median(values))
    return result


def _number(value: float) -> str:
    return f"{value:,.0f}" if abs(value) >= 100 else f"{value:.2f}"


def table(result: list[Row]) -> str:
    """A Markdown table: each round as value / raw = ratio, then the medians."""
    header = (
        "| scenario | vs raw | unit | round 1 | round 2 | round 3 | median | raw median "
        "| median ratio | target | met | CPU µs/msg (raw) |"
    )
    lines = [header, "|" + "---|" * 12]
    for row in result:
        runs = [
            f"{_number(v)} / {_number(b)} = {r:.2f}"
            for v, b, r in zip(row.values, row.baselines, row.ratios, strict=True)
        ]
        runs += [""] * (3 - len(runs))
        comparison = row.comparison
        target = ""
        if comparison.target is not None:
            limit = comparison.target
            target = f"<= {limit:g}" if comparison.absolute else f">= {limit:g}"
        name = comparison.scenario + (" (timed out)" if row.timed_out else "")
        cpu = f"{row.cpu[0]:.0f} ({row.cpu[1]:.0f})" if row.cpu else ""
        lines.append(
            f"| {name} | {comparison.baseline} | {row.unit} | {' | '.join(runs[:3])} "
            f"| {_number(row.median)} | {_number(statistics.median(row.baselines))} "
            f"| {row.median_ratio:.2f} | {target} | {row.met} | {cpu} |"
        )
    return "\n".join(lines)


def latency_details(rounds: list[dict[str, Figure]]) -> str:
    """p50 / p99 / max of the latency scenarios, one line per scenario and round."""
    lines: list[str] = []
    for name in ("latency", "raw_latency"):
        for number, figures in enumerate(rounds, start=1):
            if name in figures:
                detail = "p50 {p50_ms:.2f}  p99 {p99_ms:.2f}  max {max_ms:.2f} ms"
                lines.append(f"{name:<12} round {number}: " + detail.format(**figures[name].extra))
    return "\n".join(lines)


def json_line(payload: dict[str, Any]) -> str:
    """One JSON line, keys sorted."""
    return json.dumps(payload, sort_keys=True)


def chart(result: list[Row], path: Path) -> bool:
    """Draw the median ratios as a bar chart; False when matplotlib is not installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:  # a dev-only dependency: the table does not need it
        return False
    _draw(plt, result, path)
    return True


def _draw(plt: Any, result: list[Row], path: Path) -> None:
    # matplotlib ships partial annotations; the chart is the only place using it.
    shown = [row for row in result if not row.comparison.absolute]
    names = [row.comparison.scenario for row in shown]
    figure, axes = plt.subplots(figsize=(10, 0.45 * len(shown) + 1.5))
    axes.barh(names, [row.median_ratio for row in shown], color="#4c72b0")
    for index, row in enumerate(shown):
        if row.comparison.target is not None:
            axes.plot([row.comparison.target] * 2, [index - 0.4, index + 0.4], color="#c44e52")
    axes.axvline(1.0, color="grey", linewidth=0.8, linestyle="--")
    axes.invert_yaxis()
    axes.set_xlabel("median ratio to the raw aiormq figure of the same run (red: target)")
    axes.set_title("spakky-rabbitmq vs raw aiormq")
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=100)
    plt.close(figure)
