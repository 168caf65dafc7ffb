//! The Phoenix frames of Realtime (vsn 1.0.0 objects, 2.0.0 arrays): encoding and decoding.

use serde_json::{Value, json};

/// One Phoenix message.
#[derive(Clone, Debug, PartialEq)]
pub struct Frame {
    /// The ref of the channel's join (2.0.0 only; 1.0.0 servers never send it).
    pub join_ref: Option<String>,
    /// The ref of the push a reply answers.
    pub reference: Option<String>,
    /// `phoenix` or `realtime:<channel>`.
    pub topic: String,
    /// `phx_reply`, `postgres_changes`, `system`, …
    pub event: String,
    /// The payload.
    pub payload: Value,
}

impl Frame {
    /// A push from the client.
    pub fn push(
        join_ref: Option<&str>,
        reference: &str,
        topic: &str,
        event: &str,
        payload: Value,
    ) -> Self {
        Self {
            join_ref: join_ref.map(str::to_owned),
            reference: Some(reference.to_owned()),
            topic: topic.to_owned(),
            event: event.to_owned(),
            payload,
        }
    }

    /// The frame as text in the given serializer version.
    pub fn encode(&self, v2: bool) -> String {
        if v2 {
            json!([
                self.join_ref,
                self.reference,
                self.topic,
                self.event,
                self.payload
            ])
            .to_string()
        } else {
            json!({"topic": self.topic, "event": self.event, "payload": self.payload,
                   "ref": self.reference, "join_ref": self.join_ref})
            .to_string()
        }
    }

    /// Decodes a text frame (either form: servers answer in the version asked for, but accepting
    /// both costs nothing).
    ///
    /// # Errors
    /// Why the text is not a Phoenix frame.
    pub fn decode(text: &str) -> Result<Self, String> {
        let value: Value = serde_json::from_str(text).map_err(|e| format!("not JSON: {e}"))?;
        let string = |v: &Value| v.as_str().map(str::to_owned);
        match &value {
            Value::Array(a) if a.len() == 5 => Ok(Self {
                join_ref: string(&a[0]),
                reference: string(&a[1]),
                topic: string(&a[2]).ok_or("topic is not a string")?,
                event: string(&a[3]).ok_or("event is not a string")?,
                payload: a[4].clone(),
            }),
            Value::Object(o) => Ok(Self {
                join_ref: o.get("join_ref").and_then(string),
                reference: o.get("ref").and_then(string),
                topic: o.get("topic").and_then(string).ok_or("no topic")?,
                event: o.get("event").and_then(string).ok_or("no event")?,
                payload: o.get("payload").cloned().ok_or("no payload")?,
            }),
            _ => Err("neither a 5-element array nor an object".into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{
        super::record::{normalize_time, position},
        *,
    };

    #[test]
    fn frames_round_trip_in_both_versions() {
        let frame = Frame::push(Some("1"), "2", "realtime:x", "phx_join", json!({"a": 1}));
        assert_eq!(Frame::decode(&frame.encode(true)).unwrap(), frame);
        assert_eq!(Frame::decode(&frame.encode(false)).unwrap(), frame);
        let v1 = r#"{"topic":"phoenix","event":"phx_reply","payload":{"status":"ok"},"ref":null}"#;
        let decoded = Frame::decode(v1).unwrap();
        assert_eq!((decoded.reference, decoded.join_ref), (None, None));
        assert!(Frame::decode("[1,2]").is_err());
        assert!(Frame::decode("nope").is_err());
    }

    #[test]
    fn times_normalize_to_fixed_width_utc() {
        assert_eq!(
            normalize_time("2026-09-29T13:46:08.99+00:00").as_deref(),
            Some("2026-09-29T13:46:08.990000Z")
        );
        assert_eq!(
            normalize_time("2026-09-29 15:46:08.990112+02").as_deref(),
            Some("2026-09-29T13:46:08.990112Z")
        );
        assert_eq!(normalize_time("yesterday"), None);
        assert!(position("a", &json!(10)) > position("a", &json!(9)));
    }
}
