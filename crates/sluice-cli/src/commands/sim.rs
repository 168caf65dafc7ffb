//! `sluice sim coinbase`: a simulated Coinbase Exchange on loopback, until SIGINT/SIGTERM.

use std::process::ExitCode;

use anyhow::Context;
use sluice_connectors::coinbase::CoinbaseConfig;
use sluice_sim::coinbase::{Chaos, CoinbaseSim, CoinbaseSimConfig};
use tokio_util::sync::CancellationToken;

use crate::cli::{ChaosLevel, SimArgs};

/// The simulator's faults for a chaos level (also the demo's).
pub(crate) fn chaos(level: ChaosLevel) -> Chaos {
    match level {
        ChaosLevel::Off => Chaos::default(),
        ChaosLevel::On => Chaos::all(),
    }
}

/// `sluice sim coinbase`: serves until SIGINT/SIGTERM.
pub(crate) async fn sim(args: SimArgs) -> anyhow::Result<ExitCode> {
    let products = CoinbaseConfig::parse_products(&args.products);
    let config = CoinbaseSimConfig {
        port: args.port,
        rate: args.rate,
        seed: args.seed,
        products,
        chaos: chaos(args.chaos),
        ..CoinbaseSimConfig::default()
    };
    let sim = CoinbaseSim::start(config)
        .await
        .context("cannot start the simulator")?;
    println!(
        "coinbase simulator (chaos {:?}, {} trades/s)",
        args.chaos, args.rate
    );
    println!("  websocket: {}", sim.ws_url());
    println!("  rest:      {}", sim.rest_url());
    println!(
        "try: sluice run coinbase --ws-url {} --rest-url {}",
        sim.ws_url(),
        sim.rest_url()
    );
    let shutdown = CancellationToken::new();
    super::run::spawn_signal_handler(shutdown.clone());
    shutdown.cancelled().await;
    sim.stop();
    println!("generated {} trades", sim.generated());
    Ok(ExitCode::SUCCESS)
}
