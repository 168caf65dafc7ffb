//! `sluice run` with a `postgres_cdc` source against the real Postgres 15 that
//! `scripts/services` starts (wal_level=logical): SIGKILL and restart while transactions
//! commit, then every change is in SQLite exactly once, the slot was acknowledged only up to
//! the durable cursor, and unchanged TOAST values are never written as NULL.

mod support;

use std::{
    path::Path,
    process::{Child, Command, Stdio},
    time::Duration,
};

fn postgres() -> Option<String> {
    sluice::testing::service_env("SLUICE_TEST_POSTGRES_URL")
}

use support::pg_connect as connect;

fn spawn(config: &Path) -> Child {
    Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["run", "--config", config.to_str().unwrap()])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

fn sqlite(db: &Path, sql: &str) -> Vec<Vec<String>> {
    if !db.exists() {
        return Vec::new();
    }
    let conn =
        rusqlite::Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .unwrap();
    conn.busy_timeout(Duration::from_secs(5)).unwrap();
    let Ok(mut stmt) = conn.prepare(sql) else {
        return Vec::new();
    };
    let columns = stmt.column_count();
    stmt.query_map([], |r| {
        Ok((0..columns)
            .map(|i| match r.get_ref(i).unwrap() {
                rusqlite::types::ValueRef::Null => "NULL".to_owned(),
                rusqlite::types::ValueRef::Integer(n) => n.to_string(),
                rusqlite::types::ValueRef::Real(f) => f.to_string(),
                rusqlite::types::ValueRef::Text(t) | rusqlite::types::ValueRef::Blob(t) => {
                    String::from_utf8_lossy(t).into_owned()
                }
            })
            .collect())
    })
    .unwrap()
    .collect::<Result<_, _>>()
    .unwrap()
}

/// Waits (up to `secs`) until table `pg_changes` of `db` holds `n` rows.
async fn wait_changes(db: &Path, n: i64, secs: u64, what: &str) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    while count(db, "SELECT count(*) FROM pg_changes") < n {
        assert!(tokio::time::Instant::now() < deadline, "{what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn count(db: &Path, sql: &str) -> i64 {
    sqlite(db, sql)
        .first()
        .and_then(|r| r[0].parse().ok())
        .unwrap_or(0)
}

/// A CDC pipeline `pg` from `table` (created with `columns`) into table `pg_changes` of a fresh
/// SQLite file, started as a `sluice run` process; returns once its slot is created (changes
/// committed from then on are kept). The table, slot and publication carry `name`.
struct Cdc {
    dir: tempfile::TempDir,
    db: std::path::PathBuf,
    config: std::path::PathBuf,
    table: String,
    slot: String,
    publication: String,
    /// The process's `/status` endpoint.
    status: String,
}

async fn start_cdc(
    pg: &tokio_postgres::Client,
    url: &str,
    name: &str,
    columns: &str,
) -> (Cdc, Child) {
    let suffix = std::process::id();
    let (table, slot, publication) = (
        format!("{name}_{suffix}"),
        format!("sluice_{name}_{suffix}"),
        format!("sluice_{name}_pub_{suffix}"),
    );
    pg.batch_execute(&format!(
        "DROP TABLE IF EXISTS {table}; CREATE TABLE {table} ({columns});"
    ))
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("cdc.db");
    let config = dir.path().join("cdc.toml");
    let metrics = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    std::fs::write(
        &config,
        format!(
            r#"
metrics_addr = "{metrics}"

[store]
path = "{db}"

[sinks.db]
kind = "sqlite"

[pipelines.pg]
source = {{ kind = "postgres_cdc", url = "{url}", slot = "{slot}", publication = "{publication}", create = true, tables = ["{table}"] }}
resources.changes = {{ sink = "db", table = "pg_changes" }}
"#,
            db = db.display()
        ),
    )
    .unwrap();
    let child = spawn(&config);
    // Created, not only listed: a logical slot shows in pg_replication_slots while it waits for
    // the transactions in flight to end, and changes committed before it reaches its consistent
    // point are not in it (under a busy server that window is long).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while pg
        .query_opt(
            "SELECT 1 FROM pg_replication_slots WHERE slot_name = $1 AND confirmed_flush_lsn IS NOT NULL",
            &[&slot],
        )
        .await
        .unwrap()
        .is_none()
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no slot was created"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let cdc = Cdc {
        dir,
        db,
        config,
        table,
        slot,
        publication,
        status: format!("http://{metrics}/status"),
    };
    (cdc, child)
}

