//! `sluice run coinbase` and `sluice demo` as processes, against the simulator in this test
//! process: SIGKILL at several points with restarts, SIGTERM, a bad product.

mod support;

use sluice::testing::eventually;
use std::{
    path::Path,
    process::{Child, Command, Stdio},
    time::Duration,
};

use sluice_sim::coinbase::{Chaos, CoinbaseSim, CoinbaseSimConfig};

fn sluice() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_sluice"));
    command
        .env("RUST_LOG", "warn")
        .env_remove("SLUICE_DB")
        .env_remove("COINBASE_PRODUCTS");
    command
}

fn spawn(sim: &CoinbaseSim, db: &Path) -> Child {
    spawn_with(sim, db, &[])
}

fn spawn_with(sim: &CoinbaseSim, db: &Path, extra: &[&str]) -> Child {
    sluice()
        .args([
            "run",
            "coinbase",
            "--ws-url",
            &sim.ws_url(),
            "--rest-url",
            &sim.rest_url(),
            "--db",
            db.to_str().unwrap(),
        ])
        .args(extra)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

fn query(db: &Path, sql: &str) -> i64 {
    if !db.exists() {
        return 0;
    }
    let conn =
        rusqlite::Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .unwrap();
    conn.busy_timeout(Duration::from_secs(5)).unwrap();
    conn.query_row(sql, [], |r| r.get(0)).unwrap_or(0)
}

/// SIGKILL the process at several points while trades flow (with faults on), restart it each
/// time, then stop cleanly: every trade of the simulator's log is stored exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_at_several_points_with_restarts_loses_and_repeats_nothing() {
    // REST as harsh as protocols.md §1.12 allows: pages capped at 100, lagging the socket.
    let chaos = Chaos {
        drop: 0.01,
        duplicate: 0.01,
        reorder: 0.01,
        rest_page_cap: Some(100),
        rest_lag: Duration::from_millis(300),
        ..Chaos::default()
    };
    let sim = CoinbaseSim::start(CoinbaseSimConfig {
        rate: 0.0,
        chaos,
        heartbeat: Duration::from_millis(250),
        ..CoinbaseSimConfig::default()
    })
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("trades.db");
    let mut child = spawn(&sim, &db);
    eventually("the starting cursors", Duration::from_secs(30), || {
        query(&db, "SELECT count(*) FROM sluice_checkpoints") >= 2
    })
    .await;
    sim.set_rate(300.0);
    // Kill points drawn at random (the seed is printed to replay a failure).
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    println!("kill schedule seed: {seed}");
    let mut state = seed | 1;
    let mut next_delay = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        150 + state % 1350
    };
    for _ in 0..4 {
        let delay_ms = next_delay();
        tokio::time::sleep(Duration::from_millis(delay_ms)).await;
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        tokio::time::sleep(Duration::from_millis(300)).await; // trades while down
        child = spawn(&sim, &db);
    }
    tokio::time::sleep(Duration::from_millis(800)).await;
    sim.set_rate(0.0);
    let generated = sim.generated() as i64;
    eventually("every trade", Duration::from_secs(60), || {
        query(&db, "SELECT count(*) FROM coinbase_trades") >= generated
    })
    .await;
    support::sigterm(&child);
    let output = child.wait_with_output().unwrap();
    assert!(
        output.status.success(),
        "exit {:?}: {}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    for product in sim.products() {
        let range = sim.trade_range(product).unwrap();
        let count = query(
            &db,
            &format!("SELECT count(*) FROM coinbase_trades WHERE product_id = '{product}'"),
        );
        let lo = query(
            &db,
            &format!("SELECT min(trade_id) FROM coinbase_trades WHERE product_id = '{product}'"),
        );
        let hi = query(
            &db,
            &format!("SELECT max(trade_id) FROM coinbase_trades WHERE product_id = '{product}'"),
        );
        assert_eq!(
            (lo as u64, hi as u64),
            (*range.start(), *range.end()),
            "{product}: stored range"
        );
        assert_eq!(
            count as u64,
            range.end() - range.start() + 1,
            "{product}: every id once"
        );
    }
    let saved = query(
        &db,
        "SELECT count(*) FROM sluice_checkpoints WHERE pipeline = 'coinbase-trades-listener'",
    );
    assert_eq!(saved, 2, "one cursor per product");
}

/// An unknown product is a configuration error: exit 1 with the exchange's reason, no loop.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_product_exits_with_the_reason() {
    let sim = CoinbaseSim::start(CoinbaseSimConfig::default())
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let output = tokio::task::spawn_blocking({
        let (ws, rest, db) = (sim.ws_url(), sim.rest_url(), dir.path().join("x.db"));
        move || {
            sluice()
                .args([
                    "run",
                    "coinbase",
                    "--products",
                    "BTC-USDX",
                    "--ws-url",
                    &ws,
                    "--rest-url",
                    &rest,
                    "--db",
                    db.to_str().unwrap(),
                ])
                .output()
                .unwrap()
        }
    })
    .await
    .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("BTC-USDX is not a valid product"),
        "{stderr}"
    );
}

