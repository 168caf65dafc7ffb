//! A stream's request: where each parameter goes (query, header or body), how the body is
//! encoded, and what a response is under the stream's rules.

use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use serde_json::{Map, Value};
use sluice::SourceError;

use super::{
    config::{
        Action, BodyFormat, CursorKind, Inject, Method, Pagination, ParamsIn, Rule, StreamConfig,
    },
    record::at,
};

/// Where one parameter goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Place {
    Query,
    Header,
    Body,
}

/// The place of parameter `name` of `stream`: the fixed query stays in the query, the cursor's
/// start and end go where `inject` says, the rest where `params_in` says.
fn place(stream: &StreamConfig, name: &str) -> Place {
    let default = match stream.params_in {
        ParamsIn::Query => Place::Query,
        ParamsIn::Body => Place::Body,
    };
    if stream.query.contains_key(name) {
        return Place::Query;
    }
    match &stream.cursor {
        Some(c) if c.param == name || c.end_param.as_deref() == Some(name) => match c.inject {
            Some(Inject::Query) => Place::Query,
            Some(Inject::Header) => Place::Header,
            Some(Inject::Body) => Place::Body,
            None => default,
        },
        _ => default,
    }
}

/// A parameter's value in a JSON body: sizes, offsets, page numbers and integer cursors as
/// numbers (APIs refuse `"100"` for a page size), the rest as strings.
fn body_value(stream: &StreamConfig, name: &str, value: &str) -> Value {
    let numeric_cursor = stream.cursor.as_ref().is_some_and(|c| {
        (c.param == name || c.end_param.as_deref() == Some(name))
            && matches!(c.kind, CursorKind::Epoch | CursorKind::Integer)
    });
    let paging = stream
        .pagination
        .page_size()
        .is_some_and(|s| s.param == name)
        || matches!(&stream.pagination,
            Pagination::Offset { param, .. } | Pagination::Page { param, .. } if param == name);
    match value.parse::<u64>() {
        Ok(n) if numeric_cursor || paging => Value::from(n),
        _ => Value::String(value.to_owned()),
    }
}

/// Sets `value` at a dotted `name` in `body`, making the objects on the way.
fn insert(body: &mut Map<String, Value>, name: &str, value: Value) {
    let mut parts = name.split('.').peekable();
    let mut object = body;
    while let Some(part) = parts.next() {
        if parts.peek().is_none() {
            object.insert(part.to_owned(), value);
            return;
        }
        let entry = object
            .entry(part.to_owned())
            .or_insert_with(|| Value::Object(Map::new()));
        if !entry.is_object() {
            *entry = Value::Object(Map::new());
        }
        let Value::Object(next) = entry else { return };
        object = next;
    }
}

/// The request for `url` with `params` (the fixed query, the cursor and the paging
/// parameters), without credentials: the source's headers, then the stream's, then header
/// parameters; a body for `post`.
///
/// # Errors
/// A header that is not a valid header (fatal: the configuration's).
pub(crate) fn build(
    http: &reqwest::Client,
    source_headers: &std::collections::BTreeMap<String, String>,
    stream: &StreamConfig,
    url: &str,
    params: &[(String, String)],
) -> Result<reqwest::RequestBuilder, SourceError> {
    let mut headers = HeaderMap::new();
    let configured = source_headers.iter().chain(&stream.headers);
    let routed = params
        .iter()
        .filter(|(name, _)| place(stream, name) == Place::Header)
        .map(|(name, value)| (name, value));
    for (name, value) in configured.chain(routed) {
        let (Ok(name), Ok(value)) = (
            HeaderName::try_from(name.as_str()),
            HeaderValue::try_from(value.as_str()),
        ) else {
            return Err(SourceError::fatal(format!(
                "http_poll: header {name:?} is not a valid header"
            )));
        };
        headers.insert(name, value);
    }
    let query: Vec<&(String, String)> = params
        .iter()
        .filter(|(name, _)| place(stream, name) == Place::Query)
        .collect();
    let request = match stream.method {
        Method::Get => http.get(url),
        Method::Post => http.post(url),
    }
    .headers(headers)
    .query(&query);
    if stream.method == Method::Get {
        return Ok(request);
    }
    let mut body = stream.body.clone();
    for (name, value) in params
        .iter()
        .filter(|(n, _)| place(stream, n) == Place::Body)
    {
        insert(&mut body, name, body_value(stream, name, value));
    }
    Ok(match stream.body_format {
        BodyFormat::Json => request.json(&body),
        BodyFormat::Form => {
            let fields: Vec<(String, String)> = body
                .into_iter()
                .map(|(k, v)| match v {
                    Value::String(s) => (k, s),
                    other => (k, other.to_string()),
                })
                .collect();
            request.form(&fields)
        }
    })
}

