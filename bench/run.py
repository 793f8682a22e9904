#!/usr/bin/env python3
"""Load benchmark of idem against a plain nginx reverse-proxy hop, on loopback.

Starts a fast static upstream (bench-upstream), nginx as a plain proxy hop in front of
it (the baseline), and `idem serve` in front of it once per store; then drives each with
wrk in three modes (new keys, replays, mixed) at 1 and 32 connections, alternating the
targets round by round, and reports medians as ratios against the nginx hop measured in
the same run. Needs nginx and wrk (apt-get install nginx-light wrk).

    bench/run.py [--rounds 3] [--seconds 5] [--stores memory,file] [--out FILE]
    bench/run.py --stores redis,postgres,file,memory --peers --modes new,replay --conns 32

Besides one idem per store, `idem pass-through` (memory store, only PUT covered) forwards
the benchmark's POSTs untouched: idem's own proxy hop, without the idempotency work.

In the same rounds, when PostgreSQL is among the stores, pgbench does the plain work on
the same server (a plain table, no idem SQL): a new key is `INSERT ... ON CONFLICT DO
NOTHING` then `UPDATE`, two autocommit statements; a replay is a `SELECT` by primary key.
With --peers, two Rust peers run on the same stores and upstream (built from crates.io
by bench/peers/build.sh): ldclabs' idempotent-proxy-server on Redis and axum-idempotent
with ruts' PostgresStore on PostgreSQL; the report then checks the store targets against
them. --own-store-cost adds the old measurement of idem's own claim + complete run
directly against Redis and PostgreSQL (idem's own cost, not a baseline).
"""

import argparse
import http.client
import os
import re
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WRK_DIR = os.path.join(ROOT, "bench", "wrk")
CLK_TCK = os.sysconf("SC_CLK_TCK")

STORES = {
    # Far above what a run stores: the benchmark measures the hot path, not the bound.
    "memory": lambda tmp: "memory:max_bytes=16GiB",
    "file": lambda tmp: f"file:{tmp}/idem-data",
    "redis": lambda tmp: "redis://127.0.0.1:6379/0",
    "postgres": lambda tmp: "postgres://postgres@127.0.0.1:5432/test",
}


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, timeout=20):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    sys.exit(f"nothing listens on {port}")


def stop(procs):
    """Terminates every process of `procs`, killing those still there after 10 s."""
    for p in procs:
        p.terminate()
    for p in procs:
        try:
            p.wait(timeout=10)
        except subprocess.TimeoutExpired:
            p.kill()


def cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def rss_mib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


PG_URL = "postgres://postgres@127.0.0.1:5432/test"
PG_BENCH_SCHEMA = "idem_bench_limit"
PG_PLAIN_SCHEMA = "bench_plain"
PG_PLAIN_ROWS = 10000
# About the size of a request fingerprint and of an encoded answer of bench-upstream.
PG_PLAIN_CLAIM = "'\\x" + "09" * 32 + "'::bytea"
PG_PLAIN_ANSWER = "'\\x" + "07" * 160 + "'::bytea"


def psql(sql):
    subprocess.run(["psql", "-q", "-v", "ON_ERROR_STOP=1", PG_URL, "-c", sql], check=True)


