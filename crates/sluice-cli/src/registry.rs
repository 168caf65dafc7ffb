//! The only list of source kinds (and the sink kinds) the CLI builds from configuration. The
//! core is generic; the CLI picks kinds at run time through these enums. One record type,
//! [`AnyRecord`], holds every kind's typed records and the rows jq transforms make: a record
//! reaches its sink as the type its connector made (or as a [`Row`]), never as a JSON map.

use std::borrow::Cow;

use serde_json::Value;
use sluice::{
    Cell, CellWriter, Column, EnvelopeMeta, IntoRecords, JqTransform, Record, Row, Shapes,
    Transform, TransformError, Transformed,
};
use sluice::{
    CheckpointCommit, NullSink, SessionEnd, Sink, SinkError, Source, SourceContext, SourceError,
    TableSchema,
};
use sluice_connectors::template::SourceKind;
use sluice_sinks::{
    clickhouse::ClickHouseSink, jsonl::JsonlSink, kafka::KafkaSink, sqlite::SqliteSink,
};

/// The one list of source kinds. Each line: the variant (its snake case is the `kind` in
/// configuration) and the connector's [`SourceKind`]. It generates the configuration enum
/// (`RawSource`), the runtime enum (`AnySource`) and their dispatch, so adding a kind is one
/// line here. (A declarative macro: the CLI needs one closed enum of kinds, and no crate
/// generates enum dispatch over associated types.)
macro_rules! source_kinds {
    ($($variant:ident => $kind:ty),* $(,)?) => {
        /// `source = { kind = …, … }`.
        #[derive(Debug, Clone, serde::Deserialize)]
        #[serde(tag = "kind", rename_all = "snake_case")]
        pub(crate) enum RawSource {
            $($variant(<$kind as SourceKind>::Config)),*
        }

        /// Every source kind of the CLI, built.
        #[derive(Debug)]
        pub(crate) enum AnySource {
            $($variant(Box<<$kind as SourceKind>::Source>)),*
        }

        impl RawSource {
            /// Refuses what `run` would refuse for a configuration reason (no connection).
            pub(crate) fn validate(&self) -> Result<(), String> {
                match self {
                    $(Self::$variant(c) => <$kind as SourceKind>::validate(c)),*
                }
            }

            /// The source.
            pub(crate) fn build(&self) -> Result<AnySource, SourceError> {
                match self {
                    $(Self::$variant(c) => <$kind as SourceKind>::build(c.clone())
                        .map(|s| AnySource::$variant(Box::new(s)))),*
                }
            }

            /// The table a resource gets without configured columns, if the kind has one.
            pub(crate) fn default_table(
                &self,
                resource: &str,
                table: &str,
            ) -> Option<(TableSchema, Option<&'static str>)> {
                match self {
                    $(Self::$variant(_) => <$kind as SourceKind>::default_table(resource, table)),*
                }
            }
        }

        /// Every kind's records, and the JSON rows of jq transforms.
        #[derive(Debug, Clone)]
        pub(crate) enum AnyRecord {
            /// A row a jq transform made.
            Row(Row),
            $($variant(Payload<$kind>)),*
        }

        /// How each variant fills a table's columns.
        #[allow(non_snake_case)]
        #[derive(Debug)]
        pub(crate) struct AnyPlan {
            Row: <Row as Record>::Plan,
            $($variant: Result<<Payload<$kind> as Record>::Plan, String>),*
        }

        impl RawSource {
            /// Whether this kind's records can fill `columns` (a resource written as emitted).
            pub(crate) fn check_columns(&self, columns: &[Column]) -> Result<(), String> {
                match self {
                    $(Self::$variant(_) => <Payload<$kind> as Record>::plan(columns).map(drop)),*
                }
            }
        }

        impl Record for AnyRecord {
            type Plan = AnyPlan;

            fn plan(columns: &[Column]) -> Result<AnyPlan, String> {
                Ok(AnyPlan {
                    Row: Row::plan(columns)?,
                    $($variant: <Payload<$kind> as Record>::plan(columns)),*
                })
            }

            fn write<W: CellWriter>(
                &self,
                plan: &AnyPlan,
                columns: &[Column],
                out: &mut W,
            ) -> Result<(), String> {
                match self {
                    AnyRecord::Row(v) => v.write(&plan.Row, columns, out),
                    $(AnyRecord::$variant(r) => {
                        r.write(plan.$variant.as_ref().map_err(Clone::clone)?, columns, out)
                    }),*
                }
            }

            fn field(&self, name: &str) -> Option<Cell<'_>> {
                match self {
                    AnyRecord::Row(v) => v.field(name),
                    $(AnyRecord::$variant(r) => r.field(name)),*
                }
            }

            fn write_json(&self, out: &mut Vec<u8>) {
                match self {
                    AnyRecord::Row(v) => v.write_json(out),
                    $(AnyRecord::$variant(r) => r.write_json(out)),*
                }
            }

            fn size_hint(&self) -> usize {
                match self {
                    AnyRecord::Row(v) => v.size_hint(),
                    $(AnyRecord::$variant(r) => r.size_hint()),*
                }
            }

            fn to_json(&self) -> Value {
                match self {
                    AnyRecord::Row(v) => v.to_json(),
                    $(AnyRecord::$variant(r) => r.to_json()),*
                }
            }
        }

        impl AnyRecord {
            /// The record as jq sees it.
            fn json(&self) -> Cow<'_, Value> {
                match self {
                    AnyRecord::Row(v) => Cow::Owned(v.to_json()),
                    $(AnyRecord::$variant(r) => Cow::Owned(r.to_json())),*
                }
            }
        }

        /// As its JSON row (how a dead letter shows it).
        impl serde::Serialize for AnyRecord {
            fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                self.json().serialize(serializer)
            }
        }

        impl IntoRecords<AnyRecord> for AnyRecord {
            fn into_records(self) -> Result<Transformed<AnyRecord>, (Self, TransformError)> {
                match self {
                    AnyRecord::Row(v) => Ok(Transformed::One(AnyRecord::Row(v))),
                    $(AnyRecord::$variant(r) => r
                        .into_records()
                        .map(|t| map_records(t, AnyRecord::$variant))
                        .map_err(|(r, e)| (AnyRecord::$variant(r), e))),*
                }
            }
        }

        impl Source for AnySource {
            type Payload = AnyRecord;

            fn name(&self) -> &str {
                match self {
                    $(AnySource::$variant(s) => s.name()),*
                }
            }

            fn idle_timeout(&self) -> Option<std::time::Duration> {
                match self {
                    $(AnySource::$variant(s) => s.idle_timeout()),*
                }
            }

            async fn run(
                &mut self,
                ctx: SourceContext<AnyRecord>,
            ) -> Result<SessionEnd, SourceError> {
                match self {
                    $(AnySource::$variant(s) => s.run(ctx.map(AnyRecord::$variant)).await),*
                }
            }
        }
    };
}

