//! Every decoder that reads bytes from the network, over arbitrary and mutated inputs: it
//! decodes or reports bad input, and never panics. (`sluice-bench fuzz` runs the same targets
//! for a million cases each; counts in BENCHMARKS.md.)

use proptest::prelude::*;
use sluice_connectors::fuzz::{Target, mutate, seeds, targets};

fn target(name: &str) -> Target {
    targets()
        .into_iter()
        .find(|(n, _)| *n == name)
        .map(|(_, t)| t)
        .unwrap_or_else(|| panic!("no target {name}"))
}

/// A mutation of one of the target's seeds, from proptest's choices.
fn mutated(name: &'static str) -> impl Strategy<Value = Vec<u8>> {
    (
        any::<prop::sample::Index>(),
        prop::collection::vec(any::<usize>(), 16),
    )
        .prop_map(move |(which, choices)| {
            let seeds = seeds(name);
            let seed = which.get(&seeds);
            let mut next = choices.into_iter().cycle();
            mutate(seed, &mut |n| next.next().unwrap_or(0) % n.max(1))
        })
}

fn inputs(name: &'static str) -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![prop::collection::vec(any::<u8>(), 0..512), mutated(name),]
}

#[test]
fn every_target_has_seeds_that_decode() {
    assert_eq!(targets().len(), 5);
    for (name, decode) in targets() {
        let seeds = seeds(name);
        assert!(!seeds.is_empty(), "{name}");
        for seed in seeds {
            assert_eq!(
                decode(&seed),
                Ok(()),
                "{name}: {}",
                String::from_utf8_lossy(&seed)
            );
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2_000, ..ProptestConfig::default() })]

    #[test]
    fn coinbase_frames_never_panic(input in inputs("coinbase_frame")) {
        let _ = target("coinbase_frame")(&input);
    }

    #[test]
    fn coinbase_rest_pages_never_panic(input in inputs("coinbase_rest_page")) {
        let _ = target("coinbase_rest_page")(&input);
    }

    #[test]
    fn phoenix_frames_never_panic(input in inputs("phoenix_frame")) {
        let _ = target("phoenix_frame")(&input);
    }

    #[test]
    fn postgrest_pages_never_panic(input in inputs("postgrest_page")) {
        let _ = target("postgrest_page")(&input);
    }

    #[test]
    fn pgoutput_messages_never_panic(input in inputs("pgoutput_message")) {
        let _ = target("pgoutput_message")(&input);
    }
}
