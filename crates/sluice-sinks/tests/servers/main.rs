//! The ClickHouse, Kafka and Postgres sinks against real servers started by `scripts/services` (which
//! `scripts/test` runs first). Without the servers' environment these tests say so and pass,
//! unless `SLUICE_REQUIRE_SERVICES` is set (as `scripts/test` does), when they fail.

mod clickhouse;
mod common;
mod kafka;
mod postgres;
