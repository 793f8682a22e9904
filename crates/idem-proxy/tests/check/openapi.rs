//! `idem docs --format openapi` and `--openapi-merge` (the binary), each document
//! checked by openapi-spec-validator (scripts/openapi-validate.sh); `idem check-config
//! --openapi` warnings.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_yaml_ng::Value;

use crate::common::BIN;

const PETSTORE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/petstore.yaml");
const VALIDATE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../scripts/openapi-validate.sh"
);
const PROBLEMS: &str = "https://github.com/idem-rs/idem/blob/main/docs/problems.md";

/// Rules over the Petstore (served under /v1): one covers `POST /pets` and requires a
/// key, one covers only some requests of `/pets/{petId}`, two match no operation.
const CONFIG: &str = r#"
upstream = "http://127.0.0.1:9"

[[route]]
match = "POST /v1/pets"
require_key = true
ttl = "1h"

[[route]]
match = "/v1/pets/mine"
enabled = false

[[route]]
match = "PATCH,POST /v1/pets/{id}/adopt"
on_concurrent = "wait"

[[route]]
match = "/v1/internal/**"
enabled = false
"#;

fn idem(args: &[&str]) -> Output {
    Command::new(BIN).args(args).output().unwrap()
}

fn stdout(out: &Output) -> String {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout.clone()).unwrap()
}

/// Runs the validator on `files`; fails the test if a document is invalid or the
/// validator cannot be installed.
fn validate(files: &[&Path]) {
    let out = Command::new("bash")
        .arg(VALIDATE)
        .args(files)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "openapi-spec-validator (exit {:?}):\n{}{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn yaml(text: &str) -> Value {
    serde_yaml_ng::from_str(text).unwrap()
}

fn refs(v: &Value) -> Vec<String> {
    v.as_sequence()
        .unwrap()
        .iter()
        .filter_map(|p| p.get("$ref").and_then(Value::as_str).map(str::to_owned))
        .collect()
}

fn types(response: &Value) -> Vec<String> {
    response["content"]["application/problem+json"]["schema"]["allOf"][1]["properties"]["type"]
        ["enum"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|t| t.as_str().unwrap().to_owned())
        .collect()
}

/// The `type` URIs of the problem kinds with `status`, in table order; `missing-key`
/// only where a key is required.
fn uris_of(status: u16, key_required: bool) -> Vec<String> {
    idem::core::ProblemKind::ALL
        .iter()
        .filter(|k| k.status() == status)
        .filter(|k| key_required || **k != idem::core::ProblemKind::MissingKey)
        .map(|k| k.type_uri())
        .collect()
}

// R3 R8 R10 R17: both documents pass the validator (one run of it: it starts slowly)
#[test]
fn r17_the_standalone_and_the_merged_documents_validate() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("idem.toml");
    std::fs::write(&config, CONFIG).unwrap();
    let config = config.to_str().unwrap();
    let standalone = standalone_covers_each_rule(dir.path(), config);
    let merged = merge_leaves_the_rest_as_it_was(dir.path(), config);
    validate(&[&standalone, &merged]);
}

/// `idem docs --format openapi[-yaml]`: the document, written to a file to validate.
fn standalone_covers_each_rule(dir: &Path, config: &str) -> PathBuf {
    let json = stdout(&idem(&["docs", "--config", config, "--format", "openapi"]));
    let yml = stdout(&idem(&[
        "docs",
        "--config",
        config,
        "--format",
        "openapi-yaml",
    ]));
    let json_file = dir.join("idem.json");
    std::fs::write(&json_file, &json).unwrap();

    let doc: Value = serde_json::from_str(&json).unwrap();
    assert_eq!(doc, yaml(&yml));
    assert_eq!(doc["openapi"], "3.1.0");
    let paths = doc["paths"].as_mapping().unwrap();
    // The disabled and `**` rules have no path of their own.
    let keys: Vec<&str> = paths.keys().map(|k| k.as_str().unwrap()).collect();
    assert_eq!(keys, ["/v1/pets", "/v1/pets/{id}/adopt"]);

    let post = &doc["paths"]["/v1/pets"]["post"];
    assert_eq!(
        refs(&post["parameters"]),
        ["#/components/parameters/IdempotencyKeyRequired"]
    );
    let responses = &post["responses"];
    // Every 400 the layer answers, the missing key among them: this rule requires one.
    assert_eq!(types(&responses["400"]), uris_of(400, true));
    assert!(types(&responses["400"]).contains(&format!("{PROBLEMS}#missing-key")));
    assert_eq!(
        types(&responses["422"]),
        [format!("{PROBLEMS}#payload-mismatch")]
    );
    assert_eq!(types(&responses["409"]), [format!("{PROBLEMS}#in-flight")]);
    for status in ["409", "503"] {
        assert_eq!(
            responses[status]["headers"]["Retry-After"]["$ref"],
            "#/components/headers/IdemRetryAfter"
        );
    }
    assert_eq!(
        responses["default"]["headers"]["Idempotent-Replayed"]["$ref"],
        "#/components/headers/IdempotentReplayed"
    );
    for status in ["410", "413", "502", "504"] {
        assert!(responses.get(status).is_some(), "{status}");
    }

    // A rule without `require_key` takes an optional key; both its methods are there.
    let adopt = &doc["paths"]["/v1/pets/{id}/adopt"];
    assert_eq!(adopt["parameters"][0]["name"], "id");
    assert_eq!(adopt["parameters"][0]["in"], "path");
    for method in ["post", "patch"] {
        assert_eq!(
            refs(&adopt[method]["parameters"]),
            ["#/components/parameters/IdempotencyKey"]
        );
        assert_eq!(
            types(&adopt[method]["responses"]["400"]),
            uris_of(400, false)
        );
    }
    let components = &doc["components"];
    assert_eq!(
        components["parameters"]["IdempotencyKey"]["name"],
        "Idempotency-Key"
    );
    assert_eq!(components["parameters"]["IdempotencyKey"]["in"], "header");
    assert_eq!(
        components["parameters"]["IdempotencyKey"]["required"],
        false
    );
    assert_eq!(
        components["parameters"]["IdempotencyKeyRequired"]["required"],
        true
    );
    assert_eq!(
        components["schemas"]["IdemProblem"]["properties"]["type"]["enum"]
            .as_sequence()
            .unwrap()
            .len(),
        idem::core::ProblemKind::ALL.len()
    );

    // Every rule, then the server-wide settings.
    let table = doc["x-idem-routes"].as_sequence().unwrap();
    let matches: Vec<&str> = table.iter().map(|r| r["match"].as_str().unwrap()).collect();
    assert_eq!(
        matches,
        [
            "POST /v1/pets",
            "/v1/pets/mine",
            "PATCH,POST /v1/pets/{id}/adopt",
            "/v1/internal/**",
            "/**"
        ]
    );
    assert_eq!(table[2]["on_concurrent"], "wait");
    json_file
}

