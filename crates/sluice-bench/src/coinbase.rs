//! Workload `coinbase` (issue 3).
//!
//! A replay server (in this process) serves N pre-rendered `match` frames of one product
//! (BTC-USD, consecutive trade ids, rendered by `sluice-sim`) after the subscribe handshake,
//! as fast as the client reads, then a heartbeat per second.
//!
//! - **ceiling, socket**: a bare reader (tokio-tungstenite, one thread) reads the frames and
//!   parses each with serde_json into a borrowing struct, then discards it.
//! - **ceiling, SQLite**: the same trades inserted into the same table schema, 10,000 rows per
//!   transaction with the cursor upserted in it (WAL, `synchronous = FULL`).
//! - **ceiling, whole path**: a bare program doing both at once — the reader above hands each
//!   parsed row to a writer thread committing 10,000-row transactions with the cursor.
//! - **sluice**: the release `sluice run coinbase` process against the replay server, into a fresh
//!   SQLite file; the clock runs from the first frame sent to the saved cursor reaching the last
//!   trade id (polled every millisecond). Its peak RSS (VmHWM) is read before SIGTERM.
//! - **latency**: the server paces 50,000 frames at 10,000 trades/s; for each trade, the time from
//!   the server sending its frame to the first poll that sees the saved cursor at or past it
//!   (so latencies include up to 1 ms of polling granularity).
//!
//! Needs the release `sluice` binary next to this one: `cargo build --release -p sluice-cli -p
//! sluice-bench`.

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use futures_util::{SinkExt, StreamExt};
use serde::Deserialize;
use sluice_sim::coinbase::Trade;
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::Message;

const FIRST_ID: u64 = 1_000_000_000;

pub(crate) fn frames(n: u64) -> Arc<Vec<String>> {
    Arc::new(
        (0..n)
            .map(|i| Trade::generate(7, 0, "BTC-USD", FIRST_ID, FIRST_ID + i).frame("match"))
            .collect(),
    )
}

/// When each frame was sent (for latency), and when the first one was.
#[derive(Default)]
struct SendLog {
    first: Option<Instant>,
    sent: Vec<Instant>,
}

/// Serves one client: handshake, then the frames (paced at `rate`/s when given), then heartbeats.
async fn serve(
    listener: TcpListener,
    frames: Arc<Vec<String>>,
    rate: Option<f64>,
    log: Arc<Mutex<SendLog>>,
) {
    let Ok((stream, _)) = listener.accept().await else {
        return;
    };
    // Small frames, sent as they come: no Nagle delay waiting for the peer's delayed ACK.
    let _ = stream.set_nodelay(true);
    let Ok(mut ws) = tokio_tungstenite::accept_async(stream).await else {
        return;
    };
    let Some(Ok(Message::Text(_subscribe))) = ws.next().await else {
        return;
    };
    let reply = r#"{"type":"subscriptions","channels":[{"name":"matches","product_ids":["BTC-USD"]},{"name":"heartbeat","product_ids":["BTC-USD"]}]}"#;
    if ws.send(Message::Text(reply.into())).await.is_err() {
        return;
    }
    let started = Instant::now();
    log.lock().unwrap().first = Some(started);
    let mut last_beat = started;
    for (i, frame) in frames.iter().enumerate() {
        if let Some(rate) = rate {
            let due = started + Duration::from_secs_f64(i as f64 / rate);
            if due > Instant::now() {
                if ws.flush().await.is_err() {
                    return;
                }
                tokio::time::sleep_until(due.into()).await;
            }
            log.lock().unwrap().sent.push(Instant::now());
        }
        if ws.feed(Message::Text(frame.as_str().into())).await.is_err() {
            return;
        }
        if i % 256 == 255 && ws.flush().await.is_err() {
            return;
        }
        if last_beat.elapsed() >= Duration::from_secs(1) {
            last_beat = Instant::now();
            if ws
                .feed(Message::Text(heartbeat(FIRST_ID + i as u64).into()))
                .await
                .is_err()
            {
                return;
            }
        }
    }
    let last = FIRST_ID + frames.len() as u64 - 1;
    loop {
        if ws
            .send(Message::Text(heartbeat(last).into()))
            .await
            .is_err()
        {
            return;
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            message = ws.next() => if !matches!(message, Some(Ok(_))) { return },
        }
    }
}

fn heartbeat(last: u64) -> String {
    format!(
        r#"{{"type":"heartbeat","last_trade_id":{last},"product_id":"BTC-USD","sequence":1,"time":"2026-09-29T13:45:59.000412Z"}}"#
    )
}

