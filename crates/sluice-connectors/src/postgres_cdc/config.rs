//! The `postgres_cdc` configuration: serde, `validate()`, and the connection URL (parsed, the
//! password never shown).

use std::time::Duration;

use serde::Deserialize;
use sluice::SourceError;

/// `source = { kind = "postgres_cdc", … }`.
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PostgresCdcConfig {
    /// `postgres://user:password@host:port/database` (the password may be left out and given in
    /// `PGPASSWORD`).
    pub url: String,
    /// The replication slot (persistent: it holds the WAL sluice has not acknowledged).
    pub slot: String,
    /// The publication naming the tables.
    pub publication: String,
    /// Create the publication (for `tables`) and the slot when they do not exist.
    #[serde(default)]
    pub create: bool,
    /// Tables of the publication to create, `schema.table` or `table` (public).
    #[serde(default)]
    pub tables: Vec<String>,
    /// The resource of every change (default `changes`); `"{schema}.{table}"` routes per table.
    #[serde(default = "default_resource")]
    pub resource: String,
}

fn default_resource() -> String {
    "changes".into()
}

impl PostgresCdcConfig {
    /// Checks the configuration without connecting (what `run` would refuse for a config
    /// reason).
    ///
    /// # Errors
    /// What is wrong, for the user (never the password).
    pub fn validate(&self) -> Result<(), String> {
        Conn::parse(&self.url).map_err(|e| e.message().to_owned())?;
        // Postgres: slot names are lower-case letters, digits and underscores, at most 63.
        let slot_ok = !self.slot.is_empty()
            && self.slot.len() <= 63
            && self
                .slot
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
        if !slot_ok {
            return Err(format!(
                "slot {:?}: use 1 to 63 lower-case letters, digits and underscores",
                self.slot
            ));
        }
        if self.publication.is_empty() {
            return Err("publication is empty".into());
        }
        if let Some(bad) = self
            .tables
            .iter()
            .find(|t| t.is_empty() || t.split('.').count() > 2 || t.split('.').any(str::is_empty))
        {
            return Err(format!("table {bad:?}: use table or schema.table"));
        }
        if self.resource.is_empty() {
            return Err("resource is empty".into());
        }
        Ok(())
    }
}

impl std::fmt::Debug for PostgresCdcConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresCdcConfig")
            .field("url", &redact(&self.url))
            .field("slot", &self.slot)
            .field("publication", &self.publication)
            .field("create", &self.create)
            .field("tables", &self.tables)
            .finish_non_exhaustive()
    }
}

/// The URL without its password.
fn redact(url: &str) -> String {
    match url.parse::<reqwest::Url>() {
        Ok(mut parsed) => {
            if parsed.password().is_some() {
                let _ = parsed.set_password(Some("***"));
            }
            parsed.to_string()
        }
        Err(_) => "<unparsable url>".into(),
    }
}

/// The parts of a connection URL.
#[derive(Clone)]
pub(crate) struct Conn {
    pub(crate) host: String,
    pub(crate) port: u16,
    pub(crate) user: String,
    pub(crate) password: String,
    pub(crate) database: String,
}

impl Conn {
    pub(crate) fn parse(url: &str) -> Result<Self, SourceError> {
        let parsed: reqwest::Url = url
            .parse()
            .map_err(|e| SourceError::fatal(format!("postgres_cdc: bad url: {e}")))?;
        if !matches!(parsed.scheme(), "postgres" | "postgresql") {
            return Err(SourceError::fatal(
                "postgres_cdc: url must start with postgres://",
            ));
        }
        let decode = |s: &str| {
            let mut out = Vec::new();
            let b = s.as_bytes();
            let mut i = 0;
            while i < b.len() {
                if b[i] == b'%'
                    && let Some(v) = s
                        .get(i + 1..i + 3)
                        .and_then(|h| u8::from_str_radix(h, 16).ok())
                {
                    out.push(v);
                    i += 3;
                    continue;
                }
                out.push(b[i]);
                i += 1;
            }
            String::from_utf8_lossy(&out).into_owned()
        };
        Ok(Self {
            host: parsed.host_str().unwrap_or("127.0.0.1").to_owned(),
            port: parsed.port().unwrap_or(5432),
            user: decode(parsed.username()),
            password: parsed
                .password()
                .map(decode)
                .or_else(|| std::env::var("PGPASSWORD").ok())
                .unwrap_or_default(),
            database: decode(parsed.path().trim_start_matches('/')),
        })
    }

    pub(crate) async fn control(&self) -> Result<tokio_postgres::Client, SourceError> {
        let mut config = tokio_postgres::Config::new();
        config
            .host(&self.host)
            .port(self.port)
            .user(&self.user)
            .password(&self.password)
            .dbname(&self.database)
            .connect_timeout(Duration::from_secs(10));
        let (client, connection) = config
            .connect(tokio_postgres::NoTls)
            .await
            .map_err(pg_error)?;
        tokio::spawn(async move {
            let _ = connection.await;
        });
        Ok(client)
    }
}

/// Classifies a control-connection error: auth and missing objects are fatal, the rest
/// (connection refused, server shutting down) transient.
pub(crate) fn pg_error(error: tokio_postgres::Error) -> SourceError {
    use tokio_postgres::error::SqlState;
    let fatal = error.code().is_some_and(|c| {
        [
            SqlState::INVALID_PASSWORD,
            SqlState::INVALID_AUTHORIZATION_SPECIFICATION,
            SqlState::UNDEFINED_TABLE,
            SqlState::UNDEFINED_OBJECT,
            SqlState::INSUFFICIENT_PRIVILEGE,
            SqlState::INVALID_CATALOG_NAME,
        ]
        .contains(c)
    });
    let message = format!(
        "postgres_cdc: {}",
        error
            .as_db_error()
            .map_or_else(|| error.to_string(), |e| e.message().to_owned())
    );
    if fatal {
        SourceError::fatal(message)
    } else {
        SourceError::transient(message)
    }
}
