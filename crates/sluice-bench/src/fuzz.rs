//! `sluice-bench fuzz [N]`: every network decoder (`sluice_connectors::fuzz`) over N cases
//! (default 1,000,000) — half arbitrary bytes, half mutated valid inputs — counting inputs that
//! decoded, inputs rejected as bad data, and panics (which must be 0). Deterministic: the same
//! seed every run.

use std::{panic, time::Instant};

use sluice_connectors::fuzz::{mutate, seeds, targets};

pub(crate) fn main(cases: Option<String>) {
    let cases: u64 = cases.and_then(|n| n.parse().ok()).unwrap_or(1_000_000);
    // A panic is counted, not printed a million times.
    panic::set_hook(Box::new(|_| {}));
    println!("| target | cases | decoded | rejected | panics | seconds |");
    println!("|---|---|---|---|---|---|");
    let mut total_panics = 0;
    for (name, decode) in targets() {
        let seeds = seeds(name);
        let mut rng = fastrand::Rng::with_seed(0x5eed_f022);
        let (mut decoded, mut rejected, mut panics) = (0u64, 0u64, 0u64);
        let started = Instant::now();
        for case in 0..cases {
            let input = if case % 2 == 0 {
                let len = rng.usize(0..512);
                (0..len).map(|_| rng.u8(..)).collect::<Vec<u8>>()
            } else {
                let seed = &seeds[rng.usize(0..seeds.len())];
                mutate(seed, &mut |n| rng.usize(0..n.max(1)))
            };
            match panic::catch_unwind(|| decode(&input)) {
                Ok(Ok(())) => decoded += 1,
                Ok(Err(_)) => rejected += 1,
                Err(_) => panics += 1,
            }
        }
        total_panics += panics;
        println!(
            "| {name} | {cases} | {decoded} | {rejected} | {panics} | {:.1} |",
            started.elapsed().as_secs_f64()
        );
    }
    if total_panics > 0 {
        eprintln!("{total_panics} panics");
        std::process::exit(1);
    }
}
