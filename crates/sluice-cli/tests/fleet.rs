//! The fleet (`sluice worker`, `deploy`, `undeploy`, `fleet …`) against the real Temporal dev
//! server and the real Postgres of `scripts/services`: workers are `sluice worker` processes,
//! killed and frozen with real signals; what reached Postgres is counted in keyless tables, where
//! a row written twice would show. Timeouts are the defaults a user gets (heartbeat 10 s, lease
//! 15 s): a test with shorter ones would hide the gap between them.
#![cfg(feature = "temporal")]

mod support;

use std::{
    collections::BTreeMap,
    io::Write as _,
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    time::Duration,
};

/// Postgres and Temporal, or `None` (the test is skipped) unless SLUICE_REQUIRE_SERVICES.
fn services() -> Option<(String, String)> {
    let postgres = sluice::testing::service_env("SLUICE_TEST_POSTGRES_URL")?;
    let temporal = sluice::testing::service_env("SLUICE_TEST_TEMPORAL")?;
    Some((postgres, temporal))
}

use support::pg_connect as connect;

/// One test's fleet: its config, its own task queue, its workers.
struct Fleet {
    dir: tempfile::TempDir,
    config: PathBuf,
    temporal: String,
    queue: String,
    workers: Vec<Child>,
}

impl Fleet {
    /// A config with `pipelines` (TOML tables after the store and the sink).
    fn new(pg: &str, temporal: &str, name: &str, pipelines: &str) -> Self {
        Self::new_in(tempfile::tempdir().unwrap(), pg, temporal, name, pipelines)
    }

    /// As [`new`](Self::new), in `dir` (where the test keeps its inputs too).
    fn new_in(
        dir: tempfile::TempDir,
        pg: &str,
        temporal: &str,
        name: &str,
        pipelines: &str,
    ) -> Self {
        let config = dir.path().join("fleet.toml");
        std::fs::write(
            &config,
            format!(
                "[store]\nkind = \"postgres\"\nurl = \"{pg}\"\npath = \"{local}\"\n\n[sinks.pg]\nkind = \"postgres\"\nurl = \"{pg}\"\n\n{pipelines}",
                local = dir.path().join("local.db").display()
            ),
        )
        .unwrap();
        Self {
            dir,
            config,
            temporal: temporal.to_owned(),
            queue: format!("{name}-{}", std::process::id()),
            workers: Vec::new(),
        }
    }

    /// A fleet of one pipeline (not started): a followed file of 100 lines into a keyless
    /// table. Returns the fleet, the file, the pipeline id and the table.
    fn one_file(pg: &str, temporal: &str, name: &str) -> (Self, PathBuf, String, String) {
        let tag = std::process::id();
        let (id, table) = (format!("{name}-{tag}"), format!("{name}_{tag}"));
        let dir = tempfile::tempdir().unwrap();
        let input = dir.path().join("in.jsonl");
        append(&input, 0..100);
        let pipelines = file_pipeline(&id, &input, &table);
        let fleet = Self::new_in(dir, pg, temporal, name, &pipelines);
        (fleet, input, id, table)
    }

    /// `sluice deploy ARGS` of a [`one_file`](Self::one_file) fleet, then waits for the file's
    /// first 100 lines in `table`.
    async fn deploy_one_file(&self, pg: &tokio_postgres::Client, table: &str, args: &[&str]) {
        let deploy: Vec<&str> = ["deploy"].into_iter().chain(args.iter().copied()).collect();
        self.sluice(&deploy, true);
        wait_rows(pg, &[table.to_owned()], 100, 60, "the first lines").await;
    }