#[derive(Deserialize)]
#[allow(dead_code)] // parsed to be measured, then discarded
struct Match<'a> {
    #[serde(rename = "type")]
    kind: &'a str,
    trade_id: u64,
    sequence: u64,
    maker_order_id: &'a str,
    taker_order_id: &'a str,
    time: &'a str,
    product_id: &'a str,
    size: &'a str,
    price: &'a str,
    side: &'a str,
}

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Starts the replay server on its own thread and connects a client subscribed to BTC-USD.
async fn connect_replay(
    frames: Arc<Vec<String>>,
) -> (Socket, Arc<Mutex<SendLog>>, std::thread::JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("ws://{}/", listener.local_addr().unwrap());
    let log = Arc::new(Mutex::new(SendLog::default()));
    let server = std::thread::spawn({
        let log = log.clone();
        move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(serve(listener, frames, None, log));
        }
    });
    let (mut ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
    ws.send(Message::Text(
        r#"{"type":"subscribe","product_ids":["BTC-USD"],"channels":["matches","heartbeat"]}"#
            .into(),
    ))
    .await
    .unwrap();
    (ws, log, server)
}

fn bare_reader(frames: Arc<Vec<String>>) -> Duration {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async move {
        let total = frames.len();
        let (mut ws, log, server) = connect_replay(frames).await;
        let mut seen = 0;
        while seen < total {
            if let Some(Ok(Message::Text(text))) = ws.next().await
                && let Ok(m) = serde_json::from_str::<Match<'_>>(&text)
            {
                std::hint::black_box(&m);
                seen += 1;
            }
        }
        let elapsed = log.lock().unwrap().first.unwrap().elapsed();
        drop(ws);
        drop(server);
        elapsed
    })
}

/// The trade columns the whole-path ceiling moves from the reader to the writer thread.
type Row = (
    String,
    u64,
    String,
    String,
    String,
    String,
    u64,
    String,
    String,
);

/// The whole-path ceiling: a bare program (no sluice) reading the replay over the websocket,
/// parsing each frame with serde into a borrowed struct, handing the row to a writer thread
/// that commits 10,000-row transactions with the cursor (same schema, WAL, `synchronous =
/// FULL`). The clock runs from the first frame sent to the last commit.
fn whole_path_ceiling(frames: Arc<Vec<String>>, dir: &Path) -> Duration {
    let path = dir.join("whole.db");
    let total = frames.len();
    let (tx, rx) = std::sync::mpsc::sync_channel::<Vec<Row>>(8);
    let writer = std::thread::spawn(move || {
        let conn = rusqlite::Connection::open(path).unwrap();
        conn.execute_batch(
            "PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL;
             CREATE TABLE coinbase_trades (product_id TEXT NOT NULL, trade_id INTEGER NOT NULL, price TEXT NOT NULL, size TEXT NOT NULL,
               side TEXT NOT NULL, time TEXT NOT NULL, sequence INTEGER, maker_order_id TEXT, taker_order_id TEXT, source TEXT NOT NULL,
               PRIMARY KEY (product_id, trade_id));
             CREATE TABLE cursor (pipeline TEXT, partition TEXT, position TEXT, PRIMARY KEY (pipeline, partition));",
        )
        .unwrap();
        let mut written = 0;
        while let Ok(chunk) = rx.recv() {
            let tx = conn.unchecked_transaction().unwrap();
            {
                let mut insert = tx.prepare_cached("INSERT INTO coinbase_trades VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, 'ws') ON CONFLICT DO NOTHING").unwrap();
                for r in &chunk {
                    insert
                        .execute(rusqlite::params![
                            r.0, r.1 as i64, r.2, r.3, r.4, r.5, r.6 as i64, r.7, r.8
                        ])
                        .unwrap();
                }
                let last = chunk.last().unwrap().1.to_string();
                tx.execute("INSERT INTO cursor VALUES ('p', 'BTC-USD', ?1) ON CONFLICT DO UPDATE SET position = excluded.position", [last]).unwrap();
            }
            tx.commit().unwrap();
            written += chunk.len();
        }
        (written, Instant::now())
    });
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let first = runtime.block_on(async move {
        let (mut ws, log, server) = connect_replay(frames).await;
        let mut seen = 0;
        let mut chunk = Vec::with_capacity(10_000);
        while seen < total {
            if let Some(Ok(Message::Text(text))) = ws.next().await
                && let Ok(m) = serde_json::from_str::<Match<'_>>(&text)
            {
                chunk.push((
                    m.product_id.to_owned(),
                    m.trade_id,
                    m.price.to_owned(),
                    m.size.to_owned(),
                    m.side.to_owned(),
                    m.time.to_owned(),
                    m.sequence,
                    m.maker_order_id.to_owned(),
                    m.taker_order_id.to_owned(),
                ));
                seen += 1;
                if chunk.len() == 10_000 {
                    tx.send(std::mem::replace(&mut chunk, Vec::with_capacity(10_000)))
                        .unwrap();
                }
            }
        }
        if !chunk.is_empty() {
            tx.send(chunk).unwrap();
        }
        drop(tx);
        let first = log.lock().unwrap().first.unwrap();
        drop(ws);
        drop(server);
        first
    });
    let (written, done) = writer.join().unwrap();
    assert_eq!(written, total);
    done - first
}

