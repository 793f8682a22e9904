//! `idem keys --store URL`: the records read and deleted in the store itself.

use anyhow::Context as _;
use idem::core::clock::{Clock, Millis, SystemClock};
use idem::core::record::RecordId;
use idem::core::store::ListFilter;
use idem::{AnyStore, Store};
use serde_json::{Value, json};

use super::query::ListQuery;
use crate::admin::{created_before, record_json, state_name};

/// A store opened by URL.
pub(super) struct Direct(AnyStore);

fn now() -> Millis {
    SystemClock.now_ms()
}

impl Direct {
    /// Opens the store `url` names.
    pub(super) async fn open(url: &str) -> anyhow::Result<Self> {
        let store = AnyStore::from_url(url)
            .await
            .with_context(|| format!("store `{url}`"))?;
        Ok(Self(store))
    }

    /// The record as the admin API shows it, or `None` when there is none.
    pub(super) async fn get(&self, id: &RecordId) -> anyhow::Result<Option<Value>> {
        let record = self.0.lookup(id).await.context("the store failed")?;
        Ok(record.map(|r| record_json(id, &r, now())))
    }

    /// Deletes the record, with an audit line; answers it, or `None` when there was none.
    pub(super) async fn delete(&self, id: &RecordId) -> anyhow::Result<Option<Value>> {
        let Some(record) = self.0.delete(id).await.context("the store failed")? else {
            return Ok(None);
        };
        tracing::info!(
            target: "idem::audit",
            scope = %id.scope(),
            key = %id.key(),
            previous_state = state_name(&record.state),
            who = "idem keys --store",
            "idempotency record deleted"
        );
        Ok(Some(record_json(id, &record, now())))
    }

    /// One page of records, as the admin API answers it.
    pub(super) async fn list(&self, q: &ListQuery) -> anyhow::Result<Value> {
        let now = now();
        let filter = ListFilter {
            state: q.state,
            created_before: q.older_than.map(|d| created_before(now, d)),
            scope: q.scope,
            after: match &q.after {
                Some(a) => {
                    Some(RecordId::from_hex(a).context("--after is not a cursor idem printed")?)
                }
                None => None,
            },
            limit: q.limit,
        };
        let page = self.0.list(&filter).await.context("the store failed")?;
        let keys: Vec<Value> = page
            .records
            .iter()
            .map(|(id, r)| record_json(id, r, now))
            .collect();
        Ok(json!({
            "keys": keys,
            "next": page.next.map(|n| n.to_hex()),
            "corrupt": crate::admin::corrupt_json(&page.corrupt),
        }))
    }
}
