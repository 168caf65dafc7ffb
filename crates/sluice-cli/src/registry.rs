//! The only list of source kinds (and the sink kinds) the CLI builds from configuration. The
//! core is generic; the CLI picks kinds at run time through these enums (one payload and one
//! record type: JSON).

use serde_json::Value;
use sluice::{
    CheckpointCommit, NullSink, Record, SessionEnd, Sink, SinkError, Source, SourceContext,
    SourceError, TableSchema,
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

        impl Source for AnySource {
            type Payload = Value;

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

            async fn run(&mut self, ctx: SourceContext<Value>) -> Result<SessionEnd, SourceError> {
                match self {
                    $(AnySource::$variant(s) => s.run(ctx).await),*
                }
            }
        }
    };
}

source_kinds! {
    File => sluice_connectors::file::File,
    Coinbase => sluice_connectors::coinbase::Coinbase,
    PostgresCdc => sluice_connectors::postgres_cdc::PostgresCdc,
    Supabase => sluice_connectors::supabase::Supabase,
}

/// Every sink kind of the CLI.
#[derive(Debug)]
pub(crate) enum AnySink {
    Sqlite(SqliteSink),
    ClickHouse(Box<ClickHouseSink>),
    Kafka(KafkaSink),
    Jsonl(JsonlSink),
    Null(NullSink),
}

impl<R: Record> Sink<R> for AnySink {
    async fn prepare(&mut self) -> Result<(), SinkError> {
        match self {
            AnySink::Sqlite(s) => Sink::<R>::prepare(s).await,
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
            AnySink::ClickHouse(s) => s.write(batch, commit).await,
            AnySink::Kafka(s) => s.write(batch, commit).await,
            AnySink::Jsonl(s) => s.write(batch, commit).await,
            AnySink::Null(s) => s.write(batch, commit).await,
        }
    }

    fn transaction_scope(&self) -> Option<&str> {
        match self {
            AnySink::Sqlite(s) => Sink::<R>::transaction_scope(s),
            _ => None,
        }
    }
}