def pg_plain_scripts(tmp):
    """The plain work a new key and a replay need of PostgreSQL, as someone without idem
    would write it: one table, key text primary key and a bytea payload."""
    psql(f"DROP SCHEMA IF EXISTS {PG_PLAIN_SCHEMA} CASCADE; CREATE SCHEMA {PG_PLAIN_SCHEMA}; "
         f"CREATE TABLE {PG_PLAIN_SCHEMA}.records (key text PRIMARY KEY, payload bytea NOT NULL); "
         f"INSERT INTO {PG_PLAIN_SCHEMA}.records SELECT g::text, {PG_PLAIN_ANSWER} "
         f"FROM generate_series(1, {PG_PLAIN_ROWS}) g; ANALYZE {PG_PLAIN_SCHEMA}.records")
    scripts = {
        # Two autocommit statements: claim the key, then store the answer.
        "new": ["\\set k random(1000000000, 9000000000000000000)",
                f"INSERT INTO {PG_PLAIN_SCHEMA}.records (key, payload) VALUES (:k::text, {PG_PLAIN_CLAIM}) "
                "ON CONFLICT DO NOTHING;",
                f"UPDATE {PG_PLAIN_SCHEMA}.records SET payload = {PG_PLAIN_ANSWER} WHERE key = :k::text;"],
        "replay": [f"\\set k random(1, {PG_PLAIN_ROWS})",
                   f"SELECT payload FROM {PG_PLAIN_SCHEMA}.records WHERE key = :k::text;"],
    }
    paths = {}
    for mode, lines in scripts.items():
        paths[mode] = os.path.join(tmp, f"plain_{mode}.sql")
        with open(paths[mode], "w") as f:
            f.write("\n".join(lines) + "\n")
    return paths


def pgbench_script(tmp):
    """idem's own claim and complete statements as one pgbench transaction on a new key."""
    sql_dir = os.path.join(ROOT, "crates", "idem-postgres", "sql")
    args = {
        "claim": {1: r"'\x09090909090909090909090909090909'::bytea", 2: ":k::text",
                  3: "'\\x" + "07" * 32 + "'::bytea",
                  4: r"'\x0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a'::bytea", 5: "60000::int8",
                  6: "false"},
        "complete": {1: r"'\x09090909090909090909090909090909'::bytea", 2: ":k::text",
                     3: r"'\x0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a'::bytea",
                     4: "'\\x" + "07" * 160 + "'::bytea", 5: "60000::int8",
                     6: f"'{PG_BENCH_SCHEMA}.records'::text"},
    }
    parts = ["\\set k random(1, 9000000000000000000)"]
    for name in ("claim", "complete"):
        with open(os.path.join(sql_dir, f"{name}.sql")) as f:
            text = "\n".join(line.split("--", 1)[0] for line in f.read().splitlines())
        text = text.replace("{schema}", PG_BENCH_SCHEMA)
        # Each parameter with its cast, as the store binds it.
        text = re.sub(r"\$(\d)::\w+", lambda m: args[name][int(m.group(1))], text)
        parts.append(" ".join(text.split()) + ";")
    path = os.path.join(tmp, "claim_complete.sql")
    with open(path, "w") as f:
        f.write("\n".join(parts) + "\n")
    return path


def pgbench(script, conns, seconds):
    out = subprocess.run(
        ["pgbench", "-n", "-M", "prepared", f"-c{conns}", f"-j{min(conns, 2)}", f"-T{seconds}",
         "-f", script, PG_URL], capture_output=True, text=True, check=True).stdout
    tps = float(re.search(r"tps = ([\d.]+)", out).group(1))
    lat = re.search(r"latency average = ([\d.]+) ms", out)
    return {"rps": tps, "avg_us": float(lat.group(1)) * 1000 if lat else float("nan")}


def redis_limit(bin_dir, conns, seconds):
    out = subprocess.run([os.path.join(bin_dir, "store-limit"), "redis://127.0.0.1:6379/0",
                          str(conns), str(seconds)], capture_output=True, text=True, check=True).stdout
    return {"rps": float(re.search(r"pairs/s ([\d.]+)", out).group(1))}


