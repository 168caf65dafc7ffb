//! The Postgres sink against the real Postgres of `scripts/services`: exact values, replays and
//! duplicate keys converging, the version rule, bad rows as data errors, and records with
//! cursors committed in one transaction under the lease of the Postgres store.

use std::time::Duration;

use serde_json::{Value, json};
use sluice::{
    Checkpoint, CheckpointCommit, CheckpointStore, Column, ColumnType, ErrorClass, Position, Sink,
    TableSchema,
};
use sluice_sinks::postgres::PostgresSink;
use sluice_stores::postgres::PostgresStore;

use crate::common::{service, unique};

fn table(name: &str) -> TableSchema {
    let col = |name: &str, kind, nullable| Column::new(name, kind, nullable);
    TableSchema {
        table: name.into(),
        columns: vec![
            col("id", ColumnType::Integer, false),
            col("price", ColumnType::Decimal, true),
            col("at", ColumnType::Timestamp, true),
            col("meta", ColumnType::Json, true),
            col("v", ColumnType::Integer, true),
        ],
        key: vec!["id".into()],
    }
}

async fn client(url: &str) -> tokio_postgres::Client {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    client
}

#[tokio::test]
async fn rows_land_exactly_and_replays_converge_to_the_newest_version() {
    let Some(url) = service("SLUICE_TEST_POSTGRES_URL") else {
        return;
    };
    let name = unique("pg_exact");
    let mut sink = PostgresSink::new(&url, table(&name))
        .unwrap()
        .version("v")
        .unwrap();
    Sink::<Value>::prepare(&mut sink).await.unwrap();
    let exact: Value = serde_json::from_str("999999999999.12345670").unwrap();
    let batch = vec![
        json!({"id": 1, "price": exact, "at": "2026-12-01T00:00:00.000001Z", "meta": {"tab": "a\tb\\c\n"}, "v": 1}),
        json!({"id": 2, "price": "0.10", "v": 5}),
        // Past 2^64, negative and tiny, exponent form: every digit kept.
        json!({"id": 5, "price": serde_json::from_str::<Value>("18446744073709551616").unwrap(), "v": 1}),
        json!({"id": 6, "price": "-0.00000001", "v": 1}),
        json!({"id": 7, "price": serde_json::from_str::<Value>("1.50E+3").unwrap(), "v": 1}),
        // The same key twice in one batch: the last one wins.
        json!({"id": 1, "price": exact, "at": "2026-12-01T00:00:00.000001Z", "meta": {"tab": "a\tb\\c\n"}, "v": 2}),
    ];
    Sink::<Value>::write(&mut sink, &batch, None).await.unwrap();
    // A replay of an older version never beats the newer row.
    Sink::<Value>::write(&mut sink, &[json!({"id": 2, "price": "9", "v": 4})], None)
        .await
        .unwrap();
    let pg = client(&url).await;
    let rows = pg
        .query(
            &format!("SELECT id, price::text, to_char(at AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS.US'), meta->>'tab', v FROM \"{name}\" ORDER BY id"),
            &[],
        )
        .await
        .unwrap();
    assert_eq!(rows.len(), 5);
    let price = |i: usize| rows[i].get::<_, String>(1);
    assert_eq!(
        [price(2), price(3), price(4)],
        ["18446744073709551616", "-0.00000001", "1500"]
    );
    assert_eq!(
        rows[0].get::<_, String>(1),
        "999999999999.12345670",
        "exact, trailing zero kept"
    );
    assert_eq!(rows[0].get::<_, String>(2), "2026-12-01 00:00:00.000001");
    assert_eq!(rows[0].get::<_, String>(3), "a\tb\\c\n");
    assert_eq!(rows[0].get::<_, i64>(4), 2);
    assert_eq!(rows[1].get::<_, String>(1), "0.10");
    assert_eq!(rows[1].get::<_, i64>(4), 5);
    // A bad row is the record's fault (the runtime bisects to it), and nothing of its batch
    // is written.
    let error = Sink::<Value>::write(
        &mut sink,
        &[
            json!({"id": 3, "v": 1}),
            json!({"id": 4, "price": "ten", "v": 1}),
        ],
        None,
    )
    .await
    .unwrap_err();
    assert_eq!(error.class(), ErrorClass::Data, "{error}");
    let count: i64 = pg
        .query_one(&format!("SELECT count(*) FROM \"{name}\""), &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(count, 5);
    // The connection still works after the failed batch.
    Sink::<Value>::write(&mut sink, &[json!({"id": 3, "v": 1})], None)
        .await
        .unwrap();
}

#[tokio::test]
async fn records_and_cursors_commit_together_and_a_fenced_writer_commits_neither() {
    let Some(url) = service("SLUICE_TEST_POSTGRES_URL") else {
        return;
    };
    let name = unique("pg_once");
    let store = PostgresStore::connect(&url).await.unwrap();
    let mut sink = PostgresSink::new(&url, table(&name)).unwrap();
    assert_eq!(
        Sink::<Value>::transaction_scope(&sink),
        store.transaction_scope(),
        "one database, one transaction domain"
    );
    Sink::<Value>::prepare(&mut sink).await.unwrap();
    let pipeline = unique("pg-once");
    let lease = store
        .acquire(&pipeline, "machine-a:1", Duration::from_millis(300))
        .await
        .unwrap();
    let cursors = [Checkpoint::new("p", 10u64)];
    let commit = CheckpointCommit {
        pipeline: &pipeline,
        lease: &lease,
        checkpoints: &cursors,
    };
    Sink::<Value>::write(&mut sink, &[json!({"id": 1, "v": 1})], Some(&commit))
        .await
        .unwrap();
    assert_eq!(
        store.load(&pipeline).await.unwrap().get("p"),
        Some(&Position::Int(10))
    );
    // Another machine takes over; the first comes back with its old lease.
    tokio::time::sleep(Duration::from_millis(500)).await;
    store
        .acquire(&pipeline, "machine-b:2", Duration::from_secs(30))
        .await
        .unwrap();
    let later = [Checkpoint::new("p", 20u64)];
    let stale = CheckpointCommit {
        pipeline: &pipeline,
        lease: &lease,
        checkpoints: &later,
    };
    let error = Sink::<Value>::write(&mut sink, &[json!({"id": 2, "v": 1})], Some(&stale))
        .await
        .unwrap_err();
    assert_eq!(error.class(), ErrorClass::Fatal);
    let pg = client(&url).await;
    let count: i64 = pg
        .query_one(&format!("SELECT count(*) FROM \"{name}\""), &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(count, 1, "the fenced writer's rows were not committed");
    assert_eq!(
        store.load(&pipeline).await.unwrap().get("p"),
        Some(&Position::Int(10))
    );
}

#[tokio::test]
async fn the_newest_version_of_a_batch_wins_and_json_columns_hold_json() {
    let Some(url) = service("SLUICE_TEST_POSTGRES_URL") else {
        return;
    };
    let name = unique("pg_newest");
    let pg = client(&url).await;
    // A table made by someone else, with a NOT NULL column the sink does not write.
    pg.batch_execute(&format!(
        "CREATE TABLE \"{name}\" (id bigint PRIMARY KEY, price numeric, at timestamptz, meta jsonb, v bigint,
           created timestamptz NOT NULL DEFAULT now())"
    ))
    .await
    .unwrap();
    let mut sink = PostgresSink::new(&url, table(&name))
        .unwrap()
        .version("v")
        .unwrap();
    Sink::<Value>::prepare(&mut sink).await.unwrap();
    Sink::<Value>::write(&mut sink, &[json!({"id": 5, "v": 4})], None)
        .await
        .unwrap();
    // One batch with the newer version first and an older one after it (a replay mixed in).
    Sink::<Value>::write(
        &mut sink,
        &[
            json!({"id": 5, "v": 5, "meta": "abc"}),
            json!({"id": 5, "v": 3}),
            json!({"id": 6, "v": 1, "meta": "5"}),
        ],
        None,
    )
    .await
    .unwrap();
    let rows = pg
        .query(
            &format!("SELECT id, v, meta::text FROM \"{name}\" ORDER BY id"),
            &[],
        )
        .await
        .unwrap();
    assert_eq!(rows[0].get::<_, i64>(1), 5, "the newest version of id 5");
    assert_eq!(
        rows[0].get::<_, String>(2),
        "\"abc\"",
        "text in a json column is a JSON string"
    );
    assert_eq!(rows[1].get::<_, String>(2), "\"5\"", "not the number 5");
}

/// A batch whose commit went through but whose acknowledgement was lost is offered again: its
/// cursors are already stored, so it is not written twice (a table without a key would double).
#[tokio::test]
async fn a_retried_batch_that_was_committed_is_not_written_again() {
    let Some(url) = service("SLUICE_TEST_POSTGRES_URL") else {
        return;
    };
    let name = unique("pg_retry");
    let store = PostgresStore::connect(&url).await.unwrap();
    let mut schema = table(&name);
    schema.key.clear();
    let mut sink = PostgresSink::new(&url, schema).unwrap();
    Sink::<Value>::prepare(&mut sink).await.unwrap();
    let pipeline = unique("pg-retry");
    let lease = store
        .acquire(&pipeline, "machine-a:1", Duration::from_secs(30))
        .await
        .unwrap();
    let cursors = [Checkpoint::new("p", 3u64)];
    let commit = CheckpointCommit {
        pipeline: &pipeline,
        lease: &lease,
        checkpoints: &cursors,
    };
    let batch = [json!({"id": 1}), json!({"id": 2}), json!({"id": 3})];
    Sink::<Value>::write(&mut sink, &batch, Some(&commit))
        .await
        .unwrap();
    Sink::<Value>::write(&mut sink, &batch, Some(&commit))
        .await
        .unwrap();
    let pg = client(&url).await;
    let count: i64 = pg
        .query_one(&format!("SELECT count(*) FROM \"{name}\""), &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(count, 3);
    store.release(&lease).await.unwrap();
}

/// A proxy to Postgres at `upstream` that, once armed, loses the answer to a COMMIT: it stops
/// relaying the server's replies, forwards the COMMIT (the server commits), waits, and drops
/// the connection. The client sees its commit fail without knowing whether it went in. While
/// `refusing`, it drops every new connection at once (the server unreachable for a while).
struct CommitProxy {
    addr: String,
    armed: std::sync::Arc<std::sync::atomic::AtomicBool>,
    refusing: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

async fn commit_answer_losing_proxy(upstream: String) -> CommitProxy {
    use std::sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    };
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let armed = Arc::new(AtomicBool::new(false));
    let refusing = Arc::new(AtomicBool::new(false));
    let (arm, refuse) = (armed.clone(), refusing.clone());
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            if refuse.load(Ordering::SeqCst) {
                continue;
            }
            let Ok(server) = tokio::net::TcpStream::connect(&upstream).await else {
                continue;
            };
            let armed = arm.clone();
            tokio::spawn(async move {
                let (mut client_read, mut client_write) = client.into_split();
                let (mut server_read, mut server_write) = server.into_split();
                let mute = Arc::new(AtomicBool::new(false));
                let muted = mute.clone();
                let down = tokio::spawn(async move {
                    let mut buf = vec![0u8; 64 * 1024];
                    while let Ok(n @ 1..) = server_read.read(&mut buf).await {
                        if !muted.load(Ordering::SeqCst)
                            && client_write.write_all(&buf[..n]).await.is_err()
                        {
                            return;
                        }
                    }
                });
                let mut buf = vec![0u8; 64 * 1024];
                while let Ok(n @ 1..) = client_read.read(&mut buf).await {
                    let commit = buf[..n].windows(7).any(|w| w == b"COMMIT\0");
                    if commit && armed.swap(false, Ordering::SeqCst) {
                        mute.store(true, Ordering::SeqCst);
                        let _ = server_write.write_all(&buf[..n]).await;
                        // The server commits; its answer goes nowhere.
                        tokio::time::sleep(Duration::from_millis(300)).await;
                        break;
                    }
                    if server_write.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
                down.abort();
            });
        }
    });
    CommitProxy {
        addr,
        armed,
        refusing,
    }
}

