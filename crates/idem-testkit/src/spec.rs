//! SPEC.md over HTTP: one `pub async fn` per behaviour, run against any [`Target`]
//! (the proxy, an axum app with the layer) and any store. Each test names its rule.

use std::any::Any;
use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use http::{HeaderMap, HeaderValue, Method, StatusCode};
use http_body_util::BodyExt;
use idem_core::fingerprint::{Fingerprint, FingerprintMode};
use idem_core::key::IdempotencyKey;
use idem_core::policy::{OnConcurrent, Policy, Unscoped};
use idem_core::problem::ProblemKind;
use idem_core::record::{OwnerToken, RecordId};
use idem_core::scope::ScopeSource;
use idem_core::store::testkit::{Fixture, snapshot};
use idem_core::store::{Claim, ClaimRequest, Finish, Store};

use crate::client::{Client, Resp};
use crate::upstream::CountingUpstream;

/// A running front (proxy or app); dropping it stops it.
pub struct Front {
    /// Where it listens.
    pub addr: SocketAddr,
    _guard: Box<dyn Any + Send + Sync>,
}

impl Front {
    /// A front at `addr`, kept running as long as `guard` lives.
    pub fn new(addr: SocketAddr, guard: impl Any + Send + Sync) -> Self {
        Self {
            addr,
            _guard: Box::new(guard),
        }
    }
}

impl std::fmt::Debug for Front {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Front").field("addr", &self.addr).finish()
    }
}

/// What the suite runs against: a way to make a store and to start a front on it.
pub trait Target: Send + Sync + 'static {
    /// The store fixture.
    type Fixture: Fixture;
    /// A fresh store for one test.
    fn fixture(&self) -> impl Future<Output = Self::Fixture> + Send;
    /// Starts a front over `store` with `policy`, in front of `upstream`.
    fn start(
        &self,
        store: <Self::Fixture as Fixture>::Store,
        upstream: &CountingUpstream,
        policy: Policy,
    ) -> impl Future<Output = Front> + Send;
}

/// A way to start a front over any store: the proxy, an app with the layer.
pub trait Start: Send + Sync + 'static {
    /// Starts a front over `store` with `policy`, in front of `upstream`.
    fn start<St: Store>(
        &self,
        store: St,
        upstream: &CountingUpstream,
        policy: Policy,
    ) -> impl Future<Output = Front> + Send;
}

/// A [`Target`]: fronts started by `S` on stores made by a plain function (stores on a
/// manual clock, say). Networked stores, made asynchronously, implement [`Target`]
/// themselves.
#[derive(Debug)]
pub struct On<S, F> {
    start: S,
    make: fn() -> F,
}

impl<S, F> On<S, F> {
    /// Fronts started by `start` on fixtures made by `make`.
    pub fn new(start: S, make: fn() -> F) -> Self {
        Self { start, make }
    }
}

impl<S: Start, F: Fixture> Target for On<S, F> {
    type Fixture = F;
    async fn fixture(&self) -> F {
        (self.make)()
    }
    async fn start(&self, store: F::Store, upstream: &CountingUpstream, policy: Policy) -> Front {
        self.start.start(store, upstream, policy).await
    }
}

/// One test's world: store fixture, counting upstream, front and client.
#[allow(missing_debug_implementations)] // holds an arbitrary fixture
pub struct World<F> {
    /// The store.
    pub fx: F,
    /// The upstream.
    pub upstream: CountingUpstream,
    /// The front.
    pub front: Front,
    /// A client of the front.
    pub client: Client,
}

/// Starts a world with `policy`.
pub async fn world<T: Target>(t: &T, policy: Policy) -> World<T::Fixture> {
    let fx = t.fixture().await;
    let upstream = CountingUpstream::spawn().await;
    let front = t.start(fx.store().clone(), &upstream, policy).await;
    let client = Client::new(front.addr);
    World {
        fx,
        upstream,
        front,
        client,
    }
}

fn kind(resp: &Resp, kind: ProblemKind) {
    assert_eq!(resp.problem_type(), kind.type_uri(), "{resp:?}");
}

