#!/usr/bin/env python3
"""What one request costs the store, and what the expiry sweep costs at scale.

Per request (wrk, 32 connections, new keys then replays), for idem on Redis and on
PostgreSQL (and the peers, when bench/peers/build.sh has built them):
  - Redis: commands per request (INFO commandstats deltas), Redis CPU µs per request
    (/proc of redis-server);
  - PostgreSQL: transactions, tuples written/read per request (pg_stat_database deltas),
    WAL bytes per request (pg_current_wal_lsn), CPU µs per request of every postgres
    process;
  - bytes both ways on the client's connections to the store, per request (ss -ti:
    bytes_acked and bytes_received of the process's sockets to 6379/5432).

Sweep (--sweep-rows, e.g. 1000000,10000000): fills a separate schema with that many
expired records (generate_series), then runs idem's own sweep statement
(crates/idem-postgres/sql/sweep.sql, batches of 500 in a loop, as the store does) while
pgbench runs idem's claim statement on new keys at 32 clients in the same schema;
reports how long the sweep took and the claims' p50/p99 with and without it.

Statements (--statements): pgbench alone, 32 clients, prepared, alternated over three
rounds: idem's claim + complete on a new key against the plain INSERT ... ON CONFLICT
DO NOTHING + UPDATE of bench/run.py, and idem's claim on a completed key (a replay)
against the plain SELECT by primary key. idem's statements get every argument as a bound
parameter, as the store binds them.

    flock /tmp/idem-bench.lock bench/store_ops.py [--seconds 5] [--sweep-rows 1000000]

Needs a release build (bench/run.py makes one) and wrk.
"""

import argparse
import glob
import os
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import run  # noqa: E402  (the load benchmark's helpers)

REDIS_URL = "redis://127.0.0.1:6379/0"
SWEEP_SCHEMA = "idem_sweep_test"
SQL_DIR = os.path.join(run.ROOT, "crates", "idem-postgres", "sql")


def sql_value(sql):
    out = subprocess.run(["psql", "-qAt", run.PG_URL, "-c", sql], capture_output=True, text=True,
                         check=True).stdout
    return out.strip()


def redis_cmdstats():
    out = subprocess.run(["redis-cli", "-u", REDIS_URL, "INFO", "commandstats"], capture_output=True,
                         text=True, check=True).stdout
    return {m.group(1): int(m.group(2)) for m in re.finditer(r"cmdstat_(\w+):calls=(\d+)", out)}


def redis_pid():
    out = subprocess.run(["redis-cli", "-u", REDIS_URL, "INFO", "server"], capture_output=True,
                         text=True, check=True).stdout
    return int(re.search(r"process_id:(\d+)", out).group(1))


def postgres_cpu():
    """CPU seconds of every postgres process (backends, WAL writer, checkpointer...)."""
    total = 0.0
    for path in glob.glob("/proc/[0-9]*/comm"):
        try:
            with open(path) as f:
                if f.read().strip() != "postgres":
                    continue
            total += run.cpu_seconds(int(path.split("/")[2]))
        except (OSError, ValueError):
            continue
    return total


def pg_counters():
    row = sql_value("SELECT xact_commit, tup_inserted, tup_updated, tup_deleted, tup_fetched, "
                    "tup_returned, pg_current_wal_lsn() - '0/0' FROM pg_stat_database "
                    "WHERE datname = current_database()")
    keys = ("commits", "inserted", "updated", "deleted", "fetched", "returned", "wal_bytes")
    return dict(zip(keys, (float(v) for v in row.split("|"))))


def settled_pg_counters():
    """pg_stat_database once every backend has reported: a backend flushes its counters
    at most once a second while busy and within 10 s of going idle (PostgreSQL 15)."""
    time.sleep(11)
    return pg_counters()


def socket_bytes(pid, port):
    """Bytes sent and received on the TCP connections of `pid` to 127.0.0.1:`port`."""
    out = subprocess.run(["ss", "-tinpH", "state", "established", f"dport = :{port}"],
                         capture_output=True, text=True, check=True).stdout
    sent = received = 0
    # ss prints each socket on two lines: the addresses and process, then its tcp_info.
    lines = out.splitlines()
    for head, info in zip(lines[::2], lines[1::2]):
        if f"pid={pid}," not in head:
            continue
        a = re.search(r"bytes_acked:(\d+)", info)
        r = re.search(r"bytes_received:(\d+)", info)
        sent += int(a.group(1)) if a else 0
        received += int(r.group(1)) if r else 0
    return sent, received