/// The payload (and record) type of a kind's source.
type Payload<K> = <<K as SourceKind>::Source as Source>::Payload;

fn map_records<A, B>(records: Transformed<A>, f: fn(A) -> B) -> Transformed<B> {
    match records {
        Transformed::Drop => Transformed::Drop,
        Transformed::One(r) => Transformed::One(f(r)),
        Transformed::Many(rs) => Transformed::Many(rs.into_iter().map(f).collect()),
    }
}

/// A jq transform of any record: jq sees the record's JSON, and the objects it makes become
/// [`Row`]s (their names shared while they keep one shape).
#[derive(Debug)]
pub(crate) struct AnyJq {
    jq: std::sync::Arc<JqTransform>,
    shapes: Shapes,
}

impl AnyJq {
    pub(crate) fn new(jq: std::sync::Arc<JqTransform>) -> Self {
        Self {
            jq,
            shapes: Shapes::default(),
        }
    }

    fn row(&self, value: Value) -> Result<AnyRecord, TransformError> {
        Row::from_json(value, &self.shapes)
            .map(AnyRecord::Row)
            .map_err(|v| TransformError::new(format!("jq output {v} is not a JSON object")))
    }
}

impl Transform<AnyRecord, AnyRecord> for AnyJq {
    fn apply(
        &self,
        payload: &AnyRecord,
        meta: &EnvelopeMeta<'_>,
    ) -> Result<Transformed<AnyRecord>, TransformError> {
        Ok(match self.jq.apply(&payload.json(), meta)? {
            Transformed::Drop => Transformed::Drop,
            Transformed::One(v) => Transformed::One(self.row(v)?),
            Transformed::Many(vs) => Transformed::Many(
                vs.into_iter()
                    .map(|v| self.row(v))
                    .collect::<Result<_, _>>()?,
            ),
        })
    }
}

