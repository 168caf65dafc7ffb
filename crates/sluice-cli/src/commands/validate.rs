//! `sluice validate`: everything `run` would refuse for a configuration reason, refused here.

use std::process::ExitCode;

use crate::{cli::ConfigArgs, config::Config};

/// Loads and checks the file; prints the pipelines.
pub(crate) fn validate(args: &ConfigArgs) -> anyhow::Result<ExitCode> {
    let config = Config::load(&args.config, &args.db)?;
    let ids: Vec<_> = config.pipeline_ids().collect();
    println!(
        "{}: ok ({} pipeline(s): {})",
        args.config.display(),
        ids.len(),
        ids.join(", ")
    );
    Ok(ExitCode::SUCCESS)
}