def measure(name, port, pid, store, mode, seconds, env=None):
    if store == "postgres":
        settled_pg_counters()  # the previous cell's counters land before this one starts
    s0, pg0 = redis_cmdstats(), pg_counters()
    rcpu0, pcpu0 = run.cpu_seconds(redis_pid()), postgres_cpu()
    b0 = socket_bytes(pid, 6379 if store == "redis" else 5432)
    r = run.wrk(port, mode, 32, seconds, env)
    b1 = socket_bytes(pid, 6379 if store == "redis" else 5432)
    s1, rcpu1, pcpu1 = redis_cmdstats(), run.cpu_seconds(redis_pid()), postgres_cpu()
    pg1 = settled_pg_counters() if store == "postgres" else pg_counters()
    n = r["requests"]
    row = {"target": name, "mode": mode, "rps": r["rps"], "requests": n,
           "sent": (b1[0] - b0[0]) / n, "received": (b1[1] - b0[1]) / n}
    if store == "redis":
        cmds = {k: (s1.get(k, 0) - s0.get(k, 0)) / n for k in s1}
        row["ops"] = " ".join(f"{k} {v:.2f}" for k, v in sorted(cmds.items()) if v >= 0.01
                              and k not in ("info",))
        row["store_cpu_us"] = (rcpu1 - rcpu0) * 1e6 / n
    else:
        d = {k: (pg1[k] - pg0[k]) / n for k in pg1}
        # The two sampling queries' own commits are negligible against thousands of requests.
        row["ops"] = (f"commits {d['commits']:.2f}, ins {d['inserted']:.2f}, upd {d['updated']:.2f}, "
                      f"fetched {d['fetched']:.2f}, WAL {d['wal_bytes']:.0f} B")
        row["store_cpu_us"] = (pcpu1 - pcpu0) * 1e6 / n
    return row


def per_request(args, bin_dir, tmp, procs):
    up_port = run.free_port()
    procs.append(subprocess.Popen([os.path.join(bin_dir, "bench-upstream"), f"127.0.0.1:{up_port}"]))
    run.wait_port(up_port)
    targets = []
    for store, url in (("redis", run.STORES["redis"](tmp)), ("postgres", run.STORES["postgres"](tmp))):
        port = run.free_port()
        p = subprocess.Popen([os.path.join(bin_dir, "idem"), "serve", "--listen", f"127.0.0.1:{port}",
                              "--upstream", f"http://127.0.0.1:{up_port}", "--store", url, "--ttl", "15m"],
                             env={**os.environ, "RUST_LOG": "warn"})
        procs.append(p)
        run.wait_port(port)
        targets.append((f"idem {store}", port, p.pid, store, None))
    if args.peers:
        peers = run.start_peers(tmp, up_port, procs)
        targets.append((run.LDCLABS, *peers[run.LDCLABS][:2], "redis", None))
        targets.append((run.AXUM_IDEMPOTENT, *peers[run.AXUM_IDEMPOTENT][:2], "postgres",
                        peers[run.AXUM_IDEMPOTENT][2]))
    rows = []
    for mode in ("new", "replay"):
        for name, port, pid, store, env in targets:
            row = measure(name, port, pid, store, mode, args.seconds, env)
            print(row, flush=True)
            rows.append(row)
    lines = ["| target | mode | req/s | store operations per request | store CPU µs/req | "
             "bytes to store/req | bytes from store/req |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['target']} | {r['mode']} | {r['rps']:.0f} | {r['ops']} | "
                     f"{r['store_cpu_us']:.1f} | {r['sent']:.0f} | {r['received']:.0f} |")
    return lines


def claim_script(tmp, schema):
    """idem's claim statement on a new key, as pgbench runs it (parameters inlined)."""
    args = {1: r"'\x09090909090909090909090909090909'::bytea", 2: ":k::text",
            3: "'\\x" + "07" * 32 + "'::bytea", 4: r"'\x0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a'::bytea",
            5: "60000::int8", 6: "false"}
    with open(os.path.join(SQL_DIR, "claim.sql")) as f:
        text = "\n".join(line.split("--", 1)[0] for line in f.read().splitlines())
    text = text.replace("{schema}", schema)
    text = re.sub(r"\$(\d)::\w+", lambda m: args[int(m.group(1))], text)
    path = os.path.join(tmp, "claim.sql")
    with open(path, "w") as f:
        f.write("\\set k random(1, 9000000000000000000)\n" + " ".join(text.split()) + ";\n")
    return path


def sweep_script(tmp, schema, batch=500):
    with open(os.path.join(SQL_DIR, "sweep.sql")) as f:
        text = "\n".join(line.split("--", 1)[0] for line in f.read().splitlines())
    text = text.replace("{schema}", schema).replace("$1::int8", f"{batch}::int8")
    path = os.path.join(tmp, "sweep.sql")
    with open(path, "w") as f:
        f.write(" ".join(text.split()) + ";\n")
    return path