source_kinds! {
    File => sluice_connectors::file::File,
    Coinbase => sluice_connectors::coinbase::Coinbase,
    PostgresCdc => sluice_connectors::postgres_cdc::PostgresCdc,
    Supabase => sluice_connectors::supabase::Supabase,
    HttpPoll => sluice_connectors::http_poll::HttpPoll,
}

/// Every sink kind of the CLI.
#[derive(Debug)]
pub(crate) enum AnySink {
    Sqlite(SqliteSink),
    Postgres(Box<sluice_sinks::postgres::PostgresSink>),
    ClickHouse(Box<ClickHouseSink>),
    Kafka(KafkaSink),
    Jsonl(JsonlSink),
    Null(NullSink),
}

impl<R: Record> Sink<R> for AnySink {
    async fn prepare(&mut self) -> Result<(), SinkError> {
        match self {
            AnySink::Sqlite(s) => Sink::<R>::prepare(s).await,
            AnySink::Postgres(s) => Sink::<R>::prepare(&mut **s).await,
            AnySink::ClickHouse(s) => Sink::<R>::prepare(&mut **s).await,
            AnySink::Kafka(s) => Sink::<R>::prepare(s).await,
            AnySink::Jsonl(_) | AnySink::Null(_) => Ok(()),
        }
    }

    async fn write(
        &mut self,
        batch: &[R],
        commit: Option<&CheckpointCommit<'_>>,
    ) -> Result<(), SinkError> {
        match self {
            AnySink::Sqlite(s) => s.write(batch, commit).await,
            AnySink::Postgres(s) => s.write(batch, commit).await,
            AnySink::ClickHouse(s) => s.write(batch, commit).await,
            AnySink::Kafka(s) => s.write(batch, commit).await,
            AnySink::Jsonl(s) => s.write(batch, commit).await,
            AnySink::Null(s) => s.write(batch, commit).await,
        }
    }

    fn transaction_scope(&self) -> Option<&str> {
        match self {
            AnySink::Sqlite(s) => Sink::<R>::transaction_scope(s),
            AnySink::Postgres(s) => Sink::<R>::transaction_scope(&**s),
            _ => None,
        }
    }
}

/// Every checkpoint store kind of the CLI.
#[derive(Debug, Clone)]
pub(crate) enum AnyStore {
    Sqlite(sluice_stores::sqlite::SqliteStore),
    Postgres(std::sync::Arc<sluice_stores::postgres::PostgresStore>),
}

impl sluice::CheckpointStore for AnyStore {
    async fn acquire(
        &self,
        pipeline: &str,
        holder: &str,
        ttl: std::time::Duration,
    ) -> Result<sluice::Lease, sluice::StoreError> {
        match self {
            AnyStore::Sqlite(s) => s.acquire(pipeline, holder, ttl).await,
            AnyStore::Postgres(s) => s.acquire(pipeline, holder, ttl).await,
        }
    }

    async fn renew(
        &self,
        lease: &sluice::Lease,
        ttl: std::time::Duration,
    ) -> Result<(), sluice::StoreError> {
        match self {
            AnyStore::Sqlite(s) => s.renew(lease, ttl).await,
            AnyStore::Postgres(s) => s.renew(lease, ttl).await,
        }
    }

    async fn release(&self, lease: &sluice::Lease) -> Result<(), sluice::StoreError> {
        match self {
            AnyStore::Sqlite(s) => s.release(lease).await,
            AnyStore::Postgres(s) => s.release(lease).await,
        }
    }

    async fn load(&self, pipeline: &str) -> Result<sluice::Checkpoints, sluice::StoreError> {
        match self {
            AnyStore::Sqlite(s) => s.load(pipeline).await,
            AnyStore::Postgres(s) => s.load(pipeline).await,
        }
    }

    async fn save(
        &self,
        lease: &sluice::Lease,
        checkpoints: &[sluice::Checkpoint],
    ) -> Result<(), sluice::StoreError> {
        match self {
            AnyStore::Sqlite(s) => s.save(lease, checkpoints).await,
            AnyStore::Postgres(s) => s.save(lease, checkpoints).await,
        }
    }

    fn transaction_scope(&self) -> Option<&str> {
        match self {
            AnyStore::Sqlite(s) => s.transaction_scope(),
            AnyStore::Postgres(s) => s.transaction_scope(),
        }
    }
}
