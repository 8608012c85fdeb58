#!/usr/bin/env bash
# The project's test command: lint, format check, then the test suite (README, .ci/run).
set -uo pipefail
cd "$(dirname "$0")/.."
py=.venv/bin/python
[ -x "$py" ] || py=python3

"$py" -m ruff check . || exit 1
"$py" -m ruff format --check . || exit 1
"$py" -m pytest "$@"
status=$?
if [ "$status" -eq 5 ]; then
  echo "pytest collected no tests: treating that as a failure" >&2
  exit 1
fi
exit "$status"
