#!/usr/bin/env bash
# Runs every cargo-fuzz target for N seconds each (default 20), on the nightly toolchain.
# Installs cargo-fuzz if missing. A crash stops the run: libFuzzer prints the input and
# leaves it in fuzz/artifacts/<target>/; fix the bug, then copy the input to
# fuzz/corpus/<target>/crash-<name> so it stays a regression seed.
#
#   scripts/fuzz.sh          # 20 s per target
#   scripts/fuzz.sh 300      # 5 minutes per target
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
seconds="${1:-20}"
if ! cargo +nightly fuzz --version >/dev/null 2>&1; then
  cargo install cargo-fuzz --locked
fi
for target in $(cargo +nightly fuzz list); do
  echo "fuzz: $target for ${seconds}s"
  # A scratch copy of the committed seeds, so new inputs libFuzzer finds do not pile
  # up in the repository.
  work="$(mktemp -d)"
  cp corpus/"$target"/* "$work"/
  status=0
  cargo +nightly fuzz run "$target" "$work" -- \
    -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 || status=$?
  rm -rf "$work"
  [ "$status" -eq 0 ] || { echo "fuzz: $target failed (exit $status)"; exit "$status"; }
done
