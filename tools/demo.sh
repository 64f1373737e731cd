#!/usr/bin/env bash
# Runs the demo application against RabbitMQ on 127.0.0.1:5672 (guest/guest unless
# SPAKKY_RABBITMQ__* says otherwise).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash tools/uv.sh sync --locked --quiet
exec bash tools/uv.sh run --no-sync python -m tools.demo "$@"
