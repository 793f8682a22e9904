#!/usr/bin/env bash
# Runs every test of the workspace against real services: starts Redis and PostgreSQL
# when they are down and installs Chromium for the browser test when it is missing, then
# runs the unit, integration and doc tests of all crates.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/services.sh
# The browser test (idem-proxy's spec::browser) drives headless Chromium.
if ! command -v chromium >/dev/null; then
    apt-get install -y chromium
fi
exec cargo test --workspace --all-features --locked "$@"