/// A commit whose answer was lost (the connection dropped after the server got COMMIT) is
/// resolved by the transaction's id when the runtime offers the batch again: it is not written
/// twice, even with no cursor to tell by (here no cursors at all, into a keyless table), and
/// even when the first retries cannot reach the server.
#[tokio::test]
async fn a_batch_whose_commit_answer_was_lost_is_not_written_twice() {
    let Some(url) = service("SLUICE_TEST_POSTGRES_URL") else {
        return;
    };
    let (credentials, rest) = url.split_once('@').unwrap();
    let (server, database) = rest.split_once('/').unwrap();
    let proxy = commit_answer_losing_proxy(server.to_owned()).await;
    let via = format!("{credentials}@{}/{database}?sslmode=disable", proxy.addr);
    let (armed, refusing) = (&proxy.armed, &proxy.refusing);
    let name = unique("pg_in_doubt");
    let mut schema = table(&name);
    schema.key.clear();
    let mut sink = PostgresSink::new(&via, schema).unwrap();
    Sink::<Value>::prepare(&mut sink).await.unwrap();
    let batch = [json!({"id": 1}), json!({"id": 2}), json!({"id": 3})];
    armed.store(true, std::sync::atomic::Ordering::SeqCst);
    let error = Sink::<Value>::write(&mut sink, &batch, None)
        .await
        .unwrap_err();
    assert_eq!(error.class(), ErrorClass::Transient, "{error}");
    assert!(
        !armed.load(std::sync::atomic::Ordering::SeqCst),
        "the proxy lost a COMMIT's answer"
    );
    // Offered again after the transient error, as the runtime does; the first tries find the
    // server unreachable.
    refusing.store(true, std::sync::atomic::Ordering::SeqCst);
    for _ in 0..2 {
        let error = Sink::<Value>::write(&mut sink, &batch, None)
            .await
            .unwrap_err();
        assert_eq!(error.class(), ErrorClass::Transient, "{error}");
    }
    refusing.store(false, std::sync::atomic::Ordering::SeqCst);
    let mut tries = 0;
    while let Err(error) = Sink::<Value>::write(&mut sink, &batch, None).await {
        tries += 1;
        assert!(
            error.class() == ErrorClass::Transient && tries < 50,
            "{error}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let count: i64 = client(&url)
        .await
        .query_one(&format!("SELECT count(*) FROM \"{name}\""), &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(count, 3, "the batch once");
}
