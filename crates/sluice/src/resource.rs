//! Defines resources: the map from a resource name to a destination, an optional transform and
//! a poison policy.

use std::{collections::HashMap, fmt, sync::Arc};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::{
    envelope::{EnvelopeMeta, ResourceName},
    error::TransformError,
};

/// What a transform makes of one payload.
#[derive(Clone, Debug, PartialEq)]
pub enum Transformed<R> {
    /// Nothing to write. The envelope's checkpoint still advances once everything before it is
    /// durable.
    Drop,
    /// One record.
    One(R),
    /// Several records (fan-out), written to the same destination in this order.
    Many(Vec<R>),
}

impl<R> Transformed<R> {
    /// The number of records.
    pub fn len(&self) -> usize {
        match self {
            Transformed::Drop => 0,
            Transformed::One(_) => 1,
            Transformed::Many(records) => records.len(),
        }
    }

    /// Whether there is nothing to write.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Maps one payload to zero, one or many records for one resource.
///
/// The runtime calls `apply` inline, once per envelope, in envelope order; it never calls it
/// concurrently for one pipeline. Implementers guarantee that `apply` is pure: no I/O, no waiting,
/// and the same output for the same input, so a replay after a restart writes the same records.
/// `Ok(Transformed::Drop)` writes nothing; `Err` is a data error handled by the resource's
/// [`OnError`] policy and never retried. Implemented for closures
/// `Fn(&P, &EnvelopeMeta) -> Result<Transformed<R>, TransformError>`.
pub trait Transform<P, R>: Send + Sync {
    /// Maps `payload`.
    fn apply(&self, payload: &P, meta: &EnvelopeMeta<'_>)
    -> Result<Transformed<R>, TransformError>;
}

impl<P, R, F> Transform<P, R> for F
where
    F: Fn(&P, &EnvelopeMeta<'_>) -> Result<Transformed<R>, TransformError> + Send + Sync,
{
    fn apply(
        &self,
        payload: &P,
        meta: &EnvelopeMeta<'_>,
    ) -> Result<Transformed<R>, TransformError> {
        self(payload, meta)
    }
}

/// A payload that is already a record (or several), written as-is when a resource has no
/// transform. Returns the payload back with the reason when it is not a record.
pub trait IntoRecords<R>: Sized {
    /// Converts the payload.
    fn into_records(self) -> Result<Transformed<R>, (Self, TransformError)>;
}

impl IntoRecords<Value> for Value {
    /// An object is one record, an array of objects fans out, anything else is poison.
    fn into_records(self) -> Result<Transformed<Value>, (Self, TransformError)> {
        match self {
            Value::Object(_) => Ok(Transformed::One(self)),
            Value::Array(items) if items.iter().all(Value::is_object) => {
                Ok(Transformed::Many(items))
            }
            other => Err((
                other,
                TransformError::new(
                    "payload is not a JSON object or an array of objects; give the resource a transform",
                ),
            )),
        }
    }
}

impl IntoRecords<crate::Row> for crate::Row {
    /// A row is one record.
    fn into_records(self) -> Result<Transformed<crate::Row>, (Self, TransformError)> {
        Ok(Transformed::One(self))
    }
}

/// What happens to a poison input: an unknown resource, a payload that is not a record, a
/// transform error, a record the destination rejects, or input a source could not decode.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnError {
    /// Write it to the dead-letter destination with its reason; the cursor advances only after
    /// that write. The default.
    #[default]
    DeadLetter,
    /// Stop the pipeline with a clear message.
    Fail,
    /// Drop it, log it and count it (`sluice_poison_skipped_total`).
    Skip,
}

type Direct<P, R> = fn(P) -> Result<Transformed<R>, (P, TransformError)>;

pub(crate) enum Mapping<P, R> {
    Direct(Direct<P, R>),
    Transform(Arc<dyn Transform<P, R>>),
}

/// One resource: where its records go, how its payloads become records, what happens to poison.
pub struct Resource<P, R> {
    pub(crate) destination: String,
    pub(crate) mapping: Mapping<P, R>,
    pub(crate) on_error: OnError,
}

impl<P, R> fmt::Debug for Resource<P, R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Resource")
            .field("destination", &self.destination)
            .field("transform", &matches!(self.mapping, Mapping::Transform(_)))
            .field("on_error", &self.on_error)
            .finish()
    }
}

impl<P: IntoRecords<R>, R> Resource<P, R> {
    /// A resource whose payloads are records already (no transform).
    pub fn direct(destination: impl Into<String>) -> Self {
        Self {
            destination: destination.into(),
            mapping: Mapping::Direct(P::into_records),
            on_error: OnError::default(),
        }
    }
}

impl<R> Resource<R, R> {
    /// A resource whose payload type is the record type: each payload is one record.
    pub fn identity(destination: impl Into<String>) -> Self {
        Self {
            destination: destination.into(),
            mapping: Mapping::Direct(|payload| Ok(Transformed::One(payload))),
            on_error: OnError::default(),
        }
    }
}

impl<P, R> Resource<P, R> {
    /// A resource with a transform.
    pub fn with_transform(
        destination: impl Into<String>,
        transform: impl Transform<P, R> + 'static,
    ) -> Self {
        Self {
            destination: destination.into(),
            mapping: Mapping::Transform(Arc::new(transform)),
            on_error: OnError::default(),
        }
    }

    /// Sets the poison policy.
    pub fn on_error(mut self, on_error: OnError) -> Self {
        self.on_error = on_error;
        self
    }

    /// The destination name.
    pub fn destination(&self) -> &str {
        &self.destination
    }
}

/// The resource map of a pipeline, plus the policy for envelopes whose resource is not in it.
pub struct Resources<P, R> {
    pub(crate) map: HashMap<ResourceName, Resource<P, R>>,
    pub(crate) unknown: OnError,
}

impl<P, R> fmt::Debug for Resources<P, R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Resources")
            .field("map", &self.map)
            .field("unknown", &self.unknown)
            .finish()
    }
}

impl<P, R> Default for Resources<P, R> {
    fn default() -> Self {
        Self {
            map: HashMap::new(),
            unknown: OnError::default(),
        }
    }
}

impl<P, R> Resources<P, R> {
    /// An empty map.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds (or replaces) a resource.
    pub fn with(mut self, name: impl Into<ResourceName>, resource: Resource<P, R>) -> Self {
        self.map.insert(name.into(), resource);
        self
    }

    /// Sets the policy for envelopes addressed to a resource that is not in the map.
    pub fn on_unknown(mut self, on_error: OnError) -> Self {
        self.unknown = on_error;
        self
    }

    /// The resource names.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.map.keys().map(|k| &**k)
    }

    /// Whether there is no resource.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn a_json_object_is_one_record_and_an_array_of_objects_fans_out() {
        assert_eq!(
            json!({"a": 1}).into_records().unwrap(),
            Transformed::One(json!({"a": 1}))
        );
        assert_eq!(json!([{"a": 1}, {"a": 2}]).into_records().unwrap().len(), 2);
    }

    #[test]
    fn a_scalar_payload_is_returned_with_the_reason() {
        let (payload, error) = json!(5).into_records().unwrap_err();
        assert_eq!(payload, json!(5));
        assert!(error.to_string().contains("not a JSON object"));
        assert!(json!([1, 2]).into_records().is_err());
    }
}
