//! Defines the envelope a source emits and the checkpoint (partition + position) it may carry.

use std::{collections::BTreeMap, fmt, sync::Arc};

use serde::{Deserialize, Serialize};

/// The name of a resource: the key that maps an envelope to a destination and a transform.
pub type ResourceName = Arc<str>;

/// A position inside one partition of a source: a byte offset, a trade id, an LSN, or a
/// composite such as `(commit_timestamp, primary key)`.
///
/// Positions of one partition are totally ordered; the runtime and the stores rely on that order
/// to keep cursors monotonic. Within a partition a source must always use the same shape (all
/// `Int`, or all `Tuple` of the same element shapes); across shapes the order is by variant.
/// Serialized as plain JSON: a number, a string or an array.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Position {
    /// An unsigned integer position: offset, trade id, LSN.
    Int(u64),
    /// A text position, compared bytewise (for example an RFC 3339 timestamp in UTC, fixed width).
    Text(String),
    /// A composite position, compared element by element.
    Tuple(Vec<Position>),
}

impl Position {
    /// The position as an integer, when it is one.
    pub fn as_int(&self) -> Option<u64> {
        match self {
            Position::Int(v) => Some(*v),
            _ => None,
        }
    }
}

impl fmt::Display for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match serde_json::to_string(self) {
            Ok(text) => f.write_str(&text),
            Err(_) => f.write_str("?"),
        }
    }
}

impl From<u64> for Position {
    fn from(value: u64) -> Self {
        Position::Int(value)
    }
}

/// A cursor of one partition: where the source resumes after a restart.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Checkpoint {
    /// The partition (product id, table, file, slot); one pipeline keeps one cursor per partition.
    pub partition: Arc<str>,
    /// The position of the envelope in that partition.
    pub position: Position,
}

impl Checkpoint {
    /// A checkpoint of `partition` at `position`.
    pub fn new(partition: impl Into<Arc<str>>, position: impl Into<Position>) -> Self {
        Self {
            partition: partition.into(),
            position: position.into(),
        }
    }
}

/// The saved cursors of one pipeline, by partition.
pub type Checkpoints = BTreeMap<Arc<str>, Position>;

/// One event from a source: which resource it belongs to, what it carries, and where the source
/// is after it.
///
/// The checkpoint, when present, covers this envelope and every envelope the source emitted
/// before it in the same partition: once it is saved, the source will never emit them again.
#[derive(Clone, Debug, PartialEq)]
pub struct Envelope<P> {
    /// The resource this envelope belongs to.
    pub resource: ResourceName,
    /// The payload, mapped to records by the resource's transform.
    pub payload: P,
    /// Where the source resumes after this envelope, if it can resume.
    pub checkpoint: Option<Checkpoint>,
}

impl<P> Envelope<P> {
    /// An envelope without a checkpoint.
    pub fn new(resource: impl Into<ResourceName>, payload: P) -> Self {
        Self {
            resource: resource.into(),
            payload,
            checkpoint: None,
        }
    }

    /// Sets the checkpoint.
    pub fn with_checkpoint(mut self, checkpoint: Checkpoint) -> Self {
        self.checkpoint = Some(checkpoint);
        self
    }
}

/// What a transform may know about the envelope beside its payload.
#[derive(Clone, Copy, Debug)]
pub struct EnvelopeMeta<'a> {
    /// The resource of the envelope.
    pub resource: &'a str,
    /// The envelope's checkpoint, if any.
    pub checkpoint: Option<&'a Checkpoint>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_order_numerically_and_tuples_element_by_element() {
        assert!(Position::Int(9) < Position::Int(10));
        let a = Position::Tuple(vec![
            Position::Text("2026-01-01T00:00:00.000001Z".into()),
            9.into(),
        ]);
        let b = Position::Tuple(vec![
            Position::Text("2026-01-01T00:00:00.000001Z".into()),
            10.into(),
        ]);
        assert!(a < b);
    }

    #[test]
    fn positions_serialize_as_plain_json() {
        let p = Position::Tuple(vec![Position::Text("t".into()), Position::Int(3)]);
        let text = serde_json::to_string(&p).unwrap();
        assert_eq!(text, r#"["t",3]"#);
        assert_eq!(serde_json::from_str::<Position>(&text).unwrap(), p);
    }
}
