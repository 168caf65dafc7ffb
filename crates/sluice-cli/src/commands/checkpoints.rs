//! `sluice checkpoints show|reset`: a pipeline's saved cursors.

use std::process::ExitCode;

use crate::{cli::CheckpointArgs, config::Config};

/// Prints the cursors (and the holder, while the pipeline runs).
pub(crate) fn show(args: &CheckpointArgs) -> anyhow::Result<ExitCode> {
    let db = store_of(args)?;
    let conn = db.lock();
    let pipeline = &args.pipeline;
    let cursors = sluice_stores::sqlite::load_checkpoints(&conn, pipeline)?;
    if let Some(holder) = sluice_stores::sqlite::live_holder(&conn, pipeline)? {
        println!("# running: {holder}");
    }
    if cursors.is_empty() {
        println!("# {pipeline}: no saved cursor (the next run starts from the beginning)");
    }
    for (partition, position) in cursors {
        println!("{partition}\t{position}");
    }
    Ok(ExitCode::SUCCESS)
}

/// Deletes the cursors; refused while another process runs the pipeline.
pub(crate) fn reset(args: &CheckpointArgs) -> anyhow::Result<ExitCode> {
    let db = store_of(args)?;
    let conn = db.lock();
    let pipeline = &args.pipeline;
    if let Some(holder) = sluice_stores::sqlite::live_holder(&conn, pipeline)? {
        anyhow::bail!(
            "pipeline {pipeline} is running ({holder}); stop it before resetting its cursors"
        );
    }
    let deleted = sluice_stores::sqlite::reset_checkpoints(&conn, pipeline)?;
    println!("{pipeline}: {deleted} cursor(s) deleted");
    Ok(ExitCode::SUCCESS)
}

/// The store of a pipeline: the config's, or --db.
fn store_of(args: &CheckpointArgs) -> anyhow::Result<sluice_stores::sqlite::SqliteDb> {
    let path = match &args.config {
        Some(config) => {
            let config = Config::load(config, &args.db)?;
            config.select(std::slice::from_ref(&args.pipeline))?;
            anyhow::ensure!(
                config.store_url.is_none(),
                "checkpoints show/reset work on a SQLite store; for a postgres store, query table sluice_checkpoints in its database"
            );
            config.store_path.clone()
        }
        None => args.db.clone(),
    };
    Ok(sluice_stores::sqlite::SqliteDb::open(&path)?)
}
