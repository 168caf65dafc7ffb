//! `sluice audit`: proves a destination holds what the provider holds. `coinbase`: every trade
//! up to the saved cursors, REST asked about every id missing. `--config FILE PIPELINE` of a
//! `postgres_cdc` pipeline: the change log folded into current state and compared with the
//! source tables. Exit 0 when complete, 1 when something is missing, extra or stale, 2 on a
//! usage error.

use std::process::ExitCode;

use anyhow::Context as _;
use sluice::Sink;
use sluice_connectors::coinbase::{
    CoinbaseConfig, PIPELINE_ID, ProductAudit, Trade, audit_product, trades_table,
};
use sluice_sinks::sqlite::SqliteSink;

use crate::cli::AuditArgs;

/// Runs the audit.
pub(crate) async fn audit(args: AuditArgs) -> anyhow::Result<ExitCode> {
    if let Some(path) = &args.config {
        return audit_pipeline(path, &args).await;
    }
    if args.target == "supabase" {
        // The built-in `sluice run supabase`: its configuration from the same environment.
        let source = sluice_connectors::supabase::SupabaseConfig::from_env()
            .map_err(|e| anyhow::anyhow!("sluice audit supabase: {e}"))?;
        anyhow::ensure!(
            args.db.exists(),
            "{}: no such file (give the pipeline's --db)",
            args.db.display()
        );
        return audit_supabase(&source, &args.db, "supabase_rows", &args).await;
    }
    anyhow::ensure!(
        args.target == "coinbase",
        "sluice audit: give `coinbase` or `supabase`, or --config FILE and a pipeline (got {:?})",
        args.target
    );
    anyhow::ensure!(
        args.db.exists(),
        "{}: no such file (give the pipeline's --db)",
        args.db.display()
    );
    let db = sluice_stores::sqlite::SqliteDb::open(&args.db)?;
    let rest_url = args
        .rest_url
        .clone()
        .unwrap_or_else(|| CoinbaseConfig::default().rest_url);
    let mut audits = audit_coinbase(&db, &rest_url, &args).await?;
    if args.repair && audits.iter().any(|a| !a.found.is_empty()) {
        let found: Vec<Trade> = audits.iter_mut().flat_map(|a| a.found.drain(..)).collect();
        // The pipeline's own sink and table: an upsert by (product_id, trade_id), so a trade
        // the pipeline writes meanwhile converges. The cursors are not touched: they are at or
        // past these ids already.
        let mut sink = SqliteSink::new(db.clone(), trades_table())?;
        Sink::<Trade>::prepare(&mut sink).await?;
        for batch in found.chunks(10_000) {
            Sink::<Trade>::write(&mut sink, batch, None).await?;
        }
        if !args.json {
            eprintln!("repaired: {} trades written; auditing again…", found.len());
        }
        audits = audit_coinbase(&db, &rest_url, &args).await?;
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&audits)?);
    } else {
        print_table(&audits);
    }
    Ok(if audits.iter().all(ProductAudit::complete) {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// Audits every product of the built-in Coinbase pipeline's file.
async fn audit_coinbase(
    db: &sluice_stores::sqlite::SqliteDb,
    rest_url: &str,
    args: &AuditArgs,
) -> anyhow::Result<Vec<ProductAudit>> {
    let table = trades_table().table;
    let (cursors, ids) = {
        let conn = db.lock();
        let cursors = sluice_stores::sqlite::load_checkpoints(&conn, PIPELINE_ID)?;
        let mut ids: std::collections::BTreeMap<String, Vec<u64>> = Default::default();
        let mut stmt = conn
            .prepare(&format!(
                "SELECT product_id, trade_id FROM \"{table}\" ORDER BY product_id, trade_id"
            ))
            .with_context(|| format!("{}: no table {table}", args.db.display()))?;
        let rows = stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))?;
        for row in rows {
            let (product, id) = row?;
            ids.entry(product).or_default().push(id as u64);
        }
        (cursors, ids)
    };
    let mut products: Vec<String> = cursors.keys().map(|p| p.to_string()).collect();
    products.sort();
    let progress = Progress::new(products.len() as u64, args.json);
    let mut audits = Vec::new();
    for product in &products {
        let cursor = cursors
            .get(product.as_str())
            .and_then(sluice::Position::as_int);
        let stored = ids.get(product).map(Vec::as_slice).unwrap_or_default();
        progress.step(&format!("{product} ({} trades stored)", stored.len()));
        audits.push(audit_product(rest_url, product, stored, cursor, args.repair).await?);
    }
    progress.done();
    for audit in &audits {
        for (id, reason) in &audit.unreadable {
            tracing::warn!(product = %audit.product, trade_id = id, reason = %reason, "audit: a REST trade of a hole cannot be a record");
        }
    }
    Ok(audits)
}

