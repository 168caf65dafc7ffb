//! The HTTP side of the ClickHouse sink: where the server is, who we are, one request, and what
//! an error means (retry, dead-letter or stop).
//!
//! Plain HTTP through `reqwest` rather than the `clickhouse` crate: that crate only talks to
//! 18.x servers (Debian's package) with validation and compression off, and the sink needs little
//! of it (two queries and one `INSERT … FORMAT JSONEachRow` per batch).

use std::{fmt, time::Duration};

use reqwest::{StatusCode, Url};
use sluice::{ErrorClass, SinkError};

/// Where a ClickHouse server is and how to log in. The password never appears in `Debug`,
/// errors or logs.
#[derive(Clone)]
pub struct ClickHouseEndpoint {
    /// The HTTP base URL, without credentials or path (`http://127.0.0.1:8123/`).
    base: Url,
    user: String,
    password: Option<String>,
    database: String,
}

impl fmt::Debug for ClickHouseEndpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClickHouseEndpoint")
            .field("base", &self.base.as_str())
            .field("user", &self.user)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("database", &self.database)
            .finish()
    }
}

impl fmt::Display for ClickHouseEndpoint {
    /// The URL as it is safe to show: no password.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let host = self.base.host_str().unwrap_or("?");
        let port = self.base.port_or_known_default().unwrap_or(8123);
        write!(
            f,
            "{}://{}@{host}:{port}/{}",
            self.base.scheme(),
            self.user,
            self.database
        )
    }
}

impl ClickHouseEndpoint {
    /// Parses `clickhouse://user:password@host:port/database` (or `http://`, `https://`,
    /// `clickhouses://`). User defaults to `default`, port to 8123 (8443 with TLS), database to
    /// `default`. Percent-encoded user and password are decoded.
    ///
    /// # Errors
    /// A message (without the password) when the URL cannot be used.
    pub fn parse(url: &str) -> Result<Self, String> {
        let parsed = Url::parse(url).map_err(|e| format!("bad ClickHouse URL: {e}"))?;
        let (scheme, default_port) = match parsed.scheme() {
            "clickhouse" | "http" => ("http", 8123),
            "clickhouses" | "https" => ("https", 8443),
            other => {
                return Err(format!(
                    "bad ClickHouse URL: scheme {other:?} (expected clickhouse://, http:// or https://)"
                ));
            }
        };
        let host = parsed
            .host_str()
            .filter(|h| !h.is_empty())
            .ok_or("bad ClickHouse URL: no host")?;
        let port = parsed.port().unwrap_or(default_port);
        let base = Url::parse(&format!("{scheme}://{host}:{port}/"))
            .map_err(|e| format!("bad ClickHouse URL: {e}"))?;
        let decode = |s: &str| {
            percent_decode(s).ok_or_else(|| "bad ClickHouse URL: bad percent-encoding".to_owned())
        };
        let user = match parsed.username() {
            "" => "default".to_owned(),
            user => decode(user)?,
        };
        let password = parsed.password().map(decode).transpose()?;
        let database = match parsed.path().trim_matches('/') {
            "" => "default".to_owned(),
            db => decode(db)?,
        };
        Ok(Self {
            base,
            user,
            password,
            database,
        })
    }

    /// The database tables are created in.
    pub fn database(&self) -> &str {
        &self.database
    }
}

/// Decodes `%XX` escapes (userinfo and path of a URL). Hand-written: four lines do not justify a
/// dependency, and `url` leaves userinfo encoded.
fn percent_decode(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = text.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// A server version, `major.minor`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct ServerVersion {
    /// The major version (18, 24, …).
    pub major: u32,
    /// The minor version.
    pub minor: u32,
}

impl ServerVersion {
    /// Parses the answer of `SELECT version()` (`18.16.1`, `24.8.4.13`).
    pub fn parse(text: &str) -> Option<Self> {
        let mut parts = text.trim().split('.');
        let major = parts.next()?.parse().ok()?;
        let minor = parts.next()?.parse().ok()?;
        Some(Self { major, minor })
    }

    /// Whether the server has `DateTime64` (20.1 and later).
    pub fn has_datetime64(self) -> bool {
        self >= Self {
            major: 20,
            minor: 1,
        }
    }
}

impl fmt::Display for ServerVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.major, self.minor)
    }
}

/// One HTTP client for one server.
#[derive(Clone, Debug)]
pub(crate) struct Client {
    http: reqwest::Client,
    endpoint: ClickHouseEndpoint,
}

