//! Workloads `clickhouse` and `kafka` (issue 4): the same websocket replay as `coinbase` (N
//! BTC-USD match frames, served as fast as the client reads), through the release
//! `sluice run coinbase --sink …` into a real server, beside that server's ceiling measured in
//! the same run on the same rows. Cursors stay in a SQLite file; the clock runs from the first
//! frame sent to the saved cursor reaching the last trade id (the cursor moves only after the
//! server acknowledged the rows).
//!
//! - **ClickHouse ceiling**: the rows sluice stored, exported as JSONEachRow, then inserted in
//!   bulk from that file by `clickhouse-client` into an identical empty table (one INSERT). The
//!   same rows as RowBinary are timed too, to decide the sink's format.
//! - **Kafka ceiling**: a plain rdkafka producer in this process (same settings as the sink:
//!   idempotent, `acks=all`, `linger.ms=5`) producing the same JSON records with the same keys to
//!   a fresh topic, all delivery reports awaited.
//!
//! - **Postgres ceilings** (workload `postgres`, issue 13): the rows sluice stored, exported with
//!   `\copy … (FORMAT binary)`, then loaded by `psql` into an identical empty table (one
//!   `\copy`, the server's fastest path), and the same load through a temporary staging table
//!   and one `INSERT … SELECT DISTINCT ON (key) … ON CONFLICT` (the sink's own shape, in one
//!   transaction instead of one per batch).
//!
//! Servers: those of `scripts/services` (override with `SLUICE_BENCH_CLICKHOUSE_URL`,
//! `SLUICE_BENCH_CLICKHOUSE_TCP_PORT`, `SLUICE_BENCH_KAFKA_BROKERS`,
//! `SLUICE_BENCH_POSTGRES_URL`).