    /// Undeploys `id` (waiting for it to end) and drops its table.
    async fn undeploy_and_drop(&self, pg: &tokio_postgres::Client, id: &str, table: &str) {
        let out = self.sluice(&["undeploy", "--wait", id], false);
        assert!(out.contains("undeployed"), "{out}");
        pg.batch_execute(&format!("DROP TABLE {table}"))
            .await
            .unwrap();
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn temporal_args(&self) -> [&str; 4] {
        ["--temporal", &self.temporal, "--task-queue", &self.queue]
    }

    /// Starts a worker that runs at most `max` pipelines.
    fn start_worker(&mut self, max: usize) {
        self.start_worker_with(max, &[]);
    }

    /// Starts a worker with more arguments.
    fn start_worker_with(&mut self, max: usize, more: &[&str]) {
        let temporal = self.temporal.clone();
        self.start_worker_via(&temporal, max, more);
    }

    /// Starts a worker that reaches Temporal at `temporal` (a proxy the test can cut).
    fn start_worker_via(&mut self, temporal: &str, max: usize, more: &[&str]) {
        let log =
            std::fs::File::create(self.path(&format!("worker{}.log", self.workers.len()))).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_sluice"))
            .arg("worker")
            .args(["--temporal", temporal, "--task-queue", &self.queue])
            .args(["--config", self.config.to_str().unwrap()])
            .args(["--max-pipelines", &max.to_string()])
            .args(more)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        self.workers.push(child);
    }

    /// `sluice ARGS` with this fleet's Temporal flags after them; must succeed.
    fn sluice(&self, args: &[&str], config: bool) -> String {
        let mut command = Command::new(env!("CARGO_BIN_EXE_sluice"));
        command.args(args).args(self.temporal_args());
        if config {
            command.args(["--config", self.config.to_str().unwrap()]);
        }
        let output: Output = command.env("RUST_LOG", "warn").output().unwrap();
        let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
        assert!(
            output.status.success(),
            "sluice {args:?}: {stdout}{}",
            String::from_utf8_lossy(&output.stderr)
        );
        stdout
    }

    /// The worker (index) running each pipeline now, by the lease holder's pid.
    async fn holders(&self, pg: &tokio_postgres::Client, pipelines: &[String]) -> Vec<usize> {
        let mut held = Vec::new();
        for row in pg
            .query(
                "SELECT pipeline, holder FROM sluice_leases WHERE pipeline = ANY($1) AND expires_at > now()",
                &[&pipelines],
            )
            .await
            .unwrap()
        {
            let holder: String = row.get(1);
            let pid: u32 = holder.rsplit(':').next().unwrap().parse().unwrap();
            if let Some(index) = self.workers.iter().position(|w| w.id() == pid) {
                held.push(index);
            }
        }
        held
    }

    /// Polls `sluice fleet status` (up to `secs`) until `done` holds for it.
    async fn wait_status(&self, secs: u64, what: &str, done: impl Fn(&str) -> bool) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
        loop {
            let status = self.sluice(&["fleet", "status"], true);
            if done(&status) {
                return;
            }
            assert!(tokio::time::Instant::now() < deadline, "{what}: {status}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    fn signal(&self, worker: usize, signal: &str) {
        assert!(
            Command::new("kill")
                .args([signal, &self.workers[worker].id().to_string()])
                .status()
                .unwrap()
                .success()
        );
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        if std::thread::panicking() {
            for i in 0..self.workers.len() {
                let log = std::fs::read_to_string(self.path(&format!("worker{i}.log")))
                    .unwrap_or_default();
                let tail: Vec<&str> = log.lines().rev().take(60).collect();
                eprintln!("--- worker {i}, last lines:");
                for line in tail.iter().rev() {
                    eprintln!("{line}");
                }
            }
        }
        for worker in &mut self.workers {
            let _ = Command::new("kill")
                .args(["-CONT", &worker.id().to_string()])
                .status();
            let _ = worker.kill();
            let _ = worker.wait();
        }
    }
}

/// Appends lines `{"id": i}` for `range` to `file`.
fn append(file: &Path, range: std::ops::Range<u32>) {
    let mut out = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(file)
        .unwrap();
    for i in range {
        writeln!(out, "{{\"id\":{i}}}").unwrap();
    }
}

/// A file pipeline into keyless table `table`.
fn file_pipeline(id: &str, input: &Path, table: &str) -> String {
    format!(
        "[pipelines.{id}]\nsource = {{ kind = \"file\", path = \"{}\", resource = \"rows\", follow = true, poll_ms = 20 }}\nbatch = {{ max_records = 25, linger_ms = 5 }}\nresources.rows = {{ sink = \"pg\", table = \"{table}\", columns = [{{ name = \"id\", type = \"integer\", nullable = false }}] }}\n\n",
        input.display()
    )
}

/// Rows and distinct ids of `table` (0, 0 before it exists).
async fn rows(pg: &tokio_postgres::Client, table: &str) -> (i64, i64) {
    pg.query_one(
        &format!("SELECT count(*), count(DISTINCT id) FROM {table}"),
        &[],
    )
    .await
    .map(|r| (r.get(0), r.get(1)))
    .unwrap_or((0, 0))
}

/// Waits (up to `secs`) until every table has at least `want` rows.
async fn wait_rows(
    pg: &tokio_postgres::Client,
    tables: &[String],
    want: i64,
    secs: u64,
    what: &str,
) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    loop {
        let mut counts = BTreeMap::new();
        for table in tables {
            counts.insert(table.clone(), rows(pg, table).await.0);
        }
        if counts.values().all(|&n| n >= want) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what}: want {want} rows in each of {counts:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Three workers, six pipelines (five files and the simulated Coinbase) into one Postgres sink
/// and store. A worker is SIGKILLed: its pipelines resume on the others from their durable
/// cursors. Another is SIGSTOPped past the heartbeat timeout: its pipelines are taken over with
/// a new lease token, and when it is SIGCONTed its late writes are refused. Every line is in
/// its table exactly once; the Coinbase table holds a gap-free run of trade ids, each once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fleet_survives_a_killed_worker_and_fences_a_frozen_one() {
    let Some((url, temporal)) = services() else {
        return;
    };
    let pg = connect(&url).await;
    let tag = std::process::id();
    // The simulated Coinbase, on a port of its own.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut sim = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args([
            "sim",
            "coinbase",
            "--port",
            &port.to_string(),
            "--rate",
            "40",
        ])
        .args(["--products", "BTC-USD"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut pipelines = String::new();
    let mut ids = Vec::new();
    let mut tables = Vec::new();
    let mut inputs = Vec::new();
    for i in 0..5 {
        let (id, table) = (format!("fleet-{tag}-f{i}"), format!("fleet_{tag}_f{i}"));
        let input = dir.path().join(format!("in{i}.jsonl"));
        append(&input, 0..200);
        pipelines.push_str(&file_pipeline(&id, &input, &table));
        ids.push(id);
        tables.push(table);
        inputs.push(input);
    }
    let coinbase = format!("fleet-{tag}-cb");
    let trades = format!("fleet_{tag}_trades");
    pipelines.push_str(&format!(
        "[pipelines.{coinbase}]\nsource = {{ kind = \"coinbase\", products = [\"BTC-USD\"], ws_url = \"ws://127.0.0.1:{port}/\", rest_url = \"http://127.0.0.1:{port}\" }}\nresources.matches = {{ sink = \"pg\", table = \"{trades}\", columns = [{{ name = \"product_id\", type = \"text\", nullable = false }}, {{ name = \"trade_id\", type = \"integer\", nullable = false }}, {{ name = \"price\", type = \"decimal\" }}] }}\n"
    ));
    ids.push(coinbase.clone());
    let mut fleet = Fleet::new(&url, &temporal, "kill", &pipelines);
    for _ in 0..3 {
        fleet.start_worker(6);
    }
    let deployed = fleet.sluice(&["deploy"], true);
    assert_eq!(deployed.matches(": deployed").count(), 6, "{deployed}");
    let again = fleet.sluice(&["deploy"], true);
    assert_eq!(
        again.matches("already deployed").count(),
        6,
        "deploying twice starts nothing: {again}"
    );

    wait_rows(&pg, &tables, 200, 90, "the first lines").await;
    // Kill a worker that runs pipelines, mid-stream.
    let held = fleet.holders(&pg, &ids).await;
    assert_eq!(held.len(), 6, "every pipeline runs somewhere: {held:?}");
    let killed = held[0];
    fleet.signal(killed, "-KILL");
    for input in &inputs {
        append(input, 200..400);
    }
    wait_rows(&pg, &tables, 400, 120, "after a worker was killed").await;
    let held = fleet.holders(&pg, &ids).await;
    assert!(
        held.len() == 6 && !held.contains(&killed),
        "the killed worker's pipelines run on the others: {held:?}"
    );
    // Fleet status shows the retry: the second attempt, after the first's heartbeat timeout.
    fleet
        .wait_status(30, "no retried run shown", |s| {
            s.contains("attempt 2; last failure: ")
        })
        .await;

    // Freeze a worker that runs pipelines, past the heartbeat timeout and the lease.
    let frozen = held[0];
    let tokens = || async {
        pg.query_one(
            "SELECT sum(token)::bigint FROM sluice_leases WHERE pipeline = ANY($1)",
            &[&ids],
        )
        .await
        .unwrap()
        .get::<_, i64>(0)
    };
    let tokens_before = tokens().await;
    fleet.signal(frozen, "-STOP");
    for input in &inputs {
        append(input, 400..600);
    }
    wait_rows(&pg, &tables, 600, 150, "after a worker froze").await;
    let held = fleet.holders(&pg, &ids).await;
    assert!(
        !held.contains(&frozen),
        "the frozen worker's pipelines were taken over: {held:?}"
    );
    let tokens_after = tokens().await;
    assert!(tokens_after > tokens_before, "takeovers took new tokens");
    // It wakes with its old tokens and work in flight; more lines arrive.
    fleet.signal(frozen, "-CONT");
    for input in &inputs {
        append(input, 600..650);
    }
    wait_rows(&pg, &tables, 650, 90, "every line").await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    for table in &tables {
        assert_eq!(
            rows(&pg, table).await,
            (650, 650),
            "{table}: every line exactly once"
        );
    }
    let (count, distinct, low, high): (i64, i64, i64, i64) = pg
        .query_one(
            &format!(
                "SELECT count(*), count(DISTINCT trade_id), min(trade_id)::bigint, max(trade_id)::bigint FROM {trades}"
            ),
            &[],
        )
        .await
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
        .unwrap();
    assert!(count > 100, "the Coinbase pipeline wrote trades ({count})");
    assert_eq!(count, distinct, "no trade twice");
    assert_eq!(
        high - low + 1,
        count,
        "no trade missing between {low} and {high}"
    );

    // The run activities' heartbeats reach `fleet status`: the Coinbase pipeline's lag in trades.
    fleet
        .wait_status(30, "no lag in the Coinbase pipeline's heartbeat", |s| {
            s.lines().any(|l| {
                l.trim_start().starts_with("heartbeat: ")
                    && l.contains(", behind: BTC-USD ")
                    && l.ends_with(" trades")
            })
        })
        .await;
    let status = fleet.sluice(&["fleet", "status"], true);
    assert_eq!(
        status.lines().filter(|l| l.contains(" running ")).count(),
        6,
        "{status}"
    );
    for id in &ids {
        let out = fleet.sluice(&["undeploy", "--wait", id], false);
        assert!(out.contains("undeployed"), "{out}");
    }
    let _ = sim.kill();
    let _ = sim.wait();
    for table in tables.iter().chain([&trades]) {
        pg.batch_execute(&format!("DROP TABLE {table}"))
            .await
            .unwrap();
    }
}

/// Signals on a running pipeline: pause stops its writes (status says so), resume starts them
/// again, rewind sets its cursor safely (the run is stopped, the cursor set and recorded, the
/// run restarted from it); a rewind to another kind of position is refused and reported, and
/// the pipeline goes on. A short history limit makes the workflow continue as new, paused state
/// and all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signals_pause_resume_and_rewind_a_running_pipeline() {
    let Some((url, temporal)) = services() else {
        return;
    };
    let pg = connect(&url).await;
    let (mut fleet, input, id, table) = Fleet::one_file(&url, &temporal, "signals");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let metrics = format!("127.0.0.1:{port}");
    fleet.start_worker_with(4, &["--metrics-addr", &metrics]);
    fleet
        .deploy_one_file(&pg, &table, &["--history-limit", "40"])
        .await;
    let tables = [table.clone()];
    // The worker's /status shows the pipeline it runs, with its lease.
    let page: serde_json::Value = reqwest::get(format!("http://{metrics}/status"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let shown = &page["pipelines"][0];
    assert_eq!(shown["id"], id.as_str(), "{page}");
    assert!(shown["epoch"].as_u64().is_some_and(|e| e >= 1), "{page}");

    fleet.sluice(&["fleet", "pause", &id], false);
    fleet
        .wait_status(30, "never paused", |s| s.contains(" paused "))
        .await;
    // The store flag is read by the worker every second; a session stops within that.
    tokio::time::sleep(Duration::from_secs(5)).await;
    append(&input, 100..150);
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(rows(&pg, &table).await.0, 100, "paused: nothing written");

    fleet.sluice(&["fleet", "resume", &id], false);
    wait_rows(&pg, &tables, 150, 60, "after resume").await;
    // `sluice status` shows the fleet too, given Temporal and the config.
    let status = fleet.sluice(&["status"], true);
    assert!(
        status
            .lines()
            .any(|l| l.starts_with(id.as_str()) && l.contains(" running ")),
        "{status}"
    );

    // Rewind to the start: the file is read again (a keyless table shows it twice).
    fleet.sluice(
        &["fleet", "rewind", &id, input.to_str().unwrap(), "0"],
        false,
    );
    wait_rows(&pg, &tables, 300, 60, "after the rewind").await;
    let shown = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["checkpoints", "show", &id, "--config"])
        .arg(&fleet.config)
        .output()
        .unwrap();
    let shown = String::from_utf8_lossy(&shown.stdout);
    assert!(shown.contains("-> 0 by"), "the rewind is recorded: {shown}");

    // A text position where an integer is: refused, reported, the pipeline goes on.
    fleet.sluice(
        &["fleet", "rewind", &id, input.to_str().unwrap(), "abc"],
        false,
    );
    fleet
        .wait_status(30, "refusal not reported", |s| {
            s.contains("not the same kind")
        })
        .await;
    append(&input, 150..160);
    wait_rows(&pg, &tables, 310, 60, "after a refused rewind").await;
    // Pause and resume until the history passes its limit: the workflow continues as new.
    for _ in 0..6 {
        fleet.sluice(&["fleet", "pause", &id], false);
        tokio::time::sleep(Duration::from_millis(500)).await;
        fleet.sluice(&["fleet", "resume", &id], false);
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    // The run is stopped first (its cancel reaches it with a heartbeat), then the workflow
    // continues as new and starts it again.
    fleet
        .wait_status(60, "never continued as new", |status| {
            let generation: u32 = status
                .split_whitespace()
                .find_map(|w| w.strip_prefix("gen="))
                .and_then(|g| g.parse().ok())
                .unwrap_or_default();
            generation >= 1 && status.contains(" running ")
        })
        .await;
    append(&input, 160..170);
    wait_rows(&pg, &tables, 320, 60, "after continue-as-new").await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(rows(&pg, &table).await.0, 320, "nothing lost or doubled");

    fleet.undeploy_and_drop(&pg, &id, &table).await;
}

/// The store's pause flag is the one control: `sluice pause|resume` (no Temporal) set it as
/// the signals do, and a new run of the workflow (a deploy, a continue-as-new) leaves it as it
/// is. Before, each run wrote its own idea (not paused) over it: a pipeline paused in the
/// store ran again on deploy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pause_made_in_the_store_holds_through_a_deploy() {
    let Some((url, temporal)) = services() else {
        return;
    };
    let pg = connect(&url).await;
    let (mut fleet, _input, id, table) = Fleet::one_file(&url, &temporal, "storepause");
    let config = fleet.config.clone();
    let operator = |verb: &str| {
        let output = Command::new(env!("CARGO_BIN_EXE_sluice"))
            .args([verb, &id, "--config"])
            .arg(&config)
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "sluice {verb}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    };
    operator("pause");
    fleet.start_worker(4);
    fleet.sluice(&["deploy"], true);
    fleet
        .wait_status(30, "not shown paused", |s| s.contains(" paused "))
        .await;
    // Past the worker's one-second look at the flags and a session's start.
    tokio::time::sleep(Duration::from_secs(6)).await;
    assert_eq!(
        rows(&pg, &table).await.0,
        0,
        "paused in the store before the deploy: nothing written"
    );
    operator("resume");
    wait_rows(
        &pg,
        std::slice::from_ref(&table),
        100,
        60,
        "after sluice resume",
    )
    .await;
    fleet
        .wait_status(30, "not shown running", |s| s.contains(" running "))
        .await;
    fleet.undeploy_and_drop(&pg, &id, &table).await;
}

/// A fatal pipeline error (the followed file truncated under its cursor) is not retried: the
/// workflow fails with the pipeline's message, and fleet status shows it failed, and why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fatal_error_fails_the_workflow_with_its_message() {
    let Some((url, temporal)) = services() else {
        return;
    };
    let pg = connect(&url).await;
    let (mut fleet, input, id, table) = Fleet::one_file(&url, &temporal, "fatal");
    fleet.start_worker(4);
    fleet.deploy_one_file(&pg, &table, &[]).await;
    std::fs::write(&input, "").unwrap();
    fleet
        .wait_status(60, "the workflow did not fail with the message", |s| {
            s.lines()
                .any(|l| l.starts_with(id.as_str()) && l.contains(" failed "))
                && s.contains("shorter than its saved cursor")
        })
        .await;
    let status = fleet.sluice(&["fleet", "status"], true);
    assert!(
        !status.contains("attempt 2"),
        "a fatal error is not retried: {status}"
    );
    pg.batch_execute(&format!("DROP TABLE {table}"))
        .await
        .unwrap();
}

/// A TCP proxy to `upstream` that the test cuts: the connections through it are dropped and
/// new ones refused, as a network split would (the processes on both sides go on).
struct CutProxy {
    addr: String,
    cut: tokio_util::sync::CancellationToken,
}

impl CutProxy {
    async fn start(upstream: &str) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let cut = tokio_util::sync::CancellationToken::new();
        let (token, upstream) = (cut.clone(), upstream.to_owned());
        tokio::spawn(async move {
            loop {
                // Returning drops the listener: connections are refused from then on.
                let mut inbound = tokio::select! {
                    accepted = listener.accept() => match accepted {
                        Ok((inbound, _)) => inbound,
                        Err(_) => return,
                    },
                    () = token.cancelled() => return,
                };
                let (token, upstream) = (token.clone(), upstream.clone());
                tokio::spawn(async move {
                    let Ok(mut outbound) = tokio::net::TcpStream::connect(&upstream).await else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                        () = token.cancelled() => {}
                    }
                });
            }
        });
        Self { addr, cut }
    }
}

