//! Defines the PostgREST keyset reads of the backfill:
//! `GET /rest/v1/<table>?select=*&or=(c.gt.v,and(c.eq.v,pk.gt.k))&order=c.asc,pk.asc&limit=N`.

use std::time::Duration;

use serde_json::Value;
use sluice::SourceError;

use super::config::SupabaseConfig;

/// Where a keyset read starts.
#[derive(Clone, Debug, PartialEq)]
pub enum From {
    /// The whole table.
    Start,
    /// Rows whose cursor column is at or after this time.
    AtOrAfter(String),
    /// Rows after (version, key) in keyset order.
    After(String, Value),
}

/// A PostgREST page: a JSON array of row objects.
///
/// # Errors
/// What is wrong with the body.
pub fn parse_page(body: &[u8]) -> Result<Vec<Value>, String> {
    let rows: Vec<Value> =
        serde_json::from_slice(body).map_err(|e| format!("not a JSON array: {e}"))?;
    match rows.iter().find(|r| !r.is_object()) {
        Some(row) => Err(format!("a row is not an object: {row}")),
        None => Ok(rows),
    }
}

/// Reads tables through PostgREST.
#[derive(Clone)]
pub struct RestClient {
    http: reqwest::Client,
    config: SupabaseConfig,
}

impl std::fmt::Debug for RestClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RestClient").finish_non_exhaustive()
    }
}

/// A PostgREST filter value, double-quoted (times carry `:` and `+`, texts may carry commas).
fn quoted(value: &str) -> String {
    format!("\"{}\"", value.replace('\\', "\\\\").replace('"', "\\\""))
}

fn key_text(key: &Value) -> String {
    match key {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

impl RestClient {
    /// A client for `config`'s project.
    ///
    /// # Errors
    /// A fatal error when the HTTP client cannot be built.
    pub fn new(config: SupabaseConfig) -> Result<Self, SourceError> {
        let http = crate::http::client(Duration::from_secs(30))?;
        Ok(Self { http, config })
    }

    /// One page of `table` from `from`, in keyset order. Network trouble, 429 and 5xx are
    /// retried here with backoff (the socket session stays up meanwhile).
    ///
    /// # Errors
    /// Transient when the retries ran out; fatal for a bad key (401/403), a missing table (404)
    /// or a filter PostgREST rejects (400, e.g. no such cursor column).
    pub async fn page(&self, table: &str, from: &From) -> Result<Vec<Value>, SourceError> {
        let mut backoff = sluice::Backoff::new(sluice::BackoffPolicy {
            initial: Duration::from_millis(200),
            max: Duration::from_secs(5),
            multiplier: 2.0,
            stable_after: Duration::ZERO,
        });
        let mut attempt = 0;
        loop {
            attempt += 1;
            match self.page_once(table, from).await {
                Err((error, wait))
                    if error.class() == sluice::ErrorClass::Transient && attempt < 8 =>
                {
                    tracing::warn!(table, attempt, %error, "supabase backfill page failed; retrying");
                    // The server's own wait, when it names one, beats our guess.
                    tokio::time::sleep(wait.unwrap_or_else(|| backoff.next_delay())).await;
                }
                other => return other.map_err(|(error, _)| error),
            }
        }
    }

    /// One request; a failure carries the wait the server asked for (`Retry-After`).
    async fn page_once(
        &self,
        table: &str,
        from: &From,
    ) -> Result<Vec<Value>, (SourceError, Option<Duration>)> {
        let c = &self.config;
        let mut query: Vec<(String, String)> = vec![
            ("select".into(), "*".into()),
            (
                "order".into(),
                format!("{}.asc,{}.asc", c.cursor_column, c.primary_key),
            ),
            ("limit".into(), c.page_size.to_string()),
        ];
        match from {
            From::Start => {}
            // A plain filter takes its value literally (quotes would be part of it); only the
            // logic tree of `or` needs them.
            From::AtOrAfter(time) => query.push((c.cursor_column.clone(), format!("gte.{time}"))),
            From::After(version, key) => query.push((
                "or".into(),
                format!(
                    "({col}.gt.{v},and({col}.eq.{v},{pk}.gt.{k}))",
                    col = c.cursor_column,
                    v = quoted(version),
                    pk = c.primary_key,
                    k = quoted(&key_text(key)),
                ),
            )),
        }
        let url = format!("{}/rest/v1/{table}", c.url.trim_end_matches('/'));
        let response = self
            .http
            .get(&url)
            .query(&query)
            .header("apikey", &c.key)
            .bearer_auth(&c.key)
            .header("accept-profile", &c.schema)
            .send()
            .await
            .map_err(|e| {
                let error = SourceError::transient(format!(
                    "supabase: backfill of {table}: request failed"
                ))
                .with_source(e.without_url());
                (error, None)
            })?;
        let status = response.status();
        let wait = crate::http::retry_after(response.headers(), Duration::from_secs(60));
        let body = response.bytes().await.map_err(|e| {
            let error = SourceError::transient(format!(
                "supabase: backfill of {table}: reading the response"
            ))
            .with_source(e.without_url());
            (error, None)
        })?;
        if status.is_success() {
            return parse_page(&body).map_err(|e| {
                (
                    SourceError::transient(format!("supabase: backfill of {table}: {e}")),
                    None,
                )
            });
        }
        let context = format!("supabase: backfill of {}.{table}", c.schema);
        Err((
            crate::http::status_error(&context, status.as_u16(), &body),
            wait,
        ))
    }
}
