#!/usr/bin/env bash
# Benchmarks the plugin against raw aiormq on RabbitMQ at 127.0.0.1:5672 (guest/guest):
# a table of three rounds with medians and ratios, JSON lines, and a chart in .cache/bench.
# Options: bash tools/bench.sh --help
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash tools/uv.sh sync --locked --quiet
bash tools/uv.sh run --no-sync python tools/wait_for_broker.py
exec bash tools/uv.sh run --no-sync python -m tools.bench "$@"
