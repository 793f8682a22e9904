//! Encryption at rest through the `idem` binary: `--encryption-key-file` on the embedded
//! store and on Redis. Replays work, the store's raw bytes hold neither the response nor
//! the key, a rotated key list still replays old records, and a record sealed under a
//! key no longer listed answers a problem, never garbage.

use std::path::Path;
use std::process::Command;

use idem::core::IdempotencyKey;
use idem::core::record::{OwnerToken, RecordId};
use idem::core::scope::Scope;
use idem::core::store::SealingKeys;
use idem::redis::redis_key;
use idem_testkit::{Client, CountingUpstream};

use crate::common::{serve, serve_command};

const K1: &str = "k1:AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE=";
const K2: &str = "k2:AgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgI=";

fn write_keys(path: &Path, lines: &[&str]) {
    std::fs::write(path, format!("# newest first\n{}\n", lines.join("\n"))).unwrap();
}

fn contains(hay: &[u8], needle: &str) -> bool {
    hay.windows(needle.len()).any(|w| w == needle.as_bytes())
}

/// Every byte of every file under `dir`.
fn dir_bytes(dir: &Path) -> Vec<u8> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_file() {
            out.extend(std::fs::read(path).unwrap());
        }
    }
    out
}

fn redis_cli(args: &[&str]) -> Vec<u8> {
    let out = Command::new("redis-cli")
        .args(["-h", "127.0.0.1", "-p", "6379"])
        .args(args)
        .output()
        .expect("redis-cli runs");
    assert!(out.status.success(), "redis-cli {args:?}: {out:?}");
    out.stdout
}

/// The Redis hashes of the records of `keys` (global scope), read whole, after checking
/// that no hash sits at a raw key's own Redis key.
fn redis_bytes(keys: &[&str]) -> Vec<u8> {
    let sealing = SealingKeys::parse(K1).unwrap();
    let mut out = Vec::new();
    for key in keys {
        let id = RecordId::new(Scope::GLOBAL, IdempotencyKey::new(key).unwrap());
        let plain = redis_key(PREFIX, &id);
        assert_eq!(
            redis_cli(&["EXISTS", &plain]),
            b"0\n",
            "record at the raw key"
        );
        let sealed = redis_key(PREFIX, &sealing.store_id(&id));
        out.extend_from_slice(sealed.as_bytes());
        let fields = redis_cli(&["HGETALL", &sealed]);
        assert!(fields.len() > 64, "no record at {sealed}");
        out.extend(fields);
    }
    out
}

/// The Redis store's default key prefix.
const PREFIX: &str = "idem";

