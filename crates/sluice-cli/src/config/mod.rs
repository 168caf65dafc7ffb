//! The configuration in three steps: `raw` mirrors the TOML file; `resolve` checks it (every
//! error names the file, the key and what is wrong); `build` turns a checked pipeline into a
//! running one.

mod build;
mod raw;
mod resolve;

pub(crate) use build::Databases;
pub(crate) use resolve::{Config, PipelineSpec, SinkSpec, StoreChoice};