/// A worker cut off from Temporal but not from Postgres (a network split): Temporal gives its
/// pipeline to another worker after the heartbeat timeout (10 s), and the cut-off worker, which
/// has heard nothing from Temporal for as long, stops the run (drained, saved, lease released)
/// so that the other takes the lease and goes on, every line once. Before, the cut-off worker
/// kept the pipeline and renewed its lease, and the retried run waited for as long as the cut.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_cut_off_from_temporal_hands_its_pipeline_over() {
    let Some((url, temporal)) = services() else {
        return;
    };
    let pg = connect(&url).await;
    let (mut fleet, input, id, table) = Fleet::one_file(&url, &temporal, "cutoff");
    let proxy = CutProxy::start(&temporal).await;
    fleet.start_worker_via(&proxy.addr, 4, &[]);
    fleet.deploy_one_file(&pg, &table, &[]).await;
    let tables = [table.clone()];
    let ids = [id.clone()];
    assert_eq!(fleet.holders(&pg, &ids).await, [0]);
    fleet.start_worker(4);
    proxy.cut.cancel();
    append(&input, 100..150);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let held = fleet.holders(&pg, &ids).await;
        if held == [1] {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the pipeline stayed with the cut-off worker: held by {held:?}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    wait_rows(&pg, &tables, 150, 60, "after the handover").await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(rows(&pg, &table).await, (150, 150), "every line once");
    fleet.undeploy_and_drop(&pg, &id, &table).await;
}

