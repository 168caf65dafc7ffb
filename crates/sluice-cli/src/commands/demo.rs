//! Defines `sluice sim coinbase` and `sluice demo`: the simulator on its own, and the whole
//! Coinbase pipeline offline against it with faults, live progress and a final verification of
//! the stored trades against the simulator's trade log.

use std::{
    collections::BTreeSet,
    path::Path,
    process::ExitCode,
    sync::atomic::Ordering,
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use sluice::PipelineExit;
use sluice_connectors::coinbase::{self, CoinbaseConfig, CoinbaseStats, normalize_decimal};
use sluice_sim::coinbase::{CoinbaseSim, CoinbaseSimConfig};
use tokio_util::sync::CancellationToken;

use crate::{
    cli::DemoArgs,
    config::{Config, Databases},
    registry::AnySource,
};

use super::sim::chaos;

struct Verdict {
    generated: u64,
    stored: u64,
    missing: u64,
    duplicates: u64,
    mismatched: u64,
    extra: u64,
}

/// `sluice demo`.
pub(crate) async fn demo(args: DemoArgs) -> anyhow::Result<ExitCode> {
    let db = match args.db {
        Some(path) if path.exists() => {
            bail!("{} exists; the demo writes a fresh file", path.display())
        }
        Some(path) => path,
        None => {
            let dir = std::env::temp_dir().join(format!("sluice-demo-{}", std::process::id()));
            std::fs::create_dir_all(&dir)
                .with_context(|| format!("cannot create {}", dir.display()))?;
            dir.join("demo.db")
        }
    };
    let sim = CoinbaseSim::start(CoinbaseSimConfig {
        rate: 0.0,
        chaos: chaos(args.chaos),
        seed: 7,
        ..CoinbaseSimConfig::default()
    })
    .await
    .context("cannot start the simulator")?;
    println!(
        "sluice demo: simulated Coinbase at {} (chaos {:?}), {} trades/s for {} s",
        sim.ws_url(),
        args.chaos,
        args.rate,
        args.duration
    );
    println!(
        "             pipeline {} -> {}",
        coinbase::PIPELINE_ID,
        db.display()
    );

    let source = CoinbaseConfig {
        ws_url: sim.ws_url(),
        rest_url: sim.rest_url(),
        products: sim.products().to_vec(),
        ..CoinbaseConfig::default()
    };
    let config = Config::builtin_coinbase(source, &db, None)?;
    let databases = Databases::default();
    let pipeline = config.build(coinbase::PIPELINE_ID, &databases)?;
    let AnySource::Coinbase(source) = pipeline.source() else {
        unreachable!("the built-in coinbase pipeline")
    };
    let source_stats = source.stats();
    let stats = pipeline.stats();
    let shutdown = CancellationToken::new();
    let stop = shutdown.clone();
    super::run::spawn_signal_handler(stop.clone());
    let handle = tokio::spawn(pipeline.run(shutdown.clone()));
    let store = databases.open(&db)?;

    // Trading starts once the pipeline's starting point is saved: every generated trade counts.
    let started = Instant::now();
    while cursors(&store)? < sim.products().len() {
        if started.elapsed() > Duration::from_secs(60) || handle.is_finished() {
            stop.cancel();
            let outcome = handle.await?;
            bail!("the pipeline did not start: {outcome:?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    sim.set_rate(args.rate);
    let trading = Instant::now();
    let mut last_stored = 0;
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.tick().await;
    let mut caught_up_since: Option<Instant> = None;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.cancelled() => break,
        }
        let elapsed = trading.elapsed().as_secs();
        if elapsed >= args.duration {
            sim.set_rate(0.0);
        }
        let stored = stored_count(&store)?;
        let snapshot = stats.snapshot();
        let generated = sim.generated();
        println!(
            "{elapsed:>4}s  trades/s {:>6}  stored {:>8}  lag {:>6}  reconnects {:>3}  gaps backfilled {:>4} ({} trades via REST)  dead letters {}",
            stored.saturating_sub(last_stored),
            stored,
            generated.saturating_sub(stored),
            snapshot.reconnects,
            source_stats.gaps_backfilled.load(Ordering::Relaxed),
            source_stats.trades_rest.load(Ordering::Relaxed),
            snapshot.dead_letters,
        );
        last_stored = stored;
        if elapsed >= args.duration {
            if stored >= generated {
                // Caught up; one more second for late duplicates to show.
                if caught_up_since.get_or_insert_with(Instant::now).elapsed()
                    >= Duration::from_secs(1)
                {
                    break;
                }
            } else if elapsed >= args.duration + 90 {
                println!("the pipeline did not catch up within 90 s");
                break;
            }
        }
    }
    stop.cancel();
    let outcome = handle.await?;
    let verdict = verify(&sim, &store)?;
    print_summary(&sim, &source_stats, &verdict, &db);
    match outcome {
        Ok(PipelineExit::Stopped | PipelineExit::Completed) => {}
        Err(error) => {
            eprintln!("error: {}", sluice::report(&error));
            return Ok(ExitCode::from(1));
        }
    }
    let clean = verdict.missing == 0
        && verdict.duplicates == 0
        && verdict.mismatched == 0
        && verdict.extra == 0;
    Ok(if clean {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

fn cursors(store: &sluice_stores::sqlite::SqliteDb) -> anyhow::Result<usize> {
    Ok(sluice_stores::sqlite::load_checkpoints(&store.lock(), coinbase::PIPELINE_ID)?.len())
}

fn stored_count(store: &sluice_stores::sqlite::SqliteDb) -> anyhow::Result<u64> {
    let conn = store.lock();
    let count: i64 = conn
        .query_row("SELECT count(*) FROM coinbase_trades", [], |r| r.get(0))
        .unwrap_or(0);
    Ok(count as u64)
}

/// Compares every stored trade with the simulator's log.
fn verify(sim: &CoinbaseSim, store: &sluice_stores::sqlite::SqliteDb) -> anyhow::Result<Verdict> {
    let conn = store.lock();
    let mut verdict = Verdict {
        generated: sim.generated(),
        stored: 0,
        missing: 0,
        duplicates: 0,
        mismatched: 0,
        extra: 0,
    };
    let mut stmt = conn.prepare("SELECT trade_id, price, size, side, time FROM coinbase_trades WHERE product_id = ?1 ORDER BY trade_id")?;
    for product in sim.products() {
        let range = sim.trade_range(product).context("simulated product")?;
        let rows: Vec<(i64, String, String, String, String)> = stmt
            .query_map([product], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
            })?
            .collect::<Result<_, _>>()?;
        let mut seen = BTreeSet::new();
        for (id, price, size, side, time) in &rows {
            let id = *id as u64;
            if !seen.insert(id) {
                verdict.duplicates += 1;
                continue;
            }
            if !range.contains(&id) {
                verdict.extra += 1;
                continue;
            }
            let trade = sim.trade(product, id).context("simulated trade")?;
            let same = normalize_decimal(&trade.price()).as_deref() == Some(price.as_str())
                && normalize_decimal(&trade.size()).as_deref() == Some(size.as_str())
                && trade.side == side
                && trade.time() == *time;
            verdict.mismatched += u64::from(!same);
        }
        verdict.stored += rows.len() as u64;
        verdict.missing += range.filter(|id| !seen.contains(id)).count() as u64;
    }
    Ok(verdict)
}

fn print_summary(sim: &CoinbaseSim, source: &CoinbaseStats, verdict: &Verdict, db: &Path) {
    let c = sim.counters();
    let n = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
    println!();
    println!(
        "faults injected: {} dropped, {} duplicated, {} reordered, {} stalls, {} abrupt closes, {} error frames, {} throttled connects, {} REST failures",
        n(&c.dropped),
        n(&c.duplicated),
        n(&c.reordered),
        n(&c.stalls),
        n(&c.closes),
        n(&c.errors),
        n(&c.throttled),
        n(&c.rest_failed)
    );
    println!(
        "sluice handled:  {} duplicates skipped, {} gaps backfilled ({} trades via REST), {} unknown frames ignored, {} malformed frames dead-lettered, {} unfillable",
        n(&source.duplicates),
        n(&source.gaps_backfilled),
        n(&source.trades_rest),
        n(&source.unknown),
        n(&source.malformed),
        n(&source.unfilled)
    );
    println!(
        "verification:    generated {}, stored {}, missing {}, duplicates {}, mismatched {}, unexpected {}",
        verdict.generated,
        verdict.stored,
        verdict.missing,
        verdict.duplicates,
        verdict.mismatched,
        verdict.extra
    );
    println!(
        "{} missing, {} duplicates ({})",
        verdict.missing,
        verdict.duplicates,
        db.display()
    );
}
