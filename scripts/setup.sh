#!/usr/bin/env bash
# Install refute and its test dependencies into ./.venv (idempotent).
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
# torch==2.13.0 is pinned in the extras: pip takes the CPU build on this machine's disk.
.venv/bin/python -m pip install -q -e '.[test]'
