#!/usr/bin/env bash
# The project's test command (README, .ci/run): node tools, contract artifacts fresh, lint,
# format, then the test suite.
set -uo pipefail
cd "$(dirname "$0")/.."
py=.venv/bin/python
[ -x "$py" ] || py=python3

# node tools the tests need (pinned solc and the anvil node, from package-lock.json); idempotent
scripts/install_anvil.sh || exit 1
"$py" -m refute.contracts.build --check || exit 1
"$py" -m ruff check . || exit 1
"$py" -m ruff format --check . || exit 1
"$py" -m pytest "$@"
status=$?
if [ "$status" -eq 5 ]; then
  echo "pytest collected no tests: treating that as a failure" >&2
  exit 1
fi
exit "$status"
