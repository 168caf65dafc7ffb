//! Defines the Supabase connector's configuration, its defaults (the seed's environment
//! variables) and its pipeline id.

use std::time::Duration;

use serde::Deserialize;

/// `source = { kind = "supabase", … }`.
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SupabaseConfig {
    /// The project URL, `https://<ref>.supabase.co` (self-hosted: the gateway URL).
    pub url: String,
    /// The service role key (or anon key with RLS). Never logged. Better left out of files:
    /// see `key_env`.
    #[serde(default)]
    pub key: String,
    /// The environment variable holding the key when `key` is empty (default
    /// `SUPABASE_SERVICE_ROLE_KEY`).
    #[serde(default)]
    pub key_env: Option<String>,
    /// The schema of the tables.
    #[serde(default = "default_schema")]
    pub schema: String,
    /// The tables to follow.
    pub tables: Vec<String>,
    /// The monotonic column backfill reads by (maintained by a trigger on every write).
    #[serde(default = "default_cursor_column")]
    pub cursor_column: String,
    /// The primary key column (tie-breaker of the keyset).
    #[serde(default = "default_primary_key")]
    pub primary_key: String,
    /// How far below the cursor a backfill starts again, in milliseconds: `updated_at` is set
    /// when a statement runs, not when it commits, so a long transaction can commit rows that
    /// sort below rows already seen.
    #[serde(default = "default_overlap_ms")]
    pub overlap_ms: u64,
    /// Rows per PostgREST page.
    #[serde(default = "default_page")]
    pub page_size: usize,
    /// Phoenix serializer: `2.0.0` (arrays, default) or `1.0.0` (objects).
    #[serde(default = "default_vsn")]
    pub vsn: String,
    /// Heartbeat interval in milliseconds; a heartbeat unanswered by the next one ends the
    /// session (half-open socket).
    #[serde(default = "default_heartbeat_ms")]
    pub heartbeat_ms: u64,
    /// How often (ms) a live subscription re-reads every table from its durable cursor minus
    /// the overlap, catching changes Realtime dropped without a disconnect (rate limits, a
    /// truncated payload). 0: only on (re)subscribe.
    #[serde(default = "default_reconcile_ms")]
    pub reconcile_ms: u64,
    /// Also emit every change on resource `state`, for a current-state table keyed by
    /// (schema, table, key) whose newest `version` wins (deletes kept as tombstones).
    #[serde(default)]
    pub current_state: bool,
    /// How long to wait for the join reply and then for "Subscribed to PostgreSQL", ms.
    #[serde(default = "default_join_timeout_ms")]
    pub join_timeout_ms: u64,
}

fn default_schema() -> String {
    "public".into()
}
fn default_cursor_column() -> String {
    "updated_at".into()
}
fn default_primary_key() -> String {
    "id".into()
}
fn default_overlap_ms() -> u64 {
    5_000
}
fn default_page() -> usize {
    1_000
}
fn default_vsn() -> String {
    "2.0.0".into()
}
fn default_heartbeat_ms() -> u64 {
    25_000
}
fn default_reconcile_ms() -> u64 {
    60_000
}
fn default_join_timeout_ms() -> u64 {
    15_000
}

impl std::fmt::Debug for SupabaseConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SupabaseConfig")
            .field("url", &self.url)
            .field("key", &"<redacted>")
            .field("schema", &self.schema)
            .field("tables", &self.tables)
            .field("cursor_column", &self.cursor_column)
            .field("primary_key", &self.primary_key)
            .field("vsn", &self.vsn)
            .finish_non_exhaustive()
    }
}