/// What the first matching rule says of a response, if one matches.
pub(crate) fn verdict<'a>(
    rules: impl IntoIterator<Item = &'a Rule>,
    status: u16,
    body: &[u8],
) -> Option<Action> {
    let mut json: Option<Option<Value>> = None;
    rules.into_iter().find_map(|rule| {
        let status_ok = rule.status.is_empty() || rule.status.contains(&status);
        let text_ok = rule.body_contains.as_ref().is_none_or(|needle| {
            body.windows(needle.len().max(1))
                .any(|w| w == needle.as_bytes())
        });
        let path_ok = rule.body_path.as_ref().is_none_or(|path| {
            let parsed = json.get_or_insert_with(|| serde_json::from_slice(body).ok());
            match (parsed.as_ref().and_then(|v| at(v, path)), &rule.equals) {
                (Some(found), Some(expected)) => found == expected,
                (Some(_), None) => true,
                (None, _) => false,
            }
        });
        (status_ok && text_ok && path_ok).then_some(rule.action)
    })
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn rule(value: Value) -> Rule {
        serde_json::from_value(value).unwrap()
    }

    #[test]
    fn the_first_matching_rule_decides() {
        let rules = [
            rule(json!({"status": [404], "action": "ignore"})),
            rule(
                json!({"body_path": "object", "equals": "error", "body_contains": "busy", "action": "retry"}),
            ),
            rule(json!({"body_path": "error.code", "action": "fail"})),
        ];
        assert_eq!(verdict(&rules, 404, b"{}"), Some(Action::Ignore));
        assert_eq!(
            verdict(&rules, 200, br#"{"object":"error","message":"busy"}"#),
            Some(Action::Retry)
        );
        assert_eq!(verdict(&rules, 200, br#"{"object":"error"}"#), None);
        assert_eq!(
            verdict(&rules, 200, br#"{"error":{"code":7}}"#),
            Some(Action::Fail)
        );
        assert_eq!(verdict(&rules, 200, b"not json"), None);
        assert_eq!(verdict(&rules, 500, b"{}"), None);
    }

    #[test]
    fn body_parameters_nest_and_keep_their_types() {
        let stream: StreamConfig = serde_json::from_value(json!({
            "name": "s",
            "path": "/search",
            "method": "post",
            "params_in": "body",
            "primary_key": ["id"],
            "body": {"filter": {"property": "updated"}},
            "cursor": {
                "field": "updated_at",
                "param": "filter.updated_at.on_or_after",
                "end_param": "filter.updated_at.before",
                "initial": "2026-01-01T00:00:00Z",
                "step": 60000
            },
            "pagination": {
                "kind": "token", "param": "start_cursor", "path": "next_cursor",
                "page_size": {"param": "page_size", "size": 50}
            }
        }))
        .unwrap();
        let mut body = stream.body.clone();
        for (name, value) in [
            ("filter.updated_at.on_or_after", "2026-01-01T00:00:00Z"),
            ("filter.updated_at.before", "2026-01-01T00:01:00Z"),
            ("page_size", "50"),
            ("start_cursor", "123"),
        ] {
            assert_eq!(place(&stream, name), Place::Body);
            insert(&mut body, name, body_value(&stream, name, value));
        }
        assert_eq!(
            Value::Object(body),
            json!({
                "filter": {
                    "property": "updated",
                    "updated_at": {"on_or_after": "2026-01-01T00:00:00Z", "before": "2026-01-01T00:01:00Z"}
                },
                "page_size": 50,
                "start_cursor": "123"
            })
        );
    }
}
