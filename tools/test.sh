#!/usr/bin/env bash
# The whole test suite, as CI runs it: sync the workspace, lint, type-check, test.
# Needs RabbitMQ on 127.0.0.1:5672 (guest/guest); .ci/run starts it when absent.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
uv=(bash tools/uv.sh)

"${uv[@]}" sync --locked --quiet
"${uv[@]}" run --no-sync python tools/wait_for_broker.py
"${uv[@]}" run --no-sync ruff check .
"${uv[@]}" run --no-sync ruff format --check .
"${uv[@]}" run --no-sync pyright
# Stage 1: everything that shares the broker politely, in parallel.
"${uv[@]}" run --no-sync pytest -n auto -m "not serial" "$@"
# Stage 2: faults that hit the whole broker (restart, alarms), one at a time.
"${uv[@]}" run --no-sync pytest -p no:xdist -m serial "$@"