def wait_cost(bin_dir, up_port, waiters=1000, seconds=10):
    """CPU of an idem process while `waiters` duplicates wait on one key in flight (R10
    wait mode), as a percentage of one core."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 4 * waiters + 256)), hard))
    port = free_port()
    p = subprocess.Popen(
        [os.path.join(bin_dir, "idem"), "serve", "--listen", f"127.0.0.1:{port}",
         "--upstream", f"http://127.0.0.1:{up_port}", "--store", "memory",
         "--on-concurrent", "wait", "--wait-timeout", "120s", "--lease", "120s",
         "--upstream-timeout", "120s"],
        env={**os.environ, "RUST_LOG": "warn"})
    socks = []
    try:
        wait_port(port)
        request = (b"POST /slow HTTP/1.1\r\nHost: bench\r\nIdempotency-Key: wait-cost\r\n"
                   b"Authorization: Bearer bench\r\n"
                   b"Content-Type: application/json\r\nContent-Length: 2\r\n\r\n{}")
        for _ in range(waiters + 1):
            s = socket.create_connection(("127.0.0.1", port))
            s.sendall(request)
            socks.append(s)
        time.sleep(2)  # every duplicate has arrived and is waiting
        cpu0, t0 = cpu_seconds(p.pid), time.time()
        time.sleep(seconds)
        cpu = cpu_seconds(p.pid) - cpu0
        return 100 * cpu / (time.time() - t0), rss_mib(p.pid)
    finally:
        for s in socks:
            s.close()
        # A graceful stop would wait for the slow request: nothing here needs it.
        p.kill()
        p.wait(timeout=10)


def to_us(value, unit):
    return float(value) * {"us": 1, "ms": 1000, "s": 1_000_000}[unit]


def wrk(port, mode, conns, seconds, env=None):
    threads = min(conns, 2)
    out = subprocess.run(
        ["wrk", f"-t{threads}", f"-c{conns}", f"-d{seconds}s", "--latency",
         "-s", os.path.join(WRK_DIR, f"{mode}.lua"), f"http://127.0.0.1:{port}/"],
        capture_output=True, text=True, check=True, env={**os.environ, **(env or {})}).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    total = int(re.search(r"(\d+) requests in", out).group(1))
    lat = dict(re.findall(r"^\s+(50|99)%\s+([\d.]+\w+)", out, re.M))
    def us(s):
        m = re.match(r"([\d.]+)(us|ms|s)", s)
        return to_us(m.group(1), m.group(2))
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    sock_errors = re.search(r"Socket errors: (.*)", out)
    return {"rps": rps, "p50": us(lat["50"]), "p99": us(lat["99"]), "requests": total,
            "errors": int(non2xx.group(1)) if non2xx else 0,
            "socket_errors": sock_errors.group(1) if sock_errors else ""}


# The peers, built from crates.io by bench/peers/build.sh (nothing of their code is kept here).
PEERS_DIR = os.environ.get("PEERS_DIR", os.path.join(ROOT, "target", "peers"))
LDCLABS = "idempotent-proxy (redis)"
AXUM_IDEMPOTENT = "axum-idempotent (postgres)"
AXUM_PEER_SCHEMA = "axum_idempotent_peer"
# axum-idempotent caches only for a request carrying a session: any well-formed session id.
AXUM_COOKIE = "session=" + "A" * 22


def start_peers(tmp, up_port, procs):
    """Starts the two peers in front of the upstream; returns {name: (port, pid, wrk env)}."""
    bins = {name: os.path.join(PEERS_DIR, "bin", name)
            for name in ("idempotent-proxy-server", "axum-idempotent-peer")}
    if not all(os.path.exists(b) for b in bins.values()):
        subprocess.run([os.path.join(ROOT, "bench", "peers", "build.sh")], check=True)
    peers = {}
    # ldclabs/idempotent-proxy: Redis, SET NX to claim, SET XX to store the answer, GET
    # polled for a duplicate. Its cache TTL is its request timeout: 15 min, as idem's --ttl.
    port = free_port()
    cwd = os.path.join(tmp, "ldclabs")
    os.makedirs(cwd)
    open(os.path.join(cwd, ".env"), "w").close()  # it refuses to start without one
    p = subprocess.Popen([bins["idempotent-proxy-server"]], cwd=cwd, env={
        **os.environ, "SERVER_ADDR": f"127.0.0.1:{port}", "REDIS_URL": "redis://127.0.0.1:6379/0",
        "UPSTREAM_HOST": f"127.0.0.1:{up_port}", "UPSTREAM_SCHEME": "http",
        "REQUEST_TIMEOUT": "900000", "RUST_LOG": "warn"})
    procs.append(p)
    wait_port(port)
    peers[LDCLABS] = (port, p.pid, None)
    # axum-idempotent 0.6 + ruts' PostgresStore (bench/peers/axum-idempotent), pool of 16
    # connections as idem's PostgreSQL store; its table starts empty every run.
    psql(f"DROP SCHEMA IF EXISTS {AXUM_PEER_SCHEMA} CASCADE")
    port = free_port()
    p = subprocess.Popen([bins["axum-idempotent-peer"]], env={
        **os.environ, "LISTEN": f"127.0.0.1:{port}", "UPSTREAM": f"127.0.0.1:{up_port}",
        "DATABASE_URL": PG_URL, "PG_POOL": "16", "RUST_LOG": "warn"})
    procs.append(p)
    wait_port(port)
    peers[AXUM_IDEMPOTENT] = (port, p.pid, {"BENCH_COOKIE": AXUM_COOKIE})
    check_peer_replays(peers)
    return peers


def post(port, key, cookie=None):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    headers = {"Idempotency-Key": key, "Content-Type": "application/json",
               "Authorization": "Bearer bench"}
    if cookie:
        headers["Cookie"] = cookie
    conn.request("POST", "/v1/charges", body=b'{"amount":4200,"currency":"eur"}', headers=headers)
    resp = conn.getresponse()
    body = resp.read()
    conn.close()
    return resp.status, {k.lower(): v for k, v in resp.getheaders()}, body


def check_peer_replays(peers):
    """Each peer must take the benchmark's requests through its idempotency path: a
    retry with the same key is answered from its store."""
    key = f"replay-check-{os.getpid()}-{time.time_ns()}"
    port = peers[LDCLABS][0]
    first, second = post(port, key), post(port, key)
    stored = subprocess.run(["redis-cli", "-u", "redis://127.0.0.1:6379/0", "--raw", "STRLEN",
                             f"ANON:POST:{key}"], capture_output=True, text=True, check=True).stdout
    # A claim is one byte; the stored answer is longer. The second call found the key
    # taken (SET NX failed) and answered from the stored record.
    if first[0] != 201 or second[0] != 201 or int(stored.strip() or 0) <= 1:
        sys.exit(f"{LDCLABS} did not store and replay: {first[0]}, {second[0]}, {stored!r}")
    port = peers[AXUM_IDEMPOTENT][0]
    first, second = post(port, key, AXUM_COOKIE), post(port, key, AXUM_COOKIE)
    if (first[0] != 201 or "idempotency-replayed" in first[1] or second[0] != 201
            or second[1].get("idempotency-replayed") != "true" or first[2] != second[2]):
        sys.exit(f"{AXUM_IDEMPOTENT} did not replay: {first[:2]}, {second[:2]}")
    print(f"peers: a retry of one key is replayed by both ({LDCLABS}: record of {stored.strip()} "
          f"bytes in Redis; {AXUM_IDEMPOTENT}: idempotency-replayed: true)", flush=True)


NGINX_CONF = """
user root;
worker_processes auto;
daemon off;
pid {tmp}/nginx.pid;
error_log {tmp}/nginx-error.log warn;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  client_body_temp_path {tmp}/body;
  proxy_temp_path {tmp}/proxy;
  fastcgi_temp_path {tmp}/fastcgi;
  uwsgi_temp_path {tmp}/uwsgi;
  scgi_temp_path {tmp}/scgi;
  upstream up {{ server 127.0.0.1:{upstream}; keepalive 128; }}
  server {{
    listen 127.0.0.1:{port};
    location / {{
      proxy_pass http://up;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
    }}
  }}
}}
"""


# The issue's store targets: (label, mode, target, times, baseline), met when the median
# over rounds of target/baseline (same round) reaches `times`.
STORE_TARGETS = [
    ("PostgreSQL new keys", "new", "idem postgres", 0.7, "pgbench plain insert + update"),
    ("PostgreSQL new keys", "new", "idem postgres", 1.5, AXUM_IDEMPOTENT),
    ("PostgreSQL replays", "replay", "idem postgres", 2.0, AXUM_IDEMPOTENT),
    ("Redis new keys", "new", "idem redis", 2.0, LDCLABS),
    ("Redis new keys", "new", "idem redis", 0.8, "idem memory"),
    ("file new keys", "new", "idem file", 0.5, "idem pass-through"),
]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=int, default=5)
    ap.add_argument("--stores", default="memory,file,redis,postgres")
    ap.add_argument("--modes", default="new,replay,mixed")
    ap.add_argument("--conns", default="1,32")
    ap.add_argument("--no-pass-through", action="store_true",
                    help="skip the idem instance that covers no POST (the plain proxy hop of idem)")
    ap.add_argument("--peers", action="store_true",
                    help="also run ldclabs/idempotent-proxy (Redis) and axum-idempotent (PostgreSQL), "
                         "built by bench/peers/build.sh")
    ap.add_argument("--own-store-cost", action="store_true",
                    help="also run idem's own claim + complete directly against Redis and PostgreSQL "
                         "(idem's own cost, not a baseline)")
    ap.add_argument("--no-wait-mode", action="store_true", help="skip the wait-mode measurement")
    ap.add_argument("--compare", metavar="IDEM_BINARY",
                    help="also run every store's idem with this other build of idem (e.g. the "
                         "commit before a change), as `idem STORE (compared)` and `idem pass-through (compared)`, "
                         "in the same rounds")
    ap.add_argument("--out", default=os.path.join(ROOT, "bench", "results", "latest.md"))
    args = ap.parse_args()
    stores = args.stores.split(",")
    modes = args.modes.split(",")
    conns_list = [int(c) for c in args.conns.split(",")]
    for tool in ("nginx", "wrk"):
        if not shutil.which(tool):
            sys.exit(f"{tool} is missing: apt-get install nginx-light wrk")

    subprocess.run(["cargo", "build", "--release", "--locked", "-p", "idem-proxy", "-p", "idem-bench"],
                   cwd=ROOT, check=True)
    bin_dir = os.path.join(os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target")), "release")
    tmp = tempfile.mkdtemp(prefix="idem-bench-")
    procs = []
    try:
        up_port = free_port()
        procs.append(subprocess.Popen([os.path.join(bin_dir, "bench-upstream"), f"127.0.0.1:{up_port}"]))
        wait_port(up_port)

        nginx_port = free_port()
        conf = os.path.join(tmp, "nginx.conf")
        with open(conf, "w") as f:
            f.write(NGINX_CONF.format(tmp=tmp, upstream=up_port, port=nginx_port))
        procs.append(subprocess.Popen(["nginx", "-c", conf, "-p", tmp]))
        wait_port(nginx_port)

        # name -> (port, pid, extra wrk environment) for HTTP targets.
        targets = {"direct": (up_port, None, None), "nginx hop": (nginx_port, None, None)}
        idle_rss = {}
        # `idem pass-through` covers only PUT, so the benchmark's POSTs go straight
        # through the layer to the forwarder: the proxy plumbing without the
        # idempotency work, to tell the two costs apart.
        instances = [(store, STORES[store](tmp), []) for store in stores]
        if not args.no_pass_through:
            instances.append(("pass-through", STORES["memory"](tmp), ["--methods", "PUT"]))
        if args.compare:
            os.makedirs(os.path.join(tmp, "compared"))
            instances += [(f"{store} (compared)", STORES[store](os.path.join(tmp, "compared")), [], args.compare)
                          for store in stores]
            if not args.no_pass_through:
                instances.append(("pass-through (compared)", STORES["memory"](tmp), ["--methods", "PUT"],
                                  args.compare))
        for name, store, extra, *binary in instances:
            port = free_port()
            p = subprocess.Popen(
                [binary[0] if binary else os.path.join(bin_dir, "idem"), "serve", "--listen", f"127.0.0.1:{port}",
                 "--upstream", f"http://127.0.0.1:{up_port}", "--store", store,
                 # Long enough for every replay of the run; short enough that a shared
                 # Redis or PostgreSQL does not keep millions of bench records for a day.
                 "--ttl", "15m", *extra],
                env={**os.environ, "RUST_LOG": "warn"})
            procs.append(p)
            wait_port(port)
            time.sleep(0.5)
            idle_rss[f"idem {name}"] = rss_mib(p.pid)
            targets[f"idem {name}"] = (port, p.pid, None)
        if args.peers:
            for name, target in start_peers(tmp, up_port, procs).items():
                time.sleep(0.5)
                idle_rss[name] = rss_mib(target[1])
                targets[name] = target

        # Store work without any HTTP, on the same servers in the same rounds:
        # name -> {mode: function(conns)}.
        plain = {}
        if "postgres" in stores:
            scripts = pg_plain_scripts(tmp)
            plain["pgbench plain insert + update"] = {
                "new": lambda conns: pgbench(scripts["new"], conns, args.seconds)}
            plain["pgbench plain select"] = {
                "replay": lambda conns: pgbench(scripts["replay"], conns, args.seconds)}
        if args.own_store_cost and "postgres" in stores:
            psql(f"DROP SCHEMA IF EXISTS {PG_BENCH_SCHEMA} CASCADE")
            subprocess.run([os.path.join(bin_dir, "idem"), "migrate", "--store",
                            f"{PG_URL}?schema={PG_BENCH_SCHEMA}"], check=True)
            script = pgbench_script(tmp)
            plain["idem's own SQL via pgbench (own cost)"] = {
                "new": lambda conns: pgbench(script, conns, args.seconds)}
        if args.own_store_cost and "redis" in stores:
            plain["idem's own Lua via store-limit (own cost)"] = {
                "new": lambda conns: redis_limit(bin_dir, conns, args.seconds)}

        wait_pct = wait_rss = None
        if not args.no_wait_mode:
            wait_pct, wait_rss = wait_cost(bin_dir, up_port)
            print(f"wait mode: 1000 waiting duplicates cost {wait_pct:.2f} % of a core", flush=True)

        results = {}
        for mode in modes:
            for conns in conns_list:
                for rnd in range(args.rounds):
                    # Alternate the order each round so drift hits every target alike.
                    order = list(targets.items())
                    order += [(name, fns[mode]) for name, fns in plain.items() if mode in fns]
                    if rnd % 2:
                        order.reverse()
                    for name, target in order:
                        if callable(target):
                            r = target(conns)
                            results.setdefault((mode, conns, name), []).append(r)
                            print(f"{mode:6} c={conns:<3} {name:28} {r['rps']:>10.0f} tx/s  "
                                  f"avg {r.get('avg_us', float('nan')):>8.0f} us", flush=True)
                            continue
                        port, pid, env = target
                        cpu0 = cpu_seconds(pid) if pid else 0.0
                        r = wrk(port, mode, conns, args.seconds, env)
                        if pid:
                            r["cpu_us"] = (cpu_seconds(pid) - cpu0) * 1e6 / max(r["requests"], 1)
                        results.setdefault((mode, conns, name), []).append(r)
                        print(f"{mode:6} c={conns:<3} {name:28} {r['rps']:>10.0f} req/s  "
                              f"p50 {r['p50']:>8.0f} us  p99 {r['p99']:>8.0f} us  non-2xx {r['errors']}"
                              + (f"  socket errors: {r['socket_errors']}" if r["socket_errors"] else ""),
                              flush=True)

        def med(rs, k):
            vals = [r[k] for r in rs if k in r]
            return statistics.median(vals) if vals else float("nan")

        def ratio(mode, conns, name, base):
            """Median over rounds of name/base, each round's pair measured in that round."""
            a, b = results.get((mode, conns, name)), results.get((mode, conns, base))
            if not a or not b:
                return float("nan")
            return statistics.median(x["rps"] / y["rps"] for x, y in zip(a, b))

        def fmt(v, spec):
            return "" if v != v else format(v, spec)

        lines = [
            "| mode | conns | target | req/s | × nginx hop | p50 µs | p99 µs | CPU µs/req | non-2xx |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for (mode, conns, name), rs in results.items():
            if name in plain:
                continue
            lines.append(
                f"| {mode} | {conns} | {name} | {med(rs, 'rps'):.0f} | "
                f"{fmt(ratio(mode, conns, name, 'nginx hop'), '.2f')} | "
                f"{med(rs, 'p50'):.0f} | {med(rs, 'p99'):.0f} | "
                f"{fmt(med(rs, 'cpu_us'), '.1f')} | {sum(r['errors'] for r in rs)} |")

        # Side by side at the highest concurrency measured: idem, the peers, the plain
        # store work; ratios are medians of the per-round ratios.
        conns = max(conns_list)
        names = list(targets) + list(plain)
        cols = [m for m in ("new", "replay") if m in modes]
        if cols:
            lines += ["", f"Side by side at {conns} connections (pgbench rows: transactions/s of the plain "
                          "store work, no HTTP; ratios are medians of per-round ratios):", ""]
            head = "| target |"
            for m in cols:
                label = "new keys" if m == "new" else "replays"
                head += f" {label} req/s | {label} × nginx hop | {label} × idem pass-through | {label} p99 µs |"
            head += " CPU µs/req (new) |"
            lines += [head, "|---|" + "---|" * (4 * len(cols) + 1)]
            for name in names:
                row = f"| {name} |"
                if not any((m, conns, name) in results for m in cols):
                    continue
                for m in cols:
                    rs = results.get((m, conns, name))
                    if not rs:
                        row += " | | | |"
                        continue
                    row += (f" {med(rs, 'rps'):.0f} | {fmt(ratio(m, conns, name, 'nginx hop'), '.2f')} | "
                            f"{fmt(ratio(m, conns, name, 'idem pass-through'), '.2f')} | "
                            f"{fmt(med(rs, 'p99'), '.0f')} |")
                row += f" {fmt(med(results.get(('new', conns, name), []), 'cpu_us'), '.1f')} |"
                lines.append(row)

            lines += ["", f"Store targets at {conns} connections (median of the per-round ratios):", "",
                      "| target | measured | required | status |", "|---|---|---|---|"]
            for label, mode, name, times, base in STORE_TARGETS:
                r = ratio(mode, conns, name, base)
                if r != r:
                    continue
                status = "met" if r >= times else "not met"
                lines.append(f"| {label}: {name} ÷ {base} | {r:.2f}× | ≥ {times}× | {status} |")

        if wait_pct is not None:
            lines.append("")
            lines.append(f"Wait mode (R10): 1000 duplicates waiting 10 s on one key in flight cost "
                         f"{wait_pct:.2f} % of one core (RSS {wait_rss:.1f} MiB).")
        lines.append("")
        lines.append("| target | idle RSS MiB | RSS after MiB |")
        lines.append("|---|---|---|")
        for name, (port, pid, env) in targets.items():
            if pid:
                lines.append(f"| {name} | {idle_rss[name]:.1f} | {rss_mib(pid):.1f} |")
        header = (f"Measured {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} on {os.cpu_count()} cores, "
                  f"{args.rounds} rounds × {args.seconds} s per cell, medians; wrk -t min(c,2) over loopback.\n\n")
        os.makedirs(os.path.dirname(args.out), exist_ok=True)
        with open(args.out, "w") as f:
            f.write(header + "\n".join(lines) + "\n")
        print()
        print(header + "\n".join(lines))
    finally:
        stop(procs)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