/// Fires `n` copies of the same request at once.
async fn burst(client: &Client, n: usize, path: &str, key: &str, body: &str) -> Vec<Resp> {
    let tasks: Vec<_> = (0..n)
        .map(|_| {
            let (client, path, key, body) = (
                client.clone(),
                path.to_owned(),
                key.to_owned(),
                body.to_owned(),
            );
            tokio::spawn(async move { client.post(&path, &key, &body).await })
        })
        .collect();
    let mut out = Vec::with_capacity(n);
    for t in tasks {
        out.push(t.await.expect("request task"));
    }
    out
}

/// Polls `f` until it holds, or fails after 10 s.
async fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !f() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// R1: `"abc"` and `abc` name one key; the header reaches the upstream as sent.
pub async fn r01_quoted_and_bare_are_one_key<T: Target>(t: &T) {
    let w = world(t, Policy::default()).await;
    let first = w.client.post("/charges", "\"order-1\"", "{}").await;
    assert_eq!(first.status, 201);
    assert_eq!(first.header("x-seen-key"), Some("\"order-1\""));
    let bare = w.client.post("/charges", "order-1", "{}").await;
    assert!(bare.replayed());
    assert_eq!(bare.body, first.body);
    assert_eq!(w.upstream.executions(), 1);
}

/// R1, R17: repeated, empty, too long or malformed keys are 400; upstream not called.
pub async fn r01_invalid_keys_are_400<T: Target>(t: &T) {
    let w = world(t, Policy::default()).await;
    let long = "k".repeat(256);
    for bad in ["", "\"\"", "\"open", "a b", "\"x\"junk", long.as_str()] {
        let resp = w.client.post("/charges", bad, "{}").await;
        assert_eq!(resp.status, 400, "key {bad:?}");
        kind(&resp, ProblemKind::InvalidKey);
    }
    let twice = w
        .client
        .send(
            Method::POST,
            "/charges",
            &[("idempotency-key", "a"), ("idempotency-key", "a")],
            b"{}",
        )
        .await;
    assert_eq!(twice.status, 400);
    kind(&twice, ProblemKind::InvalidKey);
    assert_eq!(w.upstream.executions(), 0);
}

/// R2: uncovered methods pass through untouched, key or no key.
pub async fn r02_uncovered_methods_pass_through<T: Target>(t: &T) {
    let w = world(t, Policy::default()).await;
    for method in [Method::GET, Method::PUT, Method::DELETE] {
        for _ in 0..2 {
            let resp = w
                .client
                .send(method.clone(), "/things", &[("idempotency-key", "k")], b"")
                .await;
            assert_eq!(resp.status, 200);
            assert!(!resp.replayed());
        }
    }
    // Even an invalid key is not judged on an uncovered method.
    let resp = w
        .client
        .send(Method::GET, "/things", &[("idempotency-key", "")], b"")
        .await;
    assert_eq!(resp.status, 200);
    assert_eq!(w.upstream.executions(), 7);
}

/// R3: without a key a covered request passes through unprotected by default …
pub async fn r03_missing_key_passes_by_default<T: Target>(t: &T) {
    let w = world(t, Policy::default()).await;
    for _ in 0..2 {
        let resp = w.client.send(Method::POST, "/charges", &[], b"{}").await;
        assert_eq!(resp.status, 201);
    }
    assert_eq!(w.upstream.executions(), 2);
}

/// R3: … and is 400 naming the header when a key is required.
pub async fn r03_required_key_is_400<T: Target>(t: &T) {
    let policy = Policy::builder().require_key(true).build().unwrap();
    let w = world(t, policy).await;
    let resp = w.client.send(Method::POST, "/charges", &[], b"{}").await;
    assert_eq!(resp.status, 400);
    kind(&resp, ProblemKind::MissingKey);
    assert!(
        resp.json()["detail"]
            .as_str()
            .unwrap()
            .contains("Idempotency-Key")
    );
    assert_eq!(w.upstream.executions(), 0);
}