fn sqlite_ceiling(frames: &[String], dir: &Path) -> Duration {
    let conn = rusqlite::Connection::open(dir.join("ceiling.db")).unwrap();
    conn.execute_batch(
        "PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL;
         CREATE TABLE coinbase_trades (product_id TEXT NOT NULL, trade_id INTEGER NOT NULL, price TEXT NOT NULL, size TEXT NOT NULL,
           side TEXT NOT NULL, time TEXT NOT NULL, sequence INTEGER, maker_order_id TEXT, taker_order_id TEXT, source TEXT NOT NULL,
           PRIMARY KEY (product_id, trade_id));
         CREATE TABLE cursor (pipeline TEXT, partition TEXT, position TEXT, PRIMARY KEY (pipeline, partition));",
    )
    .unwrap();
    // Rendered before the clock starts: the ceiling is SQLite's, not string formatting's.
    let trades: Vec<_> = (0..frames.len() as u64)
        .map(|i| {
            let t = Trade::generate(7, 0, "BTC-USD", FIRST_ID, FIRST_ID + i);
            (t.price(), t.size(), t.time(), t)
        })
        .collect();
    let started = Instant::now();
    for chunk in trades.chunks(10_000) {
        let tx = conn.unchecked_transaction().unwrap();
        {
            let mut insert = tx.prepare_cached("INSERT INTO coinbase_trades VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, 'ws') ON CONFLICT DO NOTHING").unwrap();
            for (price, size, time, t) in chunk {
                insert
                    .execute(rusqlite::params![
                        t.product_id,
                        t.trade_id as i64,
                        price,
                        size,
                        t.side,
                        time,
                        t.sequence as i64,
                        t.maker_order_id,
                        t.taker_order_id
                    ])
                    .unwrap();
            }
            let last = chunk.last().unwrap().3.trade_id.to_string();
            tx.execute("INSERT INTO cursor VALUES ('p', 'BTC-USD', ?1) ON CONFLICT DO UPDATE SET position = excluded.position", [last]).unwrap();
        }
        tx.commit().unwrap();
    }
    started.elapsed()
}

fn sluice_binary() -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    let binary = exe.with_file_name("sluice");
    assert!(
        binary.exists(),
        "build the release sluice binary first: cargo build --release -p sluice-cli"
    );
    binary
}

fn cursor(conn: &rusqlite::Connection) -> Option<u64> {
    conn.query_row(
        "SELECT CAST(position AS INTEGER) FROM sluice_checkpoints WHERE partition = 'BTC-USD'",
        [],
        |r| r.get::<_, i64>(0),
    )
    .ok()
    .map(|p| p as u64)
}

