#!/usr/bin/env python3
"""Load benchmark of idem against a plain nginx reverse-proxy hop, on loopback.

Starts a fast static upstream (bench-upstream), nginx as a plain proxy hop in front of
it (the baseline), and `idem serve` in front of it once per store; then drives each with
wrk in three modes (new keys, replays, mixed) at 1 and 32 connections, alternating the
targets round by round, and reports medians as ratios against the nginx hop measured in
the same run. Needs nginx and wrk (apt-get install nginx-light wrk).

    bench/run.py [--rounds 3] [--seconds 5] [--stores memory,file] [--out FILE]

Besides one idem per store, `idem pass-through` (memory store, only PUT covered) forwards
the benchmark's POSTs untouched: idem's own proxy hop, without the idempotency work.
"""

import argparse
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


def pgbench_script(tmp):
    """idem's own claim and complete statements as one pgbench transaction on a new key."""
    sql_dir = os.path.join(ROOT, "crates", "idem-postgres", "sql")
    args = {
        "claim": {1: r"'\x09090909090909090909090909090909'::bytea", 2: ":k::text",
                  3: "'\\x" + "07" * 32 + "'::bytea",
                  4: r"'\x0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a'::bytea", 5: "60000::int8"},
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


def pg_limit(script, conns, seconds):
    out = subprocess.run(
        ["pgbench", "-n", "-M", "prepared", f"-c{conns}", f"-j{min(conns, 2)}", f"-T{seconds}",
         "-f", script, PG_URL], capture_output=True, text=True, check=True).stdout
    tps = float(re.search(r"tps = ([\d.]+)", out).group(1))
    return {"rps": tps}


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


def wrk(port, mode, conns, seconds):
    threads = min(conns, 2)
    out = subprocess.run(
        ["wrk", f"-t{threads}", f"-c{conns}", f"-d{seconds}s", "--latency",
         "-s", os.path.join(WRK_DIR, f"{mode}.lua"), f"http://127.0.0.1:{port}/"],
        capture_output=True, text=True, check=True).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    total = int(re.search(r"(\d+) requests in", out).group(1))
    lat = dict(re.findall(r"^\s+(50|99)%\s+([\d.]+\w+)", out, re.M))
    def us(s):
        m = re.match(r"([\d.]+)(us|ms|s)", s)
        return to_us(m.group(1), m.group(2))
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return {"rps": rps, "p50": us(lat["50"]), "p99": us(lat["99"]), "requests": total,
            "errors": int(non2xx.group(1)) if non2xx else 0}


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


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=int, default=5)
    ap.add_argument("--stores", default="memory,file,redis,postgres")
    ap.add_argument("--modes", default="new,replay,mixed")
    ap.add_argument("--conns", default="1,32")
    ap.add_argument("--no-pass-through", action="store_true",
                    help="skip the idem instance that covers no POST (the plain proxy hop of idem)")
    ap.add_argument("--out", default=os.path.join(ROOT, "bench", "results", "latest.md"))
    args = ap.parse_args()
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

        targets = {"direct": (up_port, None), "nginx hop": (nginx_port, None)}
        idle_rss = {}
        # `idem pass-through` covers only PUT, so the benchmark's POSTs go straight
        # through the layer to the forwarder: the proxy plumbing without the
        # idempotency work, to tell the two costs apart.
        instances = [(store, STORES[store](tmp), []) for store in args.stores.split(",")]
        if not args.no_pass_through:
            instances.append(("pass-through", STORES["memory"](tmp), ["--methods", "PUT"]))
        for name, store, extra in instances:
            port = free_port()
            p = subprocess.Popen(
                [os.path.join(bin_dir, "idem"), "serve", "--listen", f"127.0.0.1:{port}",
                 "--upstream", f"http://127.0.0.1:{up_port}", "--store", store,
                 # Long enough for every replay of the run; short enough that a shared
                 # Redis or PostgreSQL does not keep millions of bench records for a day.
                 "--ttl", "15m", *extra],
                env={**os.environ, "RUST_LOG": "warn"})
            procs.append(p)
            wait_port(port)
            time.sleep(0.5)
            idle_rss[name] = rss_mib(p.pid)
            targets[f"idem {name}"] = (port, p.pid)

        # What the store itself can do for a new key, measured in the same rounds.
        limits = {}
        if "postgres" in args.stores:
            subprocess.run(["psql", "-q", PG_URL, "-c", f"DROP SCHEMA IF EXISTS {PG_BENCH_SCHEMA} CASCADE"],
                           check=True)
            subprocess.run([os.path.join(bin_dir, "idem"), "migrate", "--store",
                            f"{PG_URL}?schema={PG_BENCH_SCHEMA}"], check=True)
            script = pgbench_script(tmp)
            limits["postgres limit"] = lambda conns: pg_limit(script, conns, args.seconds)
        if "redis" in args.stores:
            limits["redis limit"] = lambda conns: redis_limit(bin_dir, conns, args.seconds)

        wait_pct, wait_rss = wait_cost(bin_dir, up_port)
        print(f"wait mode: 1000 waiting duplicates cost {wait_pct:.2f} % of a core", flush=True)

        results = {}
        for mode in args.modes.split(","):
            for conns in (int(c) for c in args.conns.split(",")):
                for rnd in range(args.rounds):
                    # Alternate the order each round so drift hits every target alike.
                    order = list(targets.items())
                    if mode == "new":
                        order += [(name, (None, None)) for name in limits]
                    if rnd % 2:
                        order.reverse()
                    for name, (port, pid) in order:
                        cpu0 = cpu_seconds(pid) if pid else 0.0
                        if port is None:
                            r = limits[name](conns)
                            results.setdefault((mode, conns, name), []).append(r)
                            print(f"{mode:6} c={conns:<3} {name:14} {r['rps']:>10.0f} pairs/s", flush=True)
                            continue
                        r = wrk(port, mode, conns, args.seconds)
                        if pid:
                            r["cpu_us"] = (cpu_seconds(pid) - cpu0) * 1e6 / max(r["requests"], 1)
                        results.setdefault((mode, conns, name), []).append(r)
                        print(f"{mode:6} c={conns:<3} {name:14} {r['rps']:>10.0f} req/s  "
                              f"p50 {r['p50']:>8.0f} us  p99 {r['p99']:>8.0f} us  non-2xx {r['errors']}",
                              flush=True)

        def med(rs, k):
            vals = [r[k] for r in rs if k in r]
            return statistics.median(vals) if vals else float("nan")

        lines = [
            "| mode | conns | target | req/s | × nginx hop | p50 µs | p99 µs | CPU µs/req | non-2xx |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for (mode, conns, name), rs in results.items():
            if name in limits:
                continue
            base = med(results[(mode, conns, "nginx hop")], "rps")
            lines.append(
                f"| {mode} | {conns} | {name} | {med(rs, 'rps'):.0f} | {med(rs, 'rps') / base:.2f} | "
                f"{med(rs, 'p50'):.0f} | {med(rs, 'p99'):.0f} | "
                f"{med(rs, 'cpu_us'):.1f} | {sum(r['errors'] for r in rs)} |")
        if limits:
            lines.append("")
            lines.append("| store | conns | store limit (claim + complete)/s | idem new keys req/s | × store limit |")
            lines.append("|---|---|---|---|---|")
            for name in limits:
                store = name.split(" ", 1)[0]
                for conns in (int(c) for c in args.conns.split(",")):
                    limit = med(results[("new", conns, name)], "rps")
                    idem = med(results[("new", conns, f"idem {store}")], "rps")
                    lines.append(f"| {store} | {conns} | {limit:.0f} | {idem:.0f} | {idem / limit:.2f} |")
        lines.append("")
        lines.append(f"Wait mode (R10): 1000 duplicates waiting 10 s on one key in flight cost "
                     f"{wait_pct:.2f} % of one core (RSS {wait_rss:.1f} MiB).")
        lines.append("")
        lines.append("| store | idle RSS MiB | RSS after MiB |")
        lines.append("|---|---|---|")
        for name, (port, pid) in targets.items():
            if pid:
                store = name.split(" ", 1)[1]
                lines.append(f"| {store} | {idle_rss[store]:.1f} | {rss_mib(pid):.1f} |")
        header = (f"Measured {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} on {os.cpu_count()} cores, "
                  f"{args.rounds} rounds × {args.seconds} s per cell, medians; wrk -t min(c,2) over loopback.\n\n")
        os.makedirs(os.path.dirname(args.out), exist_ok=True)
        with open(args.out, "w") as f:
            f.write(header + "\n".join(lines) + "\n")
        print()
        print(header + "\n".join(lines))
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
