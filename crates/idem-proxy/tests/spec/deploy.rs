//! The Kubernetes sidecar example: scripts/k8s-check.py validates the manifest against
//! the Kubernetes schema, checks its probes, annotations, Service and mounts against the
//! idem config it carries, and runs that config through this build's `idem
//! check-config`.

use std::path::Path;
use std::process::Command;

use crate::common;

#[test]
fn the_kubernetes_sidecar_manifest_checks() {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/k8s-check.py");
    let out = Command::new("python3")
        .arg(&script)
        .arg(common::BIN)
        .output()
        .expect("python3 runs scripts/k8s-check.py");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("1 passed, 0 failed"),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