/// R4: the same key under two credentials is two operations; neither sees the other's
/// response.
pub async fn r04_tenants_are_isolated<T: Target>(t: &T) {
    let w = world(t, Policy::default()).await;
    let send = |who: &'static str| {
        let c = w.client.clone();
        async move {
            c.send(
                Method::POST,
                "/charges",
                &[("idempotency-key", "same"), ("authorization", who)],
                who.as_bytes(),
            )
            .await
        }
    };
    let a = send("Bearer alice").await;
    let b = send("Bearer bob").await;
    assert!(!a.replayed() && !b.replayed());
    assert_eq!(w.upstream.executions(), 2);
    let a2 = send("Bearer alice").await;
    let b2 = send("Bearer bob").await;
    assert!(a2.replayed() && b2.replayed());
    assert_eq!(a2.body, a.body);
    assert_eq!(b2.body, b.body);
    assert_ne!(a.body, b.body);
    assert_eq!(w.upstream.executions(), 2);
}

/// R4: keyed requests of callers without credentials are refused by default, so two
/// anonymous callers never meet on one record; configured to pass, each runs
/// unprotected and neither ever receives the other's response.
pub async fn r04_unscoped_requests_never_share_a_scope<T: Target>(t: &T) {
    let send = |client: Client, cookie: &'static str| async move {
        client
            .anonymous()
            .send(
                Method::POST,
                "/charges",
                &[("idempotency-key", "same"), ("cookie", cookie)],
                cookie.as_bytes(),
            )
            .await
    };
    let w = world(t, Policy::default()).await;
    for cookie in ["session=alice", "session=bob"] {
        let refused = send(w.client.clone(), cookie).await;
        assert_eq!(refused.status, 400, "{refused:?}");
        kind(&refused, ProblemKind::UnscopedRequest);
    }
    assert_eq!(w.upstream.executions(), 0);

    let pass = Policy::builder().unscoped(Unscoped::Pass).build().unwrap();
    let w = world(t, pass).await;
    let alice = send(w.client.clone(), "session=alice").await;
    let bob = send(w.client.clone(), "session=bob").await;
    let alice2 = send(w.client.clone(), "session=alice").await;
    for r in [&alice, &bob, &alice2] {
        assert_eq!(r.status, 201, "{r:?}");
        assert!(!r.replayed(), "{r:?}");
    }
    assert_ne!(alice.body, bob.body);
    assert_eq!(w.upstream.executions(), 3, "unprotected: each ran");
}

/// R4: under one shared scope (an explicit setting), a response that sets a cookie is
/// not stored for replay, so no caller receives another's session.
pub async fn r04_shared_scope_never_replays_a_cookie<T: Target>(t: &T) {
    let shared = Policy::builder()
        .scope(ScopeSource::none())
        .build()
        .unwrap();
    let w = world(t, shared).await;
    let anon = w.client.anonymous();
    let login = || {
        anon.send(
            Method::POST,
            "/login",
            &[("idempotency-key", "login-1")],
            b"{}",
        )
    };
    let first = login().await;
    assert_eq!(first.status, 201, "{first:?}");
    assert_eq!(first.header("set-cookie"), Some("session=s1; HttpOnly"));
    let retry = login().await;
    assert_eq!(retry.status, 410, "{retry:?}");
    kind(&retry, ProblemKind::NotRetained);
    assert!(retry.header("set-cookie").is_none(), "{retry:?}");
    assert_eq!(w.upstream.executions_of("/login"), 1, "never run twice");
}