/// The progress of a long audit on stderr: a bar on a terminal, a line per step elsewhere,
/// nothing with `--json`.
struct Progress {
    bar: Option<indicatif::ProgressBar>,
    quiet: bool,
}

impl Progress {
    fn new(steps: u64, json: bool) -> Self {
        use std::io::IsTerminal as _;
        let bar = (!json && std::io::stderr().is_terminal()).then(|| {
            let bar = indicatif::ProgressBar::new(steps);
            if let Ok(style) = indicatif::ProgressStyle::with_template(
                "auditing [{bar:30}] {pos}/{len} {elapsed} {wide_msg}",
            ) {
                bar.set_style(style.progress_chars("=> "));
            }
            bar
        });
        Self { bar, quiet: json }
    }

    /// A step begins.
    fn step(&self, what: &str) {
        match &self.bar {
            Some(bar) => {
                bar.set_message(what.to_owned());
                bar.inc(1);
            }
            None if !self.quiet => eprintln!("auditing {what}…"),
            None => {}
        }
    }

    fn done(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}

fn print_table(audits: &[ProductAudit]) {
    println!(
        "{:<12} {:>12} {:>12} {:>10} {:>10} {:>10}  verdict",
        "product", "from", "cursor", "stored", "holes", "gaps"
    );
    for a in audits {
        let show = |v: Option<u64>| v.map_or_else(|| "-".to_owned(), |v| v.to_string());
        let verdict = if a.complete() {
            "complete".to_owned()
        } else {
            let ranges: Vec<String> = a
                .holes
                .iter()
                .take(5)
                .map(|(f, t)| {
                    if f == t {
                        f.to_string()
                    } else {
                        format!("{f}-{t}")
                    }
                })
                .collect();
            format!("MISSING {}", ranges.join(", "))
        };
        println!(
            "{:<12} {:>12} {:>12} {:>10} {:>10} {:>10}  {verdict}",
            a.product,
            show(a.first),
            show(a.cursor),
            a.stored,
            a.hole_ids,
            a.provider_gaps
        );
    }
}

/// Audits pipeline `args.target` of the config at `path` (postgres_cdc into SQLite tables).
async fn audit_pipeline(path: &std::path::Path, args: &AuditArgs) -> anyhow::Result<ExitCode> {
    use sluice_connectors::postgres_cdc::{StoredChange, audit_table, fold};

    use crate::{
        config::{Config, SinkSpec},
        registry::RawSource,
    };

    let config = Config::load(path, &args.db)?;
    let spec = config.pipelines.get(&args.target).ok_or_else(|| {
        anyhow::anyhow!("{}: no pipeline named {:?}", path.display(), args.target)
    })?;
    let source = match &spec.source {
        RawSource::PostgresCdc(source) => source,
        RawSource::HttpPoll(source) => return audit_http(&config, spec, source, args).await,
        RawSource::Supabase(source) => {
            let state = sluice_connectors::supabase::STATE_RESOURCE;
            let resource = spec.resources.iter().find(|r| r.name == state);
            let Some((SinkSpec::Sqlite { path }, Some(schema))) =
                resource.and_then(|r| Some((config.sinks.get(&r.sink)?, &r.schema)))
            else {
                anyhow::bail!(
                    "sluice audit: pipeline {} has no `{state}` resource in a SQLite table: the audit compares the current-state rows (current_state = true)",
                    args.target
                );
            };
            let mut source = source.clone();
            source
                .resolve_key()
                .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
            return audit_supabase(&source, path, &schema.table, args).await;
        }
        _ => anyhow::bail!(
            "sluice audit: pipeline {} is not postgres_cdc, supabase or http_poll; those (and coinbase) can be audited so far",
            args.target
        ),
    };
    // Every change the pipeline's SQLite tables hold, by source table, in commit order.
    let mut changes: std::collections::BTreeMap<(String, String), Vec<StoredChange>> =
        Default::default();
    for resource in &spec.resources {
        let (Some(SinkSpec::Sqlite { path }), Some(schema)) =
            (config.sinks.get(&resource.sink), &resource.schema)
        else {
            continue;
        };
        let db = sluice_stores::sqlite::SqliteDb::open(path)?;
        let conn = db.lock();
        let sql = format!(
            "SELECT op, key, row, old_key, unchanged_toast, schema, \"table\" FROM \"{}\" ORDER BY lsn, seq",
            schema.table.replace('"', "\"\"")
        );
        let mut stmt = conn.prepare(&sql).with_context(|| {
            format!(
                "{}: table {} is not a change log",
                path.display(),
                schema.table
            )
        })?;
        let rows = stmt.query_map([], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, Option<String>>(2)?,
                r.get::<_, Option<String>>(3)?,
                r.get::<_, Option<String>>(4)?,
                r.get::<_, String>(5)?,
                r.get::<_, String>(6)?,
            ))
        })?;
        let json = |text: &str| serde_json::from_str::<serde_json::Value>(text);
        for row in rows {
            let (op, key, row, old_key, toast, schema, table) = row?;
            let unchanged_toast = toast
                .as_deref()
                .map(json)
                .transpose()?
                .and_then(|v| serde_json::from_value::<Vec<String>>(v).ok())
                .unwrap_or_default();
            changes
                .entry((schema, table))
                .or_default()
                .push(StoredChange {
                    op,
                    key: json(&key)?,
                    row: row.as_deref().map(json).transpose()?,
                    old_key: old_key.as_deref().map(json).transpose()?,
                    unchanged_toast,
                });
        }
    }
    // The configured tables too: one the destination holds nothing of is all missing.
    for table in &source.tables {
        let (schema, table) = table.split_once('.').unwrap_or(("public", table));
        changes
            .entry((schema.to_owned(), table.to_owned()))
            .or_default();
    }
    let mut audits = Vec::new();
    let progress = Progress::new(changes.len() as u64, args.json);
    for ((schema, table), stored) in changes {
        progress.step(&format!(
            "{schema}.{table} ({} changes stored)",
            stored.len()
        ));
        let state = fold(stored);
        audits.push(audit_table(source, &schema, &table, &state).await?);
    }
    progress.done();
    report_tables(&audits, args.json)
}

