//! End-to-end tests of the `sluice` binary: real processes, real SQLite files, real signals.

use sluice::testing::eventually_blocking;
use std::{
    io::Write,
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    time::Duration,
};

fn sluice() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_sluice"));
    command.env("RUST_LOG", "warn").env_remove("SLUICE_DB");
    command
}

fn run(args: &[&str]) -> Output {
    sluice().args(args).output().expect("sluice runs")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Writes `lines` JSON lines `{"n": i, "pad": "..."}` and a config that appends them, with no
/// key (so a replayed line would show up as a duplicate), into `db`.
fn ingest_setup(dir: &Path, lines: usize, follow: bool) -> (PathBuf, PathBuf, PathBuf) {
    let input = dir.join("in.jsonl");
    let mut file = std::io::BufWriter::new(std::fs::File::create(&input).unwrap());
    for n in 0..lines {
        writeln!(
            file,
            "{{\"n\":{n},\"pad\":\"xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx\"}}"
        )
        .unwrap();
    }
    file.flush().unwrap();
    let db = dir.join("out.db");
    let config = dir.join("p.toml");
    std::fs::write(
        &config,
        format!(
            r#"
[store]
path = "{db}"

[sinks.db]
kind = "sqlite"

[pipelines.ingest]
source = {{ kind = "file", path = "{input}", follow = {follow}, poll_ms = 20 }}
batch = {{ max_records = 1000, linger_ms = 20 }}

[pipelines.ingest.resources.lines]
sink = "db"
table = "lines"
columns = [{{ name = "n", type = "integer" }}, {{ name = "pad", type = "text" }}]
"#,
            db = db.display(),
            input = input.display()
        ),
    )
    .unwrap();
    (input, db, config)
}

fn count(db: &Path, sql: &str) -> i64 {
    let conn =
        rusqlite::Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .unwrap();
    conn.busy_timeout(Duration::from_secs(5)).unwrap();
    conn.query_row(sql, [], |r| r.get(0)).unwrap_or(0)
}

fn table_rows(db: &Path) -> i64 {
    if !db.exists() {
        return 0;
    }
    count(db, "SELECT count(*) FROM lines")
}

fn spawn_run(config: &Path) -> Child {
    sluice()
        .args(["run", "--config", config.to_str().unwrap()])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// Invariant 9 end to end: SIGKILL the process three times while it ingests a large file, then
/// let it finish: every line is in SQLite exactly once.
#[test]
fn sigkill_during_ingest_then_restart_leaves_every_line_exactly_once() {
    let dir = tempfile::tempdir().unwrap();
    let lines = 200_000;
    let (_input, db, config) = ingest_setup(dir.path(), lines, false);
    let mut kills = 0;
    for target in [20_000, 70_000, 130_000] {
        let mut child = spawn_run(&config);
        eventually_blocking("rows to land", Duration::from_secs(60), || {
            table_rows(&db) >= target || child.try_wait().unwrap().is_some()
        });
        if child.try_wait().unwrap().is_none() {
            child.kill().unwrap(); // SIGKILL
            kills += 1;
        }
        child.wait().unwrap();
    }
    assert!(
        kills >= 2,
        "the ingest finished before it could be killed ({kills} kills)"
    );
    let output = run(&["run", "--config", config.to_str().unwrap()]);
    assert!(output.status.success(), "{}", text(&output.stderr));
    assert_eq!(
        count(&db, "SELECT count(*) FROM lines"),
        lines as i64,
        "rows"
    );
    assert_eq!(
        count(&db, "SELECT count(DISTINCT n) FROM lines"),
        lines as i64,
        "distinct lines"
    );
}

/// Invariant 7: SIGTERM stops a following source, flushes, saves, exits 0; the cursor is at the
/// end of the file.
#[test]
fn sigterm_drains_and_exits_zero() {
    let dir = tempfile::tempdir().unwrap();
    let (input, db, config) = ingest_setup(dir.path(), 5_000, true);
    let child = spawn_run(&config);
    eventually_blocking("all rows", Duration::from_secs(30), || {
        table_rows(&db) >= 5_000
    });
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let output = child.wait_with_output().unwrap();
    assert!(
        output.status.success(),
        "exit {:?}: {}",
        output.status,
        text(&output.stderr)
    );
    let size = std::fs::metadata(&input).unwrap().len() as i64;
    let position: i64 = count(
        &db,
        "SELECT CAST(position AS INTEGER) FROM sluice_checkpoints WHERE pipeline = 'ingest'",
    );
    assert_eq!(position, size);
}

/// Invariant 8: a second `sluice run` of the same pipeline on the same file is refused with a
/// clear message while the first runs.
#[test]
fn a_second_run_of_the_same_pipeline_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (_input, db, config) = ingest_setup(dir.path(), 100, true);
    let mut first = spawn_run(&config);
    eventually_blocking("the first run", Duration::from_secs(30), || {
        table_rows(&db) >= 100
    });
    let second = run(&["run", "--config", config.to_str().unwrap()]);
    first.kill().unwrap();
    first.wait().unwrap();
    assert_eq!(second.status.code(), Some(1), "{}", text(&second.stderr));
    assert!(
        text(&second.stderr).contains("pipeline ingest is already running"),
        "{}",
        text(&second.stderr)
    );
}

/// Config errors name the file, the key and what is wrong, and exit 2.
#[test]
fn config_errors_name_the_file_and_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("bad.toml");
    let cases = [
        (
            "[pipelines.p]\nsource = { kind = \"file\", path = \"x\" }\n[pipelines.p.resources.r]\nsink = \"nope\"\n",
            "pipelines.p: resources.r.sink: no sink named \"nope\"",
        ),
        (
            "[sinks.s]\nkind = \"stdout\"\n[pipelines.p]\nsource = { kind = \"file\", path = \"x\" }\n[pipelines.p.resources.r]\nsink = \"s\"\ntransform = \"{a: \"\n",
            "resources.r.transform: jq program does not parse",
        ),
        (
            "[pipelines.p]\nsource = { kind = \"ftp\" }\n",
            "unknown variant `ftp`",
        ),
        (
            "[sinks.s]\nkind = \"sqlite\"\n[pipelines.p]\nsource = { kind = \"file\", path = \"x\" }\n[pipelines.p.resources.r]\nsink = \"s\"\n",
            "resources.r.columns",
        ),
        // Every source kind is validated too, as `run` would (no connection is made).
        (
            "[sinks.s]\nkind = \"stdout\"\n[pipelines.p]\nsource = { kind = \"file\", path = \"\" }\n[pipelines.p.resources.r]\nsink = \"s\"\n",
            "pipelines.p: source: path is empty",
        ),
        (
            "[sinks.s]\nkind = \"stdout\"\n[pipelines.p]\nsource = { kind = \"coinbase\", ws_url = \"http://x\" }\n[pipelines.p.resources.matches]\nsink = \"s\"\n",
            "pipelines.p: source: ws_url",
        ),
        (
            "[sinks.s]\nkind = \"stdout\"\n[pipelines.p]\nsource = { kind = \"postgres_cdc\", url = \"mysql://h/db\", slot = \"s\", publication = \"p\" }\n[pipelines.p.resources.changes]\nsink = \"s\"\n",
            "pipelines.p: source: postgres_cdc: url must start with postgres://",
        ),
        (
            "[sinks.s]\nkind = \"stdout\"\n[pipelines.p]\nsource = { kind = \"postgres_cdc\", url = \"postgres://u:hunter2@h/db\", slot = \"Bad-Slot\", publication = \"p\" }\n[pipelines.p.resources.changes]\nsink = \"s\"\n",
            "pipelines.p: source: slot \"Bad-Slot\"",
        ),
        (
            "[sinks.s]\nkind = \"stdout\"\n[pipelines.p]\nsource = { kind = \"supabase\", url = \"ftp://x\", key = \"k\", tables = [\"t\"] }\n[pipelines.p.resources.changes]\nsink = \"s\"\n",
            "pipelines.p: source: ",
        ),
        (
            "[sinks.s]\nkind = \"stdout\"\n[pipelines.p]\nsource = { kind = \"http_poll\", base_url = \"http://x\", streams = [{ name = \"a\", path = \"/a\", primary_key = [] }] }\n[pipelines.p.resources.a]\nsink = \"s\"\n",
            "pipelines.p: source: streams[0].primary_key: at least one field",
        ),
        (
            "[store]\nkind = \"postgres\"\n[sinks.s]\nkind = \"stdout\"\n[pipelines.p]\nsource = { kind = \"file\", path = \"x\" }\n[pipelines.p.resources.r]\nsink = \"s\"\n",
            "store: a postgres store needs url or url_env",
        ),
        // Typed records written as emitted must fill the configured columns.
        (
            "[sinks.s]\nkind = \"sqlite\"\n[pipelines.p]\nsource = { kind = \"coinbase\" }\n[pipelines.p.resources.matches]\nsink = \"s\"\ncolumns = [{ name = \"trade_id\", type = \"integer\" }, { name = \"venue\", type = \"text\", nullable = false }]\n",
            "resources.matches.columns: neither a trade (column venue is NOT NULL and record Trade has no field of that name)",
        ),
        // A resource the source never emits would route nothing.
        (
            "[sinks.s]\nkind = \"sqlite\"\n[pipelines.p]\nsource = { kind = \"coinbase\" }\n[pipelines.p.resources.trades]\nsink = \"s\"\n",
            "resources.trades: the coinbase source emits only \"matches\" (trades) and \"holes\" (skipped holes)",
        ),
    ];
    for (body, expected) in cases {
        std::fs::write(&config, body).unwrap();
        let output = run(&["validate", "--config", config.to_str().unwrap()]);
        let stderr = text(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{stderr}");
        assert!(
            stderr.contains("bad.toml") && stderr.contains(expected),
            "expected {expected:?} in {stderr}"
        );
        assert!(!stderr.contains("hunter2"), "a password in {stderr}");
    }
}

/// `checkpoints show` prints the cursor; `reset` deletes it and the next run starts over.
#[test]
fn checkpoints_show_and_reset() {
    let dir = tempfile::tempdir().unwrap();
    let (input, db, config) = ingest_setup(dir.path(), 10, false);
    let config = config.to_str().unwrap();
    assert!(run(&["run", "--config", config]).status.success());
    let shown = text(&run(&["checkpoints", "show", "--config", config, "ingest"]).stdout);
    let size = std::fs::metadata(&input).unwrap().len();
    assert_eq!(shown.trim(), format!("{}\t{size}", input.display()));
    let reset = run(&["checkpoints", "reset", "--config", config, "ingest"]);
    assert!(text(&reset.stdout).contains("1 cursor(s) deleted"));
    assert!(run(&["run", "--config", config]).status.success());
    assert_eq!(
        count(&db, "SELECT count(*) FROM lines"),
        20,
        "read again from the start after the reset"
    );
}

/// Every shipped example validates, and the README's example runs into SQLite.
#[test]
fn shipped_examples_validate_and_the_orders_example_runs() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let mut seen = 0;
    for entry in std::fs::read_dir(root.join("examples")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "toml") {
            let output = sluice()
                .current_dir(&root)
                .args(["validate", "--config", path.to_str().unwrap()])
                .output()
                .unwrap();
            assert!(
                output.status.success(),
                "{}: {}",
                path.display(),
                text(&output.stderr)
            );
            seen += 1;
        }
    }
    assert!(seen >= 1);
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("orders.db");
    let output = sluice()
        .current_dir(&root)
        .args([
            "run",
            "--config",
            "examples/orders.toml",
            "--db",
            db.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", text(&output.stderr));
    let orders = count(&db, "SELECT count(*) FROM orders");
    let test_orders = std::fs::read_to_string(root.join("examples/data/orders.jsonl"))
        .unwrap()
        .matches("\"status\":\"test\"")
        .count() as i64;
    assert_eq!(orders, 1000 - test_orders);
    assert_eq!(
        count(&db, "SELECT count(*) FROM sluice_dead_letters"),
        2,
        "the malformed line, once per pipeline"
    );
}

fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    use std::io::Read;
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let status = response.split_whitespace().nth(1)?.parse().ok()?;
    Some((status, response))
}

