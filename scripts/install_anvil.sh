#!/usr/bin/env bash
# Install the pinned anvil node (npm package @foundry-rs/anvil-linux-amd64@1.7.1, an
# optionalDependency in package.json) into ./node_modules/.bin/anvil, together with the pinned
# solc, from package-lock.json. Idempotent; needs node >= 20 and npm. Linux x86-64 only: the
# package ships one prebuilt binary.
set -euo pipefail

cd "$(dirname "$0")/.."

if [[ "$(uname -s)-$(uname -m)" != "Linux-x86_64" ]]; then
    echo "install_anvil.sh: anvil-linux-amd64 runs on Linux x86-64 only, not $(uname -s)-$(uname -m)" >&2
    exit 1
fi

if [[ ! -x node_modules/.bin/anvil ]] || ! node_modules/.bin/anvil --version | grep -q "Version: 1.7.1"; then
    npm ci --no-audit --no-fund
fi

if [[ ! -x node_modules/.bin/anvil ]]; then
    echo "install_anvil.sh: npm ci did not install @foundry-rs/anvil-linux-amd64" >&2
    exit 1
fi
node_modules/.bin/anvil --version | head -n 1
