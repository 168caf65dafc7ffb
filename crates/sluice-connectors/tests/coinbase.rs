//! The Coinbase source against the simulated exchange: each fault knob alone, all together,
//! restarts, and configuration errors. Every test ends by comparing what was stored with the
//! simulator's trade log: nothing missing, nothing twice.

use std::{
    collections::{BTreeMap, BTreeSet},
    sync::Arc,
    time::Duration,
};

use serde_json::Value;
use sluice::{
    BackoffPolicy, BatchLimits, ErrorClass, MemoryStore, Pipeline, PipelineExit, PipelineOptions,
    PipelineStats, Resource, Resources, testing::RecordingSink,
};
use sluice_connectors::coinbase::{
    CoinbaseConfig, CoinbaseRecord, CoinbaseSource, CoinbaseStats, HOLES_RESOURCE, OnUnfillable,
    PIPELINE_ID, RESOURCE,
};
use sluice_sim::coinbase::{Chaos, CoinbaseSim, CoinbaseSimConfig, RestWindow};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

struct Running {
    sink: RecordingSink<CoinbaseRecord>,
    holes: RecordingSink<CoinbaseRecord>,
    dead: RecordingSink<sluice::DeadLetter>,
    stats: Arc<CoinbaseStats>,
    pipeline: Arc<PipelineStats>,
    shutdown: CancellationToken,
    handle: JoinHandle<Result<PipelineExit, sluice::PipelineError>>,
}

fn source_config(sim: &CoinbaseSim) -> CoinbaseConfig {
    CoinbaseConfig {
        ws_url: sim.ws_url(),
        rest_url: sim.rest_url(),
        products: sim.products().to_vec(),
        gap_grace_ms: 100,
        idle_timeout_ms: 1_500,
        ..CoinbaseConfig::default()
    }
}

/// The connector's own defaults (grace, idle timeout, hole policy), pointed at the simulator.
fn default_config(sim: &CoinbaseSim) -> CoinbaseConfig {
    CoinbaseConfig {
        ws_url: sim.ws_url(),
        rest_url: sim.rest_url(),
        products: sim.products().to_vec(),
        ..CoinbaseConfig::default()
    }
}

/// Logs to the test's output (shown when it fails): what the source did and why.
fn logs() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "sluice=info,sluice_connectors=info".into()),
        )
        .with_test_writer()
        .try_init();
}

fn start(
    config: CoinbaseConfig,
    store: Arc<MemoryStore>,
    sink: RecordingSink<CoinbaseRecord>,
) -> Running {
    logs();
    let source = CoinbaseSource::new(config).unwrap();
    let stats = source.stats();
    let dead = RecordingSink::new();
    let holes = RecordingSink::new();
    let limits = BatchLimits {
        max_records: 500,
        max_bytes: usize::MAX,
        linger: Duration::from_millis(20),
    };
    let quick = BackoffPolicy {
        initial: Duration::from_millis(20),
        max: Duration::from_millis(300),
        multiplier: 2.0,
        stable_after: Duration::from_secs(2),
    };
    let pipeline = Pipeline::new(
        PIPELINE_ID,
        source,
        store,
        Resources::new()
            .with(RESOURCE, Resource::direct("trades"))
            .with(HOLES_RESOURCE, Resource::direct("holes")),
    )
    .sink("trades", sink.clone(), limits)
    .sink("holes", holes.clone(), limits)
    .dead_letters(dead.clone(), limits)
    .options(PipelineOptions {
        reconnect: quick,
        retry: quick,
        holder: "test".into(),
        commit_interval: Duration::from_millis(20),
        ..PipelineOptions::default()
    });
    let pipeline_stats = pipeline.stats();
    let shutdown = CancellationToken::new();
    let handle = tokio::spawn(pipeline.run(shutdown.clone()));
    Running {
        sink,
        holes,
        dead,
        stats,
        pipeline: pipeline_stats,
        shutdown,
        handle,
    }
}

async fn sim(rate: f64, chaos: Chaos) -> CoinbaseSim {
    CoinbaseSim::start(CoinbaseSimConfig {
        rate,
        chaos,
        heartbeat: Duration::from_millis(250),
        seed: 42,
        ..CoinbaseSimConfig::default()
    })
    .await
    .unwrap()
}

