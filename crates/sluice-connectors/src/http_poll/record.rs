//! What a polled record becomes, and the cursor values of a stream: parsed by kind, compared as
//! instants or numbers, moved back by a lookback, saved as a position that orders the same way.
//!
//! Records have the API's shape (a JSON object, plus the stream's fixed fields), emitted as
//! [`sluice::Row`]s, the dynamic row of configured pipelines: a table sink lists its columns in
//! the configuration.

use serde_json::Value;
use sluice::Position;

use super::config::CursorKind;

/// A cursor value of a stream.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum CursorValue {
    /// Microseconds since the Unix epoch.
    Time(i64),
    /// An integer (or epoch seconds).
    Int(u64),
    /// Text, compared bytewise.
    Text(String),
}

impl CursorValue {
    /// Parses configuration text (`initial`) or a saved position's text.
    pub(crate) fn parse(kind: CursorKind, text: &str) -> Result<Self, String> {
        match kind {
            CursorKind::Datetime => parse_time(text)
                .map(Self::Time)
                .ok_or_else(|| "not an RFC 3339 time".to_owned()),
            CursorKind::Epoch | CursorKind::Integer => text
                .trim()
                .parse()
                .map(Self::Int)
                .map_err(|_| "not a non-negative integer".to_owned()),
            CursorKind::String => Ok(Self::Text(text.to_owned())),
        }
    }

    /// The value of a record's cursor field, or why it has none.
    pub(crate) fn of(kind: CursorKind, value: &Value) -> Result<Self, String> {
        match (kind, value) {
            (CursorKind::Epoch | CursorKind::Integer, Value::Number(n)) => n
                .as_u64()
                .map(Self::Int)
                .ok_or_else(|| format!("cursor {n} is not a non-negative integer")),
            (_, Value::String(s)) => Self::parse(kind, s).map_err(|e| format!("cursor {s:?}: {e}")),
            (_, other) => Err(format!("cursor {other} is not a {kind:?} value")),
        }
    }

    /// The value moved back by `lookback` (ms for times, units otherwise; seconds are rounded
    /// up for epoch cursors so the window only grows).
    pub(crate) fn minus(&self, kind: CursorKind, lookback: u64) -> Self {
        match self {
            Self::Time(us) => Self::Time(us.saturating_sub((lookback as i64).saturating_mul(1000))),
            Self::Int(n) if kind == CursorKind::Epoch => {
                Self::Int(n.saturating_sub(lookback.div_ceil(1000)))
            }
            Self::Int(n) => Self::Int(n.saturating_sub(lookback)),
            Self::Text(t) => Self::Text(t.clone()),
        }
    }

    /// The value moved forward by `step` ms, rounded up to a whole second: the end of a
    /// window. Whole seconds because that is what the end parameter sends ([`param`](Self::param)
    /// truncates to seconds): the window saved is the window asked for. `None` for kinds
    /// without windows.
    pub(crate) fn plus(&self, kind: CursorKind, step: u64) -> Option<Self> {
        match self {
            Self::Time(us) => {
                let end = us.saturating_add((step as i64).saturating_mul(1000));
                Some(Self::Time(
                    end.div_euclid(1_000_000)
                        .saturating_add(i64::from(end.rem_euclid(1_000_000) != 0))
                        * 1_000_000,
                ))
            }
            Self::Int(n) if kind == CursorKind::Epoch => {
                Some(Self::Int(n.saturating_add(step.div_ceil(1000))))
            }
            Self::Int(_) | Self::Text(_) => None,
        }
    }

    /// Now, for the kinds that have windows.
    pub(crate) fn now(kind: CursorKind) -> Option<Self> {
        let now = chrono::Utc::now();
        match kind {
            CursorKind::Datetime => Some(Self::Time(now.timestamp_micros())),
            CursorKind::Epoch => u64::try_from(now.timestamp()).ok().map(Self::Int),
            CursorKind::Integer | CursorKind::String => None,
        }
    }

