//! Defines the configuration in two phases: `raw` mirrors the TOML file; `resolve` checks it
//! (every error names the file, the key and what is wrong) and builds pipelines from it.

mod raw;
mod resolve;

pub(crate) use resolve::{Config, Databases};
