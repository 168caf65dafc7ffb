//! Proves a destination complete against the API: one stream read again over a window (from a
//! cursor value, or from the start), the same walk a sync makes, and compared with the records
//! the destination holds — by primary key, and by cursor value (an older value stored is stale).

use std::{collections::BTreeMap, sync::Mutex};

use serde::Serialize;
use serde_json::Value;
use sluice::{Checkpoint, Envelope, Position, Rejected, Row, SourceError};

use super::{
    HttpPollConfig, HttpPollSource,
    record::{CursorValue, at, key_of},
    source::Outlet,
};

/// One stream's audit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StreamAudit {
    /// The stream.
    pub stream: String,
    /// Where the window starts (the cursor parameter sent), or `None` from the start.
    pub from: Option<String>,
    /// Records the API lists in the window.
    pub api_records: u64,
    /// Destination records in the window.
    pub destination_records: u64,
    /// Keys the API lists that the destination lacks.
    pub missing: Vec<String>,
    /// Keys the destination holds with an older cursor value than the API's.
    pub stale: Vec<String>,
    /// Keys the destination holds in the window that the API no longer lists.
    pub extra: Vec<String>,
    /// Records or pages the API served that could not be read (dead letters of the walk).
    pub unreadable: u64,
}

impl StreamAudit {
    /// Whether the destination holds every record of the window, none older.
    pub fn complete(&self) -> bool {
        self.missing.is_empty() && self.stale.is_empty()
    }
}

/// Collects a walk's records instead of emitting them.
struct Collector {
    from: Option<Position>,
    records: Mutex<Vec<Value>>,
    rejected: Mutex<u64>,
}

impl Outlet for Collector {
    fn cursor(&self, _: &str) -> Option<Position> {
        self.from.clone()
    }

    async fn emit(&self, envelope: Envelope<Row>) -> Result<(), SourceError> {
        self.records
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(envelope.payload.to_json());
        Ok(())
    }

    async fn reject(&self, _: Rejected) -> Result<(), SourceError> {
        *self.rejected.lock().unwrap_or_else(|e| e.into_inner()) += 1;
        Ok(())
    }

    async fn advance(&self, _: Checkpoint) -> Result<(), SourceError> {
        Ok(())
    }

    fn alive(&self) {}

    async fn cancelled(&self) {
        std::future::pending::<()>().await;
    }
}

/// Reads stream `name` of `config` again from cursor value `from` (less its lookback; the
/// start when `None`) and compares it with `destination` (the records stored, JSON objects with
/// the stream's primary key and cursor fields).
///
/// # Errors
/// The API failing after its retries, refusing the credentials, or no such stream.
pub async fn audit_stream(
    config: &HttpPollConfig,
    name: &str,
    from: Option<&str>,
    destination: &[Value],
) -> Result<StreamAudit, SourceError> {
    let stream = config
        .streams
        .iter()
        .find(|s| s.name == name)
        .ok_or_else(|| SourceError::fatal(format!("http_poll: no stream named {name:?}")))?;
    let kind = stream.cursor.as_ref().map(|c| c.kind);
    let from = match (kind, from) {
        (Some(kind), Some(text)) => Some(
            CursorValue::parse(kind, text)
                .map_err(|e| SourceError::fatal(format!("http_poll audit: from {text:?}: {e}")))?,
        ),
        _ => None,
    };
    let source = HttpPollSource::new(config.clone())?;
    let collector = Collector {
        from: from.as_ref().map(CursorValue::position),
        records: Mutex::new(Vec::new()),
        rejected: Mutex::new(0),
    };
    source.sync(&collector, stream).await?;
    let listed = collector
        .records
        .into_inner()
        .unwrap_or_else(|e| e.into_inner());
    let unreadable = collector
        .rejected
        .into_inner()
        .unwrap_or_else(|e| e.into_inner());
    let cursor_of = |record: &Value| -> Option<CursorValue> {
        let c = stream.cursor.as_ref()?;
        at(record, &c.field).and_then(|v| CursorValue::of(c.kind, v).ok())
    };
    let in_window = |record: &Value| match (&from, cursor_of(record)) {
        (Some(from), Some(value)) => &value >= from,
        _ => true,
    };
    // The newest value the API lists for each key (a walk may list a record twice).
    let mut api: BTreeMap<String, Option<CursorValue>> = BTreeMap::new();
    for record in &listed {
        if let Ok(key) = key_of(record, &stream.primary_key) {
            let value = cursor_of(record);
            let entry = api.entry(key).or_insert(None);
            if value > *entry {
                *entry = value;
            }
        }
    }
    let mut stored: BTreeMap<String, Option<CursorValue>> = BTreeMap::new();
    for record in destination.iter().filter(|r| in_window(r)) {
        if let Ok(key) = key_of(record, &stream.primary_key) {
            let value = cursor_of(record);
            let entry = stored.entry(key).or_insert(None);
            if value > *entry {
                *entry = value;
            }
        }
    }
    let mut audit = StreamAudit {
        stream: name.to_owned(),
        from: from.as_ref().map(CursorValue::param),
        api_records: api.len() as u64,
        destination_records: stored.len() as u64,
        missing: Vec::new(),
        stale: Vec::new(),
        extra: Vec::new(),
        unreadable,
    };
    for (key, value) in &api {
        match stored.get(key) {
            None => audit.missing.push(key.clone()),
            Some(have) if have < value => audit.stale.push(key.clone()),
            Some(_) => {}
        }
    }
    audit.extra = stored
        .keys()
        .filter(|k| !api.contains_key(*k))
        .cloned()
        .collect();
    Ok(audit)
}
