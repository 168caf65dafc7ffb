//! `sluice-bench wal [SECONDS]`: SQLite commits back to back at full speed through sluice's own
//! database handle (`SqliteDb`: WAL, `synchronous = FULL`, the checkpoint thread) for SECONDS
//! (default 300): 10,000-row transactions of trade-sized rows, each with a cursor upsert, no
//! pause between commits. Reports the largest `-wal` file seen (sampled after every commit) and
//! the rows written. The bound to hold: the WAL stays under 64 MiB.

use std::time::{Duration, Instant};

use sluice_stores::sqlite::SqliteDb;

pub(crate) fn main(seconds: Option<String>) {
    let seconds: u64 = seconds.and_then(|s| s.parse().ok()).unwrap_or(300);
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("wal.db");
    let db = SqliteDb::open(&path).expect("open");
    db.lock()
        .execute_batch(
            "CREATE TABLE trades (product_id TEXT, trade_id INTEGER, price TEXT, size TEXT, side TEXT, time TEXT, PRIMARY KEY (product_id, trade_id));
             CREATE TABLE cursor (id INTEGER PRIMARY KEY, position INTEGER);",
        )
        .expect("schema");
    let wal = dir.path().join("wal.db-wal");
    let started = Instant::now();
    let (mut rows, mut commits, mut largest, mut last_report) = (0u64, 0u64, 0u64, Instant::now());
    while started.elapsed() < Duration::from_secs(seconds) {
        {
            let mut conn = db.lock();
            let tx = conn.transaction().expect("begin");
            {
                let mut insert = tx
                    .prepare_cached("INSERT INTO trades VALUES ('BTC-USD', ?1, '84140.8', '0.00731', 'buy', '2026-09-29T13:45:58.204113Z')")
                    .expect("prepare");
                for _ in 0..10_000 {
                    rows += 1;
                    insert.execute([rows as i64]).expect("insert");
                }
            }
            tx.execute(
                "INSERT INTO cursor VALUES (1, ?1) ON CONFLICT (id) DO UPDATE SET position = excluded.position",
                [rows as i64],
            )
            .expect("cursor");
            tx.commit().expect("commit");
            db.after_commit(&conn);
        }
        commits += 1;
        largest = largest.max(std::fs::metadata(&wal).map_or(0, |m| m.len()));
        if last_report.elapsed() >= Duration::from_secs(30) {
            eprintln!(
                "{:>4} s  {rows} rows  largest WAL {:.1} MiB",
                started.elapsed().as_secs(),
                largest as f64 / (1 << 20) as f64
            );
            last_report = Instant::now();
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    println!(
        "wal: {seconds} s of back-to-back commits: {commits} commits, {rows} rows ({:.0} rows/s), largest -wal {:.1} MiB (bound 64 MiB)",
        rows as f64 / elapsed,
        largest as f64 / (1 << 20) as f64
    );
}
