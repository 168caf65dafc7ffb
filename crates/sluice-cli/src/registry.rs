//! Defines the closed sets of sources and sinks the CLI can build from configuration. The core
//! is generic; the CLI picks kinds at run time through these enums (one payload and one record
//! type: JSON).

use serde_json::Value;
use sluice::{
    CheckpointCommit, DeadLetter, NullSink, SessionEnd, Sink, SinkError, Source, SourceContext,
    SourceError,
};
use sluice_connectors::{
    coinbase::CoinbaseSource, file::FileSource, postgres_cdc::PostgresCdcSource,
    supabase::SupabaseSource,
};
use sluice_sinks::{
    clickhouse::ClickHouseSink, jsonl::JsonlSink, kafka::KafkaSink, sqlite::SqliteSink,
};

/// Every source kind of the CLI.
#[derive(Debug)]
pub(crate) enum AnySource {
    File(FileSource),
    Coinbase(CoinbaseSource),
    PostgresCdc(PostgresCdcSource),
    Supabase(Box<SupabaseSource>),
}

impl Source for AnySource {
    type Payload = Value;

    fn name(&self) -> &str {
        match self {
            AnySource::File(s) => s.name(),
            AnySource::Coinbase(s) => s.name(),
            AnySource::PostgresCdc(s) => s.name(),
            AnySource::Supabase(s) => s.name(),
        }
    }

    fn idle_timeout(&self) -> Option<std::time::Duration> {
        match self {
            AnySource::File(s) => s.idle_timeout(),
            AnySource::Coinbase(s) => s.idle_timeout(),
            AnySource::PostgresCdc(s) => s.idle_timeout(),
            AnySource::Supabase(s) => s.idle_timeout(),
        }
    }

    async fn run(&mut self, ctx: SourceContext<Value>) -> Result<SessionEnd, SourceError> {
        match self {
            AnySource::File(s) => s.run(ctx).await,
            AnySource::Coinbase(s) => s.run(ctx).await,
            AnySource::PostgresCdc(s) => s.run(ctx).await,
            AnySource::Supabase(s) => s.run(ctx).await,
        }
    }
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

impl Sink<Value> for AnySink {
    async fn prepare(&mut self) -> Result<(), SinkError> {
        match self {
            AnySink::Sqlite(s) => Sink::<Value>::prepare(s).await,
            AnySink::ClickHouse(s) => Sink::<Value>::prepare(&mut **s).await,
            AnySink::Kafka(s) => Sink::<Value>::prepare(s).await,
            AnySink::Jsonl(_) | AnySink::Null(_) => Ok(()),
        }
    }

    async fn write(
        &mut self,
        batch: &[Value],
        commit: Option<&CheckpointCommit<'_>>,
    ) -> Result<(), SinkError> {
        match self {
            AnySink::Sqlite(s) => Sink::<Value>::write(s, batch, commit).await,
            AnySink::ClickHouse(s) => Sink::<Value>::write(&mut **s, batch, commit).await,
            AnySink::Kafka(s) => Sink::<Value>::write(s, batch, commit).await,
            AnySink::Jsonl(s) => Sink::<Value>::write(s, batch, commit).await,
            AnySink::Null(s) => Sink::<Value>::write(s, batch, commit).await,
        }
    }

    fn transaction_scope(&self) -> Option<&str> {
        match self {
            AnySink::Sqlite(s) => Sink::<Value>::transaction_scope(s),
            _ => None,
        }
    }
}

impl Sink<DeadLetter> for AnySink {
    async fn prepare(&mut self) -> Result<(), SinkError> {
        Sink::<Value>::prepare(self).await
    }

    async fn write(
        &mut self,
        batch: &[DeadLetter],
        commit: Option<&CheckpointCommit<'_>>,
    ) -> Result<(), SinkError> {
        match self {
            AnySink::Sqlite(s) => Sink::<DeadLetter>::write(s, batch, commit).await,
            AnySink::ClickHouse(s) => Sink::<DeadLetter>::write(&mut **s, batch, commit).await,
            AnySink::Kafka(s) => Sink::<DeadLetter>::write(s, batch, commit).await,
            AnySink::Jsonl(s) => Sink::<DeadLetter>::write(s, batch, commit).await,
            AnySink::Null(s) => Sink::<DeadLetter>::write(s, batch, commit).await,
        }
    }

    fn transaction_scope(&self) -> Option<&str> {
        Sink::<Value>::transaction_scope(self)
    }
}
