//! The PostgREST subset a keyset backfill needs: `GET /rest/v1/<table>?select=*&<col>=<op>.<v>
//! &or=(…,and(…))&order=<col>.asc,…&limit=N`, answered from the real database.

use std::sync::{Arc, atomic::Ordering};

use axum::{
    extract::{Path, Query, State as Shared},
    http::{HeaderMap, StatusCode},
    response::{IntoResponse, Response},
};
use serde_json::json;

use super::{State, quote};

fn literal(value: &str) -> String {
    format!("'{}'", value.replace('\'', "''"))
}

fn operator(op: &str) -> Option<&'static str> {
    Some(match op {
        "eq" => "=",
        "neq" => "<>",
        "gt" => ">",
        "gte" => ">=",
        "lt" => "<",
        "lte" => "<=",
        _ => return None,
    })
}

/// Splits `a,b(c,d),"e,f"` at top-level commas.
fn split_top(text: &str) -> Vec<String> {
    let (mut parts, mut current, mut depth, mut quoted) = (Vec::new(), String::new(), 0, false);
    for c in text.chars() {
        match c {
            '"' => quoted = !quoted,
            '(' if !quoted => depth += 1,
            ')' if !quoted => depth -= 1,
            ',' if !quoted && depth == 0 => {
                parts.push(std::mem::take(&mut current));
                continue;
            }
            _ => {}
        }
        current.push(c);
    }
    parts.push(current);
    parts
}

/// `col.op.value`, `and(…)` or `or(…)` as SQL.
fn condition(text: &str) -> Result<String, String> {
    for (prefix, joiner) in [("and(", " AND "), ("or(", " OR ")] {
        if let Some(inner) = text.strip_prefix(prefix).and_then(|t| t.strip_suffix(')')) {
            let parts = split_top(inner)
                .iter()
                .map(|p| condition(p))
                .collect::<Result<Vec<_>, _>>()?;
            return Ok(format!("({})", parts.join(joiner)));
        }
    }
    let (column, rest) = text
        .split_once('.')
        .ok_or(format!("bad condition {text:?}"))?;
    let (op, value) = rest
        .split_once('.')
        .ok_or(format!("bad condition {text:?}"))?;
    // Inside a logic tree, double quotes delimit a value holding reserved characters.
    let value = value
        .strip_prefix('"')
        .and_then(|v| v.strip_suffix('"'))
        .unwrap_or(value);
    comparison(column, op, value)
}

/// A comparison with `value` taken as it is: a plain `col=op.value` filter keeps any double
/// quotes as part of the value, as PostgREST does.
fn comparison(column: &str, op: &str, value: &str) -> Result<String, String> {
    let op = operator(op).ok_or(format!("unsupported operator {op:?}"))?;
    Ok(format!("t.{} {op} {}", quote(column), literal(value)))
}

fn error(status: StatusCode, code: &str, message: &str) -> Response {
    (
        status,
        axum::Json(json!({"code": code, "message": message, "details": null, "hint": null})),
    )
        .into_response()
}

pub(crate) async fn select(
    Path(table): Path<String>,
    Query(params): Query<Vec<(String, String)>>,
    headers: HeaderMap,
    Shared(state): Shared<Arc<State>>,
) -> Response {
    state.counters.rest_requests.fetch_add(1, Ordering::Relaxed);
    if state.roll(state.faults().rest_500) {
        state.counters.rest_errors.fetch_add(1, Ordering::Relaxed);
        return error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "PGRST000",
            "Database connection error",
        );
    }
    if headers.get("apikey").and_then(|v| v.to_str().ok()) != Some(state.config.api_key.as_str()) {
        return error(StatusCode::UNAUTHORIZED, "PGRST301", "Invalid API key");
    }
    let schema = headers
        .get("accept-profile")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("public")
        .to_owned();
    let mut conditions = Vec::new();
    let mut order = Vec::new();
    let mut limit = None;
    for (key, value) in &params {
        let result = match key.as_str() {
            "select" if value == "*" => Ok(()),
            "select" => Err("only select=* is supported".to_owned()),
            "limit" => value
                .parse::<u64>()
                .map(|n| limit = Some(n))
                .map_err(|_| "bad limit".to_owned()),
            "order" => value.split(',').try_for_each(|part| {
                let (column, direction) = part.split_once('.').unwrap_or((part, "asc"));
                let direction = match direction {
                    "asc" => "ASC",
                    "desc" => "DESC",
                    other => return Err(format!("bad order {other:?}")),
                };
                order.push(format!("t.{} {direction}", quote(column)));
                Ok(())
            }),
            "or" => condition(&format!("or{value}")).map(|c| conditions.push(c)),
            "and" => condition(&format!("and{value}")).map(|c| conditions.push(c)),
            column => {
                let (op, v) = value.split_once('.').unwrap_or((value, ""));
                comparison(column, op, v).map(|c| conditions.push(c))
            }
        };
        if let Err(message) = result {
            return error(StatusCode::BAD_REQUEST, "PGRST100", &message);
        }
    }
    let mut sql = format!("SELECT * FROM {}.{} t", quote(&schema), quote(&table));
    if !conditions.is_empty() {
        sql.push_str(&format!(" WHERE {}", conditions.join(" AND ")));
    }
    if !order.is_empty() {
        sql.push_str(&format!(" ORDER BY {}", order.join(", ")));
    }
    if let Some(limit) = limit {
        sql.push_str(&format!(" LIMIT {limit}"));
    }
    let wrapped = format!("SELECT coalesce(json_agg(row_to_json(t)), '[]')::text FROM ({sql}) t");
    match state.rest.query_one(&wrapped, &[]).await {
        Ok(row) => (
            StatusCode::OK,
            [("content-type", "application/json; charset=utf-8")],
            row.get::<_, String>(0),
        )
            .into_response(),
        Err(e) => {
            let code = e.code().map(|c| c.code().to_owned()).unwrap_or_default();
            let message = e
                .as_db_error()
                .map_or_else(|| e.to_string(), |d| d.message().to_owned());
            let status = if code == "42P01" {
                StatusCode::NOT_FOUND
            } else {
                StatusCode::BAD_REQUEST
            };
            error(status, &code, &message)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keyset_filters_become_sql() {
        let sql = condition("or(updated_at.gt.\"2026-01-01T00:00:00.5+00:00\",and(updated_at.eq.\"2026-01-01T00:00:00.5+00:00\",id.gt.42))").unwrap();
        assert_eq!(
            sql,
            "(t.\"updated_at\" > '2026-01-01T00:00:00.5+00:00' OR (t.\"updated_at\" = '2026-01-01T00:00:00.5+00:00' AND t.\"id\" > '42'))"
        );
        assert!(condition("id.like.x").is_err());
        assert_eq!(comparison("n", "eq", "it's").unwrap(), "t.\"n\" = 'it''s'");
        // A plain filter's quotes are part of the value.
        assert_eq!(comparison("n", "eq", "\"x\"").unwrap(), "t.\"n\" = '\"x\"'");
    }
}