/// `idem docs --openapi-merge` on the Petstore: the merged document, written to a file
/// to validate.
fn merge_leaves_the_rest_as_it_was(dir: &Path, config: &str) -> PathBuf {
    let out = idem(&["docs", "--config", config, "--openapi-merge", PETSTORE]);
    let merged_text = stdout(&out);
    let warnings = String::from_utf8_lossy(&out.stderr).into_owned();
    let merged_file = dir.join("merged.yaml");
    std::fs::write(&merged_file, &merged_text).unwrap();
    // The same merge written as JSON.
    let json = stdout(&idem(&[
        "docs",
        "--config",
        config,
        "--openapi-merge",
        PETSTORE,
        "--format",
        "openapi",
    ]));

    let original = yaml(&std::fs::read_to_string(PETSTORE).unwrap());
    let merged = yaml(&merged_text);
    assert_eq!(merged, serde_json::from_str::<Value>(&json).unwrap());
    // What no rule covers is untouched: GETs, the schemas, info and servers.
    for key in ["info", "servers", "openapi"] {
        assert_eq!(merged[key], original[key], "{key}");
    }
    assert_eq!(
        merged["paths"]["/pets"]["get"],
        original["paths"]["/pets"]["get"]
    );
    assert_eq!(
        merged["paths"]["/pets/{petId}"],
        original["paths"]["/pets/{petId}"]
    );
    for schema in ["Pet", "Pets", "Error"] {
        assert_eq!(
            merged["components"]["schemas"][schema],
            original["components"]["schemas"][schema]
        );
    }

    // POST /pets is /v1/pets to the rules: the first one covers it and requires a key.
    let post = &merged["paths"]["/pets"]["post"];
    let before = &original["paths"]["/pets"]["post"];
    assert_eq!(
        refs(&post["parameters"]),
        ["#/components/parameters/IdempotencyKeyRequired"]
    );
    assert_eq!(post["requestBody"], before["requestBody"]);
    assert_eq!(post["operationId"], "createPets");
    for kept in ["201", "default"] {
        assert_eq!(
            post["responses"][kept]["description"],
            before["responses"][kept]["description"]
        );
        assert_eq!(
            post["responses"][kept]["headers"]["Idempotent-Replayed"]["$ref"],
            "#/components/headers/IdempotentReplayed"
        );
    }
    assert!(types(&post["responses"]["400"]).contains(&format!("{PROBLEMS}#missing-key")));
    assert_eq!(
        post["responses"]["409"]["headers"]["Retry-After"]["$ref"],
        "#/components/headers/IdemRetryAfter"
    );

    // Route 2 matches some requests of `GET /pets/{petId}`, which no rule covers anyway.
    assert!(!warnings.contains("route 2 "), "{warnings}");
    for route in [
        "route 3 `PATCH,POST /v1/pets/{id}/adopt`",
        "route 4 `/v1/internal/**`",
    ] {
        assert!(
            warnings.contains(&format!("{route} (")) && warnings.contains("matches no operation"),
            "{route}: {warnings}"
        );
    }
    assert!(!warnings.contains("route 1 "), "{warnings}");

    // Merging the merged document again changes nothing.
    let again = stdout(&idem(&[
        "docs",
        "--config",
        config,
        "--openapi-merge",
        merged_file.to_str().unwrap(),
    ]));
    assert_eq!(again, merged_text);

    // check-config names the same rules.
    let out = idem(&["check-config", "--config", config, "--openapi", PETSTORE]);
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(stdout(&out).starts_with("configuration ok"));
    assert!(said.contains("route 4 `/v1/internal/**`"), "{said}");
    assert!(said.contains("matches no operation of"), "{said}");
    merged_file
}

// Foreign or broken documents are one line and exit code 2.
#[test]
fn a_document_that_is_not_openapi_is_refused_in_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        (
            "swagger.yaml",
            "swagger: '2.0'\ninfo: {title: t}\n",
            "Swagger 2.0",
        ),
        ("broken.json", "{\"openapi\": \"3.1.0\",", "not valid JSON"),
        ("list.yaml", "- 1\n- 2\n", "not an OpenAPI document"),
    ];
    for (name, text, says) in cases {
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        let out = idem(&["docs", "--openapi-merge", path.to_str().unwrap()]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{name}: {err}");
        assert!(err.contains(says), "{name}: {err}");
        assert_eq!(err.trim().lines().count(), 1, "{name}: {err}");
    }
    let out = idem(&["docs", "--openapi-merge", "/nonexistent/api.yaml"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot read /nonexistent/api.yaml"));
}