def claims_latency(script, seconds, tmp, tag):
    """pgbench of `script` at 32 clients; p50/p99 µs of its transactions and tps."""
    logdir = os.path.join(tmp, f"log-{tag}")
    os.makedirs(logdir)
    out = subprocess.run(["pgbench", "-n", "-M", "prepared", "-c32", "-j2", f"-T{seconds}", "-l",
                          "--log-prefix", os.path.join(logdir, "pgbench"), "-f", script, run.PG_URL],
                         capture_output=True, text=True, check=True).stdout
    lat = []
    for path in glob.glob(os.path.join(logdir, "pgbench*")):
        with open(path) as f:
            lat += [int(line.split()[2]) for line in f]
    lat.sort()
    tps = float(re.search(r"tps = ([\d.]+)", out).group(1))
    return {"tps": tps, "p50": lat[len(lat) // 2], "p99": lat[int(len(lat) * 0.99)]}


def sweep_at_scale(rows, seconds, bin_dir, tmp):
    schema = SWEEP_SCHEMA
    run.psql(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
    subprocess.run([os.path.join(bin_dir, "idem"), "migrate", "--store", f"{run.PG_URL}?schema={schema}"],
                   check=True, env={**os.environ, "RUST_LOG": "warn"})
    t0 = time.time()
    # Completed records that expired an hour ago, with a 160-byte snapshot each.
    run.psql(f"INSERT INTO {schema}.records (scope, key, fingerprint, owner, state, created_at, ends_at, "
             f"snapshot) SELECT '\\x09090909090909090909090909090909'::bytea, 'expired-' || g, "
             f"'\\x{'07' * 32}'::bytea, '\\x{'0a' * 16}'::bytea, 2, now() - interval '2 hours', "
             f"now() - interval '1 hour' - g * interval '1 microsecond', '\\x{'07' * 160}'::bytea "
             f"FROM generate_series(1, {rows}) g; ANALYZE {schema}.records")
    fill = time.time() - t0
    size = sql_value(f"SELECT pg_size_pretty(pg_total_relation_size('{schema}.records'))")
    claim = claim_script(tmp, schema)
    sweep = sweep_script(tmp, schema)
    quiet = claims_latency(claim, seconds, tmp, f"quiet-{rows}")
    # The store's loop: batches until one comes back short; here pgbench runs exactly the
    # batches needed (rows / 500, plus the short one) on one connection, timed.
    done = {}

    def sweeper():
        t = time.time()
        subprocess.run(["pgbench", "-n", "-M", "prepared", "-c1", f"-t{rows // 500 + 1}", "-f", sweep,
                        run.PG_URL], capture_output=True, check=True)
        done["seconds"] = time.time() - t

    th = threading.Thread(target=sweeper)
    th.start()
    busy = []
    t_sweep = time.time()
    while th.is_alive():
        busy.append(claims_latency(claim, seconds, tmp, f"sweep-{rows}-{len(busy)}"))
        left = sql_value(f"SELECT count(*) FROM {schema}.records WHERE key LIKE 'expired-%'")
        print(f"sweep {rows}: {time.time() - t_sweep:.0f} s, {left} expired rows left, claims "
              f"{busy[-1]['tps']:.0f}/s p50 {busy[-1]['p50']} us p99 {busy[-1]['p99']} us", flush=True)
    th.join()
    left = sql_value(f"SELECT count(*) FROM {schema}.records WHERE key LIKE 'expired-%'")
    run.psql(f"DROP SCHEMA {schema} CASCADE")
    p99s = [b["p99"] for b in busy]
    return [f"| {rows:,} | {size} | {fill:.0f} s | {done['seconds']:.1f} s ({rows / done['seconds']:,.0f} rows/s) "
            f"| {left} | {quiet['tps']:.0f} | {quiet['p50'] / 1000:.1f} / {quiet['p99'] / 1000:.1f} | "
            f"{statistics.median(b['tps'] for b in busy):.0f} | "
            f"{statistics.median(b['p50'] for b in busy) / 1000:.1f} / {max(p99s) / 1000:.1f} |"]


def statements(seconds, bin_dir, tmp, rounds=3):
    schema = "idem_statements"
    run.psql(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
    subprocess.run([os.path.join(bin_dir, "idem"), "migrate", "--store", f"{run.PG_URL}?schema={schema}"],
                   check=True, env={**os.environ, "RUST_LOG": "warn"})
    snapshot = "\\x" + "07" * 160
    run.psql(f"INSERT INTO {schema}.records (scope, key, fingerprint, owner, state, created_at, ends_at, "
             f"snapshot) SELECT '\\x{'09' * 16}'::bytea, g::text, '\\x{'07' * 32}'::bytea, "
             f"'\\x{'0a' * 16}'::bytea, 2, now(), now() + interval '1 day', '{snapshot}'::bytea "
             f"FROM generate_series(1, 64) g")

    def load(name, names):
        with open(os.path.join(SQL_DIR, f"{name}.sql")) as f:
            text = "\n".join(line.split("--", 1)[0] for line in f.read().splitlines())
        text = text.replace("{schema}", schema)
        return " ".join(re.sub(r"\$(\d)(::\w+)", lambda m: ":" + names[int(m.group(1))] + m.group(2),
                               text).split()) + ";"

    claim = load("claim", {1: "scope", 2: "k", 3: "fp", 4: "owner", 5: "lease", 6: "waiting"})
    complete = load("complete", {1: "scope", 2: "k", 3: "owner", 4: "snap", 5: "lease", 6: "chan"})
    scripts = run.pg_plain_scripts(tmp)
    scripts["idem new"] = os.path.join(tmp, "idem_new.sql")
    with open(scripts["idem new"], "w") as f:
        f.write(f"\\set k random(1000, 9000000000000000000)\n{claim}\n{complete}\n")
    scripts["idem replay"] = os.path.join(tmp, "idem_replay.sql")
    with open(scripts["idem replay"], "w") as f:
        f.write(f"\\set k random(1, 64)\n{claim}\n")
    variables = ["-D", f"scope=\\x{'09' * 16}", "-D", f"fp=\\x{'07' * 32}", "-D", f"owner=\\x{'0a' * 16}",
                 "-D", "lease=900000", "-D", "waiting=false", "-D", f"snap={snapshot}",
                 "-D", f"chan={schema}.records"]
    cells = [("plain insert + update", scripts["new"], []), ("idem claim + complete", scripts["idem new"], variables),
             ("plain select", scripts["replay"], []), ("idem claim on a completed key", scripts["idem replay"], variables)]
    tps = {}
    for rnd in range(rounds):
        for name, script, extra in (cells if rnd % 2 == 0 else cells[::-1]):
            out = subprocess.run(["pgbench", "-n", "-M", "prepared", "-c32", "-j2", f"-T{seconds}", *extra,
                                  "-f", script, run.PG_URL], capture_output=True, text=True, check=True).stdout
            tps.setdefault(name, []).append(float(re.search(r"tps = ([\d.]+)", out).group(1)))
            print(f"round {rnd + 1} {name}: {tps[name][-1]:.0f} tx/s", flush=True)
    run.psql(f"DROP SCHEMA {schema} CASCADE")
    med = {k: statistics.median(v) for k, v in tps.items()}
    return ["| pgbench alone, 32 clients | tx/s (median of 3) | × the plain statement(s) |", "|---|---|---|",
            f"| plain INSERT ON CONFLICT DO NOTHING + UPDATE | {med['plain insert + update']:.0f} | 1.00 |",
            f"| idem claim.sql + complete.sql (new key) | {med['idem claim + complete']:.0f} | "
            f"{med['idem claim + complete'] / med['plain insert + update']:.2f} |",
            f"| plain SELECT by primary key | {med['plain select']:.0f} | 1.00 |",
            f"| idem claim.sql on a completed key (replay) | {med['idem claim on a completed key']:.0f} | "
            f"{med['idem claim on a completed key'] / med['plain select']:.2f} |"]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=int, default=5)
    ap.add_argument("--peers", action="store_true", help="also measure the two peers")
    ap.add_argument("--no-per-request", action="store_true")
    ap.add_argument("--statements", action="store_true",
                    help="pgbench alone: idem's statements against the plain ones")
    ap.add_argument("--sweep-rows", default="", help="comma-separated counts of expired rows")
    ap.add_argument("--out", default=os.path.join(run.ROOT, "bench", "results", "store-ops.md"))
    args = ap.parse_args()
    bin_dir = os.path.join(os.environ.get("CARGO_TARGET_DIR", os.path.join(run.ROOT, "target")), "release")
    tmp = tempfile.mkdtemp(prefix="idem-store-ops-")
    procs = []
    lines = [f"Measured {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {args.seconds} s per cell, "
             "wrk -t2 -c32.", ""]
    try:
        if not args.no_per_request:
            lines += per_request(args, bin_dir, tmp, procs) + [""]
        if args.statements:
            lines += statements(args.seconds, bin_dir, tmp) + [""]
        if args.sweep_rows:
            lines += ["| expired rows | table + indexes | fill | sweep (batches of 500) | left | "
                      "claims/s alone | claim p50 / p99 ms alone | claims/s during sweep | "
                      "claim p50 / worst p99 ms during sweep |", "|---|---|---|---|---|---|---|---|---|"]
            for rows in (int(r) for r in args.sweep_rows.split(",")):
                lines += sweep_at_scale(rows, args.seconds, bin_dir, tmp)
                print(lines[-1], flush=True)
    finally:
        run.stop(procs)
        subprocess.run(["rm", "-rf", tmp])
    with open(args.out, "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