fn count(counter: &std::sync::atomic::AtomicU64) -> u64 {
    counter.load(std::sync::atomic::Ordering::Relaxed)
}

fn ids_by_product(rows: &[Value]) -> BTreeMap<String, Vec<u64>> {
    let mut by: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    for row in rows {
        by.entry(row["product_id"].as_str().unwrap().to_owned())
            .or_default()
            .push(row["trade_id"].as_u64().unwrap());
    }
    by
}

/// Waits until every generated trade of every product is stored (or the timeout), then checks
/// nothing is missing and nothing is stored twice.
async fn verify(sim: &CoinbaseSim, running: &Running, timeout: Duration) {
    sim.set_rate(0.0);
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let stored = ids_by_product(&running.sink.json());
        let complete = sim.products().iter().all(|p| {
            let last = *sim.trade_range(p).unwrap().end();
            stored
                .get(p)
                .and_then(|ids| ids.iter().max())
                .is_some_and(|max| *max >= last)
        });
        if complete || tokio::time::Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let stored = ids_by_product(&running.sink.json());
    for product in sim.products() {
        let range = sim.trade_range(product).unwrap();
        let ids = stored.get(product).cloned().unwrap_or_default();
        let unique: BTreeSet<u64> = ids.iter().copied().collect();
        assert_eq!(unique.len(), ids.len(), "{product}: duplicates stored");
        let missing: Vec<u64> = range.clone().filter(|id| !unique.contains(id)).collect();
        assert!(
            missing.is_empty(),
            "{product}: {} of {} trades missing, first {:?}",
            missing.len(),
            range.clone().count(),
            &missing[..missing.len().min(10)]
        );
        let first = sim.trade(product, *range.start()).unwrap();
        let row = running
            .sink
            .json()
            .into_iter()
            .find(|r| r["trade_id"] == first.trade_id && r["product_id"] == *product)
            .unwrap();
        assert_eq!(
            row["price"].as_str().unwrap(),
            sluice_connectors::coinbase::normalize_decimal(&first.price()).unwrap()
        );
        assert_eq!(row["time"].as_str().unwrap(), first.time());
    }
}

async fn stop(running: Running) -> Result<PipelineExit, sluice::PipelineError> {
    running.shutdown.cancel();
    running.handle.await.unwrap()
}

/// Waits until the pipeline's starting point is saved (from the first heartbeat), so that every
/// trade generated afterwards is expected.
async fn wait_started(sim: &CoinbaseSim, store: &MemoryStore) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while store.snapshot(PIPELINE_ID).len() < sim.products().len() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the pipeline never started"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn run_with(chaos: Chaos, seconds: u64) -> (CoinbaseSim, Running) {
    let sim = sim(0.0, chaos).await;
    let store = Arc::new(MemoryStore::new());
    let running = start(source_config(&sim), store.clone(), RecordingSink::new());
    wait_started(&sim, &store).await;
    sim.set_rate(400.0);
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    verify(&sim, &running, Duration::from_secs(20)).await;
    (sim, running)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clean_feed_is_stored_whole() {
    let (_sim, running) = run_with(Chaos::default(), 2).await;
    assert_eq!(count(&running.stats.gaps_backfilled), 0);
    assert_eq!(stop(running).await.unwrap(), PipelineExit::Stopped);
}

