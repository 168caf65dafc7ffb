//! `sluice audit coinbase`: proves the destination holds every trade up to the saved cursors,
//! asking REST about every id it lacks. Exit 0 when complete, 1 when trades that exist are
//! missing (holes), 2 on a usage error.

use std::process::ExitCode;

use anyhow::Context as _;
use sluice_connectors::coinbase::{
    CoinbaseConfig, PIPELINE_ID, ProductAudit, audit_product, trades_table,
};

use crate::cli::AuditArgs;

/// Runs the audit of the built-in Coinbase pipeline's SQLite file.
pub(crate) async fn audit(args: AuditArgs) -> anyhow::Result<ExitCode> {
    anyhow::ensure!(
        args.target == "coinbase",
        "sluice audit: only `coinbase` can be audited so far (got {:?})",
        args.target
    );
    anyhow::ensure!(
        args.db.exists(),
        "{}: no such file (give the pipeline's --db)",
        args.db.display()
    );
    let db = sluice_stores::sqlite::SqliteDb::open(&args.db)?;
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
    let rest_url = args
        .rest_url
        .clone()
        .unwrap_or_else(|| CoinbaseConfig::default().rest_url);
    let mut products: Vec<String> = cursors.keys().map(|p| p.to_string()).collect();
    products.sort();
    let mut audits = Vec::new();
    for product in &products {
        let cursor = cursors
            .get(product.as_str())
            .and_then(sluice::Position::as_int);
        let stored = ids.get(product).map(Vec::as_slice).unwrap_or_default();
        if !args.json {
            eprintln!("auditing {product} ({} trades stored)…", stored.len());
        }
        audits.push(audit_product(&rest_url, product, stored, cursor).await?);
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
