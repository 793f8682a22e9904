//! The human-readable output of `idem keys` (`--json` prints the admin API's JSON as is).

use std::time::Duration;

use serde_json::Value;

/// Prints one record.
pub(super) fn print_record(json: bool, record: &Value) {
    if json {
        println!("{record}");
        return;
    }
    let field = |name: &str| record[name].as_str().unwrap_or("").to_owned();
    println!("scope        {}", field("scope"));
    println!("key          {}", field("key"));
    println!("state        {}", field("state"));
    println!("fingerprint  {}", field("fingerprint"));
    println!(
        "created      {} ({} ago)",
        field("created"),
        age(record["age_ms"].as_u64())
    );
    if let Some(owner) = record.get("owner") {
        println!("owner        {}", owner["token"].as_str().unwrap_or(""));
        println!(
            "lease until  {} ({} left)",
            owner["lease_until"].as_str().unwrap_or(""),
            age(owner["lease_left_ms"].as_u64())
        );
    }
    if let Some(expires) = record.get("expires").and_then(Value::as_str) {
        println!("expires      {expires}");
    }
    if let Some(resp) = record.get("response") {
        println!("response     {}", response_summary(resp));
    }
}

fn response_summary(resp: &Value) -> String {
    let status = resp["status"].as_u64().unwrap_or(0);
    match (resp["body_bytes"].as_u64(), resp["not_retained"].as_str()) {
        (Some(n), _) => format!("{status}, {n} body bytes stored"),
        (_, Some(why)) => format!("{status}, body not retained ({why})"),
        _ => format!("{status}"),
    }
}

fn age(ms: Option<u64>) -> String {
    let secs = ms.unwrap_or(0) / 1000;
    humantime::format_duration(Duration::from_secs(secs)).to_string()
}

/// Prints a page of records and the cursor of the next.
pub(super) fn print_page(json: bool, page: &Value) {
    if json {
        println!("{page}");
        return;
    }
    let empty = Vec::new();
    let keys = page["keys"].as_array().unwrap_or(&empty);
    if keys.is_empty() {
        println!("no matching records");
    } else {
        println!(
            "{:<32}  {:<24}  {:<9}  {:>10}  DETAIL",
            "SCOPE", "KEY", "STATE", "AGE"
        );
        for r in keys {
            let detail = match r.get("owner") {
                Some(owner) => format!("lease {} left", age(owner["lease_left_ms"].as_u64())),
                None => r.get("response").map(response_summary).unwrap_or_default(),
            };
            println!(
                "{:<32}  {:<24}  {:<9}  {:>10}  {detail}",
                r["scope"].as_str().unwrap_or(""),
                r["key"].as_str().unwrap_or(""),
                r["state"].as_str().unwrap_or(""),
                age(r["age_ms"].as_u64()),
            );
        }
    }
    // Records that do not decode: never replayed, listed so on call can delete them.
    for c in page["corrupt"].as_array().unwrap_or(&empty) {
        println!(
            "corrupt: scope {} key {} ({})",
            c["scope"].as_str().unwrap_or("(unreadable)"),
            c["key"].as_str().unwrap_or("(unreadable)"),
            c["error"].as_str().unwrap_or(""),
        );
    }
    if let Some(next) = page["next"].as_str() {
        println!("more: --after {next}");
    }
}
