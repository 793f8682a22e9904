//! The per-request work of the engine, without I/O: key parsing, fingerprinting, the
//! record codec, and one protected request (begin + complete, then a replay) on the
//! memory store. Run with `cargo bench -p idem-core`.

use std::hint::black_box;

use bytes::Bytes;
use criterion::{Criterion, criterion_group, criterion_main};
use http::{HeaderMap, HeaderValue, Method, Request, Response};
use idem_core::engine::{Begin, Engine, Inspect};
use idem_core::fingerprint::{Fingerprint, FingerprintMode};
use idem_core::key::IdempotencyKey;
use idem_core::policy::Policy;
use idem_core::record::{Record, Snapshot, SnapshotBody, State};
use idem_core::store::{MemoryStore, MemoryStoreConfig};

const BODY: &[u8] =
    br#"{"amount":4200,"currency":"EUR","customer":"cus_0123456789","description":"order 42"}"#;

fn key(c: &mut Criterion) {
    let bare = HeaderValue::from_static("0195f0e4-7b7c-7c3a-9b1e-5f3c2a1d4e6f");
    let quoted = HeaderValue::from_static("\"0195f0e4-7b7c-7c3a-9b1e-5f3c2a1d4e6f\"");
    c.bench_function("key/parse_bare", |b| {
        b.iter(|| IdempotencyKey::parse(black_box(&bare), 255));
    });
    c.bench_function("key/parse_quoted", |b| {
        b.iter(|| IdempotencyKey::parse(black_box(&quoted), 255));
    });
}

fn fingerprint(c: &mut Criterion) {
    let headers = HeaderMap::new();
    for (name, mode) in [
        ("raw", FingerprintMode::Raw),
        ("json", FingerprintMode::Json),
    ] {
        c.bench_function(&format!("fingerprint/{name}"), |b| {
            b.iter(|| {
                Fingerprint::compute(
                    mode,
                    &Method::POST,
                    "/v1/charges",
                    &headers,
                    &[],
                    black_box(BODY),
                )
            });
        });
    }
}

fn codec(c: &mut Criterion) {
    let mut headers = HeaderMap::new();
    headers.insert("content-type", HeaderValue::from_static("application/json"));
    headers.insert(
        "x-request-id",
        HeaderValue::from_static("req_0123456789abcdef"),
    );
    let record = Record {
        fingerprint: Fingerprint::from_bytes([7; 32]),
        created_at: 1,
        state: State::Completed {
            snapshot: Snapshot {
                status: http::StatusCode::CREATED,
                reason: None,
                headers,
                body: SnapshotBody::Full(Bytes::from(vec![b'x'; 200])),
            },
            expires_at: 2,
        },
    };
    let bytes = record.encode();
    c.bench_function("codec/encode_200b", |b| {
        b.iter(|| black_box(&record).encode());
    });
    c.bench_function("codec/decode_200b", |b| {
        b.iter(|| Record::decode(black_box(&bytes)));
    });
}

fn engine(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    // Unbounded, so millions of iterations never hit the bound.
    let store = rt.block_on(async {
        MemoryStore::with_config(MemoryStoreConfig {
            max_bytes: usize::MAX,
            capacity: usize::MAX,
            ..MemoryStoreConfig::default()
        })
    });
    let engine = Engine::new(store, Policy::default());
    let (head, ()) = Response::builder()
        .status(201)
        .body(())
        .unwrap()
        .into_parts();
    let mut n = 0u64;
    c.bench_function("engine/new_key_memory", |b| {
        b.to_async(&rt).iter(|| {
            n += 1;
            let (parts, ()) = Request::post("/v1/charges")
                .header("idempotency-key", format!("k-{n}"))
                .body(())
                .unwrap()
                .into_parts();
            let (engine, head) = (&engine, &head);
            async move {
                let Inspect::Protect(p) = engine.inspect(&parts) else {
                    unreachable!()
                };
                let Begin::Execute(t) = engine.begin(p, &parts, BODY).await else {
                    unreachable!()
                };
                engine
                    .complete(t, head, Ok(Bytes::from_static(b"{\"id\":\"ch_1\"}")))
                    .await
            }
        });
    });
    let (parts, ()) = Request::post("/v1/charges")
        .header("idempotency-key", "replayed")
        .body(())
        .unwrap()
        .into_parts();
    rt.block_on(async {
        let Inspect::Protect(p) = engine.inspect(&parts) else {
            unreachable!()
        };
        let Begin::Execute(t) = engine.begin(p, &parts, BODY).await else {
            unreachable!()
        };
        engine
            .complete(t, &head, Ok(Bytes::from_static(b"{\"id\":\"ch_1\"}")))
            .await;
    });
    c.bench_function("engine/replay_memory", |b| {
        b.to_async(&rt).iter(|| async {
            let Inspect::Protect(p) = engine.inspect(&parts) else {
                unreachable!()
            };
            let Begin::Respond(r) = engine.begin(p, &parts, BODY).await else {
                unreachable!()
            };
            r
        });
    });
}

criterion_group!(benches, key, fingerprint, codec, engine);
criterion_main!(benches);
