//! The shared HTTP policy of every connector, in one place: what a status means (one table),
//! `Retry-After`, the error text of a response body, and the client every connector builds.
//! A connector never classifies a status itself.

use std::time::Duration;

use reqwest::header::HeaderMap;
use sluice::{ErrorClass, SourceError};

/// What an HTTP status means for a request that was well formed for a reachable service:
///
/// | status | class | why |
/// |---|---|---|
/// | 2xx | — | success |
/// | 408, 425, 429 | transient | timeout, too early, throttled: wait and retry |
/// | 5xx | transient | the service is failing: retry with backoff |
/// | 400, 401, 403, 404, 405, 410, 422, other 4xx | fatal | bad request, credentials, unknown resource: retrying cannot help |
/// | anything else | transient | unexpected (1xx, 3xx not followed): retry |
pub fn class(status: u16) -> ErrorClass {
    match status {
        408 | 425 | 429 | 500..=599 => ErrorClass::Transient,
        400..=499 => ErrorClass::Fatal,
        _ => ErrorClass::Transient,
    }
}

/// The wait a `Retry-After` header asks for: seconds, or an HTTP date (RFC 7231), capped at
/// `cap`. `None` without a (valid) header.
pub fn retry_after(headers: &HeaderMap, cap: Duration) -> Option<Duration> {
    let value = headers
        .get(reqwest::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim();
    let wait = match value.parse::<u64>() {
        Ok(seconds) => Duration::from_secs(seconds),
        Err(_) => {
            let at = chrono::DateTime::parse_from_rfc2822(value).ok()?;
            (at.with_timezone(&chrono::Utc) - chrono::Utc::now())
                .to_std()
                .unwrap_or(Duration::ZERO)
        }
    };
    Some(wait.min(cap))
}

/// The service's own words from an error body: `message`, `error`, `msg` or `reason` of a JSON
/// object, else the first 200 characters of the text.
pub fn reason(body: &[u8]) -> String {
    let json = serde_json::from_slice::<serde_json::Value>(body).ok();
    let field = json.as_ref().and_then(|v| {
        ["message", "error", "msg", "reason"]
            .iter()
            .find_map(|k| v.get(k).and_then(|m| m.as_str()))
            .map(str::to_owned)
    });
    field.unwrap_or_else(|| String::from_utf8_lossy(body).chars().take(200).collect())
}

/// A source error for a response with `status` and `body`, classified by [`class`].
pub fn status_error(context: &str, status: u16, body: &[u8]) -> SourceError {
    SourceError::new(
        class(status),
        format!("{context}: HTTP {status}: {}", reason(body)),
    )
}

/// The HTTP client of a connector: rustls, a per-request `timeout`, sluice's user agent.
///
/// # Errors
/// Fatal when the client cannot be built.
pub fn client(timeout: Duration) -> Result<reqwest::Client, SourceError> {
    reqwest::Client::builder()
        .timeout(timeout)
        .user_agent(concat!("sluice/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| {
            SourceError::fatal("cannot build the HTTP client").with_source(e.without_url())
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_table_for_every_status() {
        for (status, expected) in [
            (429, ErrorClass::Transient),
            (408, ErrorClass::Transient),
            (500, ErrorClass::Transient),
            (503, ErrorClass::Transient),
            (400, ErrorClass::Fatal),
            (401, ErrorClass::Fatal),
            (403, ErrorClass::Fatal),
            (404, ErrorClass::Fatal),
            (422, ErrorClass::Fatal),
        ] {
            assert_eq!(class(status), expected, "{status}");
        }
    }

    #[test]
    fn retry_after_reads_seconds_and_dates() {
        let mut headers = HeaderMap::new();
        let cap = Duration::from_secs(60);
        assert_eq!(retry_after(&headers, cap), None);
        headers.insert("retry-after", "7".parse().unwrap());
        assert_eq!(retry_after(&headers, cap), Some(Duration::from_secs(7)));
        headers.insert("retry-after", "3600".parse().unwrap());
        assert_eq!(retry_after(&headers, cap), Some(cap));
        let soon = (chrono::Utc::now() + chrono::Duration::seconds(30)).to_rfc2822();
        headers.insert("retry-after", soon.parse().unwrap());
        let wait = retry_after(&headers, cap).unwrap();
        assert!(
            wait > Duration::from_secs(25) && wait <= Duration::from_secs(30),
            "{wait:?}"
        );
        headers.insert(
            "retry-after",
            "Wed, 21 Oct 2015 07:28:00 GMT".parse().unwrap(),
        );
        assert_eq!(retry_after(&headers, cap), Some(Duration::ZERO));
        headers.insert("retry-after", "soon".parse().unwrap());
        assert_eq!(retry_after(&headers, cap), None);
    }

    #[test]
    fn reasons_come_from_the_body() {
        assert_eq!(reason(br#"{"message":"Invalid Price"}"#), "Invalid Price");
        assert_eq!(
            reason(br#"{"error":"Failed to validate JWT"}"#),
            "Failed to validate JWT"
        );
        assert_eq!(reason(b"plain"), "plain");
    }
}
