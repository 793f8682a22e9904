//! A hostile or damaged store file under `idem serve --store file:DIR` (R16, R25): a
//! record edited in the file is never replayed nor run again; a file emptied, replaced
//! by garbage or by someone else's database is refused at startup with one line, never
//! a panic and never a silent empty store; `?fresh=true` starts anyway, keeping the old
//! file aside; `idem check-store` finds the damage.

use std::path::Path;
use std::process::{Command, Output};

use idem::core::ProblemKind;
use idem_testkit::{Client, CountingUpstream};

use crate::common::{BIN, serve, serve_command_on};

/// The marker the upstream echoes into the stored response body, so the test can find
/// the body's bytes in the database file.
const MARKER: &[u8] = b"FIND-ME-IN-THE-STORE";
/// What the bytes become: the same length, so every length field still fits.
const TAMPERED: &[u8] = b"TAMPERED-BY-ATTACKER";

fn db_file(dir: &Path) -> std::path::PathBuf {
    dir.join(idem::redb::layout::FILE_NAME)
}

/// A file store in `dir` holding one completed record of key `key`, whose response
/// body carries [`MARKER`]; idem is stopped again.
async fn store_with_a_record(dir: &Path, upstream: &CountingUpstream, key: &str) {
    let store = format!("file:{}", dir.display());
    let up = format!("http://{}", upstream.addr());
    let proc = serve(&["--upstream", &up, "--store", &store]).await;
    let body = format!("{{\"note\":\"{}\"}}", String::from_utf8_lossy(MARKER));
    let first = Client::new(proc.addr).post("/charges", key, &body).await;
    assert_eq!(first.status, 201, "{first:?}");
    proc.terminate();
}

/// Overwrites every copy of `from` in the file with `to`; answers how many.
fn overwrite(file: &Path, from: &[u8], to: &[u8]) -> usize {
    let mut bytes = std::fs::read(file).unwrap();
    let mut n = 0;
    let mut i = 0;
    while let Some(at) = bytes[i..].windows(from.len()).position(|w| w == from) {
        bytes[i + at..i + at + to.len()].copy_from_slice(to);
        i += at + to.len();
        n += 1;
    }
    std::fs::write(file, bytes).unwrap();
    n
}

fn run(args: &[&str]) -> Output {
    Command::new(BIN).args(args).output().unwrap()
}

/// `idem serve` on `store` must refuse to start: exit 2, one line naming the file, no
/// panic.
fn assert_refused(store: &str, says: &str) {
    let out = serve_command_on(store).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{store}: {stderr}");
    let lines: Vec<_> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "{store}: {stderr}");
    assert!(lines[0].starts_with("idem: "), "{stderr}");
    assert!(lines[0].contains("records.redb"), "{stderr}");
    assert!(lines[0].contains(says), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

// R25, R16: a response body edited in place in the file is neither replayed nor run
// again: 503, upstream untouched; check-store reports it and exits 1.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn r25_a_record_edited_in_the_file_is_503_never_replayed_nor_run_again() {
    let upstream = CountingUpstream::spawn().await;
    let dir = tempfile::tempdir().unwrap();
    store_with_a_record(dir.path(), &upstream, "edited").await;
    let store = format!("file:{}", dir.path().display());

    let healthy = run(&["check-store", "--store", &store]);
    assert_eq!(healthy.status.code(), Some(0), "{healthy:?}");
    assert!(
        String::from_utf8_lossy(&healthy.stdout).contains("1 good record(s) (1 completed"),
        "{healthy:?}"
    );

    assert!(overwrite(&db_file(dir.path()), MARKER, TAMPERED) >= 1);

    let checked = run(&["check-store", "--store", &store]);
    let stdout = String::from_utf8_lossy(&checked.stdout);
    assert_eq!(checked.status.code(), Some(1), "{checked:?}");
    assert!(stdout.contains("0 good record(s)"), "{stdout}");
    assert!(stdout.contains("1 corrupt"), "{stdout}");
    assert!(stdout.contains(":edited (corrupt record"), "{stdout}");
    // On call sees it too: listed apart, so it can be deleted.
    let listed = run(&["keys", "list", "--store", &store, "--json"]);
    assert_eq!(listed.status.code(), Some(0), "{listed:?}");
    let page: serde_json::Value = serde_json::from_slice(&listed.stdout).unwrap();
    assert_eq!(page["keys"], serde_json::json!([]), "{page}");
    assert_eq!(page["corrupt"][0]["key"], "edited", "{page}");

    let up = format!("http://{}", upstream.addr());
    let proc = serve(&["--upstream", &up, "--store", &store]).await;
    let body = format!("{{\"note\":\"{}\"}}", String::from_utf8_lossy(MARKER));
    for _ in 0..2 {
        let retry = Client::new(proc.addr)
            .post("/charges", "edited", &body)
            .await;
        assert_eq!(retry.status, 503, "{retry:?}");
        assert_eq!(
            retry.problem_type(),
            ProblemKind::StoreUnavailable.type_uri()
        );
        assert!(!retry.replayed());
        assert!(!String::from_utf8_lossy(&retry.body).contains("TAMPERED"));
    }
    assert_eq!(upstream.executions(), 1, "the damaged key ran again");
    // Other keys are served as before.
    let other = Client::new(proc.addr).post("/charges", "other", "{}").await;
    assert_eq!(other.status, 201);
    proc.terminate();
}

