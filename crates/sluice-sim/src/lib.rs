//! Simulated internet services, on loopback, following `reference/protocols.md` to the letter:
//! what sluice's tests, benchmarks and `sluice demo` connect to instead of the internet.
//!
//! - [`coinbase`]: the Coinbase Exchange websocket feed (`matches`, `heartbeat`) and REST trades
//!   endpoint, with deterministic trades and every fault knob of protocols.md §1.14.

pub mod coinbase;