use std::{
    path::Path,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use rdkafka::{
    ClientConfig,
    producer::{FutureProducer, FutureRecord},
};

use crate::{
    cdc::psql,
    coinbase::{frames, run_sluice},
};

fn env_or(var: &str, default: &str) -> String {
    std::env::var(var).unwrap_or_else(|_| default.to_owned())
}

fn ch_url() -> String {
    env_or(
        "SLUICE_BENCH_CLICKHOUSE_URL",
        "clickhouse://default@127.0.0.1:18123/default",
    )
}

/// Runs `clickhouse-client` with `query`, stdin from `input` when given; returns stdout.
fn ch_client(query: &str, input: Option<&Path>) -> String {
    let port = env_or("SLUICE_BENCH_CLICKHOUSE_TCP_PORT", "19000");
    let mut command = Command::new("clickhouse-client");
    command.args(["--port", &port, "--query", query]);
    if let Some(path) = input {
        command.stdin(std::fs::File::open(path).expect("input file"));
    } else {
        command.stdin(Stdio::null());
    }
    let output = command
        .output()
        .expect("clickhouse-client (apt-get install clickhouse-client)");
    assert!(
        output.status.success(),
        "{query}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).expect("utf-8")
}

fn rate(n: u64, d: Duration) -> f64 {
    n as f64 / d.as_secs_f64()
}

pub(crate) fn clickhouse(arg: Option<String>) {
    let n: u64 = arg.and_then(|a| a.parse().ok()).unwrap_or(1_000_000);
    let dir = tempfile::tempdir().expect("tempdir");
    let database = format!("sluice_bench_{}", std::process::id());
    ch_client(&format!("CREATE DATABASE {database}"), None);
    let base = ch_url();
    let url = format!(
        "{}/{database}",
        base.rsplit_once('/').expect("url with a database").0
    );
    println!(
        "workload: {n} BTC-USD match frames over loopback websocket -> ClickHouse {}",
        ch_client("SELECT version()", None).trim()
    );
    let run = run_sluice(frames(n), None, dir.path(), "clickhouse", &["--sink", &url]);
    let stored = ch_client(
        &format!("SELECT count() FROM {database}.coinbase_trades"),
        None,
    );
    let table = format!("{database}.coinbase_trades");
    let json = dir.path().join("rows.json");
    let binary = dir.path().join("rows.bin");
    std::fs::write(
        &json,
        ch_client(
            &format!("SELECT * FROM {table} FINAL FORMAT JSONEachRow"),
            None,
        ),
    )
    .unwrap();
    let exported = Command::new("clickhouse-client")
        .args([
            "--port",
            &env_or("SLUICE_BENCH_CLICKHOUSE_TCP_PORT", "19000"),
            "--query",
            &format!("SELECT * FROM {table} FINAL FORMAT RowBinary"),
        ])
        .output()
        .unwrap();
    std::fs::write(&binary, exported.stdout).unwrap();
    let mut ceilings = Vec::new();
    for (format, file) in [("JSONEachRow", &json), ("RowBinary", &binary)] {
        let copy = format!("{database}.ceiling_{}", format.to_lowercase());
        ch_client(&format!("CREATE TABLE {copy} AS {table}"), None);
        let started = Instant::now();
        ch_client(&format!("INSERT INTO {copy} FORMAT {format}"), Some(file));
        ceilings.push((format, started.elapsed()));
    }
    ch_client(&format!("DROP DATABASE {database}"), None);
    let sluice = rate(n, run.elapsed);
    println!("rows stored by sluice (before FINAL): {}", stored.trim());
    for (format, elapsed) in &ceilings {
        println!(
            "clickhouse-client bulk insert, {format:<11}: {:>10.0} trades/s",
            rate(n, *elapsed)
        );
    }
    let ceiling = rate(n, ceilings[0].1);
    println!(
        "sluice run coinbase -> ClickHouse     : {sluice:>10.0} trades/s  ({:.0}% of the JSONEachRow bulk insert)",
        100.0 * sluice / ceiling
    );
    println!(
        "sluice peak RSS                       : {:>10.1} MiB",
        run.rss_kib as f64 / 1024.0
    );
}

pub(crate) fn kafka(arg: Option<String>) {
    let n: u64 = arg.and_then(|a| a.parse().ok()).unwrap_or(1_000_000);
    let brokers = env_or("SLUICE_BENCH_KAFKA_BROKERS", "127.0.0.1:19092");
    let dir = tempfile::tempdir().expect("tempdir");
    let topic = format!("bench_sluice_{}", std::process::id());
    println!(
        "workload: {n} BTC-USD match frames over loopback websocket -> Kafka protocol broker at {brokers}"
    );
    let url = format!("kafka://{brokers}/{topic}?partitions=1");
    let run = run_sluice(frames(n), None, dir.path(), "kafka", &["--sink", &url]);
    let sluice = rate(n, run.elapsed);

    // The ceiling: the same records (as the sink renders them) produced by a bare producer.
    let records: Vec<(String, Vec<u8>)> = frames(n)
        .iter()
        .map(|frame| {
            let v: serde_json::Value = serde_json::from_str(frame).unwrap();
            let record = serde_json::json!({
                "product_id": v["product_id"], "trade_id": v["trade_id"], "price": v["price"],
                "size": v["size"], "side": v["side"], "time": v["time"], "sequence": v["sequence"],
                "maker_order_id": v["maker_order_id"], "taker_order_id": v["taker_order_id"],
                "source": "ws",
            });
            let key = serde_json::to_string(&[&v["product_id"], &v["trade_id"]]).unwrap();
            (key, serde_json::to_vec(&record).unwrap())
        })
        .collect();
    let ceiling_topic = format!("bench_plain_{}", std::process::id());
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let elapsed = runtime.block_on(async {
        let producer: FutureProducer = ClientConfig::new()
            .set("bootstrap.servers", &brokers)
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("linger.ms", "5")
            .set("batch.num.messages", "10000")
            .set("queue.buffering.max.messages", "200000")
            // librdkafka's default queue is 1 GiB: at full speed it held tens of MiB.
            .set("queue.buffering.max.kbytes", "16384")
            .create()
            .unwrap();
        // Warm up: metadata and topic creation outside the clock, as for sluice's prepare.
        producer
            .send(
                FutureRecord::to(&ceiling_topic).key("warm").payload("{}"),
                Duration::from_secs(30),
            )
            .await
            .unwrap();
        let started = Instant::now();
        let mut pending = std::collections::VecDeque::new();
        for (key, payload) in &records {
            let mut record = FutureRecord::to(&ceiling_topic).key(key).payload(payload);
            loop {
                match producer.send_result(record) {
                    Ok(delivery) => {
                        pending.push_back(delivery);
                        break;
                    }
                    Err((_, back)) => {
                        record = back;
                        if let Some(delivery) = pending.pop_front() {
                            delivery.await.unwrap().unwrap();
                        }
                    }
                }
            }
        }
        for delivery in pending {
            delivery.await.unwrap().unwrap();
        }
        started.elapsed()
    });
    let ceiling = rate(n, elapsed);
    println!("plain rdkafka producer (same records) : {ceiling:>10.0} trades/s");
    println!(
        "sluice run coinbase -> Kafka          : {sluice:>10.0} trades/s  ({:.0}% of the plain producer)",
        100.0 * sluice / ceiling
    );
    println!(
        "sluice peak RSS                       : {:>10.1} MiB",
        run.rss_kib as f64 / 1024.0
    );
}

/// Runs `script` with `psql` in one transaction; returns how long it took.
fn timed_psql_script(url: &str, dir: &Path, script: &str) -> Duration {
    let file = dir.join("script.sql");
    std::fs::write(&file, script).expect("write the script");
    let started = Instant::now();
    let output = Command::new("psql")
        .args([url, "-Xq1", "-v", "ON_ERROR_STOP=1", "-f"])
        .arg(&file)
        .stdin(Stdio::null())
        .output()
        .expect("psql");
    let elapsed = started.elapsed();
    assert!(
        output.status.success(),
        "{script}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    elapsed
}

pub(crate) fn postgres(arg: Option<String>) {
    let n: u64 = arg.and_then(|a| a.parse().ok()).unwrap_or(1_000_000);
    let dir = tempfile::tempdir().expect("tempdir");
    let base = env_or(
        "SLUICE_BENCH_POSTGRES_URL",
        "postgres://sluice:sluice@127.0.0.1:15432/sluice",
    );
    let database = format!("sluice_bench_{}", std::process::id());
    psql(&base, &format!("CREATE DATABASE {database}"));
    let url = format!(
        "{}/{database}",
        base.rsplit_once('/').expect("url with a database").0
    );
    println!(
        "workload: {n} BTC-USD match frames over loopback websocket -> Postgres {} (cursors in SQLite)",
        psql(&url, "SHOW server_version")
    );
    let run = run_sluice(frames(n), None, dir.path(), "postgres", &["--sink", &url]);
    let stored = psql(&url, "SELECT count(*) FROM coinbase_trades");
    let key = psql(
        &url,
        "SELECT string_agg(quote_ident(a.attname), ', ' ORDER BY array_position(i.indkey::int2[], a.attnum))
         FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey)
         WHERE i.indrelid = 'coinbase_trades'::regclass AND i.indisprimary",
    );
    assert!(!key.is_empty(), "coinbase_trades has no primary key");
    let rows = dir.path().join("rows.bin");
    let rows = rows.display();
    psql(
        &url,
        &format!("\\copy coinbase_trades TO '{rows}' (FORMAT binary)"),
    );
    psql(
        &url,
        "CREATE TABLE plain (LIKE coinbase_trades INCLUDING ALL);
         CREATE TABLE merged (LIKE coinbase_trades INCLUDING ALL)",
    );
    let plain = timed_psql_script(
        &url,
        dir.path(),
        &format!("\\copy plain FROM '{rows}' (FORMAT binary)\n"),
    );
    let merged = timed_psql_script(
        &url,
        dir.path(),
        &format!(
            "CREATE TEMP TABLE stage (LIKE coinbase_trades) ON COMMIT DROP;
\\copy stage FROM '{rows}' (FORMAT binary)
INSERT INTO merged SELECT DISTINCT ON ({key}) * FROM stage ORDER BY {key} ON CONFLICT ({key}) DO NOTHING;
"
        ),
    );
    let counts = psql(
        &url,
        "SELECT (SELECT count(*) FROM plain) || ',' || (SELECT count(*) FROM merged)",
    );
    psql(&base, &format!("DROP DATABASE {database} WITH (FORCE)"));
    let sluice = rate(n, run.elapsed);
    println!("rows stored by sluice                 : {stored} (ceiling tables: {counts})");
    println!(
        "psql \\copy binary into a plain table  : {:>10.0} trades/s",
        rate(n, plain)
    );
    println!(
        "psql \\copy binary, staging + merge    : {:>10.0} trades/s",
        rate(n, merged)
    );
    println!(
        "sluice run coinbase -> Postgres       : {sluice:>10.0} trades/s  ({:.0}% of staging + merge, {:.0}% of a plain copy)",
        100.0 * sluice / rate(n, merged),
        100.0 * sluice / rate(n, plain)
    );
    println!(
        "sluice peak RSS                       : {:>10.1} MiB",
        run.rss_kib as f64 / 1024.0
    );
}
