#!/usr/bin/env bash
# The chaos run's long form: `scripts/chaos.sh [SECONDS] [SEED]` sends load through several
# `idem serve` processes per store (Redis, PostgreSQL, file) for SECONDS (default 600) while
# faults are injected, then prints each store's table and fails on any violation.
# The short form runs with the normal tests (crates/idem-proxy/tests/chaos).
set -euo pipefail
cd "$(dirname "$0")/.."
export IDEM_CHAOS_SECS="${1:-600}"
if [ -n "${2:-}" ]; then export IDEM_CHAOS_SEED="$2"; fi
exec cargo test -p idem-proxy --all-features --locked --test chaos -- --nocapture --test-threads=3
