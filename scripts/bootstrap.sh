#!/usr/bin/env bash
# Install everything orderly needs into .venv, from the lock file. Safe to run repeatedly.
set -euo pipefail
cd "$(dirname "$0")/.."
export UV_PYTHON_DOWNLOADS=never

if command -v uv >/dev/null 2>&1; then
  UV=uv
else
  if [ ! -x .tools/bin/uv ]; then
    echo "bootstrap: installing uv into .tools/ ..."
    python3 -m venv .tools
    .tools/bin/pip install --quiet --disable-pip-version-check uv
  fi
  UV=.tools/bin/uv
fi

"$UV" sync --frozen --quiet
