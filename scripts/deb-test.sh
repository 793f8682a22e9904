#!/usr/bin/env bash
# Builds the Debian package (cargo deb), installs it with dpkg, checks what it put in
# place, starts the service the way its systemd unit does (the unit's own ExecStart and
# EnvironmentFile, as the unit's User, since no systemd runs here), proves it answers
# and protects a request, then purges it.
#
#   scripts/deb-test.sh            # build the package, then test it
#   scripts/deb-test.sh FILE.deb   # test a package built before
#
# Installs cargo-deb from crates.io when missing. Needs root (dpkg -i, a system user).
# Takes a release build of idem: minutes, so it is not part of scripts/test.sh.
set -euo pipefail
cd "$(dirname "$0")/.."

say() { printf 'deb-test: %s\n' "$*" >&2; }
fail() { say "FAILED: $*"; exit 1; }

[ "$(id -u)" = 0 ] || fail "run as root (dpkg -i)"

deb="${1:-}"
if [ -z "$deb" ]; then
  if ! cargo deb --version >/dev/null 2>&1; then
    say "installing cargo-deb"
    cargo install cargo-deb --locked
  fi
  say "building the package"
  deb=$(cargo deb -p idem-proxy --locked | tail -n 1)
fi
[ -f "$deb" ] || fail "no package at $deb"
say "package $deb"
dpkg-deb --info "$deb" | sed 's/^/  /' >&2

pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  dpkg --purge idem >/dev/null 2>&1 || true
  rm -rf "${work:-}"
}
trap cleanup EXIT
work=$(mktemp -d)

# A package left from an earlier run would hide what this one does on a fresh install.
dpkg --purge idem >/dev/null 2>&1 || true
DEBIAN_FRONTEND=noninteractive dpkg -i "$deb" >&2 || fail "dpkg -i"
# Output taken whole before it is searched: `grep -q` stops reading at the first match,
# and under pipefail the writer's SIGPIPE would fail the check.
grep -q '^Status: install ok installed' <<<"$(dpkg -s idem)" || fail "not installed"

# What the package put in place.
unit=$(dpkg -L idem | grep '/systemd/system/idem.service$') || fail "no systemd unit in the package"
for f in /usr/bin/idem /etc/idem/idem.toml /etc/default/idem /usr/share/doc/idem/idem.example.toml; do
  [ -e "$f" ] || fail "$f missing"
done
grep -q /etc/idem/idem.toml <<<"$(dpkg-query -W -f='${Conffiles}\n' idem)" || fail "idem.toml is not a conffile"
getent passwd idem >/dev/null || fail "no idem user"
[ "$(stat -c %U:%G /var/lib/idem)" = idem:idem ] || fail "/var/lib/idem is not idem's"
[ "$(stat -c %a:%G /etc/idem/idem.toml)" = 640:idem ] || fail "idem.toml is not 0640 root:idem"
/usr/bin/idem --version >&2
if command -v systemd-analyze >/dev/null; then
  systemd-analyze verify "$unit" || fail "systemd-analyze verify $unit"
  say "systemd-analyze verify: ok"
fi
setpriv --reuid=idem --regid=idem --init-groups /usr/bin/idem check-config --config /etc/idem/idem.toml >&2 \
  || fail "the shipped config does not check"

# The unit's own lines, not a copy of them.
exec_start=$(sed -n 's/^ExecStart=//p' "$unit")
env_file=$(sed -n 's/^EnvironmentFile=-\{0,1\}//p' "$unit")
user=$(sed -n 's/^User=//p' "$unit")
[ -n "$exec_start" ] && [ -n "$user" ] || fail "no ExecStart or User in $unit"
say "ExecStart: $exec_start (as $user, environment from $env_file)"

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
up_port=$(free_port); listen_port=$(free_port); admin_port=$(free_port)

# An upstream that counts the POSTs it executes.
cat >"$work/upstream.py" <<'PY'
import http.server, sys
count = 0
class H(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        global count
        count += 1
        self.rfile.read(int(self.headers.get("content-length", 0)))
        body = ('{"charge":%d}' % count).encode()
        self.send_response(201)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *a): pass
http.server.HTTPServer(("127.0.0.1", int(sys.argv[1])), H).serve_forever()
PY
python3 "$work/upstream.py" "$up_port" & pids+=($!)
for _ in $(seq 1 100); do
  (exec 3<>"/dev/tcp/127.0.0.1/$up_port") 2>/dev/null && break
  sleep 0.1
done

# The environment file the unit reads, then the ports of this run (IDEM_* variables
# override the config file, as they would in /etc/default/idem).
(
  set -a
  # shellcheck disable=SC1090
  [ -r "$env_file" ] && . "$env_file"
  set +a
  export IDEM_UPSTREAM="http://127.0.0.1:$up_port"
  export IDEM_LISTEN="127.0.0.1:$listen_port"
  export IDEM_ADMIN_LISTEN="127.0.0.1:$admin_port"
  cd /
  # shellcheck disable=SC2086
  exec setpriv --reuid="$user" --regid="$user" --init-groups $exec_start
) >"$work/idem.log" 2>&1 & pids+=($!)

ready=""
for _ in $(seq 1 100); do
  if curl -fsS "http://127.0.0.1:$admin_port/readyz" >/dev/null 2>&1; then ready=1; break; fi
  sleep 0.1
done
[ -n "$ready" ] || { cat "$work/idem.log" >&2; fail "the service did not become ready"; }
say "/readyz: $(curl -fsS "http://127.0.0.1:$admin_port/readyz")"
metrics=$(curl -fsS "http://127.0.0.1:$admin_port/metrics") || fail "/metrics did not answer"
grep -q '^idem_build_info{' <<<"$metrics" || fail "no idem_build_info"

post() {
  curl -fsS -D "$work/headers" -X POST -H 'content-type: application/json' \
    -H 'Authorization: Bearer deb-test' \
    -H 'Idempotency-Key: deb-test-1' --data '{"amount":5}' "http://127.0.0.1:$listen_port/charges"
}
first=$(post) || { cat "$work/idem.log" >&2; fail "the first POST failed"; }
second=$(post) || { cat "$work/idem.log" >&2; fail "the retry failed"; }
[ "$first" = '{"charge":1}' ] || fail "first answer: $first"
[ "$second" = "$first" ] || fail "the retry ran again: $second"
grep -qi '^idempotent-replayed: true' "$work/headers" || fail "the retry is not marked replayed"
say "POST twice with one key: upstream ran once, the retry replayed $second"

# The file store is in the state directory, written by the idem user.
[ -n "$(find /var/lib/idem -user idem -type f | head -n 1)" ] || fail "no store file owned by idem in /var/lib/idem"

kill -TERM "${pids[1]}"
wait "${pids[1]}" || fail "idem did not exit cleanly on SIGTERM: $(cat "$work/idem.log")"
say "SIGTERM: exited 0"

dpkg --purge idem >&2 || fail "dpkg --purge"
[ ! -e /usr/bin/idem ] && [ ! -e /var/lib/idem ] && [ ! -e /etc/idem/idem.toml ] || fail "purge left files behind"
say "1 passed, 0 failed"
