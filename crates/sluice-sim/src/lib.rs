//! Simulated internet services, on loopback, following `reference/protocols.md` to the letter:
//! what sluice's tests, benchmarks and `sluice demo` connect to instead of the internet.
//!
//! - [`coinbase`]: the Coinbase Exchange websocket feed (`matches`, `heartbeat`) and REST trades
//!   endpoint, with deterministic trades and every fault knob of protocols.md §1.14.
//! - [`supabase`]: Supabase Realtime (`postgres_changes` over Phoenix channels) and a PostgREST
//!   subset, driven by a real Postgres, with the fault knobs of protocols.md §2.13.
//! - [`http_api`]: a paginated REST API (Stripe-style keyset and GitHub-style pages + `Link`),
//!   with equal cursor values across pages, changes while a client pages, 429s and 500s.

pub mod coinbase;
pub mod http_api;
pub mod supabase;
