#!/usr/bin/env bash
# The whole test suite, as CI runs it: sync the workspace, lint, type-check, test.
# Needs RabbitMQ on 127.0.0.1:5672 (guest/guest); .ci/run starts it when absent.
# Arguments go to pytest, e.g. `bash tools/test.sh tests/test_faults.py -x`.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
uv=(bash tools/uv.sh)

pytest_stage() {
  # Exit code 5 means this stage selected no test (a path given for the other stage).
  local code=0
  "${uv[@]}" run --no-sync pytest "$@" || code=$?
  if [ "$code" -ne 0 ] && [ "$code" -ne 5 ]; then
    exit "$code"
  fi
}

"${uv[@]}" sync --locked --quiet
"${uv[@]}" run --no-sync python tools/wait_for_broker.py
"${uv[@]}" run --no-sync ruff check .
"${uv[@]}" run --no-sync ruff format --check .
"${uv[@]}" run --no-sync pyright

# Stage 1: faults that hit the whole broker (restart, alarms, closing every
# connection), one at a time, before anything else shares the broker.
pytest_stage -p no:xdist -m serial "$@"
"${uv[@]}" run --no-sync python tools/wait_for_broker.py
# Stage 2: everything else, in parallel; its summary is the run's last line.
pytest_stage -n auto -m "not serial" "$@"
