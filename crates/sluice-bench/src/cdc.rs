//! Workload `cdc` (issue 5): N single-row inserts (1,000 per transaction, rows of an id, a text
//! and a numeric) are committed to a table of the Postgres of `scripts/services` while two
//! logical slots created just before hold them. Then, in one run:
//!
//! - **ceiling**: `pg_recvlogical` streams slot A (pgoutput, the same publication) to
//!   `/dev/null` until the end LSN;
//! - **sluice**: the release `sluice run --config` with a `postgres_cdc` source on slot B into
//!   the change-log table of a SQLite file; the clock stops when the saved cursor reaches the
//!   end LSN (every change durable).
//!
//! Server: `SLUICE_BENCH_POSTGRES_URL` (default: the one of `scripts/services`) and
//! `SLUICE_TEST_PG_BIN` for `pg_recvlogical`.

use std::{
    process::{Command, Stdio},
    time::{Duration, Instant},
};

pub(crate) fn psql(url: &str, sql: &str) -> String {
    let output = Command::new("psql")
        .args([url, "-XAtq", "-v", "ON_ERROR_STOP=1", "-c", sql])
        .output()
        .expect("psql");
    assert!(
        output.status.success(),
        "{sql}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout)
        .expect("utf-8")
        .trim()
        .to_owned()
}

#[allow(clippy::disallowed_methods)] // a plain polling loop, no runtime here
pub(crate) fn main(arg: Option<String>) {
    let n: u64 = arg.and_then(|a| a.parse().ok()).unwrap_or(200_000);
    let url = std::env::var("SLUICE_BENCH_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://sluice:sluice@127.0.0.1:15432/sluice".into());
    let bin =
        std::env::var("SLUICE_TEST_PG_BIN").unwrap_or_else(|_| "/usr/lib/postgresql/15/bin".into());
    let id = std::process::id();
    let (table, publication, slot_a, slot_b) = (
        format!("bench_{id}"),
        format!("bench_pub_{id}"),
        format!("bench_a_{id}"),
        format!("bench_b_{id}"),
    );
    psql(
        &url,
        &format!("CREATE TABLE {table} (id bigint PRIMARY KEY, name text, amount numeric(20,8))"),
    );
    psql(
        &url,
        &format!("CREATE PUBLICATION {publication} FOR TABLE {table}"),
    );
    psql(
        &url,
        &format!("SELECT pg_create_logical_replication_slot('{slot_a}', 'pgoutput')"),
    );
    psql(
        &url,
        &format!("SELECT pg_create_logical_replication_slot('{slot_b}', 'pgoutput')"),
    );
    let mut done = 0;
    while done < n {
        let batch = 1_000.min(n - done);
        psql(
            &url,
            &format!(
                "INSERT INTO {table} SELECT i, 'name ' || i, i * 1.25 FROM generate_series({}, {}) i",
                done,
                done + batch - 1
            ),
        );
        done += batch;
    }
    let end_lsn = psql(&url, "SELECT pg_current_wal_lsn()");
    let end: u64 = psql(
        &url,
        &format!("SELECT ('{end_lsn}'::pg_lsn - '0/0')::bigint"),
    )
    .parse()
    .unwrap();
    println!(
        "workload: {n} inserted rows in transactions of 1,000, held by two logical slots (end LSN {end_lsn})"
    );

    // The ceiling: pg_recvlogical on slot A.
    let started = Instant::now();
    let status = Command::new(format!("{bin}/pg_recvlogical"))
        .args([
            "-d",
            &url,
            "--slot",
            &slot_a,
            "--start",
            "-o",
            "proto_version=1",
            "-o",
            &format!("publication_names={publication}"),
            "-E",
            &end_lsn,
            "-f",
            "/dev/null",
            "--no-loop",
        ])
        .stderr(Stdio::null())
        .status()
        .expect("pg_recvlogical");
    let ceiling = started.elapsed();
    assert!(status.success(), "pg_recvlogical failed");

    // sluice on slot B.
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("cdc.db");
    let config = dir.path().join("cdc.toml");
    std::fs::write(&config, format!(
        "[store]\npath = \"{}\"\n[sinks.db]\nkind = \"sqlite\"\n[pipelines.pg]\nsource = {{ kind = \"postgres_cdc\", url = \"{url}\", slot = \"{slot_b}\", publication = \"{publication}\" }}\nbatch = {{ max_records = 5000, linger_ms = 20 }}\nresources.changes = {{ sink = \"db\", table = \"pg_changes\" }}\n",
        db.display()
    )).unwrap();
    let sluice = std::env::current_exe().unwrap().with_file_name("sluice");
    let started = Instant::now();
    let mut child = Command::new(sluice)
        .args(["run", "--config", config.to_str().unwrap()])
        .env("RUST_LOG", "error")
        .stdout(Stdio::null())
        .spawn()
        .expect("sluice (cargo build --release -p sluice-cli)");
    let deadline = Instant::now() + Duration::from_secs(600);
    let elapsed = loop {
        std::thread::sleep(Duration::from_millis(2));
        assert!(Instant::now() < deadline, "sluice did not finish");
        let Ok(conn) =
            rusqlite::Connection::open_with_flags(&db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
        else {
            continue;
        };
        let position: Option<i64> = conn
            .query_row(
                "SELECT CAST(position AS INTEGER) FROM sluice_checkpoints WHERE partition = 'wal'",
                [],
                |r| r.get(0),
            )
            .ok();
        if position.is_some_and(|p| p as u64 >= end) {
            break started.elapsed();
        }
    };
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let _ = child.wait();
    let stored: i64 = rusqlite::Connection::open(&db)
        .unwrap()
        .query_row("SELECT count(*) FROM pg_changes", [], |r| r.get(0))
        .unwrap();
    psql(
        &url,
        &format!(
            "SELECT pg_drop_replication_slot('{slot_a}'), pg_drop_replication_slot('{slot_b}')"
        ),
    );
    psql(
        &url,
        &format!("DROP PUBLICATION {publication}; DROP TABLE {table}"),
    );
    let rate = |d: Duration| n as f64 / d.as_secs_f64();
    println!(
        "pg_recvlogical (pgoutput -> /dev/null)    : {:>10.0} changes/s",
        rate(ceiling)
    );
    println!(
        "sluice postgres_cdc -> SQLite (durable)   : {:>10.0} changes/s  ({:.0}% of pg_recvlogical; {stored} rows stored; process start included)",
        rate(elapsed),
        100.0 * rate(elapsed) / rate(ceiling)
    );
}
