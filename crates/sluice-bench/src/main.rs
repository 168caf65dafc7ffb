//! `sluice-bench`: sluice's throughput and latency beside a baseline or a ceiling measured in the
//! same run. Results and workloads are written down in BENCHMARKS.md.
//!
//! - `sluice-bench core [N]`: the runtime vs the seed POC's per-event design.
//! - `sluice-bench coinbase [N]`: websocket replay → `sluice run coinbase` → SQLite, beside a bare
//!   websocket reader and a bare SQLite writer; latency at 10k trades/s; peak RSS.
//! - `sluice-bench clickhouse [N]` / `sluice-bench kafka [N]`: the same replay into ClickHouse
//!   or a Kafka-protocol broker, beside `clickhouse-client` bulk inserts / a plain rdkafka
//!   producer (servers from `scripts/services`).
//! - `sluice-bench postgres [N]`: the same replay into Postgres, beside `psql` loading the same
//!   rows with a binary `\copy`, plain and through staging + merge.
//! - `sluice-bench cdc [N]`: Postgres logical replication → `postgres_cdc` → SQLite, beside
//!   `pg_recvlogical` reading the same changes.
//! - `sluice-bench fuzz [N]`: every network decoder over N arbitrary and mutated inputs.
//! - `sluice-bench wal [SECONDS]`: back-to-back SQLite commits; the largest WAL file seen.

mod cdc;
mod coinbase;
mod fuzz;
mod runtime;
mod sinks;
mod wal;

fn main() {
    let mut args = std::env::args().skip(1);
    match args.next().as_deref() {
        None | Some("core") => runtime::main(args.next()),
        Some("coinbase") => coinbase::main(args.next()),
        Some("clickhouse") => sinks::clickhouse(args.next()),
        Some("kafka") => sinks::kafka(args.next()),
        Some("postgres") => sinks::postgres(args.next()),
        Some("cdc") => cdc::main(args.next()),
        Some("fuzz") => fuzz::main(args.next()),
        Some("wal") => wal::main(args.next()),
        Some(other) => {
            eprintln!(
                "unknown workload {other:?}: core | coinbase | clickhouse | kafka | postgres | cdc | fuzz | wal"
            );
            std::process::exit(2);
        }
    }
}