/// Each product's lag is the newest trade the feed named minus the durable cursor: it grows
/// while the sink fails and is back to 0 once everything is written. The oracle is the
/// simulator's trade log and the store's cursor, not the source's counters.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lag_counts_the_trades_not_yet_durable() {
    let sim = sim(0.0, Chaos::default()).await;
    let store = Arc::new(MemoryStore::new());
    let sink = RecordingSink::new();
    let running = start(source_config(&sim), store.clone(), sink.clone());
    wait_started(&sim, &store).await;
    // About ten seconds of failed writes (the retry backoff tops out at 300 ms).
    sink.fail_next(40, ErrorClass::Transient);
    sim.set_rate(200.0);
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    sim.set_rate(0.0);
    // Once a heartbeat has named the last trade, lag = last trade - durable cursor, per product.
    let expected = || -> Vec<(String, Option<u64>)> {
        let saved = store.snapshot(PIPELINE_ID);
        sim.products()
            .iter()
            .map(|p| {
                let last = *sim.trade_range(p).unwrap().end();
                let cursor = saved.get(p.as_str()).and_then(sluice::Position::as_int);
                (p.clone(), cursor.map(|c| last - c))
            })
            .collect()
    };
    let reported = || -> Vec<(String, Option<u64>)> {
        let cursors = running.pipeline.cursors();
        sim.products()
            .iter()
            .map(|p| {
                let lag = cursors
                    .iter()
                    .find(|c| c.partition == *p)
                    .and_then(|c| c.lag);
                if let Some(lag) = lag {
                    assert_eq!(lag.unit, "trades");
                }
                (p.clone(), lag.map(|l| l.behind))
            })
            .collect()
    };
    sluice::testing::eventually_with(
        Duration::from_secs(3),
        || reported() == expected(),
        || format!("lag {:?}, expected {:?}", reported(), expected()),
    )
    .await;
    let behind = reported();
    assert!(
        behind.iter().all(|(_, lag)| lag.is_some_and(|n| n > 50)),
        "writes fail: the lag must show the trades not yet durable, got {behind:?}"
    );
    sluice::testing::eventually("lag back to 0", Duration::from_secs(30), || {
        reported().iter().all(|(_, lag)| *lag == Some(0))
    })
    .await;
    verify(&sim, &running, Duration::from_secs(10)).await;
    stop(running).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
