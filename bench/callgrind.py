#!/usr/bin/env python3
"""Instructions per request of `idem serve`, counted by callgrind (stable where the
machine's timings are not).

Starts `bench-upstream` and `idem serve` (memory store, or `--store`) under
`valgrind --tool=callgrind`, warms up, zeroes the counters, sends a fixed number of
requests over keep-alive connections, dumps the counters and prints the instructions
per request, the top functions and the share of each crate.

    bench/callgrind.py [--mode new|replay|pass-through] [--requests 2000] [--conns 4]
                       [--store memory|file|redis|postgres] [--extra "--runtime workers"]
                       [--out DIR]

Needs valgrind; uses the release binaries of `cargo build --release -p idem-proxy -p
idem-bench` (or of $CARGO_TARGET_DIR).
"""

import argparse
import collections
import os
import re
import shlex
import socket
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import run  # noqa: E402  (the load benchmark's helpers)

ROOT = run.ROOT


def read_response(sock, buf):
    """Reads one response (Content-Length framed) from `sock`; returns the rest of `buf`."""
    while b"\r\n\r\n" not in buf:
        chunk = sock.recv(65536)
        if not chunk:
            sys.exit("connection closed")
        buf += chunk
    head, rest = buf.split(b"\r\n\r\n", 1)
    m = re.search(rb"(?i)\r\ncontent-length:\s*(\d+)", head)
    length = int(m.group(1)) if m else 0
    while len(rest) < length:
        chunk = sock.recv(65536)
        if not chunk:
            sys.exit("connection closed")
        rest += chunk
    if not head.startswith(b"HTTP/1.1 2"):
        sys.exit(f"unexpected answer: {head!r} {rest[:300]!r}")
    return rest[length:]


def drive(port, mode, requests, conns, tag):
    """`requests` requests spread over `conns` keep-alive connections, one at a time on
    each, all connections in flight together."""
    socks = [socket.create_connection(("127.0.0.1", port)) for _ in range(conns)]
    bufs = [b""] * conns
    body = b'{"amount":4200,"currency":"eur"}'
    sent = 0
    while sent < requests:
        batch = min(conns, requests - sent)
        for i in range(batch):
            key = f"{tag}-{sent + i}" if mode != "replay" else f"replay-{(sent + i) % 64}"
            req = (f"POST /v1/charges HTTP/1.1\r\nHost: bench\r\nIdempotency-Key: {key}\r\n"
                   f"Authorization: Bearer bench-client\r\n"
                   f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
                   ).encode() + body
            socks[i].sendall(req)
        for i in range(batch):
            bufs[i] = read_response(socks[i], bufs[i])
        sent += batch
    for s in socks:
        s.close()


def summarise(path, requests, top):
    out = subprocess.run(["callgrind_annotate", "--inclusive=no", f"--threshold=100", path],
                         capture_output=True, text=True, check=True).stdout
    total = None
    rows = []
    for line in out.splitlines():
        m = re.match(r"^\s*([\d,]+)\s+\(\s*[\d.]+%\)\s+(.*)$", line)
        if not m:
            continue
        count = int(m.group(1).replace(",", ""))
        name = m.group(2)
        if "PROGRAM TOTALS" in name:
            total = count
            continue
        rows.append((count, name))
    if total is None:
        total = sum(c for c, _ in rows)
    # Frames that were on the stack when the counters were zeroed show up with their
    # inclusive cost: not a function's own.
    rows = [(c, n) for c, n in rows if c < 0.9 * total]
    by_crate = collections.Counter()
    for count, name in rows:
        by_crate[crate_of(name)] += count
    lines = [f"instructions per request: {total / requests:,.0f} ({total:,} for {requests})", "",
             "| share | instr/req | crate |", "|---|---|---|"]
    for crate, count in by_crate.most_common(14):
        lines.append(f"| {100 * count / total:.1f} % | {count / requests:,.0f} | {crate} |")
    lines += ["", "| share | instr/req | function |", "|---|---|---|"]
    for count, name in sorted(rows, reverse=True)[:top]:
        fn = name.split(":", 1)[1] if ":" in name and not name.startswith("<") else name
        fn = re.sub(r"\s*\[[^\]]*\]$", "", fn)
        lines.append(f"| {100 * count / total:.1f} % | {count / requests:,.0f} | `{fn[:110]}` |")
    return "\n".join(lines)


