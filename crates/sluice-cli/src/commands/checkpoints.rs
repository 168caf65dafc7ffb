//! `sluice checkpoints show|reset|set` (a pipeline's saved cursors) and `sluice pause|resume`
//! (its pause flag, which the running process follows).

use std::process::ExitCode;

use crate::{
    cli::{CheckpointArgs, SetCheckpointArgs},
    config::Config,
};

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
    if sluice_stores::sqlite::paused(&conn)?.contains(pipeline) {
        println!("# paused (`sluice resume {pipeline}`)");
    }
    for (partition, from, to, by, at_ms) in
        sluice_stores::sqlite::checkpoint_changes(&conn, pipeline)?
    {
        let at = chrono_like(at_ms);
        let from = from.as_deref().unwrap_or("(none)");
        println!("# set {partition}: {from} -> {to} by {by} at {at}");
    }
    Ok(ExitCode::SUCCESS)
}

/// Sets one cursor; refused while another process holds the pipeline's lease.
pub(crate) fn set(args: &SetCheckpointArgs) -> anyhow::Result<ExitCode> {
    let db = store_of(&args.target)?;
    let mut conn = db.lock();
    let pipeline = &args.target.pipeline;
    if let Some(holder) = sluice_stores::sqlite::live_holder(&conn, pipeline)? {
        anyhow::bail!(
            "pipeline {pipeline} is running ({holder}); stop it before setting its cursor"
        );
    }
    // JSON (`1234`, `"text"`, `["v", 7]`), else the word as text.
    let position: sluice::Position = serde_json::from_str(&args.position)
        .or_else(|_| serde_json::from_value(serde_json::Value::String(args.position.clone())))
        .map_err(|e| anyhow::anyhow!("position {:?}: {e}", args.position))?;
    // A cursor keeps its kind: positions order by kind first, so a text cursor where an
    // integer was would never move again (every later save looks older).
    let current = sluice_stores::sqlite::load_checkpoints(&conn, pipeline)?;
    if let Some(old) = current.get(args.partition.as_str())
        && std::mem::discriminant(old) != std::mem::discriminant(&position)
    {
        anyhow::bail!(
            "partition {} holds {old}; {position} is not the same kind of position (an integer, a text or a list)",
            args.partition
        );
    }
    let before = sluice_stores::sqlite::set_checkpoint(
        &mut conn,
        pipeline,
        &args.partition,
        &position,
        &operator(),
    )?;
    let from = before.map_or_else(|| "(none)".to_owned(), |p| p.to_string());
    println!("{pipeline} {}: {from} -> {position}", args.partition);
    Ok(ExitCode::SUCCESS)
}

/// Sets or clears the pause flag of a pipeline.
pub(crate) fn pause(args: &CheckpointArgs, paused: bool) -> anyhow::Result<ExitCode> {
    let db = store_of(args)?;
    let conn = db.lock();
    sluice_stores::sqlite::set_paused(&conn, &args.pipeline, paused, &operator())?;
    let running = sluice_stores::sqlite::live_holder(&conn, &args.pipeline)?;
    let what = if paused { "paused" } else { "resumed" };
    match running {
        Some(holder) => println!(
            "{}: {what} (the running process, {holder}, follows within a second)",
            args.pipeline
        ),
        None => println!(
            "{}: {what} (not running now; applies when it starts)",
            args.pipeline
        ),
    }
    Ok(ExitCode::SUCCESS)
}

/// Who made a change: `$USER@host`.
fn operator() -> String {
    let user = std::env::var("USER").unwrap_or_else(|_| "unknown".into());
    format!("{user}@{}", sluice::default_holder())
}

/// Milliseconds since the epoch as RFC 3339 UTC (seconds).
fn chrono_like(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms).map_or_else(
        || ms.to_string(),
        |t| t.format("%Y-%m-%dT%H:%M:%SZ").to_string(),
    )
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
                "checkpoints show/reset/set and pause/resume work on a SQLite store; for a postgres store, query table sluice_checkpoints in its database"
            );
            config.store_path.clone()
        }
        None => args.db.clone(),
    };
    Ok(sluice_stores::sqlite::SqliteDb::open(&path)?)
}