/// One trade in twenty dropped at 400 a second is twenty gaps a second, and Coinbase allows ten
/// REST requests a second (the simulator enforces it as the service does, with 429s): the
/// backfill must keep within the limit and still store everything.
async fn dropped_matches_are_backfilled_within_the_rest_rate_limit() {
    let (sim, running) = run_with(
        Chaos {
            drop: 0.05,
            ..Chaos::default()
        },
        3,
    )
    .await;
    assert!(count(&running.stats.trades_rest) > 0);
    assert_eq!(
        count(&sim.counters().rest_rate_limited),
        0,
        "REST requests over the public rate limit"
    );
    stop(running).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicates_and_reordered_matches_are_stored_once_in_order() {
    let (_sim, running) = run_with(
        Chaos {
            duplicate: 0.05,
            reorder: 0.05,
            ..Chaos::default()
        },
        3,
    )
    .await;
    assert!(count(&running.stats.duplicates) > 0);
    for ids in ids_by_product(&running.sink.json()).values() {
        assert!(
            ids.windows(2).all(|w| w[0] < w[1]),
            "trades stored out of order"
        );
    }
    stop(running).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_feed_is_reopened_by_the_watchdog() {
    let (_sim, running) = run_with(
        Chaos {
            stall_every: Some(Duration::from_millis(700)),
            ..Chaos::default()
        },
        4,
    )
    .await;
    assert!(running.pipeline.snapshot().reconnects > 0);
    stop(running).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abrupt_closes_reconnect_without_loss() {
    let (_sim, running) = run_with(
        Chaos {
            close_every: Some(Duration::from_millis(600)),
            ..Chaos::default()
        },
        3,
    )
    .await;
    assert!(running.pipeline.snapshot().reconnects >= 1);
    stop(running).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn error_frames_reconnect_without_loss() {
    let (_sim, running) = run_with(
        Chaos {
            error_every: Some(Duration::from_millis(600)),
            ..Chaos::default()
        },
        3,
    )
    .await;
    assert!(running.pipeline.snapshot().reconnects >= 1);
    stop(running).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn throttled_upgrades_are_retried_with_backoff() {
    // Every second connection attempt is refused with HTTP 429; frequent closes force enough
    // reconnects that refusals certainly happen (the assertion below checks they did).
    let chaos = Chaos {
        throttle: 0.5,
        close_every: Some(Duration::from_millis(250)),
        ..Chaos::default()
    };
    let (sim, running) = run_with(chaos, 3).await;
    assert!(
        count(&sim.counters().throttled) > 0,
        "upgrades were refused: {} connections, {} closes, {} sessions",
        count(&sim.counters().connections),
        count(&sim.counters().closes),
        count(&running.stats.sessions),
    );
    stop(running).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_types_are_ignored_and_counted() {
    let (_sim, running) = run_with(
        Chaos {
            unknown: 0.05,
            ..Chaos::default()
        },
        2,
    )
    .await;
    assert!(count(&running.stats.unknown) > 0);
    assert!(
        running.dead.rows().is_empty(),
        "unknown types are not poison"
    );
    stop(running).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_frames_are_dead_lettered_and_the_connection_stays_up() {
    let (_sim, running) = run_with(
        Chaos {
            malformed: 0.05,
            ..Chaos::default()
        },
        2,
    )
    .await;
    let dead = running.dead.rows();
    assert!(!dead.is_empty());
    assert!(dead.iter().all(|d| d.resource == RESOURCE
        && (d.reason.contains("not JSON") || d.reason.contains("without a valid"))));
    assert_eq!(
        running.pipeline.snapshot().reconnects,
        0,
        "poison does not reconnect"
    );
    stop(running).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rest_throttling_and_server_errors_are_retried() {
    let (sim, running) = run_with(
        Chaos {
            drop: 0.05,
            rest_429: 0.3,
            rest_500: 0.2,
            ..Chaos::default()
        },
        3,
    )
    .await;
    assert!(
        count(&sim.counters().rest_throttled) > 0,
        "429s were served"
    );
    assert!(count(&sim.counters().rest_errors) > 0, "500s were served");
    stop(running).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_fault_at_once_loses_nothing() {
    let chaos = Chaos {
        drop: 0.02,
        duplicate: 0.02,
        reorder: 0.02,
        unknown: 0.01,
        malformed: 0.01,
        stall_every: Some(Duration::from_secs(3)),
        close_every: Some(Duration::from_millis(1500)),
        error_every: Some(Duration::from_secs(2)),
        throttle: 0.2,
        rest_429: 0.2,
        rest_500: 0.1,
        rest_page_cap: Some(100),
        rest_lag: Duration::from_millis(300),
        rest_delay: Duration::from_millis(20),
        ..Chaos::default()
    };
    let (_sim, running) = run_with(chaos, 6).await;
    assert_eq!(
        count(&running.stats.unfilled),
        0,
        "REST lagging is not a hole"
    );
    stop(running).await.unwrap();
}

/// A restart resumes from the saved cursors and backfills what traded while it was down.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_backfills_what_traded_while_down() {
    let sim = sim(0.0, Chaos::default()).await;
    let store = Arc::new(MemoryStore::new());
    let sink = RecordingSink::new();
    let first = start(source_config(&sim), store.clone(), sink.clone());
    wait_started(&sim, &store).await;
    sim.set_rate(300.0);
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop(first).await.unwrap();
    let saved = store.snapshot(PIPELINE_ID);
    assert_eq!(saved.len(), 2, "one cursor per product: {saved:?}");
    tokio::time::sleep(Duration::from_secs(1)).await; // trades while down
    let second = start(source_config(&sim), store.clone(), sink.clone());
    tokio::time::sleep(Duration::from_millis(500)).await;
    verify(&sim, &second, Duration::from_secs(20)).await;
    assert!(
        count(&second.stats.trades_rest) > 0,
        "the downtime was backfilled"
    );
    stop(second).await.unwrap();
}

/// Unknown and delisted products are configuration errors: the pipeline stops at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_or_delisted_product_stops_the_pipeline_with_a_clear_error() {
    let sim = sim(10.0, Chaos::default()).await;
    for (product, expected) in [
        ("BTC-USDX", "BTC-USDX is not a valid product"),
        ("LOOM-USDC", "LOOM-USDC is delisted"),
    ] {
        let config = CoinbaseConfig {
            products: vec![product.into()],
            ..source_config(&sim)
        };
        let running = start(config, Arc::new(MemoryStore::new()), RecordingSink::new());
        let error = tokio::time::timeout(Duration::from_secs(10), running.handle)
            .await
            .unwrap()
            .unwrap()
            .unwrap_err();
        assert_eq!(error.class(), ErrorClass::Fatal);
        assert!(
            sluice::report(&error).contains(expected),
            "{}",
            sluice::report(&error)
        );
        assert_eq!(count(&running.stats.sessions), 1, "no reconnect loop");
    }
}

/// The REST shapes protocols.md allows at their harshest: pages capped at 100 (older docs), REST
/// lagging the socket, slow pages, and either end of a large window served first. A restart
/// after downtime leaves a gap of thousands of ids; with the connector's default grace and
/// timeouts every one of them is stored, and the simulator shows the pages were short.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn short_lagging_rest_pages_fill_large_gaps_whole() {
    for window in [RestWindow::NewestBelowAfter, RestWindow::OldestAboveBefore] {
        let chaos = Chaos {
            drop: 0.02,
            rest_page_cap: Some(100),
            rest_lag: Duration::from_millis(800),
            rest_delay: Duration::from_millis(30),
            rest_window: window,
            ..Chaos::default()
        };
        let sim = sim(0.0, chaos).await;
        let store = Arc::new(MemoryStore::new());
        let sink = RecordingSink::new();
        let first = start(default_config(&sim), store.clone(), sink.clone());
        wait_started(&sim, &store).await;
        sim.set_rate(400.0);
        tokio::time::sleep(Duration::from_secs(2)).await;
        stop(first).await.unwrap();
        // Thousands of trades while down: the gap is many pages long. REST catches up with
        // them before the restart, so its newest trade lies above the first chunk of the gap
        // and below the socket's first trade (the lag): the gap is filled chunk by chunk under
        // a head that has not reached its top.
        sim.burst(3_000);
        tokio::time::sleep(Duration::from_secs(1)).await;
        let second = start(default_config(&sim), store.clone(), sink.clone());
        tokio::time::sleep(Duration::from_secs(2)).await;
        verify(&sim, &second, Duration::from_secs(60)).await;
        assert!(
            count(&sim.counters().rest_capped) > 10,
            "{window:?}: pages were capped"
        );
        assert_eq!(
            count(&second.stats.unfilled),
            0,
            "{window:?}: no hole reported"
        );
        assert!(second.holes.json().is_empty());
        stop(second).await.unwrap();
    }
}

/// REST answering 429 for 8 s with the default 5 s idle timeout: the backfill waits it out
/// without the watchdog reopening the session, and the gap is filled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_throttled_backfill_is_not_silence() {
    let sim = sim(0.0, Chaos::default()).await;
    let store = Arc::new(MemoryStore::new());
    let running = start(default_config(&sim), store.clone(), RecordingSink::new());
    wait_started(&sim, &store).await;
    sim.set_rate(100.0);
    tokio::time::sleep(Duration::from_millis(500)).await;
    sim.throttle_rest_for(Duration::from_secs(8));
    sim.set_chaos(Chaos {
        drop: 0.05,
        ..Chaos::default()
    });
    tokio::time::sleep(Duration::from_secs(2)).await;
    sim.set_chaos(Chaos::default());
    verify(&sim, &running, Duration::from_secs(30)).await;
    assert!(
        count(&sim.counters().rest_throttled) > 0,
        "REST was throttled"
    );
    assert!(count(&running.stats.gaps_backfilled) > 0);
    assert_eq!(
        count(&running.stats.sessions),
        1,
        "the watchdog never reopened the session"
    );
    assert_eq!(running.pipeline.snapshot().reconnects, 0);
    stop(running).await.unwrap();
}

/// Restarts a pipeline after `missed` trades per product traded while REST keeps only the
/// newest `kept`: the oldest of them can be neither read nor backfilled.
async fn restart_past_retention(
    policy: OnUnfillable,
    missed: u64,
    kept: u64,
    chaos: Chaos,
) -> (CoinbaseSim, Arc<MemoryStore>, Running, sluice::Checkpoints) {
    let sim = CoinbaseSim::start(CoinbaseSimConfig {
        rate: 0.0,
        chaos,
        heartbeat: Duration::from_millis(250),
        seed: 7,
        rest_retention: Some(kept),
        ..CoinbaseSimConfig::default()
    })
    .await
    .unwrap();
    let store = Arc::new(MemoryStore::new());
    let config = CoinbaseConfig {
        on_unfillable: policy,
        ..default_config(&sim)
    };
    let first = start(config.clone(), store.clone(), RecordingSink::new());
    wait_started(&sim, &store).await;
    sim.burst(20);
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop(first).await.unwrap();
    let before = store.snapshot(PIPELINE_ID);
    sim.burst(missed * sim.products().len() as u64);
    let running = start(config, store.clone(), RecordingSink::new());
    (sim, store, running, before)
}

/// Trades REST no longer serves are a hole: by default the cursor is held before it, the hole
/// is counted and the pipeline is not ready — nothing after the hole is saved as complete.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hole_holds_the_cursor_and_the_pipeline_is_not_ready() {
    let (sim, store, running, before) =
        restart_past_retention(OnUnfillable::Hold, 600, 200, Chaos::default()).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while running.pipeline.snapshot().held < 2 {
        assert!(tokio::time::Instant::now() < deadline, "never held");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    sim.burst(20);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let snapshot = running.pipeline.snapshot();
    assert!(!snapshot.ready(), "held at a hole: not ready");
    assert_eq!(
        store.snapshot(PIPELINE_ID),
        before,
        "cursors held before the hole"
    );
    assert!(running.sink.json().is_empty(), "nothing past the hole");
    assert!(count(&running.stats.unfilled) >= 2 * 200);
    assert!(running.holes.json().is_empty());
    stop(running).await.unwrap();
}

/// With `on_unfillable = "skip"` the cursor moves past the hole, the hole is written to the
/// holes resource (product, from, to, seen_at), and every trade after it is stored — also when
/// the server answers a window with its oldest end, capped and clamped by retention (an empty
/// page there is not proof that nothing exists).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_skipped_hole_is_recorded_and_everything_after_it_stored() {
    let harsh = Chaos {
        rest_page_cap: Some(100),
        rest_window: RestWindow::OldestAboveBefore,
        ..Chaos::default()
    };
    for chaos in [Chaos::default(), harsh] {
        skipped_hole(chaos).await;
    }
}

async fn skipped_hole(chaos: Chaos) {
    let (sim, _store, running, before) =
        restart_past_retention(OnUnfillable::Skip, 600, 200, chaos.clone()).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let stored = ids_by_product(&running.sink.json());
        let complete = sim.products().iter().all(|p| {
            stored
                .get(p)
                .and_then(|ids| ids.iter().max())
                .is_some_and(|max| max == sim.trade_range(p).unwrap().end())
        });
        if complete {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "never caught up");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let holes = running.holes.json();
    let stored = ids_by_product(&running.sink.json());
    for product in sim.products() {
        let saved = before
            .get(product.as_str())
            .and_then(sluice::Position::as_int)
            .unwrap();
        let end = *sim.trade_range(product).unwrap().end();
        let hole: Vec<&Value> = holes
            .iter()
            .filter(|h| h["product_id"] == *product)
            .collect();
        assert_eq!(
            hole.len(),
            1,
            "{chaos:?} {product}: one hole recorded: {holes:?}"
        );
        let (from, to) = (
            hole[0]["from_id"].as_u64().unwrap(),
            hole[0]["to_id"].as_u64().unwrap(),
        );
        assert_eq!(
            from,
            saved + 1,
            "{product}: the hole starts after the cursor"
        );
        assert_eq!(
            to,
            end - 200,
            "{chaos:?} {product}: the hole ends where REST's retention (200) begins"
        );
        assert!(hole[0]["seen_at"].as_str().unwrap().ends_with('Z'));
        // Everything after the hole is stored, once.
        let ids: BTreeSet<u64> = stored[product].iter().copied().collect();
        assert_eq!(ids.len(), stored[product].len(), "{product}: duplicates");
        assert_eq!(
            ids,
            (to + 1..=end).collect::<BTreeSet<u64>>(),
            "{chaos:?} {product}"
        );
    }
    stop(running).await.unwrap();
}

/// A load-balanced REST whose second replica lags: one answer shows trades the next does not.
/// With `on_unfillable = "skip"` nothing may be declared a hole from a replica that has not
/// caught up: every trade is stored and no hole recorded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lagging_rest_replica_never_makes_a_hole() {
    let chaos = Chaos {
        drop: 0.05,
        rest_replica_lag: Some(Duration::from_millis(1500)),
        ..Chaos::default()
    };
    let sim = sim(0.0, chaos).await;
    let store = Arc::new(MemoryStore::new());
    let config = CoinbaseConfig {
        on_unfillable: OnUnfillable::Skip,
        ..default_config(&sim)
    };
    let running = start(config, store.clone(), RecordingSink::new());
    wait_started(&sim, &store).await;
    sim.set_rate(400.0);
    tokio::time::sleep(Duration::from_secs(4)).await;
    verify(&sim, &running, Duration::from_secs(30)).await;
    assert_eq!(count(&running.stats.unfilled), 0, "no false hole");
    assert!(running.holes.json().is_empty());
    stop(running).await.unwrap();
}