def crate_of(name):
    """The crate (or library) a callgrind function name belongs to."""
    lib = re.search(r"\[([^\]]+)\]\s*$", name)
    fn = name.split(":", 1)[1] if ":" in name else name
    fn = re.sub(r"\s*\[[^\]]*\]$", "", fn).strip()
    if lib and "idem" not in os.path.basename(lib.group(1)):
        base = os.path.basename(lib.group(1))
        return "libc" if base.startswith("libc") else base
    fn = fn.lstrip("<").replace("&", "").replace("mut ", "").replace("dyn ", "")
    head = re.split(r"::|<| as ", fn, maxsplit=1)[0].strip()
    if head in ("", "_"):
        return "(other)"
    if head.startswith(("memcpy", "memmove", "malloc", "free", "realloc", "__", "_int_", "cfree")):
        return "libc"
    return head


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mode", choices=["new", "replay", "pass-through"], default="new")
    ap.add_argument("--requests", type=int, default=2000)
    ap.add_argument("--conns", type=int, default=4)
    ap.add_argument("--top", type=int, default=25)
    ap.add_argument("--store", choices=sorted(run.STORES), default="memory",
                    help="the store of the idem under test (the servers of bench/run.py)")
    ap.add_argument("--extra", default="", help="more `idem serve` flags")
    ap.add_argument("--out", default=None, help="keep the callgrind output here")
    args = ap.parse_args()
    bin_dir = os.path.join(os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target")), "release")
    tmp = args.out or tempfile.mkdtemp(prefix="idem-callgrind-")
    os.makedirs(tmp, exist_ok=True)
    up_port, port = run.free_port(), run.free_port()
    up = subprocess.Popen([os.path.join(bin_dir, "bench-upstream"), f"127.0.0.1:{up_port}"])
    extra = ["--methods", "PUT"] if args.mode == "pass-through" else []
    out_file = os.path.join(tmp, f"callgrind.{args.mode}.out")
    idem = subprocess.Popen(
        ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out_file}.%p",
         os.path.join(bin_dir, "idem"), "serve", "--listen", f"127.0.0.1:{port}",
         "--upstream", f"http://127.0.0.1:{up_port}", "--store", run.STORES[args.store](tmp), "--ttl", "15m",
         *extra, *shlex.split(args.extra)],
        env={**os.environ, "RUST_LOG": "warn"}, stderr=subprocess.DEVNULL)
    try:
        run.wait_port(up_port, timeout=60)
        run.wait_port(port, timeout=60)
        drive(port, args.mode, 200, args.conns, f"warm-{time.time()}")
        subprocess.run(["callgrind_control", "-z", str(idem.pid)], check=True, capture_output=True)
        drive(port, args.mode, args.requests, args.conns, f"run-{time.time()}")
        subprocess.run(["callgrind_control", "-d", "measured", str(idem.pid)], check=True,
                       capture_output=True)
        time.sleep(1)
    finally:
        idem.terminate()
        idem.wait(timeout=60)
        up.terminate()
        up.wait(timeout=10)
    dumps = sorted(f for f in os.listdir(tmp) if f.startswith(f"callgrind.{args.mode}.out.") and f.endswith(".1"))
    if not dumps:
        sys.exit(f"no dump in {tmp}")
    print(f"mode {args.mode}, store {args.store}, {args.requests} requests over {args.conns} connections, "
          f"flags: {args.extra or '(defaults)'}\n")
    print(summarise(os.path.join(tmp, dumps[-1]), args.requests, args.top))


if __name__ == "__main__":
    main()