/// The demo, short: it ends with the verification line.
#[test]
fn the_demo_ends_with_nothing_missing_and_nothing_twice() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("demo.db");
    let output = sluice()
        .args([
            "demo",
            "--duration",
            "4",
            "--rate",
            "400",
            "--db",
            db.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(stdout.contains("\n0 missing, 0 duplicates"), "{stdout}");
    assert!(
        stdout.contains("missing 0, duplicates 0, mismatched 0, unexpected 0"),
        "{stdout}"
    );
}

fn clickhouse() -> Option<String> {
    sluice::testing::service_env("SLUICE_TEST_CLICKHOUSE_URL")
}

async fn clickhouse_query(url: &str, sql: &str) -> String {
    let url = reqwest::Url::parse(url).unwrap();
    let base = format!(
        "http://{}:{}/",
        url.host_str().unwrap(),
        url.port().unwrap()
    );
    let response = reqwest::Client::new()
        .post(base)
        .body(sql.to_owned())
        .send()
        .await
        .unwrap();
    assert!(response.status().is_success(), "{sql}");
    response.text().await.unwrap()
}

/// A remote destination of `sluice run coinbase --sink`, and how to count what it holds.
enum Remote {
    /// The HTTP URL of the server and the database of the test.
    ClickHouse { url: String, database: String },
    /// A client of the database of the test.
    Postgres { client: tokio_postgres::Client },
}

impl Remote {
    /// Trades of `product` stored: "rows, distinct ids, min id, max id" (after `FINAL`).
    async fn stats(&self, product: &str) -> String {
        match self {
            Remote::ClickHouse { url, database } => clickhouse_query(
                url,
                &format!(
                    "SELECT count(), uniqExact(trade_id), min(trade_id), max(trade_id) FROM {database}.coinbase_trades FINAL WHERE product_id = '{product}'"
                ),
            )
            .await
            .trim()
            .replace('\t', ","),
            Remote::Postgres { client } => {
                let Ok(row) = client
                    .query_one(
                        "SELECT count(*), count(DISTINCT trade_id), min(trade_id), max(trade_id)
                           FROM coinbase_trades WHERE product_id = $1",
                        &[&product],
                    )
                    .await
                else {
                    return "no table yet".into();
                };
                let cell = |i| {
                    row.get::<_, Option<i64>>(i)
                        .map_or("NULL".to_owned(), |v| v.to_string())
                };
                format!("{},{},{},{}", cell(0), cell(1), cell(2), cell(3))
            }
        }
    }
}

/// `sluice run coinbase --sink SINK`, SIGKILLed twice while trades flow: cursors stay in SQLite,
/// replayed batches converge (upserts by key), and every trade is there exactly once.
async fn sigkilled_twice_into(sink: &str, remote: &Remote) {
    let sim = CoinbaseSim::start(CoinbaseSimConfig {
        rate: 0.0,
        heartbeat: Duration::from_millis(250),
        ..CoinbaseSimConfig::default()
    })
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("cursors.db");
    let mut child = spawn_with(&sim, &db, &["--sink", sink]);
    eventually("the starting cursors", Duration::from_secs(30), || {
        query(&db, "SELECT count(*) FROM sluice_checkpoints") >= 2
    })
    .await;
    sim.set_rate(500.0);
    for delay in [700, 1100] {
        tokio::time::sleep(Duration::from_millis(delay)).await;
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        child = spawn_with(&sim, &db, &["--sink", sink]);
    }
    tokio::time::sleep(Duration::from_millis(800)).await;
    sim.set_rate(0.0);
    for product in sim.products() {
        let range = sim.trade_range(product).unwrap();
        let n = range.end() - range.start() + 1;
        let expect = format!("{n},{n},{},{}", range.start(), range.end());
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            let got = remote.stats(product).await;
            if got == expect {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{product}: {got} != {expect}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    support::sigterm(&child);
    let output = child.wait_with_output().unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(
        query(
            &db,
            "SELECT count(*) FROM sqlite_master WHERE name = 'coinbase_trades'"
        ),
        0,
        "no trades in SQLite"
    );
}

/// ClickHouse: replays converge in the ReplacingMergeTree, seen with `FINAL`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clickhouse_sink_with_sigkills_converges_to_every_trade_once() {
    let Some(url) = clickhouse() else { return };
    let database = format!("sluice_cli_{}", std::process::id());
    clickhouse_query(&url, &format!("CREATE DATABASE IF NOT EXISTS {database}")).await;
    let parsed = reqwest::Url::parse(&url).unwrap();
    let sink = format!(
        "clickhouse://default@{}:{}/{database}",
        parsed.host_str().unwrap(),
        parsed.port().unwrap()
    );
    let remote = Remote::ClickHouse {
        url: url.clone(),
        database: database.clone(),
    };
    sigkilled_twice_into(&sink, &remote).await;
    clickhouse_query(&url, &format!("DROP DATABASE {database}")).await;
}

/// Postgres (`--sink postgres://…`): replays are upserts by (product, trade id).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_postgres_sink_with_sigkills_lands_every_trade_once() {
    let Some(url) = sluice::testing::service_env("SLUICE_TEST_POSTGRES_URL") else {
        return;
    };
    let database = format!("sluice_cli_cb_{}", std::process::id());
    let admin = support::pg_connect(&url).await;
    admin
        .batch_execute(&format!("CREATE DATABASE {database}"))
        .await
        .unwrap();
    let sink = format!("{}/{database}", url.rsplit_once('/').unwrap().0);
    let remote = Remote::Postgres {
        client: support::pg_connect(&sink).await,
    };
    sigkilled_twice_into(&sink, &remote).await;
    drop(remote);
    admin
        .batch_execute(&format!("DROP DATABASE {database} WITH (FORCE)"))
        .await
        .unwrap();
}

fn audit(sim: &CoinbaseSim, db: &Path, extra: &[&str]) -> (Option<i32>, serde_json::Value) {
    let rest = sim.rest_url();
    let mut args = vec![
        "coinbase",
        "--db",
        db.to_str().unwrap(),
        "--rest-url",
        &rest,
    ];
    args.extend_from_slice(extra);
    support::audit(&args)
}

/// The BTC-USD rows of `ids`, every column as text.
fn trade_rows(db: &Path, ids: &[i64]) -> Vec<Vec<String>> {
    let conn = rusqlite::Connection::open(db).unwrap();
    let mut statement = conn
        .prepare(
            "SELECT trade_id, price, size, side, time FROM coinbase_trades \
             WHERE product_id = 'BTC-USD' AND trade_id = ?1",
        )
        .unwrap();
    ids.iter()
        .flat_map(|id| {
            statement
                .query_map([id], |r| {
                    (0..5)
                        .map(|i| {
                            r.get::<_, rusqlite::types::Value>(i)
                                .map(|v| format!("{v:?}"))
                        })
                        .collect::<Result<Vec<_>, _>>()
                })
                .unwrap()
                .map(Result::unwrap)
                .collect::<Vec<_>>()
        })
        .collect()
}

/// `sluice audit coinbase` reports a complete destination as complete (exit 0) and names
/// exactly the trades removed from it on purpose (exit 1), checked against REST; `--repair`
/// writes them back as they were, and the destination audits complete again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_audit_finds_exactly_the_trades_removed_from_the_destination() {
    let sim = CoinbaseSim::start(CoinbaseSimConfig {
        rate: 0.0,
        heartbeat: Duration::from_millis(250),
        ..CoinbaseSimConfig::default()
    })
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("trades.db");
    let child = spawn(&sim, &db);
    eventually("the starting cursors", Duration::from_secs(30), || {
        query(&db, "SELECT count(*) FROM sluice_checkpoints") >= 2
    })
    .await;
    sim.set_rate(300.0);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    sim.set_rate(0.0);
    let generated = sim.generated() as i64;
    eventually("every trade", Duration::from_secs(60), || {
        query(&db, "SELECT count(*) FROM coinbase_trades") >= generated
    })
    .await;
    support::sigterm(&child);
    let mut child = child;
    child.wait().unwrap();

    let (code, clean) = audit(&sim, &db, &[]);
    assert_eq!(code, Some(0), "{clean}");
    assert!(
        clean.as_array().unwrap().iter().all(|p| p["hole_ids"] == 0),
        "{clean}"
    );

    let first = query(
        &db,
        "SELECT min(trade_id) FROM coinbase_trades WHERE product_id = 'BTC-USD'",
    );
    let victims = [first + 10, first + 11, first + 40];
    let before = trade_rows(&db, &victims);
    assert_eq!(before.len(), 3);
    let conn = rusqlite::Connection::open(&db).unwrap();
    let removed = conn
        .execute(
            "DELETE FROM coinbase_trades WHERE product_id = 'BTC-USD' AND trade_id IN (?1, ?2, ?3)",
            [first + 10, first + 11, first + 40],
        )
        .unwrap();
    assert_eq!(removed, 3);
    drop(conn);
    let (code, holes) = audit(&sim, &db, &[]);
    assert_eq!(code, Some(1), "{holes}");
    let btc = holes
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["product"] == "BTC-USD")
        .unwrap();
    assert_eq!(btc["hole_ids"], 3, "{btc}");
    assert_eq!(
        btc["holes"],
        serde_json::json!([[first + 10, first + 11], [first + 40, first + 40]]),
        "{btc}"
    );
    assert_eq!(btc["provider_gaps"], 0);
    let eth = holes
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["product"] == "ETH-USD")
        .unwrap();
    assert_eq!(eth["hole_ids"], 0, "{eth}");

    let (code, repaired) = audit(&sim, &db, &["--repair"]);
    assert_eq!(code, Some(0), "{repaired}");
    assert!(
        repaired
            .as_array()
            .unwrap()
            .iter()
            .all(|p| p["hole_ids"] == 0),
        "{repaired}"
    );
    assert_eq!(
        trade_rows(&db, &victims),
        before,
        "the repaired trades are the ones removed, value for value"
    );
}