// R25: a database file emptied to 0 bytes is refused, not taken for a new store (every
// key would run again); `?fresh=true` starts an empty store and keeps the file aside.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn r25_an_emptied_database_file_is_refused_unless_fresh() {
    let upstream = CountingUpstream::spawn().await;
    let dir = tempfile::tempdir().unwrap();
    store_with_a_record(dir.path(), &upstream, "emptied").await;
    let file = db_file(dir.path());
    std::fs::File::create(&file).unwrap(); // truncates
    let store = format!("file:{}", dir.path().display());

    assert_refused(&store, "is empty (0 bytes)");
    assert_eq!(std::fs::metadata(&file).unwrap().len(), 0, "left as found");
    let checked = run(&["check-store", "--store", &store]);
    assert_eq!(checked.status.code(), Some(2), "{checked:?}");

    let fresh = format!("{store}?fresh=true");
    let up = format!("http://{}", upstream.addr());
    let proc = serve(&["--upstream", &up, "--store", &fresh]).await;
    let again = Client::new(proc.addr)
        .post("/charges", "emptied", "{}")
        .await;
    assert_eq!(again.status, 201);
    proc.terminate();
    let aside: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("records.redb.unusable-"))
        .collect();
    assert_eq!(aside.len(), 1, "{aside:?}");
    // The new database is idem's: it opens without the option.
    let proc = serve(&["--upstream", &up, "--store", &store]).await;
    proc.terminate();
}

// R25: garbage where the database should be, or garbage behind redb's own magic bytes,
// is one line and exit 2, never a panic; the file is left as found.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn r25_a_garbage_database_file_is_one_line_never_a_panic() {
    let upstream = CountingUpstream::spawn().await;
    let dir = tempfile::tempdir().unwrap();
    store_with_a_record(dir.path(), &upstream, "garbage").await;
    let file = db_file(dir.path());
    let real = std::fs::read(&file).unwrap();
    let store = format!("file:{}", dir.path().display());

    let mut noise = vec![0u8; 64 * 1024];
    let mut x = 0x9e37_79b9_7f4a_7c15_u64;
    for b in &mut noise {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        *b = x as u8;
    }
    std::fs::write(&file, &noise).unwrap();
    assert_refused(
        &store,
        "is not an idem database (it is not a redb database)",
    );
    assert_eq!(std::fs::read(&file).unwrap(), noise, "left as found");

    // redb's header intact, everything after it noise: redb itself must give up.
    let mut behind = real.clone();
    let n = behind.len().min(noise.len());
    behind[64..n].copy_from_slice(&noise[64..n]);
    std::fs::write(&file, &behind).unwrap();
    assert_refused(&store, "is damaged");

    let fresh = format!("{store}?fresh=true");
    let up = format!("http://{}", upstream.addr());
    let proc = serve(&["--upstream", &up, "--store", &fresh]).await;
    let again = Client::new(proc.addr)
        .post("/charges", "garbage", "{}")
        .await;
    assert_eq!(again.status, 201);
    proc.terminate();
}
