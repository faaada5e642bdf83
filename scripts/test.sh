#!/usr/bin/env bash
# The whole test suite: lint, types, architecture, then pytest (unit, contract, integration, e2e).
set -euo pipefail
cd "$(dirname "$0")/.."
export UV_PYTHON_DOWNLOADS=never
PATH="$PWD/.venv/bin:$PATH"

echo "== ruff"
ruff check src tests bench
ruff format --check src tests bench
echo "== mypy"
mypy
echo "== import-linter"
lint-imports
[ "${1:-}" = "--lint-only" ] && exit 0

echo "== services"
scripts/services.sh
if [ "${CI:-}" = "true" ]; then
  # In CI a real-service test may not skip: the fixtures fail instead.
  export ORDERLY_TEST_REQUIRE_SERVICES=1
fi
echo "== pytest"
pytest -q -p no:cacheprovider "$@"
