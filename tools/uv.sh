#!/usr/bin/env bash
# Runs uv, installing it first when this machine has none. Never downloads a
# Python: the interpreter comes from the machine (pyenv reads .python-version).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
export UV_PYTHON_DOWNLOADS=never
if command -v uv >/dev/null 2>&1 && uv --version >/dev/null 2>&1; then
  exec uv "$@"
fi
bootstrap="$root/.cache/uv-bootstrap"
if [ ! -x "$bootstrap/bin/uv" ]; then
  python3 -m venv "$bootstrap"
  "$bootstrap/bin/python" -m pip install --quiet --disable-pip-version-check "uv>=0.5,<1"
fi
exec "$bootstrap/bin/uv" "$@"
