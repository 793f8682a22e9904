//! Running helper commands (`initdb`, `openssl`, ...) from test fixtures.

use std::process::Command;

/// Runs `cmd` to completion; panics with its output if it cannot start or fails.
pub fn run(cmd: &mut Command) {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
