#!/usr/bin/env bash
# Runs every test of the workspace against real services: starts Redis and PostgreSQL
# when they are down, then runs the unit, integration and doc tests of all crates.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/services.sh
exec cargo test --workspace --all-features --locked "$@"