/// R5: in JSON mode a reordered body is the same request; in raw mode it is not.
pub async fn r05_json_fingerprint_mode<T: Target>(t: &T) {
    let policy = Policy::builder()
        .fingerprint(FingerprintMode::Json)
        .build()
        .unwrap();
    let w = world(t, policy).await;
    let first = w
        .client
        .post("/charges", "j1", r#"{"amount":100,"currency":"EUR"}"#)
        .await;
    let again = w
        .client
        .post(
            "/charges",
            "j1",
            "{ \"currency\": \"EUR\",\n \"amount\": 100 }",
        )
        .await;
    assert!(again.replayed());
    assert_eq!(again.body, first.body);
    let other = w
        .client
        .post("/charges", "j1", r#"{"amount":101,"currency":"EUR"}"#)
        .await;
    assert_eq!(other.status, 422);

    let raw = world(t, Policy::default()).await;
    raw.client.post("/charges", "r1", r#"{"a":1,"b":2}"#).await;
    let reordered = raw.client.post("/charges", "r1", r#"{"b":2,"a":1}"#).await;
    assert_eq!(reordered.status, 422);
    // The query string counts too.
    let query = raw
        .client
        .post("/charges?x=1", "r1", r#"{"a":1,"b":2}"#)
        .await;
    assert_eq!(query.status, 422);
    assert_eq!(raw.upstream.executions(), 1);
}

/// R6, R8: the first request runs; a retry replays it and the upstream is not called.
pub async fn r06_first_runs_then_replays<T: Target>(t: &T) {
    let w = world(t, Policy::default()).await;
    let first = w.client.post("/charges", "k1", "{\"amount\":1}").await;
    assert_eq!(first.status, 201);
    assert!(!first.replayed());
    assert_eq!(w.upstream.executions(), 1);
    for _ in 0..5 {
        let retry = w.client.post("/charges", "k1", "{\"amount\":1}").await;
        assert!(retry.replayed());
        assert_eq!(retry.body, first.body);
    }
    assert_eq!(w.upstream.executions(), 1);
}

/// R6, R10: 50 simultaneous duplicates: the upstream runs once; the others get 409 or,
/// once it finished, the replay — nothing else.
pub async fn r06_concurrent_duplicates_run_once<T: Target>(t: &T) {
    let w = world(t, Policy::default()).await;
    let resps = burst(&w.client, 50, "/charges?delay_ms=300", "dup", "{}").await;
    assert_eq!(w.upstream.executions(), 1);
    crate::client::the_one_executed(&resps);
    for r in &resps {
        match r.status.as_u16() {
            201 => {}
            409 => kind(r, ProblemKind::InFlight),
            other => panic!("unexpected {other}: {r:?}"),
        }
    }
}

/// R6: a client that disconnects does not cancel the work; its retry gets the replay.
pub async fn r06_client_disconnect_does_not_cancel<T: Target>(t: &T) {
    let w = world(t, Policy::default()).await;
    let gone = tokio::time::timeout(
        Duration::from_millis(100),
        w.client.post("/charges?delay_ms=500", "bye", "{}"),
    )
    .await;
    assert!(gone.is_err(), "the request should still be running");
    eventually("the first execution", || w.upstream.executions() == 1).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let retry = loop {
        let r = w.client.post("/charges?delay_ms=500", "bye", "{}").await;
        if r.status != 409 {
            break r;
        }
        assert!(tokio::time::Instant::now() < deadline, "still in flight");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(retry.status, 201);
    assert!(retry.replayed());
    assert_eq!(w.upstream.executions(), 1);
}

/// R7, R8: 4xx answers (validation errors) are stored and replayed; 408, 409, 425, 429
/// and 5xx release the key so a retry runs again.
pub async fn r07_which_responses_are_stored<T: Target>(t: &T) {
    let w = world(t, Policy::default()).await;
    for code in [400u16, 404, 422] {
        let key = format!("stored-{code}");
        let path = format!("/status/{code}");
        let first = w.client.post(&path, &key, "{}").await;
        let retry = w.client.post(&path, &key, "{}").await;
        assert_eq!(retry.status, code);
        assert!(retry.replayed(), "{code} should be replayed");
        assert_eq!(retry.body, first.body);
        assert_eq!(w.upstream.executions_of(&path), 1, "{code}");
    }
    for code in [408u16, 409, 425, 429, 500, 503] {
        let key = format!("released-{code}");
        let path = format!("/status/{code}");
        for _ in 0..2 {
            let r = w.client.post(&path, &key, "{}").await;
            assert_eq!(r.status, code);
            assert!(!r.replayed());
        }
        assert_eq!(
            w.upstream.executions_of(&path),
            2,
            "{code} should run again"
        );
    }
}

/// R8: the replay is the stored status, headers and body byte for byte, plus
/// `Idempotent-Replayed: true`.
pub async fn r08_replay_is_byte_for_byte<T: Target>(t: &T) {
    let w = world(t, Policy::default()).await;
    let body = "{\"amount\":\"\u{e9}\u{1f600}\"}";
    let first = w.client.post("/charges", "bytes", body).await;
    let retry = w.client.post("/charges", "bytes", body).await;
    assert_eq!(retry.status, first.status);
    assert_eq!(retry.body, first.body);
    for h in ["content-type", "x-charge", "x-seen-key", "x-secret"] {
        assert_eq!(retry.headers.get(h), first.headers.get(h), "{h}");
    }
    assert!(retry.replayed());
    assert!(!first.replayed());
}

/// R9: a different payload under a used key is 422 (type distinct from R10's), the
/// upstream is not called and the record is untouched.
pub async fn r09_mismatch_is_422<T: Target>(t: &T) {
    let w = world(t, Policy::default()).await;
    let first = w.client.post("/charges", "m1", "{\"amount\":1}").await;
    let other = w.client.post("/charges", "m1", "{\"amount\":2}").await;
    assert_eq!(other.status, 422);
    kind(&other, ProblemKind::PayloadMismatch);
    assert_eq!(other.json()["idempotency_key"], "m1");
    let retry = w.client.post("/charges", "m1", "{\"amount\":1}").await;
    assert!(retry.replayed());
    assert_eq!(retry.body, first.body);
    // While in flight too.
    let slow = {
        let c = w.client.clone();
        tokio::spawn(async move { c.post("/charges?delay_ms=300", "m2", "a").await })
    };
    eventually("the slow request", || w.upstream.executions() == 2).await;
    let clash = w.client.post("/charges?delay_ms=300", "m2", "b").await;
    assert_eq!(clash.status, 422);
    assert_eq!(slow.await.unwrap().status, 201);
    assert_eq!(w.upstream.executions(), 2);
    assert_ne!(
        ProblemKind::PayloadMismatch.type_uri(),
        ProblemKind::InFlight.type_uri()
    );
}

/// R9: the mismatch status is configurable to 400.
pub async fn r09_mismatch_status_configurable<T: Target>(t: &T) {
    let policy = Policy::builder()
        .mismatch_status(StatusCode::BAD_REQUEST)
        .build()
        .unwrap();
    let w = world(t, policy).await;
    w.client.post("/charges", "m400", "1").await;
    let other = w.client.post("/charges", "m400", "2").await;
    assert_eq!(other.status, 400);
    kind(&other, ProblemKind::PayloadMismatch);
}

/// R10: a duplicate while in flight is 409 with `Retry-After` by default.
pub async fn r10_conflict_has_retry_after<T: Target>(t: &T) {
    let w = world(t, Policy::default()).await;
    let slow = {
        let c = w.client.clone();
        tokio::spawn(async move { c.post("/charges?delay_ms=1500", "c1", "{}").await })
    };
    eventually("the first execution", || w.upstream.executions() == 1).await;
    let dup = w.client.post("/charges?delay_ms=1500", "c1", "{}").await;
    assert_eq!(dup.status, 409);
    kind(&dup, ProblemKind::InFlight);
    let secs: u64 = dup
        .header("retry-after")
        .expect("Retry-After")
        .parse()
        .unwrap();
    assert!(secs >= 1);
    assert_eq!(slow.await.unwrap().status, 201);
    assert_eq!(w.upstream.executions(), 1);
}

fn wait_policy(timeout: Duration) -> Policy {
    Policy::builder()
        .on_concurrent(OnConcurrent::Wait { timeout })
        .build()
        .unwrap()
}

/// R10 `wait`: 50 simultaneous duplicates all receive the one execution's response.
pub async fn r10_wait_mode_replays_to_all<T: Target>(t: &T) {
    let w = world(t, wait_policy(Duration::from_secs(20))).await;
    let resps = burst(&w.client, 50, "/charges?delay_ms=300", "w1", "{}").await;
    assert_eq!(w.upstream.executions(), 1);
    let body = &resps[0].body;
    for r in &resps {
        assert_eq!(r.status, 201, "{r:?}");
        assert_eq!(&r.body, body);
    }
    assert_eq!(resps.iter().filter(|r| !r.replayed()).count(), 1);
}

/// R10 `wait`: a duplicate that waits too long gets 409.
pub async fn r10_wait_mode_times_out<T: Target>(t: &T) {
    let w = world(t, wait_policy(Duration::from_millis(200))).await;
    let slow = {
        let c = w.client.clone();
        tokio::spawn(async move { c.post("/charges?delay_ms=1500", "w2", "{}").await })
    };
    eventually("the first execution", || w.upstream.executions() == 1).await;
    let dup = w.client.post("/charges?delay_ms=1500", "w2", "{}").await;
    assert_eq!(dup.status, 409);
    kind(&dup, ProblemKind::InFlight);
    assert_eq!(slow.await.unwrap().status, 201);
    assert_eq!(w.upstream.executions(), 1);
}

/// R10 `wait` + R7: when the first attempt is released, one waiter runs it again and the
/// rest get its replay.
pub async fn r10_waiters_retry_after_release<T: Target>(t: &T) {
    let w = world(t, wait_policy(Duration::from_secs(20))).await;
    let resps = burst(&w.client, 20, "/flaky?delay_ms=300", "w3", "{}").await;
    assert_eq!(
        w.upstream.executions(),
        2,
        "one failed attempt and one rerun"
    );
    let failed = resps.iter().filter(|r| r.status == 500).count();
    let ok: Vec<_> = resps.iter().filter(|r| r.status == 201).collect();
    assert_eq!(failed, 1);
    assert_eq!(ok.len(), 19);
    assert!(ok.iter().all(|r| r.body == ok[0].body));
}

/// The scope and fingerprint the engine computes for the [`Client`]'s `POST path` with
/// `body`, under the default policy.
fn request_identity(key: &str, path: &str, body: &[u8]) -> (RecordId, Fingerprint) {
    let mut headers = HeaderMap::new();
    headers.insert("idempotency-key", HeaderValue::from_str(key).unwrap());
    headers.insert(
        "authorization",
        HeaderValue::from_static(crate::client::CREDENTIAL),
    );
    let id = RecordId::new(
        crate::client::credential_scope(),
        IdempotencyKey::new(key).unwrap(),
    );
    let fp = Fingerprint::compute(
        FingerprintMode::Raw,
        &Method::POST,
        path,
        &headers,
        &[],
        body,
    );
    (id, fp)
}

/// R11: an owner that froze (its lease ran out) is taken over by the next request; the
/// frozen owner's late completion is refused and never overwrites the new result.
pub async fn r11_frozen_owner_is_taken_over<T: Target>(t: &T) {
    let fx = t.fixture().await;
    let lease = fx.lease();
    let policy = Policy::builder().lease(lease).build().unwrap();
    let upstream = CountingUpstream::spawn().await;
    let front = t.start(fx.store().clone(), &upstream, policy).await;
    let client = Client::new(front.addr);

    // The frozen owner: it claimed, then stopped (no renewal, no answer).
    let (id, fingerprint) = request_identity("frozen", "/charges?delay_ms=1500", b"{}");
    let frozen = match fx
        .store()
        .claim(&ClaimRequest {
            id,
            fingerprint,
            owner: OwnerToken::random(),
            lease,
            waiting: false,
        })
        .await
        .unwrap()
    {
        Claim::Acquired(l) => l,
        other => panic!("{other:?}"),
    };
    assert_eq!(
        client
            .post("/charges?delay_ms=1500", "frozen", "{}")
            .await
            .status,
        409
    );
    fx.advance(lease + Duration::from_millis(100)).await;
    // The next request takes the record over and runs (slowly) …
    let taking = {
        let c = client.clone();
        tokio::spawn(async move { c.post("/charges?delay_ms=1500", "frozen", "{}").await })
    };
    eventually("the takeover's execution", || upstream.executions() == 1).await;
    // … while the frozen owner wakes up and tries to record its own result: refused.
    let late = fx
        .store()
        .complete(&frozen, &snapshot(b"stale"), Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(late, Finish::Superseded);
    let during = client.post("/charges?delay_ms=1500", "frozen", "{}").await;
    assert_eq!(during.status, 409, "{during:?}");
    let taken = taking.await.unwrap();
    assert_eq!(taken.status, 201);
    assert!(!taken.replayed());
    let late = fx.store().release(&frozen).await.unwrap();
    assert_eq!(late, Finish::Superseded);
    let retry = client.post("/charges?delay_ms=1500", "frozen", "{}").await;
    assert!(retry.replayed());
    assert_eq!(retry.body, taken.body);
    assert_eq!(upstream.executions(), 1);
}

/// R11: a live owner renews its lease while the upstream runs, so a lease shorter than
/// the upstream still keeps duplicates out.
pub async fn r11_lease_renewed_while_upstream_runs<T: Target>(t: &T) {
    let lease = Duration::from_millis(300);
    let policy = Policy::builder().lease(lease).build().unwrap();
    let w = world(t, policy).await;
    let slow = {
        let c = w.client.clone();
        tokio::spawn(async move { c.post("/charges?delay_ms=2500", "renew", "{}").await })
    };
    eventually("the first execution", || w.upstream.executions() == 1).await;
    // Let 3 leases' worth of store time pass, in steps the renewals keep up with (real
    // time passes alongside, so a store on a manual clock sees renewals too).
    for _ in 0..9 {
        tokio::join!(
            tokio::time::sleep(Duration::from_millis(100)),
            w.fx.advance(Duration::from_millis(100))
        );
    }
    let dup = w.client.post("/charges?delay_ms=2500", "renew", "{}").await;
    assert_eq!(dup.status, 409, "{dup:?}");
    assert_eq!(slow.await.unwrap().status, 201);
    assert_eq!(w.upstream.executions(), 1);
}

/// R13: a request body above the limit is 413 and stores nothing.
pub async fn r13_request_too_large_is_413<T: Target>(t: &T) {
    let policy = Policy::builder().max_request_body(1024).build().unwrap();
    let w = world(t, policy).await;
    let big = "x".repeat(2048);
    let resp = w.client.post("/charges", "big-req", &big).await;
    assert_eq!(resp.status, 413);
    kind(&resp, ProblemKind::RequestTooLarge);
    assert_eq!(w.upstream.executions(), 0);
    // Nothing was stored: the key still works, with another payload even.
    assert_eq!(
        w.client.post("/charges", "big-req", "small").await.status,
        201
    );
}

/// R13: a response above the storable limit reaches the client whole; the operation
/// never runs twice; its replay is 410 stating the original status.
pub async fn r13_large_response_not_retained<T: Target>(t: &T) {
    let policy = Policy::builder().max_stored_body(1024).build().unwrap();
    let w = world(t, policy).await;
    let first = w.client.post("/big?bytes=5000", "big-resp", "").await;
    assert_eq!(first.status, 200);
    assert_eq!(first.body.len(), 5000);
    let retry = w.client.post("/big?bytes=5000", "big-resp", "").await;
    assert_eq!(retry.status, 410);
    kind(&retry, ProblemKind::NotRetained);
    assert_eq!(retry.json()["original_status"], 200);
    assert_eq!(w.upstream.executions(), 1);
}

/// R14: a completed key expires after its TTL and is then new again.
pub async fn r14_expired_key_is_new<T: Target>(t: &T) {
    let fx = t.fixture().await;
    let ttl = (fx.lease() * 3).max(Duration::from_secs(1));
    let policy = Policy::builder().ttl(ttl).build().unwrap();
    let upstream = CountingUpstream::spawn().await;
    let front = t.start(fx.store().clone(), &upstream, policy).await;
    let client = Client::new(front.addr);
    let first = client.post("/charges", "ttl", "{}").await;
    fx.advance(ttl / 2).await;
    assert!(client.post("/charges", "ttl", "{}").await.replayed());
    fx.advance(ttl / 2 + Duration::from_millis(200)).await;
    let fresh = client.post("/charges", "ttl", "{}").await;
    assert_eq!(fresh.status, 201);
    assert!(!fresh.replayed());
    assert_ne!(fresh.body, first.body);
    assert_eq!(upstream.executions(), 2);
}

/// R19: hop-by-hop and denied headers are never stored; end-to-end ones are.
pub async fn r19_denied_headers_not_replayed<T: Target>(t: &T) {
    let policy = Policy::builder()
        .deny_headers([http::HeaderName::from_static("x-secret")])
        .build()
        .unwrap();
    let w = world(t, policy).await;
    let first = w.client.post("/charges", "hdr", "{}").await;
    assert_eq!(first.header("x-secret"), Some("do-not-store"));
    let retry = w.client.post("/charges", "hdr", "{}").await;
    assert!(retry.replayed());
    assert_eq!(retry.header("x-secret"), None);
    assert_eq!(retry.header("x-charge"), first.header("x-charge"));
    assert!(
        retry
            .headers
            .get("connection")
            .is_none_or(|v| v != "x-secret")
    );
}

/// R19: a streaming response passes through as produced (the first event arrives while
/// the upstream still holds the second); the record completes without a body, so the
/// operation never runs twice and its replay is 410.
pub async fn r19_streaming_passes_through<T: Target>(t: &T) {
    let w = world(t, Policy::default()).await;
    let resp = w
        .client
        .start(Method::POST, "/sse", &[("idempotency-key", "sse")], b"")
        .await;
    assert_eq!(resp.status(), 200);
    let mut body = resp.into_body();
    let first = tokio::time::timeout(Duration::from_secs(10), body.frame())
        .await
        .expect("first event before the stream ends")
        .expect("a frame")
        .expect("no error");
    assert_eq!(first.into_data().unwrap(), "data: one\n\n");
    w.upstream.open_stream();
    let rest = body.collect().await.unwrap().to_bytes();
    assert_eq!(rest, "data: two\n\n");
    let retry = w.client.post("/sse", "sse", "").await;
    assert_eq!(retry.status, 410);
    kind(&retry, ProblemKind::NotRetained);
    assert_eq!(w.upstream.executions(), 1);
}

/// Stamps the whole HTTP suite as named tests for one target.
///
/// `$make` is an expression making the [`Target`], evaluated afresh for each test.
/// `single_machine_stores: Start` stamps it twice, in modules `memory` and `redb`, for
/// the [`Start`] type `Start` (a unit struct in the calling module) on each store that
/// needs no server.
#[macro_export]
macro_rules! spec_tests {
    (single_machine_stores: $start:ident) => {
        mod memory {
            $crate::spec_tests!($crate::On::new(super::$start, $crate::memory::fixture));
        }
        mod redb {
            $crate::spec_tests!($crate::On::new(super::$start, $crate::redb::fixture));
        }
    };
    ($make:expr) => {
        $crate::spec_tests!(@each $make;
            r01_quoted_and_bare_are_one_key,
            r01_invalid_keys_are_400,
            r02_uncovered_methods_pass_through,
            r03_missing_key_passes_by_default,
            r03_required_key_is_400,
            r04_tenants_are_isolated,
            r04_unscoped_requests_never_share_a_scope,
            r04_shared_scope_never_replays_a_cookie,
            r05_json_fingerprint_mode,
            r06_first_runs_then_replays,
            r06_concurrent_duplicates_run_once,
            r06_client_disconnect_does_not_cancel,
            r07_which_responses_are_stored,
            r08_replay_is_byte_for_byte,
            r09_mismatch_is_422,
            r09_mismatch_status_configurable,
            r10_conflict_has_retry_after,
            r10_wait_mode_replays_to_all,
            r10_wait_mode_times_out,
            r10_waiters_retry_after_release,
            r11_frozen_owner_is_taken_over,
            r11_lease_renewed_while_upstream_runs,
            r13_request_too_large_is_413,
            r13_large_response_not_retained,
            r14_expired_key_is_new,
            r19_denied_headers_not_replayed,
            r19_streaming_passes_through,
        );
    };
    (@each $make:expr; $($name:ident,)*) => {
        $(
            #[::tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                let target = $make;
                $crate::spec::$name(&target).await;
            }
        )*
    };
}