/// `--metrics-addr` serves Prometheus metrics, /health and /ready while pipelines run.
#[test]
fn metrics_health_and_readiness_are_served() {
    let dir = tempfile::tempdir().unwrap();
    let (_input, db, config) = ingest_setup(dir.path(), 500, true);
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut child = sluice()
        .args([
            "run",
            "--config",
            config.to_str().unwrap(),
            "--metrics-addr",
            &format!("127.0.0.1:{port}"),
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    eventually_blocking("all rows", Duration::from_secs(30), || {
        table_rows(&db) >= 500
    });
    let mut metrics = String::new();
    eventually_blocking("the metrics endpoint", Duration::from_secs(30), || {
        metrics = http_get(port, "/metrics")
            .map(|(_, body)| body)
            .unwrap_or_default();
        metrics.contains("sluice_records_written_total")
    });
    let health = http_get(port, "/health");
    let ready = http_get(port, "/ready");
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(metrics.contains("pipeline=\"ingest\""), "{metrics}");
    assert!(
        metrics.contains("sluice_checkpoint_saves_total"),
        "{metrics}"
    );
    // A histogram, as docs/metrics.md says: buckets sum across processes, quantiles do not.
    assert!(
        metrics.contains("# TYPE sluice_batch_write_seconds histogram")
            && metrics.contains("sluice_batch_write_seconds_bucket{"),
        "{metrics}"
    );
    assert_eq!(health.map(|(status, _)| status), Some(200));
    assert_eq!(ready.map(|(status, _)| status), Some(200));
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn append_lines(input: &Path, from: usize, to: usize) {
    let mut file = std::fs::OpenOptions::new()
        .append(true)
        .open(input)
        .unwrap();
    for n in from..to {
        writeln!(
            file,
            "{{\"n\":{n},\"pad\":\"xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx\"}}"
        )
        .unwrap();
    }
}

fn status_of(port: u16) -> serde_json::Value {
    let (_, response) = http_get(port, "/status").unwrap_or_default();
    let body = response.split("\r\n\r\n").nth(1).unwrap_or("null");
    serde_json::from_str(body).unwrap_or(serde_json::Value::Null)
}

/// The operator's view and controls of a running pipeline: `/status` and `sluice status` show
/// its state, lease, cursor and counters; `sluice pause` stops its writes (saved, lease kept,
/// `/ready` 503) until `sluice resume`; a cursor that stops moving longer than
/// `max_cursor_age_s` makes it not ready while `/health` stays 200; `checkpoints set` is refused
/// while it runs, and afterwards rewinds it with the change recorded.
#[test]
fn status_pause_resume_readiness_and_checkpoints_set() {
    let dir = tempfile::tempdir().unwrap();
    let (input, db, config) = ingest_setup(dir.path(), 200, true);
    let text_config = std::fs::read_to_string(&config).unwrap();
    std::fs::write(
        &config,
        text_config.replace("batch = {", "max_cursor_age_s = 3\nbatch = {"),
    )
    .unwrap();
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let config_arg = config.to_str().unwrap();
    let mut child = sluice()
        .args(["run", "--config", config_arg, "--metrics-addr", &addr])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    eventually_blocking("all rows", Duration::from_secs(30), || {
        table_rows(&db) >= 200
    });
    let size = std::fs::metadata(&input).unwrap().len();
    let mut status = serde_json::Value::Null;
    eventually_blocking(
        "the cursor at the end of the file",
        Duration::from_secs(10),
        || {
            status = status_of(port);
            status["pipelines"][0]["cursors"][0]["position"] == size
        },
    );
    let pipeline = &status["pipelines"][0];
    assert_eq!(pipeline["id"], "ingest", "{status}");
    assert_eq!(pipeline["state"], "running", "{status}");
    assert_eq!(pipeline["records_out"], 200, "{status}");
    assert!(pipeline["epoch"].as_u64() >= Some(1), "{status}");
    assert!(
        pipeline["holder"].as_str().is_some_and(|h| h.contains(':')),
        "{status}"
    );
    let shown = run(&["status", "--addr", &addr]);
    assert!(shown.status.success(), "{}", text(&shown.stderr));
    let shown = text(&shown.stdout);
    assert!(
        shown.contains("ingest") && shown.contains("running"),
        "{shown}"
    );
    assert!(shown.contains(&format!("= {size} (")), "{shown}");

    // Pause: nothing more is written, the cursor stays saved, not ready; health stays 200.
    let paused = run(&["pause", "ingest", "--config", config_arg]);
    assert!(paused.status.success(), "{}", text(&paused.stderr));
    eventually_blocking("paused", Duration::from_secs(10), || {
        status_of(port)["pipelines"][0]["state"] == "paused"
    });
    append_lines(&input, 200, 300);
    #[allow(clippy::disallowed_methods)] // a blocking test: nothing else runs on this thread
    std::thread::sleep(Duration::from_millis(600));
    assert_eq!(table_rows(&db), 200, "a paused pipeline writes nothing");
    let (ready, body) = http_get(port, "/ready").unwrap();
    assert_eq!(ready, 503, "{body}");
    assert!(body.contains("paused"), "{body}");
    assert_eq!(http_get(port, "/health").map(|(s, _)| s), Some(200));
    let resumed = run(&["resume", "ingest", "--config", config_arg]);
    assert!(resumed.status.success(), "{}", text(&resumed.stderr));
    eventually_blocking(
        "the lines appended while paused",
        Duration::from_secs(10),
        || table_rows(&db) >= 300,
    );
    eventually_blocking("ready again", Duration::from_secs(10), || {
        http_get(port, "/ready").is_some_and(|(s, _)| s == 200)
    });

    // A cursor that does not move for longer than its limit: not ready, still healthy.
    let mut body = String::new();
    eventually_blocking(
        "not ready once the cursor is old",
        Duration::from_secs(10),
        || {
            let (status, text) = http_get(port, "/ready").unwrap_or_default();
            body = text;
            status == 503
        },
    );
    assert!(body.contains("has not moved"), "{body}");
    assert_eq!(http_get(port, "/health").map(|(s, _)| s), Some(200));

    // checkpoints set: refused while running; then a rewind, recorded, re-reads the file.
    let refused = run(&[
        "checkpoints",
        "set",
        "ingest",
        "--config",
        config_arg,
        input.to_str().unwrap(),
        "0",
    ]);
    assert!(!refused.status.success());
    assert!(
        text(&refused.stderr).contains("running"),
        "{}",
        text(&refused.stderr)
    );
    assert!(
        Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .unwrap()
            .success()
    );
    assert!(child.wait().unwrap().success());
    let partition = input.to_str().unwrap();
    let wrong = run(&[
        "checkpoints",
        "set",
        "ingest",
        "-c",
        config_arg,
        partition,
        "abc",
    ]);
    assert!(
        !wrong.status.success(),
        "a text position where an integer is"
    );
    assert!(
        text(&wrong.stderr).contains("not the same kind"),
        "{}",
        text(&wrong.stderr)
    );
    let set = run(&[
        "checkpoints",
        "set",
        "ingest",
        "--config",
        config_arg,
        input.to_str().unwrap(),
        "0",
    ]);
    assert!(set.status.success(), "{}", text(&set.stderr));
    assert!(text(&set.stdout).contains("-> 0"), "{}", text(&set.stdout));
    let shown = run(&["checkpoints", "show", "ingest", "--config", config_arg]);
    let shown = text(&shown.stdout);
    assert!(
        shown.contains(&format!("# set {}: ", input.display())) && shown.contains("-> 0 by "),
        "{shown}"
    );
    assert_eq!(
        count(
            &db,
            "SELECT count(*) FROM sluice_checkpoint_changes WHERE pipeline = 'ingest'"
        ),
        1
    );
    // The rewound pipeline reads the file again (the table has no key: every line twice).
    let config_once = dir.path().join("once.toml");
    std::fs::write(
        &config_once,
        std::fs::read_to_string(&config)
            .unwrap()
            .replace("follow = true", "follow = false"),
    )
    .unwrap();
    let again = run(&["run", "--config", config_once.to_str().unwrap()]);
    assert!(again.status.success(), "{}", text(&again.stderr));
    assert_eq!(table_rows(&db), 600, "300 lines read again from byte 0");
}