fn peak_rss_kib(child: &Child) -> u64 {
    let status =
        std::fs::read_to_string(format!("/proc/{}/status", child.id())).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

pub(crate) struct SluiceRun {
    pub(crate) elapsed: Duration,
    latencies: Vec<Duration>,
    pub(crate) rss_kib: u64,
}

/// Runs `sluice run coinbase` against a replay server; returns when the cursor reaches the last id.
#[allow(clippy::disallowed_methods)] // a plain thread polling the database, no runtime on it
pub(crate) fn run_sluice(
    frames: Arc<Vec<String>>,
    rate: Option<f64>,
    dir: &Path,
    name: &str,
    extra: &[&str],
) -> SluiceRun {
    let db = dir.join(format!("{name}.db"));
    let total = frames.len() as u64;
    let last_id = FIRST_ID + total - 1;
    let log = Arc::new(Mutex::new(SendLog::default()));
    let server_runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let listener = server_runtime
        .block_on(TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let addr = listener.local_addr().unwrap();
    let server_log = log.clone();
    let server = std::thread::spawn(move || {
        server_runtime.block_on(serve(listener, frames, rate, server_log))
    });
    // SLUICE_BENCH_WRAP="perf record -g -o {name}.perf --" profiles the sluice process.
    let wrap = std::env::var("SLUICE_BENCH_WRAP")
        .unwrap_or_default()
        .replace("{name}", name);
    let mut words: Vec<String> = wrap.split_whitespace().map(str::to_owned).collect();
    words.push(sluice_binary().display().to_string());
    let mut child = Command::new(&words[0])
        .args(&words[1..])
        .args([
            "run",
            "coinbase",
            "--products",
            "BTC-USD",
            "--ws-url",
            &format!("ws://{addr}/"),
            "--rest-url",
            &format!("http://{addr}"),
            "--db",
            db.to_str().unwrap(),
        ])
        .args(extra)
        .env(
            "RUST_LOG",
            std::env::var("SLUICE_BENCH_LOG").unwrap_or_else(|_| "error".into()),
        )
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn sluice");
    let mut latencies = Vec::new();
    let mut covered = FIRST_ID - 1;
    let mut reader: Option<rusqlite::Connection> = None;
    let deadline = Instant::now() + Duration::from_secs(300);
    let elapsed = loop {
        std::thread::sleep(Duration::from_millis(1));
        let now = Instant::now();
        assert!(now < deadline, "sluice did not finish");
        if reader.is_none() && db.exists() {
            reader = rusqlite::Connection::open_with_flags(
                &db,
                rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
            )
            .ok();
        }
        let Some(position) = reader.as_ref().and_then(cursor) else {
            continue;
        };
        if rate.is_some() && position > covered {
            let log = log.lock().unwrap();
            for id in covered + 1..=position {
                if let Some(sent) = log.sent.get((id - FIRST_ID) as usize) {
                    latencies.push(now - *sent);
                }
            }
        }
        covered = covered.max(position);
        if position >= last_id {
            break now - log.lock().unwrap().first.expect("sending started");
        }
    };
    let rss_kib = peak_rss_kib(&child);
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let _ = child.wait();
    drop(server);
    SluiceRun {
        elapsed,
        latencies,
        rss_kib,
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 * p) as usize).min(sorted.len() - 1)]
}

pub(crate) fn main(arg: Option<String>) {
    let n: u64 = arg.and_then(|a| a.parse().ok()).unwrap_or(1_000_000);
    let dir = tempfile::tempdir().expect("tempdir");
    let frames = frames(n);
    let bytes: usize = frames.iter().map(String::len).sum();
    println!(
        "workload: {n} BTC-USD match frames ({:.0} bytes each), replayed over loopback websocket",
        bytes as f64 / n as f64
    );
    let reader = bare_reader(frames.clone());
    let sqlite = sqlite_ceiling(&frames, dir.path());
    let whole = whole_path_ceiling(frames.clone(), dir.path());
    let full = run_sluice(frames.clone(), None, dir.path(), "full", &[]);
    let rate = |d: Duration| n as f64 / d.as_secs_f64();
    let ceiling = rate(reader).min(rate(sqlite));
    println!(
        "bare websocket reader + parse : {:>10.0} trades/s",
        rate(reader)
    );
    println!(
        "bare SQLite insert + cursor   : {:>10.0} trades/s",
        rate(sqlite)
    );
    println!(
        "bare whole path (ws+parse -> writer thread -> SQLite): {:>10.0} trades/s",
        rate(whole)
    );
    println!(
        "sluice run coinbase -> SQLite : {:>10.0} trades/s  ({:.0}% of the socket ceiling, {:.0}% of the lower ceiling, {:.0}% of the whole-path ceiling)",
        rate(full.elapsed),
        100.0 * rate(full.elapsed) / rate(reader),
        100.0 * rate(full.elapsed) / ceiling,
        100.0 * rate(full.elapsed) / rate(whole)
    );
    println!(
        "sluice peak RSS (full speed)  : {:>10.1} MiB",
        full.rss_kib as f64 / 1024.0
    );
    let paced = run_sluice(
        Arc::new(frames[..50_000.min(frames.len())].to_vec()),
        Some(10_000.0),
        dir.path(),
        "paced",
        &[],
    );
    let mut latencies = paced.latencies;
    latencies.sort();
    if !latencies.is_empty() {
        println!(
            "latency at 10k trades/s       : p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms ({} trades; frame sent -> cursor durable)",
            percentile(&latencies, 0.5).as_secs_f64() * 1e3,
            percentile(&latencies, 0.99).as_secs_f64() * 1e3,
            latencies.last().unwrap().as_secs_f64() * 1e3,
            latencies.len()
        );
    }
    println!(
        "sluice peak RSS (10k/s)       : {:>10.1} MiB",
        paced.rss_kib as f64 / 1024.0
    );
}
