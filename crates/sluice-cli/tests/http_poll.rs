//! `sluice run --config` with an `http_poll` source against the simulated API, killed with
//! SIGKILL and restarted, then `sluice audit` of the pipeline: complete, and then exact about the
//! rows removed or made stale on purpose.

mod support;

use std::{
    path::Path,
    process::{Child, Command, Stdio},
    time::Duration,
};

use sluice::testing::eventually;
use sluice_sim::http_api::{ApiFaults, HttpApiConfig, HttpApiSim};

fn sluice() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_sluice"));
    command.env("RUST_LOG", "warn").env_remove("SLUICE_DB");
    command
}

fn spawn(config: &Path) -> Child {
    sluice()
        .args(["run", "--config", config.to_str().unwrap()])
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

fn audit(config: &Path) -> (Option<i32>, serde_json::Value) {
    support::audit(&["--config", config.to_str().unwrap(), "api"])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkills_lose_nothing_and_the_audit_names_what_was_removed() {
    let sim = HttpApiSim::start(HttpApiConfig {
        initial: 600,
        faults: ApiFaults {
            rate_429: 0.05,
            rate_500: 0.05,
            insert_while_paging: 0.2,
            update_while_paging: 0.2,
            delay: Duration::from_millis(5),
            ..ApiFaults::default()
        },
        ..HttpApiConfig::default()
    })
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("api.db");
    let config = dir.path().join("api.toml");
    std::fs::write(
        &config,
        format!(
            r#"
[store]
path = "{db}"

[sinks.db]
kind = "sqlite"

[pipelines.api.source]
kind = "http_poll"
base_url = "{url}"
interval_ms = 300
requests_per_second = 100

[[pipelines.api.source.streams]]
name = "items"
path = "/items"
records = "data"
primary_key = ["id"]
cursor = {{ field = "updated_at", param = "since" }}
pagination = {{ kind = "token", param = "starting_after", token_field = "cursor", has_more = "has_more", page_size = {{ param = "limit", size = 50 }} }}

[pipelines.api.resources.items]
sink = "db"
table = "items"
key = ["id"]
columns = [
  {{ name = "id", type = "integer", nullable = false }},
  {{ name = "updated_at", type = "timestamp" }},
  {{ name = "version", type = "integer" }},
  {{ name = "amount", type = "decimal" }},
]
"#,
            db = db.display(),
            url = sim.url()
        ),
    )
    .unwrap();
    let mut child = spawn(&config);
    for delay in [400, 900, 250] {
        tokio::time::sleep(Duration::from_millis(delay)).await;
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        sim.insert(15);
        child = spawn(&config);
    }
    sim.set_faults(ApiFaults::default());
    let want = sim.versions();
    let newest = |db: &Path| {
        query(db, "SELECT count(*) FROM items") == want.len() as i64
            && query(db, "SELECT sum(version) FROM items") == want.values().sum::<u64>() as i64
    };
    eventually(
        "every item's newest version",
        Duration::from_secs(60),
        || newest(&db),
    )
    .await;
    child.kill().unwrap();
    child.wait().unwrap();
    assert_eq!(
        query(&db, "SELECT count(*) FROM items WHERE amount LIKE '%.%0'"),
        want.len() as i64,
        "exact amounts with their trailing zeros"
    );

    let (code, clean) = audit(&config);
    assert_eq!(code, Some(0), "{clean}");
    assert_eq!(clean[0]["api_records"], want.len(), "{clean}");

    let conn = rusqlite::Connection::open(&db).unwrap();
    conn.execute_batch(
        "DELETE FROM items WHERE id = 7;
         UPDATE items SET updated_at = '2000-01-01T00:00:00Z' WHERE id = 9;",
    )
    .unwrap();
    drop(conn);
    let (code, holes) = audit(&config);
    assert_eq!(code, Some(1), "{holes}");
    assert_eq!(holes[0]["missing"], serde_json::json!(["[7]"]), "{holes}");
    assert_eq!(holes[0]["stale"], serde_json::json!(["[9]"]), "{holes}");
}
