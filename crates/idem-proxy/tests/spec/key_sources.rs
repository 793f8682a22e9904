//! R23: keys read per route from another header or from a JSON body, through the
//! `idem` binary.

use http::Method;
use idem::core::ProblemKind;
use idem_testkit::{Client, CountingUpstream, Resp};

use crate::common::serve;

async fn post(client: &Client, path: &str, headers: &[(&str, &str)], body: &str) -> Resp {
    client
        .send(Method::POST, path, headers, body.as_bytes())
        .await
}

// R23, R1, R9: a webhook-style POST without any key header is deduplicated by the id in
// its JSON body; another payload under that id is refused; a body without the id runs
// unprotected; a value that is no key is 400. A delivery-id header works the same way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn r23_keys_from_a_json_body_and_from_another_header() {
    let upstream = CountingUpstream::spawn().await;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("idem.toml");
    std::fs::write(
        &config,
        "[[route]]\nmatch = \"POST /hooks/json\"\nkey_source = \"json:/delivery/id\"\n\n\
         [[route]]\nmatch = \"POST /hooks/header\"\nkey_source = \"header:X-GitHub-Delivery\"\n",
    )
    .unwrap();
    let idem = serve(&[
        "--config",
        config.to_str().unwrap(),
        "--upstream",
        &format!("http://{}", upstream.addr()),
        "--store",
        "memory",
    ])
    .await;
    let client = Client::new(idem.addr);
    let event = r#"{"delivery":{"id":"d-1"},"action":"paid"}"#;

    let first = post(&client, "/hooks/json", &[], event).await;
    assert!(first.status.is_success(), "{first:?}");
    assert!(!first.replayed());
    let again = post(&client, "/hooks/json", &[], event).await;
    assert!(again.replayed(), "{again:?}");
    assert_eq!(again.body, first.body);
    assert_eq!(upstream.executions_of("/hooks/json"), 1);

    // An integer id is its decimal text; another payload under d-1 is a mismatch.
    let numbered = post(&client, "/hooks/json", &[], r#"{"delivery":{"id":42}}"#).await;
    assert!(numbered.status.is_success() && !numbered.replayed());
    let other = post(
        &client,
        "/hooks/json",
        &[],
        r#"{"delivery":{"id":"d-1"},"action":"refunded"}"#,
    )
    .await;
    assert_eq!(other.status, 422, "{other:?}");
    assert_eq!(other.problem_slug(), ProblemKind::PayloadMismatch.slug());
    // The `Idempotency-Key` header does not count on this route.
    let header_only = post(&client, "/hooks/json", &[("idempotency-key", "d-1")], "{}").await;
    let header_again = post(&client, "/hooks/json", &[("idempotency-key", "d-1")], "{}").await;
    assert!(!header_only.replayed() && !header_again.replayed());
    // No id, or a body that is not JSON: keyless, unprotected.
    let plain = post(&client, "/hooks/json", &[], "not json").await;
    assert!(plain.status.is_success() && !plain.replayed());
    assert_eq!(upstream.executions_of("/hooks/json"), 5);
    // A value that is no key.
    for bad in [
        r#"{"delivery":{"id":{"a":1}}}"#,
        r#"{"delivery":{"id":""}}"#,
    ] {
        let refused = post(&client, "/hooks/json", &[], bad).await;
        assert_eq!(refused.status, 400, "{bad}: {refused:?}");
        assert_eq!(refused.problem_slug(), ProblemKind::InvalidKey.slug());
        assert!(
            refused.json()["detail"]
                .as_str()
                .unwrap()
                .contains("/delivery/id")
        );
    }
    assert_eq!(upstream.executions_of("/hooks/json"), 5);

    let delivery = [("x-github-delivery", "72d3162e")];
    let first = post(&client, "/hooks/header", &delivery, "{}").await;
    let again = post(&client, "/hooks/header", &delivery, "{}").await;
    assert!(!first.replayed() && again.replayed(), "{again:?}");
    assert_eq!(upstream.executions_of("/hooks/header"), 1);
}
