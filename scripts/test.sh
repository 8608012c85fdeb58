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
# two workers, each module on one (module-scoped chains and fixtures stay shared): most tests
# wait on a node or a subprocess part of the time, so two cores run the suite in ~60% of the
# time of one worker. REFUTE_TEST_WORKERS=0 runs it in this process.
"$py" -m pytest -n "${REFUTE_TEST_WORKERS:-2}" --dist loadfile "$@"
status=$?
if [ "$status" -eq 5 ]; then
  echo "pytest collected no tests: treating that as a failure" >&2
  exit 1
fi
exit "$status"