/// Prints table audits (a table, or `--json`); exit 1 unless every one is complete.
fn report_tables(
    audits: &[sluice_connectors::change::TableAudit],
    json: bool,
) -> anyhow::Result<ExitCode> {
    if json {
        println!("{}", serde_json::to_string_pretty(&audits)?);
    } else {
        println!(
            "{:<32} {:>10} {:>12} {:>8} {:>8} {:>8}  verdict",
            "table", "source", "destination", "missing", "extra", "stale"
        );
        for a in audits {
            let verdict = if a.complete() { "complete" } else { "DIFFERS" };
            println!(
                "{:<32} {:>10} {:>12} {:>8} {:>8} {:>8}  {verdict}",
                a.table,
                a.source_rows,
                a.destination_rows,
                a.missing.len(),
                a.extra.len(),
                a.stale.len()
            );
        }
    }
    Ok(if audits.iter().all(|a| a.complete()) {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// Audits a Supabase pipeline: each table read through PostgREST against its current-state
/// rows in SQLite table `table` of `path`.
async fn audit_supabase(
    source: &sluice_connectors::supabase::SupabaseConfig,
    path: &std::path::Path,
    table: &str,
    args: &AuditArgs,
) -> anyhow::Result<ExitCode> {
    use sluice_connectors::supabase::{StoredRow, audit_table, key_text};

    let rows = sqlite_rows(path, table)?;
    let mut audits = Vec::new();
    let progress = Progress::new(source.tables.len() as u64, args.json);
    for name in &source.tables {
        let stored: std::collections::BTreeMap<String, StoredRow> = rows
            .iter()
            .filter(|r| r["schema"] == source.schema.as_str() && r["table"] == name.as_str())
            .filter_map(|r| {
                let key: serde_json::Value = serde_json::from_str(r["key"].as_str()?).ok()?;
                let (pk, value) = key.as_object()?.iter().next()?;
                let stored = StoredRow {
                    version: r["version"].as_str()?.to_owned(),
                    deleted: r["deleted"].as_i64() == Some(1),
                };
                Some((key_text(pk, value), stored))
            })
            .collect();
        progress.step(&format!(
            "{}.{name} ({} rows stored)",
            source.schema,
            stored.len()
        ));
        audits.push(audit_table(source, name, &stored).await?);
    }
    progress.done();
    report_tables(&audits, args.json)
}

/// Every row of SQLite table `table` in `path`, as JSON objects by column name.
fn sqlite_rows(path: &std::path::Path, table: &str) -> anyhow::Result<Vec<serde_json::Value>> {
    use rusqlite::types::ValueRef;
    let db = sluice_stores::sqlite::SqliteDb::open(path)?;
    let conn = db.lock();
    let mut stmt = conn
        .prepare(&format!("SELECT * FROM \"{}\"", table.replace('"', "\"\"")))
        .with_context(|| format!("{}: no table {table}", path.display()))?;
    let names: Vec<String> = stmt.column_names().iter().map(|n| n.to_string()).collect();
    let mut rows = stmt.query([])?;
    let mut out = Vec::new();
    while let Some(row) = rows.next()? {
        let mut object = serde_json::Map::new();
        for (i, name) in names.iter().enumerate() {
            let value = match row.get_ref(i)? {
                ValueRef::Null => serde_json::Value::Null,
                ValueRef::Integer(n) => n.into(),
                ValueRef::Real(f) => serde_json::Number::from_f64(f)
                    .map_or(serde_json::Value::Null, serde_json::Value::Number),
                ValueRef::Text(t) => String::from_utf8_lossy(t).into_owned().into(),
                ValueRef::Blob(_) => serde_json::Value::Null,
            };
            object.insert(name.clone(), value);
        }
        out.push(serde_json::Value::Object(object));
    }
    Ok(out)
}

/// Audits each stream of an http_poll pipeline whose resource goes to a SQLite table: the API
/// read again over the window (`--from`, or from the start) against the table's rows.
async fn audit_http(
    config: &crate::config::Config,
    spec: &crate::config::PipelineSpec,
    source: &sluice_connectors::http_poll::HttpPollConfig,
    args: &AuditArgs,
) -> anyhow::Result<ExitCode> {
    use sluice_connectors::http_poll::{StreamAudit, audit_stream};

    use crate::config::SinkSpec;

    let mut audits: Vec<StreamAudit> = Vec::new();
    let progress = Progress::new(source.streams.len() as u64, args.json);
    for stream in &source.streams {
        let Some(resource) = spec.resources.iter().find(|r| r.name == stream.name) else {
            continue;
        };
        let (Some(SinkSpec::Sqlite { path }), Some(schema)) =
            (config.sinks.get(&resource.sink), &resource.schema)
        else {
            eprintln!("{}: not written to a SQLite table; skipped", stream.name);
            continue;
        };
        let rows = sqlite_rows(path, &schema.table)?;
        progress.step(&format!("{} ({} rows stored)", stream.name, rows.len()));
        audits.push(audit_stream(source, &stream.name, args.from.as_deref(), &rows).await?);
    }
    progress.done();
    if args.json {
        println!("{}", serde_json::to_string_pretty(&audits)?);
    } else {
        println!(
            "{:<20} {:>24} {:>8} {:>12} {:>8} {:>8} {:>8}  verdict",
            "stream", "from", "api", "destination", "missing", "stale", "extra"
        );
        for a in &audits {
            let verdict = if a.complete() { "complete" } else { "DIFFERS" };
            println!(
                "{:<20} {:>24} {:>8} {:>12} {:>8} {:>8} {:>8}  {verdict}",
                a.stream,
                a.from.as_deref().unwrap_or("(start)"),
                a.api_records,
                a.destination_records,
                a.missing.len(),
                a.stale.len(),
                a.extra.len()
            );
        }
    }
    Ok(if audits.iter().all(StreamAudit::complete) {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}