impl Client {
    pub(crate) fn new(endpoint: ClickHouseEndpoint, timeout: Duration) -> Result<Self, SinkError> {
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout.min(Duration::from_secs(10)))
            .tcp_nodelay(true)
            .build()
            .map_err(|e| {
                SinkError::fatal("clickhouse: http client").with_source(e.without_url())
            })?;
        Ok(Self { http, endpoint })
    }

    pub(crate) fn endpoint(&self) -> &ClickHouseEndpoint {
        &self.endpoint
    }

    /// Runs `statement`, or with `data` the INSERT `statement` with `data` as its rows, and
    /// returns the response text.
    pub(crate) async fn execute(
        &self,
        statement: &str,
        data: Option<bytes::Bytes>,
    ) -> Result<String, SinkError> {
        let request = self
            .http
            .post(self.endpoint.base.clone())
            .basic_auth(&self.endpoint.user, self.endpoint.password.as_deref());
        // The server reads the statement from the `query` parameter followed by the body; an
        // INSERT puts its rows in the body, anything else sends the statement as the body.
        let request = match data {
            Some(rows) => request
                .query(&[
                    ("database", self.endpoint.database.as_str()),
                    ("query", statement),
                ])
                .body(rows),
            None => request
                .query(&[("database", self.endpoint.database.as_str())])
                .body(statement.to_owned()),
        };
        let response = request.send().await.map_err(|e| {
            // `without_url`: the URL carries the query (never the password, which goes in a
            // header), but keep errors short and uniform.
            SinkError::transient(format!("clickhouse {}: request failed", self.endpoint))
                .with_source(e.without_url())
        })?;
        let status = response.status();
        let header_code = response
            .headers()
            .get("x-clickhouse-exception-code")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u32>().ok());
        let text = response.text().await.map_err(|e| {
            SinkError::transient(format!(
                "clickhouse {}: reading the response",
                self.endpoint
            ))
            .with_source(e.without_url())
        })?;
        if status.is_success() {
            return Ok(text);
        }
        let code = header_code.or_else(|| exception_code(&text));
        let class = classify(status, code);
        let mut message = text.trim().replace('\n', " ");
        if message.len() > 400 {
            let mut end = 400;
            while !message.is_char_boundary(end) {
                end -= 1;
            }
            message.truncate(end);
            message.push('…');
        }
        Err(SinkError::new(
            class,
            format!(
                "clickhouse {}: http {}: {message}",
                self.endpoint,
                status.as_u16()
            ),
        ))
    }
}

/// The `Code: N` of a ClickHouse exception text (`Code: 60, e.displayText() = …` on old
/// servers, `Code: 60. DB::Exception: …` on new ones).
pub(crate) fn exception_code(text: &str) -> Option<u32> {
    let rest = &text[text.find("Code: ")? + 6..];
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}

/// What an error response means. Codes from ClickHouse's `ErrorCodes.cpp`; unknown ones are
/// retried (the loss-free choice) and their message shows the code.
pub(crate) fn classify(status: StatusCode, code: Option<u32>) -> ErrorClass {
    match code {
        // The input: cannot parse, type mismatch, out of range, null in a non-null column,
        // decimal overflow, too large string, incorrect data.
        Some(6 | 26 | 27 | 38 | 41 | 53 | 69 | 70 | 72 | 117 | 131 | 349 | 407) => ErrorClass::Data,
        // The setup: unknown table/column/database/identifier/setting, syntax, auth, access,
        // readonly user, unknown user, wrong or missing password.
        Some(16 | 47 | 60 | 62 | 81 | 115 | 164 | 192 | 193 | 194 | 497 | 516) => ErrorClass::Fatal,
        // The server is busy or in trouble: too many parts, timeouts, network, too many
        // queries, memory, read-only table (replica lost its keeper), …
        Some(_) => ErrorClass::Transient,
        None if status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN => {
            ErrorClass::Fatal
        }
        None => ErrorClass::Transient,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_parse_with_defaults_and_the_password_is_never_shown() {
        let e = ClickHouseEndpoint::parse("clickhouse://bob:p%40ss@db.local/analytics").unwrap();
        assert_eq!(e.user, "bob");
        assert_eq!(e.password.as_deref(), Some("p@ss"));
        assert_eq!(e.database(), "analytics");
        assert_eq!(e.base.as_str(), "http://db.local:8123/");
        let shown = format!("{e} {e:?}");
        assert!(
            !shown.contains("p@ss") && !shown.contains("p%40ss"),
            "{shown}"
        );
        let e = ClickHouseEndpoint::parse("https://h").unwrap();
        assert_eq!((e.user.as_str(), e.database()), ("default", "default"));
        assert_eq!(e.base.as_str(), "https://h:8443/");
        assert!(ClickHouseEndpoint::parse("kafka://h").is_err());
        assert!(ClickHouseEndpoint::parse("clickhouse://u:%zz@h").is_err());
    }

    #[test]
    fn errors_are_classified_by_code_then_status() {
        let old = "Code: 60, e.displayText() = DB::Exception: Table default.t doesn't exist.";
        let new = "Code: 252. DB::Exception: Too many parts (300). (TOO_MANY_PARTS)";
        assert_eq!(exception_code(old), Some(60));
        assert_eq!(exception_code(new), Some(252));
        let s500 = StatusCode::INTERNAL_SERVER_ERROR;
        assert_eq!(classify(s500, Some(60)), ErrorClass::Fatal);
        assert_eq!(classify(s500, Some(252)), ErrorClass::Transient);
        assert_eq!(classify(s500, Some(27)), ErrorClass::Data);
        assert_eq!(classify(StatusCode::UNAUTHORIZED, None), ErrorClass::Fatal);
        assert_eq!(
            classify(StatusCode::BAD_GATEWAY, None),
            ErrorClass::Transient
        );
    }

    #[test]
    fn versions_compare() {
        let old = ServerVersion::parse("18.16.1").unwrap();
        assert!(!old.has_datetime64());
        assert!(ServerVersion::parse("24.8.4.13").unwrap().has_datetime64());
        assert_eq!(ServerVersion::parse("x"), None);
    }
}