/// The whole story on one store; `dump` reads the store's raw bytes.
async fn sealed_story(store: &str, dump: impl Fn(&[&str]) -> Vec<u8>) {
    let upstream = CountingUpstream::spawn().await;
    let dir = tempfile::tempdir().unwrap();
    let key_file = dir.path().join("keys");
    let key_path = key_file.display().to_string();
    let up = format!("http://{}", upstream.addr());
    let args = [
        "--upstream",
        up.as_str(),
        "--store",
        store,
        "--encryption-key-file",
        key_path.as_str(),
        "--scope-header",
        "none",
    ];
    let run = OwnerToken::random().to_hex();
    let old_key = format!("raw-key-old-{run}");
    let new_key = format!("raw-key-new-{run}");
    let marker = "BODY-MARKER-7d1f";

    // R8: with one key, the first request runs and a retry replays it.
    write_keys(&key_file, &[K1]);
    let proc = serve(&args).await;
    let client = Client::new(proc.addr);
    let body = format!("{{\"note\":\"{marker}\"}}");
    let first = client.post("/charges", &old_key, &body).await;
    assert_eq!(first.status, 201);
    assert!(contains(&first.body, marker));
    let replay = client.post("/charges", &old_key, &body).await;
    assert!(replay.replayed());
    assert_eq!(replay.body, first.body);
    assert_eq!(replay.header("x-seen-key"), Some(old_key.as_str()));
    proc.kill();
    assert_eq!(upstream.executions(), 1);

    // The store holds neither the response nor the key, in any encoding.
    let raw = dump(&[&old_key]);
    assert!(!contains(&raw, marker), "response body stored in the clear");
    assert!(!contains(&raw, &old_key), "raw key stored");
    assert!(
        !contains(&raw, &idem_testkit::hex(old_key.as_bytes())),
        "hex of the raw key stored"
    );
    assert!(
        !contains(&raw, "application/json"),
        "headers stored in the clear"
    );

    // Rotation: a new key first; the old record still replays, new ones seal with k2.
    write_keys(&key_file, &[K2, K1]);
    let proc = serve(&args).await;
    let client = Client::new(proc.addr);
    let replay = client.post("/charges", &old_key, &body).await;
    assert!(replay.replayed());
    assert_eq!(replay.body, first.body);
    let second = client.post("/charges", &new_key, &body).await;
    assert_eq!(second.status, 201);
    assert!(!second.replayed());
    proc.kill();
    assert_eq!(upstream.executions(), 2);
    let raw = dump(&[&old_key, &new_key]);
    assert!(!contains(&raw, &new_key));
    assert!(!contains(&raw, &idem_testkit::hex(new_key.as_bytes())));
    assert!(!contains(&raw, marker));

    // R15: k2 missing from the list: its record answers a problem, is not replayed and
    // does not run again; k1's record still replays.
    write_keys(&key_file, &[K1]);
    let proc = serve(&args).await;
    let client = Client::new(proc.addr);
    let refused = client.post("/charges", &new_key, &body).await;
    assert_eq!(refused.status, 503);
    assert!(refused.problem_type().ends_with("#store-unavailable"));
    assert!(!contains(&refused.body, marker));
    let replay = client.post("/charges", &old_key, &body).await;
    assert!(replay.replayed());
    assert_eq!(replay.body, first.body);
    proc.kill();
    assert_eq!(upstream.executions(), 2);
}

// R8, R15: sealed records on the embedded store.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn r08_sealed_redb_replays_and_hides_responses_and_keys() {
    let data = tempfile::tempdir().unwrap();
    let store = format!("file:{}", data.path().display());
    sealed_story(&store, |_| dir_bytes(data.path())).await;
}

// R8, R15: sealed records on Redis (the raw keys are unique to this run).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn r08_sealed_redis_replays_and_hides_responses_and_keys() {
    sealed_story("redis://127.0.0.1:6379/0", redis_bytes).await;
}

// Bad key lists are one line on stderr and exit code 2, naming the problem but never
// the key material.
#[test]
fn bad_key_list_is_a_one_line_error() {
    let dir = tempfile::tempdir().unwrap();
    let cases: [(&str, &str); 5] = [
        ("k1:not base64!", "not valid base64"),
        ("k1:AAAA", "3 bytes, expected 32"),
        ("just-a-key", "expected ID:BASE64"),
        ("# nothing\n", "no encryption keys"),
        (&format!("{K1}\n{K1}"), "appears twice"),
    ];
    for (i, (text, expected)) in cases.iter().enumerate() {
        let path = dir.path().join(format!("keys{i}"));
        std::fs::write(&path, text).unwrap();
        let out = serve_command()
            .arg("--encryption-key-file")
            .arg(&path)
            .env_remove("IDEM_ENCRYPTION_KEYS")
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{text}: {stderr}");
        let lines: Vec<_> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
        assert_eq!(lines.len(), 1, "{stderr}");
        assert!(lines[0].starts_with("idem: "), "{stderr}");
        assert!(lines[0].contains(expected), "{text}: {stderr}");
        assert!(!stderr.contains("AQEBAQEB"), "key material in: {stderr}");
    }
    // The environment variable is read the same way.
    let out = serve_command()
        .env("IDEM_ENCRYPTION_KEYS", "k1:AAAA")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("IDEM_ENCRYPTION_KEYS"), "{stderr}");
    assert!(stderr.contains("expected 32"), "{stderr}");
    // A file that does not exist.
    let out = serve_command()
        .args(["--encryption-key-file", "/nonexistent/idem-keys"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("cannot read --encryption-key-file"),
        "{stderr}"
    );
}
