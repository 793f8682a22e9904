#!/bin/sh
# Builds the two Rust peers bench/run.py --peers measures, from crates.io, into
# $PEERS_DIR (default target/peers): nothing of their code is kept in this repository.
#
#   idempotent-proxy-server  ldclabs/idempotent-proxy 1.2.2 (Redis), with a two-line
#                            routing change: it forwards only to https://<X-Forwarded-Host>;
#                            here a request without that header goes to $UPSTREAM_HOST, and
#                            the scheme comes from $UPSTREAM_SCHEME (default https).
#   axum-idempotent-peer     bench/peers/axum-idempotent: axum-idempotent 0.6 and ruts'
#                            PostgresStore in front of $UPSTREAM (our own code).
set -eu
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
OUT=${PEERS_DIR:-$ROOT/target/peers}
export CARGO_TARGET_DIR="$OUT/target"
mkdir -p "$OUT/bin" "$OUT/fetch/src"

# Fetch the crate through cargo (a throwaway project that depends on it), then build the
# unpacked source with the lock file it was published with.
cat > "$OUT/fetch/Cargo.toml" <<'TOML'
[package]
name = "fetch-peers"
version = "0.0.0"
edition = "2021"
[workspace]
[dependencies]
idempotent-proxy-server = "=1.2.2"
TOML
echo 'fn main() {}' > "$OUT/fetch/src/main.rs"
(cd "$OUT/fetch" && cargo fetch -q)
SRC=$(ls -d "${CARGO_HOME:-$HOME/.cargo}"/registry/src/*/idempotent-proxy-server-1.2.2 | head -n1)
rm -rf "$OUT/idempotent-proxy-server"
cp -r "$SRC" "$OUT/idempotent-proxy-server"
cd "$OUT/idempotent-proxy-server"
sed -i \
  -e 's#&HEADER_X_FORWARDED_HOST, || "".to_string())#\&HEADER_X_FORWARDED_HOST, || std::env::var("UPSTREAM_HOST").unwrap_or_default())#' \
  -e 's#format!("https://{}{}", host, path_query)#format!("{}://{}{}", std::env::var("UPSTREAM_SCHEME").unwrap_or("https".into()), host, path_query)#' \
  src/handler.rs
[ "$(grep -c 'UPSTREAM_HOST\|UPSTREAM_SCHEME' src/handler.rs)" = 2 ] || { echo "routing patch did not apply" >&2; exit 1; }
printf '\n[workspace]\n' >> Cargo.toml  # not a member of the repository's workspace
cargo build -q --release --locked
cp "$CARGO_TARGET_DIR/release/idempotent-proxy-server" "$OUT/bin/"

cd "$ROOT/bench/peers/axum-idempotent"
cargo build -q --release --locked
cp "$CARGO_TARGET_DIR/release/axum-idempotent-peer" "$OUT/bin/"
echo "peers built in $OUT/bin"
