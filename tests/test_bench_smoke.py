"""The benchmark still runs end to end (tiny counts, no timing asserted)."""

import json
from pathlib import Path

import pytest

from tools.bench.__main__ import main

pytestmark = pytest.mark.broker


def test_bench_runs_every_scenario_with_tiny_counts(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["--rounds", "1", "--scale", "0.002", "--memory", "20", "--timeout", "20"]

    status = main([*argv, "--out", str(tmp_path)])

    assert status == 0
    lines = (tmp_path / "results.jsonl").read_text(encoding="utf-8").splitlines()
    scenarios = {json.loads(line).get("scenario") for line in lines}
    assert {"raw_pipelined", "async_concurrent", "consume_sync", "latency"} <= scenarios
    assert "| async_each | raw_each_persistent |" in capsys.readouterr().out
