//! Proves a current-state destination complete against the project: every row PostgREST serves
//! (keyset pages from the start, as the backfill reads them) compared by key and version with
//! the current-state rows stored for the table. Reports the keys missing from the destination
//! (or stored as deleted), the keys stored at an older version (stale), and the keys stored
//! that the table no longer has (extra: a hard delete missed while disconnected).

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{Value, json};
use sluice::SourceError;

use super::{
    SupabaseConfig,
    record::normalize_time,
    rest::{From, RestClient},
};
pub use crate::change::TableAudit;

/// A current-state row as the destination stored it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredRow {
    /// Its version (normalised UTC microseconds).
    pub version: String,
    /// Whether it is a tombstone.
    pub deleted: bool,
}

/// The key of a row as the destination stores it: `{"<primary key>": value}` as compact JSON.
pub fn key_text(primary_key: &str, value: &Value) -> String {
    json!({ primary_key: value }).to_string()
}

/// Audits `table` of `config`'s project against `stored` (its current-state rows, by
/// [`key_text`]). Pages until an empty page: a short page proves nothing (PostgREST caps pages
/// at its `max-rows`).
///
/// # Errors
/// PostgREST failing after its retries (transient), refusing the key or the table (fatal).
pub async fn audit_table(
    config: &SupabaseConfig,
    table: &str,
    stored: &BTreeMap<String, StoredRow>,
) -> Result<TableAudit, SourceError> {
    let rest = RestClient::new(config.clone())?;
    let (pk, cursor) = (&config.primary_key, &config.cursor_column);
    let mut from = From::Start;
    let mut seen = BTreeSet::new();
    let (mut missing, mut stale) = (Vec::new(), Vec::new());
    loop {
        let page = rest.page(table, &from).await?;
        let Some(last) = page.last() else { break };
        let version_of = |row: &Value| {
            row.get(cursor)
                .and_then(Value::as_str)
                .and_then(normalize_time)
        };
        let (Some(last_key), Some(last_version)) = (last.get(pk), version_of(last)) else {
            return Err(SourceError::fatal(format!(
                "supabase audit: a row of {table} has no {pk:?} or no time in {cursor:?}"
            )));
        };
        for row in &page {
            let Some(key) = row.get(pk).filter(|k| !k.is_null()) else {
                return Err(SourceError::fatal(format!(
                    "supabase audit: a row of {table} has no {pk:?}"
                )));
            };
            let key = key_text(pk, key);
            match (stored.get(&key), version_of(row)) {
                (None, _) => missing.push(key.clone()),
                (Some(s), _) if s.deleted => missing.push(key.clone()),
                (Some(s), Some(version)) if s.version < version => stale.push(key.clone()),
                // Without a version (keyset reads never return one), presence is all it proves.
                (Some(_), _) => {}
            }
            seen.insert(key);
        }
        from = From::After(last_version, last_key.clone());
    }
    let live: Vec<&String> = stored
        .iter()
        .filter(|(_, s)| !s.deleted)
        .map(|(k, _)| k)
        .collect();
    let extra = live
        .iter()
        .filter(|k| !seen.contains(k.as_str()))
        .map(|k| (*k).clone())
        .collect();
    Ok(TableAudit {
        table: format!("{}.{table}", config.schema),
        source_rows: seen.len() as u64,
        destination_rows: live.len() as u64,
        missing,
        extra,
        stale,
    })
}