    /// The value as the API's start parameter: times to the second, rounded down (the request
    /// may only read more).
    pub(crate) fn param(&self) -> String {
        match self {
            Self::Time(us) => chrono::DateTime::from_timestamp(us.div_euclid(1_000_000), 0)
                .map(|t| t.format("%Y-%m-%dT%H:%M:%SZ").to_string())
                .unwrap_or_default(),
            Self::Int(n) => n.to_string(),
            Self::Text(t) => t.clone(),
        }
    }

    /// The saved position: ordered as the values are (fixed-width UTC microseconds for times).
    pub(crate) fn position(&self) -> Position {
        match self {
            Self::Time(us) => Position::Text(
                chrono::DateTime::from_timestamp_micros(*us)
                    .map(|t| t.format("%Y-%m-%dT%H:%M:%S%.6fZ").to_string())
                    .unwrap_or_default(),
            ),
            Self::Int(n) => Position::Int(*n),
            Self::Text(t) => Position::Text(t.clone()),
        }
    }

    /// The value of a saved position.
    pub(crate) fn from_position(kind: CursorKind, position: &Position) -> Option<Self> {
        match position {
            Position::Int(n) => Some(Self::Int(*n)),
            Position::Text(t) => Self::parse(kind, t).ok(),
            Position::Tuple(_) => None,
        }
    }
}

fn parse_time(text: &str) -> Option<i64> {
    let text = text.trim();
    chrono::DateTime::parse_from_rfc3339(text)
        .map(|t| t.timestamp_micros())
        .or_else(|_| {
            chrono::NaiveDateTime::parse_from_str(text, "%Y-%m-%d %H:%M:%S%.f")
                .map(|t| t.and_utc().timestamp_micros())
        })
        .ok()
}

/// The value at a dotted path (`data.items`, `links.next`); the whole value for an empty path.
pub(crate) fn at<'a>(value: &'a Value, path: &str) -> Option<&'a Value> {
    if path.is_empty() {
        return Some(value);
    }
    path.split('.').try_fold(value, |v, part| match v {
        Value::Array(items) => part.parse::<usize>().ok().and_then(|i| items.get(i)),
        _ => v.get(part),
    })
}

/// The primary key of a record as text (a JSON array of the key fields), or the missing field.
pub(crate) fn key_of(record: &Value, fields: &[String]) -> Result<String, String> {
    let values = fields
        .iter()
        .map(|f| match at(record, f) {
            Some(v) if !v.is_null() => Ok(v),
            _ => Err(format!("record has no primary key field {f:?}")),
        })
        .collect::<Result<Vec<_>, _>>()?;
    serde_json::to_string(&values).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn times_compare_as_instants_and_save_as_ordered_text() {
        let a = CursorValue::parse(CursorKind::Datetime, "2026-12-01T10:00:00+02:00").unwrap();
        let b = CursorValue::parse(CursorKind::Datetime, "2026-12-01T08:30:00.5Z").unwrap();
        assert!(a < b, "08:00Z is before 08:30:00.5Z");
        assert_eq!(
            b.position(),
            Position::Text("2026-12-01T08:30:00.500000Z".into())
        );
        assert_eq!(
            CursorValue::from_position(CursorKind::Datetime, &b.position()),
            Some(b.clone())
        );
        assert_eq!(
            b.minus(CursorKind::Datetime, 60_000).param(),
            "2026-12-01T08:29:00Z"
        );
        let e = CursorValue::of(CursorKind::Epoch, &json!(1_700_000_000)).unwrap();
        assert_eq!(e.minus(CursorKind::Epoch, 1_500).param(), "1699999998");
        assert!(CursorValue::of(CursorKind::Integer, &json!(-1)).is_err());
        assert!(CursorValue::of(CursorKind::Datetime, &json!("yesterday")).is_err());
    }

    #[test]
    fn paths_and_keys() {
        let body = json!({"data": {"items": [{"id": 1, "org": {"id": "a"}}]}});
        assert_eq!(at(&body, "data.items.0.id"), Some(&json!(1)));
        assert_eq!(at(&body, "data.missing"), None);
        let record = &body["data"]["items"][0];
        assert_eq!(
            key_of(record, &["id".into(), "org.id".into()]).unwrap(),
            r#"[1,"a"]"#
        );
        assert!(
            key_of(record, &["nope".into()])
                .unwrap_err()
                .contains("nope")
        );
    }
}