impl SupabaseConfig {
    /// A configuration with the defaults for `tables` of `url`.
    pub fn new(url: impl Into<String>, key: impl Into<String>, tables: &[&str]) -> Self {
        Self {
            url: url.into(),
            key: key.into(),
            key_env: None,
            schema: default_schema(),
            tables: tables.iter().map(|t| (*t).to_owned()).collect(),
            cursor_column: default_cursor_column(),
            primary_key: default_primary_key(),
            overlap_ms: default_overlap_ms(),
            page_size: default_page(),
            vsn: default_vsn(),
            heartbeat_ms: default_heartbeat_ms(),
            reconcile_ms: default_reconcile_ms(),
            current_state: false,
            join_timeout_ms: default_join_timeout_ms(),
        }
    }

    /// From the seed's environment: `SUPABASE_URL`, `SUPABASE_SERVICE_ROLE_KEY`,
    /// `SUPABASE_SCHEMA` (default `public`), `SUPABASE_TABLES` (comma-separated), and
    /// `SUPABASE_CURSOR_COLUMN` (default `updated_at`).
    ///
    /// # Errors
    /// Names the missing variable.
    pub fn from_env() -> Result<Self, String> {
        let var = |name: &str| std::env::var(name).ok().filter(|v| !v.trim().is_empty());
        let url = var("SUPABASE_URL").ok_or("SUPABASE_URL is not set")?;
        let key = var("SUPABASE_SERVICE_ROLE_KEY").ok_or("SUPABASE_SERVICE_ROLE_KEY is not set")?;
        let tables =
            var("SUPABASE_TABLES").ok_or("SUPABASE_TABLES is not set (comma-separated)")?;
        let tables: Vec<&str> = tables
            .split(',')
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .collect();
        let mut config = Self::new(url, key, &tables);
        if let Some(schema) = var("SUPABASE_SCHEMA") {
            config.schema = schema;
        }
        if let Some(column) = var("SUPABASE_CURSOR_COLUMN") {
            config.cursor_column = column;
        }
        config.validate()?;
        Ok(config)
    }

    /// The key: `key`, or the environment variable `key_env` names.
    ///
    /// # Errors
    /// Names the variable that is not set.
    pub fn resolve_key(&mut self) -> Result<(), String> {
        if self.key.is_empty() {
            let var = self
                .key_env
                .clone()
                .unwrap_or_else(|| "SUPABASE_SERVICE_ROLE_KEY".to_owned());
            self.key = std::env::var(&var)
                .ok()
                .filter(|k| !k.is_empty())
                .ok_or_else(|| format!("no key: set key_env's variable {var} (or key)"))?;
        }
        Ok(())
    }

    /// Checks the configuration.
    ///
    /// # Errors
    /// What is wrong.
    pub fn validate(&self) -> Result<(), String> {
        if !(self.url.starts_with("http://") || self.url.starts_with("https://")) {
            return Err(format!(
                "url {:?} must start with http:// or https://",
                self.url
            ));
        }
        if self.tables.is_empty() {
            return Err("no tables to follow".into());
        }
        if self.vsn != "1.0.0" && self.vsn != "2.0.0" {
            return Err(format!("vsn {:?} must be 1.0.0 or 2.0.0", self.vsn));
        }
        if self.page_size == 0 || self.heartbeat_ms == 0 {
            return Err("page_size and heartbeat_ms must be positive".into());
        }
        Ok(())
    }

    pub(crate) fn heartbeat(&self) -> Duration {
        Duration::from_millis(self.heartbeat_ms)
    }

    pub(crate) fn join_timeout(&self) -> Duration {
        Duration::from_millis(self.join_timeout_ms)
    }

    /// The websocket URL (the key goes in the `x-api-key` header, never in the URL).
    pub(crate) fn socket_url(&self) -> String {
        let base = self.url.trim_end_matches('/');
        let base = base
            .strip_prefix("https://")
            .map(|rest| format!("wss://{rest}"))
            .or_else(|| {
                base.strip_prefix("http://")
                    .map(|rest| format!("ws://{rest}"))
            })
            .unwrap_or_else(|| base.to_owned());
        format!("{base}/realtime/v1/websocket?vsn={}", self.vsn)
    }
}
