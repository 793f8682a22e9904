#!/usr/bin/env python3
"""Checks deploy/kubernetes/sidecar.yaml: every resource against the Kubernetes API
schema (kubernetes-validate --strict, schemas shipped in the package, offline), then
what the schema cannot see: the probes and the Prometheus annotations point at the
admin listener the idem config opens, the Service targets idem rather than the app,
the config's upstream is the app's address, the mounted files are the ones the
config names, and the config itself passes `idem check-config`.

    scripts/k8s-check.py [IDEM_BINARY]   (default target/debug/idem)

Installs kubernetes-validate with pip when missing. Prints '1 passed, 0 failed'."""

import os
import subprocess
import sys
import tempfile

import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MANIFEST = os.path.join(ROOT, "deploy", "kubernetes", "sidecar.yaml")
IDEM = sys.argv[1] if len(sys.argv) > 1 else os.path.join(ROOT, "target", "debug", "idem")


def fail(why):
    print(f"k8s-check: FAILED: {why}", file=sys.stderr)
    print("0 passed, 1 failed")
    sys.exit(1)


def schema_check():
    try:
        import kubernetes_validate  # noqa: F401
    except ImportError:
        subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "kubernetes-validate"], check=True)
    out = subprocess.run(
        [sys.executable, "-m", "kubernetes_validate", "--strict", MANIFEST],
        capture_output=True, text=True,
    )
    sys.stderr.write(out.stdout + out.stderr)
    if out.returncode != 0:
        fail("kubernetes-validate --strict")


def port_of(spec_port, ports):
    """A probe's port: a number, or a name among the container's ports."""
    if isinstance(spec_port, int):
        return spec_port
    for p in ports:
        if p.get("name") == spec_port:
            return p["containerPort"]
    fail(f"port {spec_port!r} is not a port of the container")


def structure_check():
    docs = [d for d in yaml.safe_load_all(open(MANIFEST)) if d]
    by_kind = {d["kind"]: d for d in docs}
    for kind in ("ConfigMap", "Deployment", "Service"):
        if kind not in by_kind:
            fail(f"no {kind}")
    config_text = by_kind["ConfigMap"]["data"]["idem.toml"]
    import tomllib
    config = tomllib.loads(config_text)
    admin_port = int(config["admin_listen"].rsplit(":", 1)[1])
    listen_port = int(config["listen"].rsplit(":", 1)[1])

    pod = by_kind["Deployment"]["spec"]["template"]
    containers = {c["name"]: c for c in pod["spec"]["containers"]}
    idem = containers.get("idem") or fail("no idem container")
    app = next((c for n, c in containers.items() if n != "idem"), None) or fail("no app container")

    probes = {k: idem.get(k) for k in ("startupProbe", "livenessProbe", "readinessProbe")}
    for kind, path in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")):
        probe = probes[kind] or fail(f"idem has no {kind}")
        get = probe["httpGet"]
        if get["path"] != path:
            fail(f"{kind} asks {get['path']}, expected {path}")
        if port_of(get["port"], idem["ports"]) != admin_port:
            fail(f"{kind} is not on the admin port {admin_port}")
    annotations = pod["metadata"].get("annotations", {})
    if annotations.get("prometheus.io/scrape") != "true":
        fail("prometheus.io/scrape is not \"true\"")
    if int(annotations.get("prometheus.io/port", 0)) != admin_port:
        fail("prometheus.io/port is not the admin port")
    if annotations.get("prometheus.io/path") != "/metrics":
        fail("prometheus.io/path is not /metrics")

    app_env = {e["name"]: e.get("value") for e in app.get("env", [])}
    if not any(v and config["upstream"].endswith(v) for v in app_env.values()):
        fail(f"upstream {config['upstream']} is not an address the app is told to listen on")

    service = by_kind["Service"]["spec"]
    for p in service["ports"]:
        if port_of(p["targetPort"], idem["ports"]) != listen_port:
            fail(f"the Service targets {p['targetPort']}, not idem's listen port {listen_port}")

    args = idem["args"]
    config_path = args[args.index("--config") + 1]
    mounts = {m["mountPath"]: m for m in idem.get("volumeMounts", [])}
    if config_path not in mounts:
        fail(f"{config_path} is not mounted")
    store = next(e for e in idem["env"] if e["name"] == "IDEM_STORE")
    secret = store["valueFrom"]["secretKeyRef"]["name"]
    volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
    tls_mount = mounts.get("/etc/idem/tls") or fail("/etc/idem/tls is not mounted")
    if volumes[tls_mount["name"]]["secret"]["secretName"] != secret:
        fail("the CA file does not come from the store's Secret")

    security = idem.get("securityContext", {})
    for key, want in (("allowPrivilegeEscalation", False), ("readOnlyRootFilesystem", True)):
        if security.get(key) is not want:
            fail(f"idem securityContext.{key} is not {want}")
    return config_text, config_path


def idem_check(config_text):
    if not os.access(IDEM, os.X_OK):
        fail(f"{IDEM} is not built (cargo build -p idem-proxy)")
    with tempfile.NamedTemporaryFile("w", suffix=".toml") as f:
        f.write(config_text)
        f.flush()
        env = dict(os.environ, IDEM_LOG_FORMAT="json")
        out = subprocess.run([IDEM, "check-config", "--config", f.name], capture_output=True, text=True, env=env)
    sys.stderr.write(out.stdout + out.stderr)
    if out.returncode != 0:
        fail("idem check-config refused the ConfigMap's idem.toml")


schema_check()
text, path = structure_check()
idem_check(text)
print("k8s-check: schema (kubernetes-validate --strict), probes, annotations, Service, mounts and idem check-config: ok", file=sys.stderr)
print("1 passed, 0 failed")