/// A rewind signalled while the worker running the pipeline is frozen: the cancelled run never
/// answers (it times out), which must not fail the workflow. The cursor is set once the frozen
/// worker's lease has expired, the run starts again on the other worker from it, and the frozen
/// worker, woken, is fenced: the file is in the table exactly twice (once before the rewind,
/// once after), then the new lines once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rewind_while_the_running_worker_is_frozen_goes_through_on_another() {
    let Some((url, temporal)) = services() else {
        return;
    };
    let pg = connect(&url).await;
    let (mut fleet, input, id, table) = Fleet::one_file(&url, &temporal, "frozen");
    fleet.start_worker(2);
    fleet.deploy_one_file(&pg, &table, &[]).await;
    let tables = [table.clone()];
    fleet.start_worker(2);
    let ids = [id.clone()];
    let running = fleet.holders(&pg, &ids).await;
    assert_eq!(running, [0], "the first worker runs it");

    fleet.signal(0, "-STOP");
    fleet.sluice(
        &["fleet", "rewind", &id, input.to_str().unwrap(), "0"],
        false,
    );
    wait_rows(
        &pg,
        &tables,
        200,
        120,
        "the rewound run on the other worker",
    )
    .await;
    assert_eq!(fleet.holders(&pg, &ids).await, [1]);
    fleet.signal(0, "-CONT");
    append(&input, 100..110);
    wait_rows(&pg, &tables, 210, 60, "the new lines").await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        rows(&pg, &table).await,
        (210, 110),
        "each line twice up to the rewind, the new ones once"
    );
    let status = fleet.sluice(&["fleet", "status"], true);
    assert!(
        status.contains(" running ") && status.contains("rewinds=1"),
        "the workflow lives on: {status}"
    );
    fleet.undeploy_and_drop(&pg, &id, &table).await;
}