/// Drops what a CDC test made, once the killed process's walsender let go of the slot.
async fn drop_cdc(pg: &tokio_postgres::Client, slot: &str, publication: &str, tables: &[&str]) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while pg
        .query_one(
            "SELECT active FROM pg_replication_slots WHERE slot_name = $1",
            &[&slot],
        )
        .await
        .unwrap()
        .get::<_, bool>(0)
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the slot stays active"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    pg.batch_execute(&format!(
        "SELECT pg_drop_replication_slot('{slot}'); DROP PUBLICATION {publication}; DROP TABLE {};",
        tables.join(", ")
    ))
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cdc_with_sigkills_loses_and_repeats_nothing() {
    let Some(url) = postgres() else { return };
    let pg = connect(&url).await;
    let (cdc, mut child) = start_cdc(
        &pg,
        &url,
        "items",
        "id bigint PRIMARY KEY, name text, price numeric(20,8), body text",
    )
    .await;
    let Cdc {
        dir: _dir,
        db,
        config,
        table,
        slot,
        publication,
        ..
    } = cdc;
    // A writer: 300 transactions of 10 inserts, then updates and deletes, while sluice is killed.
    let writer = {
        let url = url.clone();
        let table = table.clone();
        tokio::spawn(async move {
            let pg = connect(&url).await;
            for t in 0..300i64 {
                let values: Vec<String> = (0..10)
                    .map(|i| {
                        let id = t * 10 + i;
                        format!("({id}, 'n{id}', {id}.12345678, 'b')")
                    })
                    .collect();
                pg.batch_execute(&format!("INSERT INTO {table} VALUES {}", values.join(",")))
                    .await
                    .unwrap();
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            pg.batch_execute(&format!(
                "UPDATE {table} SET name = name || '!' WHERE id < 100"
            ))
            .await
            .unwrap();
            pg.batch_execute(&format!("DELETE FROM {table} WHERE id >= 2950"))
                .await
                .unwrap();
            // A TOASTed value, then an update that leaves it unchanged.
            pg.batch_execute(&format!(
                "INSERT INTO {table} VALUES (-1, 'toast', 1, (SELECT string_agg(md5(i::text), '') FROM generate_series(1, 400) i));
                 UPDATE {table} SET name = 'toast2' WHERE id = -1;"
            ))
            .await
            .unwrap();
        })
    };
    for delay in [600, 900] {
        tokio::time::sleep(Duration::from_millis(delay)).await;
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        child = spawn(&config);
    }
    writer.await.unwrap();
    let expect = 3000 + 1 + 100 + 50 + 1; // inserts (+ toast row), updates, deletes, toast update
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while count(&db, "SELECT count(*) FROM pg_changes") < expect {
        if tokio::time::Instant::now() >= deadline {
            // What the running process said, to tell a stall from a loss.
            let stored = count(&db, "SELECT count(*) FROM pg_changes");
            child.kill().unwrap();
            let output = child.wait_with_output().unwrap();
            panic!(
                "only {stored} of {expect} changes; by op {:?}; dead letters {:?}; cursor {:?}; sluice said:\n{}",
                sqlite(
                    &db,
                    "SELECT op, count(*), min(lsn), max(lsn) FROM pg_changes GROUP BY op"
                ),
                sqlite(&db, "SELECT reason FROM sluice_dead_letters LIMIT 3"),
                sqlite(&db, "SELECT position FROM sluice_checkpoints"),
                String::from_utf8_lossy(&output.stderr)
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_millis(1500)).await; // status updates go out every second
    let ops = sqlite(
        &db,
        "SELECT op, count(*), count(DISTINCT json_extract(key, '$.id')) FROM pg_changes GROUP BY op ORDER BY op",
    );
    assert_eq!(
        ops,
        vec![
            vec!["delete".to_owned(), "50".into(), "50".into()],
            vec!["insert".to_owned(), "3001".into(), "3001".into()],
            vec!["update".to_owned(), "101".into(), "101".into()],
        ]
    );
    assert_eq!(
        count(&db, "SELECT count(*) FROM pg_changes"),
        expect,
        "nothing twice"
    );
    let price = sqlite(
        &db,
        "SELECT json_extract(row, '$.price') FROM pg_changes WHERE op = 'insert' AND json_extract(key, '$.id') = 7",
    );
    assert_eq!(
        price,
        vec![vec!["7.12345678".to_owned()]],
        "numeric stays exact"
    );
    let toast = sqlite(
        &db,
        "SELECT json_extract(row, '$.body') IS NULL, json_type(row, '$.body'), unchanged_toast FROM pg_changes WHERE op = 'update' AND json_extract(key, '$.id') = -1",
    );
    assert_eq!(
        toast,
        vec![vec!["1".to_owned(), "NULL".into(), "[\"body\"]".into()]],
        "unchanged TOAST is named, not nulled"
    );
    // The slot is acknowledged up to the durable cursor: never beyond it, and all the way
    // to it once the status update went out (a source that never acknowledges fails here).
    let saved = || -> i64 {
        sqlite(
            &db,
            "SELECT position FROM sluice_checkpoints WHERE pipeline = 'pg' AND partition = 'wal'",
        )[0][0]
            .parse()
            .unwrap()
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let before = saved();
        let confirmed = confirmed_flush(&pg, &slot).await;
        let after = saved();
        assert!(
            confirmed <= after,
            "acknowledged {confirmed} beyond the durable cursor {after}"
        );
        if confirmed >= before {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the slot stays at {confirmed}, the durable cursor is {before}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    support::sigterm(&child);
    let output = child.wait_with_output().unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    drop_cdc(&pg, &slot, &publication, &[&table]).await;
}

async fn confirmed_flush(pg: &tokio_postgres::Client, slot: &str) -> i64 {
    let row = pg
        .query_one(
            "SELECT (confirmed_flush_lsn - '0/0')::text FROM pg_replication_slots WHERE slot_name = $1",
            &[&slot],
        )
        .await
        .unwrap();
    row.get::<_, String>(0).parse().unwrap()
}

/// A publication whose tables are quiet while the rest of the cluster writes 100 MB: the slot
/// must follow the WAL (keepalive positions, acknowledged once durable), not pin it. Also: an
/// update that changes the primary key keeps the old key, and jsonb numbers beyond 64 bits
/// arrive digit for digit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quiet_publication_follows_the_wal_and_changes_keep_old_keys_and_exact_json() {
    let Some(url) = postgres() else { return };
    let pg = connect(&url).await;
    let (cdc, mut child) = start_cdc(&pg, &url, "quiet", "id bigint PRIMARY KEY, doc jsonb").await;
    let Cdc {
        dir: _dir,
        db,
        table,
        slot,
        publication,
        ..
    } = cdc;
    let noise = format!("noise_{}", std::process::id());
    pg.batch_execute(&format!(
        "DROP TABLE IF EXISTS {noise}; CREATE TABLE {noise} (id bigserial PRIMARY KEY, pad text);"
    ))
    .await
    .unwrap();
    let doc = r#"{"big": -12345678901234567890, "huge": 123456789012345678901234567890, "dec": 0.1, "long": 3.14159265358979323846264338327950288}"#;
    pg.batch_execute(&format!(
        "INSERT INTO {table} VALUES (1, '{doc}'); UPDATE {table} SET id = 2 WHERE id = 1;"
    ))
    .await
    .unwrap();
    wait_changes(&db, 2, 30, "the changes never arrived").await;
    let update = sqlite(
        &db,
        "SELECT key, old_key FROM pg_changes WHERE op = 'update'",
    );
    assert_eq!(
        update,
        vec![vec![r#"{"id":2}"#.to_owned(), r#"{"id":1}"#.into()]]
    );
    let row = sqlite(&db, "SELECT row FROM pg_changes WHERE op = 'insert'")[0][0].clone();
    // Postgres's own rendering of the jsonb, digit for digit.
    let exact: String = pg
        .query_one(&format!("SELECT doc::text FROM {table}"), &[])
        .await
        .unwrap()
        .get(0);
    for number in [
        "-12345678901234567890",
        "123456789012345678901234567890",
        "0.1",
        "3.14159265358979323846264338327950288",
    ] {
        assert!(exact.contains(number), "{exact}");
        assert!(row.contains(number), "{number} not exact in {row}");
    }
    // 100 MB into a table outside the publication.
    for _ in 0..10 {
        pg.batch_execute(&format!(
            "INSERT INTO {noise} (pad) SELECT repeat(md5(i::text), 32) FROM generate_series(1, 10000) i"
        ))
        .await
        .unwrap();
    }
    let lag = || async {
        let row = pg
            .query_one(
                "SELECT (pg_current_wal_lsn() - confirmed_flush_lsn)::text FROM pg_replication_slots WHERE slot_name = $1",
                &[&slot],
            )
            .await
            .unwrap();
        row.get::<_, String>(0).parse::<i64>().unwrap()
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let behind = lag().await;
        if behind < 16 << 20 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the slot pins {} MB of WAL",
            behind >> 20
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    child.kill().unwrap();
    child.wait().unwrap();
    drop_cdc(&pg, &slot, &publication, &[&table, &noise]).await;
}

/// The `lag` of `/status`: a CDC pipeline down while a 300,000-row transaction commits comes back
/// showing all of it pending — the server's WAL position minus the durable cursor — long before
/// the walsender has decoded and sent it (what it has sent is not what is pending).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_lag_shows_what_the_server_holds_not_what_it_sent() {
    const ROWS: i64 = 300_000;
    let Some(url) = postgres() else { return };
    let pg = connect(&url).await;
    let (cdc, mut child) = start_cdc(&pg, &url, "head", "id bigint PRIMARY KEY, pad text").await;
    // One change written, so a cursor is durable (records and cursor commit together).
    pg.batch_execute(&format!("INSERT INTO {} VALUES (0, 'first')", cdc.table))
        .await
        .unwrap();
    wait_changes(&cdc.db, 1, 30, "the first change never arrived").await;
    child.kill().unwrap();
    child.wait().unwrap();
    let wal = || async {
        pg.query_one("SELECT (pg_current_wal_lsn() - '0/0')::bigint", &[])
            .await
            .unwrap()
            .get::<_, i64>(0)
    };
    pg.batch_execute(&format!(
        "INSERT INTO {} SELECT i, 'row ' || i FROM generate_series(1, {ROWS}) i",
        cdc.table
    ))
    .await
    .unwrap();
    // Everything up to here is pending: the cursor is before the transaction.
    let committed = wal().await;
    let mut child = spawn(&cdc.config);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        assert!(
            count(&cdc.db, "SELECT count(*) FROM pg_changes") < ROWS / 2,
            "half the transaction written and the lag never showed it pending"
        );
        assert!(
            tokio::time::Instant::now() < deadline,
            "no lag in the status"
        );
        let page: Option<serde_json::Value> = match reqwest::get(&cdc.status).await {
            Ok(response) => response.json().await.ok(),
            Err(_) => None, // not listening yet
        };
        let cursor = page
            .as_ref()
            .map(|p| p["pipelines"][0]["cursors"][0].clone());
        if let Some(cursor) = cursor
            && let (Some(behind), Some(position)) = (
                cursor["lag"]["behind"].as_i64(),
                cursor["position"].as_i64(),
            )
        {
            assert_eq!(cursor["lag"]["unit"], "bytes", "{cursor}");
            // The head (cursor + lag) is at least where the server was once it committed.
            if position + behind >= committed {
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    wait_changes(
        &cdc.db,
        ROWS + 1,
        180,
        "the transaction never arrived whole",
    )
    .await;
    child.kill().unwrap();
    child.wait().unwrap();
    drop_cdc(&pg, &cdc.slot, &cdc.publication, &[&cdc.table]).await;
}

/// `sluice run supabase` from the seed's environment variables, against the simulated Realtime
/// server driven by the real Postgres: SIGKILLed once while rows change, restarted, stopped with
/// SIGTERM; every committed row version is in SQLite and the key never reaches the log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sluice_run_supabase_survives_sigkill_and_misses_nothing() {
    use sluice_sim::supabase::{Faults, SupabaseSim, SupabaseSimConfig};
    let Some(url) = postgres() else { return };
    let pg = connect(&url).await;
    let table = format!("accounts_{}", std::process::id());
    pg.batch_execute(&format!(
        "DROP TABLE IF EXISTS {table};
         CREATE TABLE {table} (id bigint PRIMARY KEY, balance numeric(12,2), updated_at timestamptz NOT NULL DEFAULT clock_timestamp());
         CREATE OR REPLACE FUNCTION {table}_touch() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN NEW.updated_at = clock_timestamp(); RETURN NEW; END $$;
         CREATE TRIGGER {table}_touch BEFORE UPDATE ON {table} FOR EACH ROW EXECUTE FUNCTION {table}_touch();
         INSERT INTO {table} (id, balance) SELECT i, i FROM generate_series(1, 20) i;"
    ))
    .await
    .unwrap();
    let mut sim_config = SupabaseSimConfig::new(&url, &[table.as_str()]);
    sim_config.api_key = "service-role-secret-123".into();
    sim_config.faults = Faults {
        subscribe_delay: Duration::from_millis(400),
        ..Faults::default()
    };
    let sim = SupabaseSim::start(sim_config).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("supabase.db");
    let spawn = || {
        Command::new(env!("CARGO_BIN_EXE_sluice"))
            .args(["run", "supabase", "--db", db.to_str().unwrap()])
            .env("RUST_LOG", "warn")
            .env("SUPABASE_URL", sim.url())
            .env("SUPABASE_SERVICE_ROLE_KEY", sim.api_key())
            .env("SUPABASE_SCHEMA", "public")
            .env("SUPABASE_TABLES", &table)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let mut child = spawn();
    for i in 21..=120i64 {
        pg.batch_execute(&format!(
            "INSERT INTO {table} (id, balance) VALUES ({i}, {i}.50)"
        ))
        .await
        .unwrap();
        if i % 4 == 0 {
            pg.batch_execute(&format!(
                "UPDATE {table} SET balance = balance + 1 WHERE id = {}",
                i - 10
            ))
            .await
            .unwrap();
        }
        if i == 70 {
            child.kill().unwrap(); // SIGKILL
            child.wait().unwrap();
            child = spawn();
        }
        tokio::time::sleep(Duration::from_millis(15)).await;
    }
    let expect: std::collections::BTreeSet<(String, String)> = pg
        .query(&format!("SELECT id::text, to_char(updated_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"') FROM {table}"), &[])
        .await
        .unwrap()
        .into_iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let stored: std::collections::BTreeSet<(String, String)> = sqlite(
            &db,
            "SELECT json_extract(key, '$.id'), version FROM supabase_changes WHERE deleted = 0",
        )
        .into_iter()
        .map(|r| (r[0].clone(), r[1].clone()))
        .collect();
        let missing = expect.difference(&stored).count();
        if missing == 0 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{missing} of {} versions missing",
            expect.len()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    support::sigterm(&child);
    let output = child.wait_with_output().unwrap();
    let log = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{log}");
    assert!(
        !log.contains("service-role-secret-123"),
        "the key reached the log"
    );
    assert!(
        count(
            &db,
            "SELECT count(*) FROM sluice_checkpoints WHERE pipeline = 'supabase-cdc-listener'"
        ) == 1,
        "one cursor per table"
    );
    // The current state: one row per source row, at its newest version.
    let state = sqlite(
        &db,
        &format!(
            "SELECT count(*), count(DISTINCT key) FROM supabase_rows WHERE \"table\" = '{table}' AND deleted = 0"
        ),
    );
    assert_eq!(state, vec![vec!["120".to_owned(), "120".into()]]);
    let newest: std::collections::BTreeMap<String, String> = expect.iter().cloned().collect();
    for row in sqlite(
        &db,
        "SELECT json_extract(key, '$.id'), version FROM supabase_rows",
    ) {
        assert_eq!(
            newest.get(&row[0]),
            Some(&row[1]),
            "row {} is not at its newest version",
            row[0]
        );
    }

    // `sluice audit supabase`: the table read through PostgREST against supabase_rows.
    let envs = [
        ("SUPABASE_URL", sim.url()),
        ("SUPABASE_SERVICE_ROLE_KEY", sim.api_key().to_owned()),
        ("SUPABASE_SCHEMA", "public".to_owned()),
        ("SUPABASE_TABLES", table.clone()),
    ];
    let envs: Vec<(&str, &str)> = envs.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let audit = |db: &Path| support::audit_env(&["supabase", "--db", db.to_str().unwrap()], &envs);
    let (code, clean) = audit(&db);
    assert_eq!(code, Some(0), "{clean}");
    assert_eq!(clean[0]["source_rows"], 120, "{clean}");
    // Holes made on purpose: a row removed, a row set back to an older version, a key the
    // table never had.
    let conn = rusqlite::Connection::open(&db).unwrap();
    conn.execute_batch(&format!(
        "DELETE FROM supabase_rows WHERE json_extract(key, '$.id') = 5;
         UPDATE supabase_rows SET version = '2000-01-01T00:00:00.000000Z' WHERE json_extract(key, '$.id') = 7;
         INSERT INTO supabase_rows (schema, \"table\", key, version, deleted, row, source)
             VALUES ('public', '{table}', '{{\"id\":999}}', '2026-01-01T00:00:00.000000Z', 0, '{{}}', 'rest');"
    ))
    .unwrap();
    drop(conn);
    let (code, holes) = audit(&db);
    assert_eq!(code, Some(1), "{holes}");
    assert_eq!(
        holes[0]["missing"],
        serde_json::json!([r#"{"id":5}"#]),
        "{holes}"
    );
    assert_eq!(
        holes[0]["stale"],
        serde_json::json!([r#"{"id":7}"#]),
        "{holes}"
    );
    assert_eq!(
        holes[0]["extra"],
        serde_json::json!([r#"{"id":999}"#]),
        "{holes}"
    );
}

/// Runs `sluice run --config CONFIG` to its end (a file read through) and checks it succeeded.
fn run_to_end(config: &Path) {
    let output = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["run", "--config", config.to_str().unwrap()])
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

fn audit(config: &Path) -> (Option<i32>, serde_json::Value) {
    support::audit(&["--config", config.to_str().unwrap(), "pg"])
}

/// `sluice audit --config FILE pg` folds the change log into current state and compares it
/// with the table in Postgres: a complete destination is complete (exit 0); a key whose changes
/// were removed is missing, a changed row is stale, an invented key is extra (exit 1).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_audit_finds_missing_stale_and_extra_keys_of_a_change_log() {
    let Some(url) = postgres() else { return };
    let pg = connect(&url).await;
    let (cdc, mut child) = start_cdc(
        &pg,
        &url,
        "audited",
        "id bigint PRIMARY KEY, price numeric(20,8), body text",
    )
    .await;
    let table = cdc.table.clone();
    pg.batch_execute(&format!(
        "INSERT INTO {table} SELECT g, 999999999000.12345670 + g, repeat('x', 3000) FROM generate_series(1, 40) g;
         UPDATE {table} SET price = price + 1 WHERE id <= 10;
         DELETE FROM {table} WHERE id = 40;
         UPDATE {table} SET id = 41 WHERE id = 39;"
    ))
    .await
    .unwrap();
    // 40 inserts, 10 updates, a delete and a key change.
    wait_changes(&cdc.db, 52, 30, "the changes never landed").await;
    child.kill().unwrap();
    child.wait().unwrap();

    let (code, clean) = audit(&cdc.config);
    assert_eq!(code, Some(0), "{clean}");
    assert_eq!(clean[0]["source_rows"], 39, "{clean}");
    assert_eq!(clean[0]["destination_rows"], 39, "{clean}");

    let conn = rusqlite::Connection::open(&cdc.db).unwrap();
    conn.execute_batch(
        "DELETE FROM pg_changes WHERE json_extract(key, '$.id') = 5;
         UPDATE pg_changes SET row = json_set(row, '$.body', 'tampered') WHERE json_extract(key, '$.id') = 20;
         INSERT INTO pg_changes (lsn, seq, op, schema, \"table\", commit_time, key, row, deleted)
           SELECT lsn + 1, 0, 'insert', schema, \"table\", commit_time, '{\"id\":777}', '{\"id\":777}', 0
           FROM pg_changes ORDER BY lsn DESC LIMIT 1;",
    )
    .unwrap();
    drop(conn);
    let (code, holes) = audit(&cdc.config);
    assert_eq!(code, Some(1), "{holes}");
    let report = &holes[0];
    assert_eq!(
        report["missing"],
        serde_json::json!([r#"{"id":5}"#]),
        "{report}"
    );
    assert_eq!(
        report["stale"],
        serde_json::json!([r#"{"id":20}"#]),
        "{report}"
    );
    assert_eq!(
        report["extra"],
        serde_json::json!([r#"{"id":777}"#]),
        "{report}"
    );
    drop_cdc(&pg, &cdc.slot, &cdc.publication, &[&table]).await;
}

/// `[store] kind = "postgres"`: the cursor lives in Postgres (table `sluice_checkpoints`), and a
/// second run resumes from it: appended lines land, the first ones are not read again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_postgres_store_keeps_the_cursor_and_a_second_run_resumes() {
    let Some(url) = postgres() else { return };
    let pg = connect(&url).await;
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.jsonl");
    let lines = |range: std::ops::Range<u32>| {
        range
            .map(|i| format!("{{\"id\":{i}}}\n"))
            .collect::<String>()
    };
    std::fs::write(&input, lines(0..50)).unwrap();
    let db = dir.path().join("out.db");
    let config = dir.path().join("pgstore.toml");
    let pipeline = format!("pgstore-{}", std::process::id());
    std::fs::write(
        &config,
        format!(
            r#"
[store]
kind = "postgres"
url = "{url}"
path = "{db}"

[sinks.db]
kind = "sqlite"

[pipelines.{pipeline}]
source = {{ kind = "file", path = "{input}", resource = "rows" }}
resources.rows = {{ sink = "db", table = "rows", key = ["id"], columns = [{{ name = "id", type = "integer", nullable = false }}] }}
"#,
            db = db.display(),
            input = input.display()
        ),
    )
    .unwrap();
    let run = || run_to_end(&config);
    let query = "SELECT position FROM sluice_checkpoints WHERE pipeline = $1";
    run();
    let size = std::fs::metadata(&input).unwrap().len();
    let saved: String = pg.query_one(query, &[&pipeline]).await.unwrap().get(0);
    assert_eq!(saved, size.to_string());
    assert_eq!(count(&db, "SELECT count(*) FROM rows"), 50);
    // Lines appended; rows of the first run deleted from the destination: a second run that
    // read from the start would write them again.
    std::fs::write(&input, lines(0..60)).unwrap();
    rusqlite::Connection::open(&db)
        .unwrap()
        .execute("DELETE FROM rows WHERE id < 50", [])
        .unwrap();
    run();
    assert_eq!(
        count(&db, "SELECT count(*) FROM rows"),
        10,
        "only the new lines"
    );
    let size = std::fs::metadata(&input).unwrap().len();
    let saved: String = pg.query_one(query, &[&pipeline]).await.unwrap().get(0);
    assert_eq!(saved, size.to_string());

    // The operator's commands work on the Postgres store too: a rewind, recorded; a pause that
    // keeps the next run from reading; a resume.
    let operate = |args: &[&str]| {
        let output = Command::new(env!("CARGO_BIN_EXE_sluice"))
            .args(args)
            .args(["--config", config.to_str().unwrap()])
            .env("RUST_LOG", "warn")
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).into_owned()
    };
    let partition = input.to_str().unwrap();
    let set = operate(&["checkpoints", "set", &pipeline, partition, "0"]);
    assert!(set.contains(&format!("{size} -> 0")), "{set}");
    let shown = operate(&["checkpoints", "show", &pipeline]);
    assert!(shown.contains(&format!("{partition}\t0")), "{shown}");
    assert!(shown.contains("-> 0 by "), "{shown}");
    operate(&["pause", &pipeline]);
    assert!(operate(&["checkpoints", "show", &pipeline]).contains("# paused"));
    rusqlite::Connection::open(&db)
        .unwrap()
        .execute("DELETE FROM rows", [])
        .unwrap();
    // Paused: `run` starts no session; SIGTERM it after a moment, nothing read.
    let mut paused_run = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["run", "--config", config.to_str().unwrap()])
        .env("RUST_LOG", "warn")
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    support::sigterm(&paused_run);
    assert!(paused_run.wait().unwrap().success());
    assert_eq!(
        count(&db, "SELECT count(*) FROM rows"),
        0,
        "a paused pipeline reads nothing"
    );
    operate(&["resume", &pipeline]);
    run();
    assert_eq!(
        count(&db, "SELECT count(*) FROM rows"),
        60,
        "rewound to 0: every line again"
    );
}

/// A Postgres sink beside a Postgres store in the same database: records and cursors commit in
/// one transaction. A run stores every line once; a second run adds only the appended lines.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_postgres_sink_and_store_commit_records_and_cursors_together() {
    let Some(url) = postgres() else { return };
    let pg = connect(&url).await;
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.jsonl");
    let lines = |range: std::ops::Range<u32>| {
        range
            .map(|i| {
                format!(
                    "{{\"id\":{i},\"amount\":\"99999999999{}.1234567{}\"}}\n",
                    i % 10,
                    i % 10
                )
            })
            .collect::<String>()
    };
    std::fs::write(&input, lines(0..40)).unwrap();
    let pipeline = format!("pgsink-{}", std::process::id());
    let table = format!("pgsink_{}", std::process::id());
    let config = file_into_postgres(
        &url,
        dir.path(),
        &pipeline,
        &input,
        &format!(
            r#"resources.rows = {{ sink = "pg", table = "{table}", key = ["id"], columns = [{{ name = "id", type = "integer", nullable = false }}, {{ name = "amount", type = "decimal" }}] }}"#
        ),
    );
    let run = || run_to_end(&config);
    run();
    std::fs::write(&input, lines(0..55)).unwrap();
    run();
    let row = pg
        .query_one(
            &format!("SELECT count(*), count(DISTINCT id), max(amount)::text FROM {table}"),
            &[],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, i64>(0), 55);
    assert_eq!(row.get::<_, i64>(1), 55);
    assert_eq!(row.get::<_, String>(2), "999999999999.12345679");
    let saved: String = pg
        .query_one(
            "SELECT position FROM sluice_checkpoints WHERE pipeline = $1",
            &[&pipeline],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(saved, std::fs::metadata(&input).unwrap().len().to_string());
    pg.batch_execute(&format!("DROP TABLE {table}"))
        .await
        .unwrap();
}

/// The fleet's failure model, without Temporal: two `sluice run` processes on one Postgres
/// store and sink. The first is SIGSTOPped (cut off, not dead) with work in flight; the second
/// starts once its lease expired, takes the pipeline over with a new token and writes
/// everything; the
/// first, woken with SIGCONT, is fenced — its late writes and saves are refused — and a
/// keyless table (where a write twice would show) holds every line exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_writer_stopped_past_its_lease_is_fenced_when_it_wakes() {
    let Some(url) = postgres() else { return };
    let pg = connect(&url).await;
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.jsonl");
    let append = |range: std::ops::Range<u32>| {
        use std::io::Write as _;
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&input)
            .unwrap();
        for i in range {
            writeln!(file, "{{\"id\":{i}}}").unwrap();
        }
    };
    append(0..200);
    let config = dir.path().join("fence.toml");
    let pipeline = format!("fence-{}", std::process::id());
    let table = format!("fence_{}", std::process::id());
    std::fs::write(
        &config,
        format!(
            r#"{head}
[pipelines.{pipeline}]
source = {{ kind = "file", path = "{input}", resource = "rows", follow = true, poll_ms = 20 }}
batch = {{ max_records = 7, linger_ms = 5 }}
resources.rows = {{ sink = "pg", table = "{table}", columns = [{{ name = "id", type = "integer", nullable = false }}] }}
"#,
            head = store_and_sink(&url, &dir.path().join("local.db")),
            input = input.display()
        ),
    )
    .unwrap();
    let spawn = || {
        Command::new(env!("CARGO_BIN_EXE_sluice"))
            .args(["run", "--config", config.to_str().unwrap()])
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap()
    };
    let signal = |child: &std::process::Child, sig: &str| {
        assert!(
            Command::new("kill")
                .args([sig, &child.id().to_string()])
                .status()
                .unwrap()
                .success()
        );
    };
    let mut first = spawn();
    wait_rows(&pg, &table, 100, "the first writer's rows").await;
    // Cut off mid-stream: lines keep coming, batches are in flight.
    signal(&first, "-STOP");
    append(200..400);
    // A second process is refused while the lease is live (single writer); once the stopped
    // one has missed its renewals for the lease's 15 s, it takes over.
    tokio::time::sleep(Duration::from_secs(16)).await;
    let mut second = spawn();
    wait_rows(
        &pg,
        &table,
        400,
        "the second writer, after the lease expired",
    )
    .await;
    let token: i64 = pg
        .query_one(
            "SELECT token FROM sluice_leases WHERE pipeline = $1",
            &[&pipeline],
        )
        .await
        .unwrap()
        .get(0);
    assert!(token >= 2, "the second writer holds a new token ({token})");
    // The first wakes up with its old token and work in flight; more lines arrive.
    signal(&first, "-CONT");
    append(400..450);
    wait_rows(&pg, &table, 450, "every line").await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    support::sigterm(&second);
    assert!(second.wait().unwrap().success());
    signal(&first, "-TERM");
    let _ = first.wait();
    assert_eq!(
        rows(&pg, &table).await,
        (450, 450),
        "every line exactly once: the woken writer's late writes were refused"
    );
    pg.batch_execute(&format!("DROP TABLE {table}"))
        .await
        .unwrap();
}

/// Invariant 9 through a bisected batch on the real server, records, dead letters and cursors
/// in one database: a fan-out gives three rows per line (one cursor for the three) and a CHECK
/// constraint rejects one row, so the batch of 30 is split and each part commits with the
/// cursors done before it. The sink takes a write whose cursors are all stored for a retried
/// commit and skips it; before the fixes, a write after a committed part carried that part's
/// cursors again: rejecting row 8, row 7 (a later part) was acknowledged but never written;
/// rejecting row 7, its dead letter was.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bisected_batch_of_fanned_out_rows_loses_none_into_postgres() {
    let Some(url) = postgres() else { return };
    let pg = connect(&url).await;
    for poison in [8, 7] {
        bisected_fan_out(&url, &pg, poison).await;
    }
}

async fn bisected_fan_out(url: &str, pg: &tokio_postgres::Client, poison: i64) {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.jsonl");
    let lines: String = (0..10).map(|i| format!("{{\"line\":{i}}}\n")).collect();
    std::fs::write(&input, lines).unwrap();
    let id = std::process::id();
    let (pipeline, table, dead) = (
        format!("bisect-{poison}-{id}"),
        format!("bisect_{poison}_{id}"),
        format!("bisect_dl_{poison}_{id}"),
    );
    pg.batch_execute(&format!(
        "CREATE TABLE {table} (id bigint NOT NULL CHECK (id <> {poison}))"
    ))
    .await
    .unwrap();
    let config = file_into_postgres(
        url,
        dir.path(),
        &pipeline,
        &input,
        &format!(
            r#"batch = {{ max_records = 30, linger_ms = 2000 }}
dead_letters = {{ sink = "pg", table = "{dead}" }}
resources.rows = {{ sink = "pg", table = "{table}", columns = [{{ name = "id", type = "integer", nullable = false }}], transform = '.line * 3 + range(3) | {{id: .}}' }}"#
        ),
    );
    run_to_end(&config);
    let ids: Vec<i64> = pg
        .query(&format!("SELECT id FROM {table} ORDER BY id"), &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    let dead_letters: i64 = pg
        .query_one(&format!("SELECT count(*) FROM {dead}"), &[])
        .await
        .unwrap()
        .get(0);
    let saved: String = pg
        .query_one(
            "SELECT position FROM sluice_checkpoints WHERE pipeline = $1",
            &[&pipeline],
        )
        .await
        .unwrap()
        .get(0);
    pg.batch_execute(&format!("DROP TABLE {table}; DROP TABLE {dead}"))
        .await
        .unwrap();
    let expected: Vec<i64> = (0..30).filter(|i| *i != poison).collect();
    assert_eq!(
        ids, expected,
        "row {poison} rejected: every other row, once"
    );
    assert_eq!(
        dead_letters, 1,
        "row {poison} rejected: it is dead-lettered"
    );
    assert_eq!(saved, std::fs::metadata(&input).unwrap().len().to_string());
}

/// With the store in Postgres, dead letters go by default to `sluice_dead_letters` in that
/// database (beside the cursors, one place for a fleet), not to a SQLite file on whichever
/// machine ran the pipeline.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_follow_a_postgres_store_by_default() {
    let Some(url) = postgres() else { return };
    let pg = connect(&url).await;
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.jsonl");
    std::fs::write(&input, "{\"id\":1}\nnot json\n{\"id\":2}\n").unwrap();
    let id = std::process::id();
    let (pipeline, table) = (format!("dl-default-{id}"), format!("dl_default_{id}"));
    let config = file_into_postgres(
        &url,
        dir.path(),
        &pipeline,
        &input,
        &format!(
            r#"resources.rows = {{ sink = "pg", table = "{table}", columns = [{{ name = "id", type = "integer", nullable = false }}] }}"#
        ),
    );
    let local = dir.path().join("local.db");
    run_to_end(&config);
    let dead: Vec<String> = pg
        .query(
            "SELECT payload FROM sluice_dead_letters WHERE pipeline = $1",
            &[&pipeline],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    pg.batch_execute(&format!("DROP TABLE {table}"))
        .await
        .unwrap();
    assert_eq!(dead, ["not json"], "the bad line, in the store's database");
    assert!(!local.exists(), "nothing written to a local SQLite file");
}

/// Rows, and distinct ids, of `table`.
async fn rows(pg: &tokio_postgres::Client, table: &str) -> (i64, i64) {
    pg.query_one(
        &format!("SELECT count(*), count(DISTINCT id) FROM {table}"),
        &[],
    )
    .await
    .map(|r| (r.get::<_, i64>(0), r.get::<_, i64>(1)))
    .unwrap_or((0, 0))
}

/// Waits (up to a minute) until `table` has `want` rows.
async fn wait_rows(pg: &tokio_postgres::Client, table: &str, want: i64, what: &str) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let (count, _) = rows(pg, table).await;
        if count >= want {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what}: {count} of {want} rows"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The `[store]` and `[sinks.pg]` of a config whose cursors and records both go to Postgres
/// at `url` (the SQLite file `db` for what stays local).
/// The config of one pipeline reading `input` (resource `rows`) over the Postgres store and
/// sink, its other lines `rest`, written in `dir` (cursors' local file: `local.db`).
fn file_into_postgres(
    url: &str,
    dir: &Path,
    pipeline: &str,
    input: &Path,
    rest: &str,
) -> std::path::PathBuf {
    let config = dir.join(format!("{pipeline}.toml"));
    std::fs::write(
        &config,
        format!(
            "{head}\n[pipelines.{pipeline}]\nsource = {{ kind = \"file\", path = \"{input}\", resource = \"rows\" }}\n{rest}\n",
            head = store_and_sink(url, &dir.join("local.db")),
            input = input.display()
        ),
    )
    .unwrap();
    config
}

fn store_and_sink(url: &str, db: &Path) -> String {
    format!(
        r#"
[store]
kind = "postgres"
url = "{url}"
path = "{db}"

[sinks.pg]
kind = "postgres"
url = "{url}"
"#,
        db = db.display()
    )
}

/// `--store URL` puts a config's cursors in Postgres over its `[store]` (none here: SQLite by
/// default), `checkpoints show --store URL` reads them there, and a bad URL is a usage error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_store_flag_moves_a_configs_cursors_to_postgres() {
    let Some(url) = postgres() else { return };
    let pg = connect(&url).await;
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.jsonl");
    std::fs::write(&input, "{\"id\":1}\n{\"id\":2}\n").unwrap();
    let local = dir.path().join("local.db");
    let config = dir.path().join("flag.toml");
    let pipeline = format!("storeflag-{}", std::process::id());
    std::fs::write(
        &config,
        format!(
            "[sinks.db]\nkind = \"sqlite\"\n\n[pipelines.{pipeline}]\nsource = {{ kind = \"file\", path = \"{}\", resource = \"rows\" }}\nresources.rows = {{ sink = \"db\", table = \"rows\", columns = [{{ name = \"id\", type = \"integer\", nullable = false }}] }}\n",
            input.display()
        ),
    )
    .unwrap();
    let sluice = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_sluice"))
            .args(args)
            .args(["--db", local.to_str().unwrap()])
            .env("RUST_LOG", "warn")
            .output()
            .unwrap()
    };
    let ran = sluice(&["run", "--config", config.to_str().unwrap(), "--store", &url]);
    assert!(
        ran.status.success(),
        "{}",
        String::from_utf8_lossy(&ran.stderr)
    );
    let size = std::fs::metadata(&input).unwrap().len();
    let saved: String = pg
        .query_one(
            "SELECT position FROM sluice_checkpoints WHERE pipeline = $1",
            &[&pipeline],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(saved, size.to_string(), "the cursor is in Postgres");
    let local_cursors: i64 = rusqlite::Connection::open(&local)
        .unwrap()
        .query_row(
            "SELECT count(*) FROM sluice_checkpoints WHERE pipeline = ?1",
            [&pipeline],
            |r| r.get(0),
        )
        .unwrap_or(0);
    assert_eq!(local_cursors, 0, "and not in the SQLite file");
    let shown = sluice(&["checkpoints", "show", &pipeline, "--store", &url]);
    let shown = String::from_utf8_lossy(&shown.stdout);
    assert!(
        shown.contains(&format!("{}\t{size}", input.display())),
        "{shown}"
    );
    for (bad, why) in [
        ("mysql://x", "--store: must be postgres://"),
        ("sqlite:", "--store: sqlite: needs a file path"),
    ] {
        let bad = sluice(&["run", "--config", config.to_str().unwrap(), "--store", bad]);
        assert_eq!(bad.status.code(), Some(2));
        assert!(
            String::from_utf8_lossy(&bad.stderr).contains(why),
            "{}",
            String::from_utf8_lossy(&bad.stderr)
        );
    }
    // `sqlite:PATH` moves the store's file, and the SQLite sink that wrote to it follows: the
    // records and the cursor land in PATH together.
    let moved = dir.path().join("moved.db");
    let store = format!("sqlite:{}", moved.display());
    let ran = sluice(&[
        "run",
        "--config",
        config.to_str().unwrap(),
        "--store",
        &store,
    ]);
    assert!(
        ran.status.success(),
        "{}",
        String::from_utf8_lossy(&ran.stderr)
    );
    let moved = rusqlite::Connection::open(&moved).unwrap();
    let count = |sql: &str| moved.query_row(sql, [], |r| r.get::<_, i64>(0)).unwrap();
    assert_eq!(count("SELECT count(*) FROM rows"), 2);
    assert_eq!(count("SELECT count(*) FROM sluice_checkpoints"), 1);
}
