//! `sluice status [--watch]`: the live view of a running `sluice run` (or a fleet worker), read
//! from its `/status` endpoint; with `--temporal … --config FILE`, of a whole fleet. On a terminal `--watch` redraws the table in place; piped, it prints a block of
//! lines per refresh (each line stamped), so a log keeps every view.

use std::{io::IsTerminal as _, process::ExitCode, time::Duration};

use anyhow::Context as _;
use serde_json::Value;

use crate::cli::StatusArgs;

/// Shows the status once, or until interrupted with `--watch`.
pub(crate) async fn status(args: StatusArgs) -> anyhow::Result<ExitCode> {
    #[cfg(feature = "temporal")]
    if let (Some(address), Some(config)) = (args.temporal.clone(), args.config.clone()) {
        use crate::cli::{FleetCommand, FleetConfigArgs, FleetStatusArgs, StoreArg, TemporalArgs};
        return crate::fleet::fleet(FleetCommand::Status(FleetStatusArgs {
            temporal: TemporalArgs {
                address,
                namespace: args.namespace,
                task_queue: args.task_queue,
            },
            file: FleetConfigArgs {
                config,
                db: std::env::var_os("SLUICE_DB").map_or_else(|| "sluice.db".into(), Into::into),
                store: StoreArg { url: None },
            },
            pipelines: Vec::new(),
            watch: args.watch,
            interval_ms: args.interval_ms,
        }))
        .await;
    }
    let url = if args.addr.starts_with("http://") || args.addr.starts_with("https://") {
        format!("{}/status", args.addr.trim_end_matches('/'))
    } else {
        format!("http://{}/status", args.addr)
    };
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()?;
    let mut drawn = 0usize;
    loop {
        let page: Value = http
            .get(&url)
            .send()
            .await
            .and_then(reqwest::Response::error_for_status)
            .with_context(|| {
                format!(
                    "GET {url} (is `sluice run --metrics-addr {}` running?)",
                    args.addr
                )
            })?
            .json()
            .await
            .with_context(|| format!("GET {url}: not a status document"))?;
        if args.json {
            println!("{}", serde_json::to_string(&page)?);
        } else {
            draw(&render(&page), args.watch, &mut drawn);
        }
        if !args.watch {
            return Ok(ExitCode::SUCCESS);
        }
        tokio::select! {
            () = tokio::time::sleep(Duration::from_millis(args.interval_ms.max(100))) => {}
            _ = tokio::signal::ctrl_c() => return Ok(ExitCode::SUCCESS),
        }
    }
}

/// Prints a view: on a terminal it replaces the last one (`drawn` lines) in place; piped under
/// `watch`, each line is stamped with the time, so a log keeps every view.
pub(crate) fn draw(lines: &[String], watch: bool, drawn: &mut usize) {
    let terminal = std::io::stdout().is_terminal();
    if terminal && *drawn > 0 {
        // Back to the first line of the last view, and clear below it.
        print!("\x1b[{drawn}A\x1b[J");
    }
    let stamp = (!terminal && watch).then(|| format!("{} ", chrono::Utc::now().format("%H:%M:%S")));
    let rows = screen_rows(lines);
    for row in &rows {
        println!("{}{row}", stamp.as_deref().unwrap_or(""));
    }
    *drawn = rows.len();
}

/// The rows a view takes on the screen: an entry may hold several (fleet status puts a
/// pipeline's heartbeat under it), and the redraw must go back over all of them.
fn screen_rows(lines: &[String]) -> Vec<&str> {
    lines.iter().flat_map(|line| line.lines()).collect()
}

/// The table of a status document: a header and one line per pipeline, then one per cursor.
pub(crate) fn render(page: &Value) -> Vec<String> {
    let mut lines = vec![format!(
        "{:<28} {:<11} {:>9} {:>9} {:>7} {:>10}  holder (epoch)",
        "pipeline", "state", "in/s", "out/s", "dead", "errors t/f/d"
    )];
    let empty = Vec::new();
    for p in page["pipelines"].as_array().unwrap_or(&empty) {
        let n = |v: &Value| v.as_u64().unwrap_or_default();
        let errors = format!(
            "{}/{}/{}",
            n(&p["errors"]["transient"]),
            n(&p["errors"]["fatal"]),
            n(&p["errors"]["data"])
        );
        let holder = match (p["holder"].as_str(), p["epoch"].as_u64()) {
            (Some(holder), Some(epoch)) => format!("{holder} ({epoch})"),
            _ => "-".to_owned(),
        };
        lines.push(format!(
            "{:<28} {:<11} {:>9.1} {:>9.1} {:>7} {:>10}  {holder}",
            p["id"].as_str().unwrap_or("?"),
            p["state"].as_str().unwrap_or("?"),
            p["rate_in"].as_f64().unwrap_or_default(),
            p["rate_out"].as_f64().unwrap_or_default(),
            n(&p["dead_letters"]),
            errors,
        ));
        if let Some(error) = p["error"].as_str() {
            lines.push(format!("    error: {error}"));
        }
        for c in p["cursors"].as_array().unwrap_or(&empty) {
            let lag = match (c["lag"]["behind"].as_u64(), c["lag"]["unit"].as_str()) {
                (Some(behind), Some(unit)) => format!(", {behind} {unit} behind"),
                _ => String::new(),
            };
            lines.push(format!(
                "    {} = {} ({:.1} s ago{lag})",
                c["partition"].as_str().unwrap_or("?"),
                c["position"],
                c["age_s"].as_f64().unwrap_or_default()
            ));
        }
    }
    lines
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn a_status_document_renders_a_line_per_pipeline_and_per_cursor() {
        let page = json!({"pipelines": [{
            "id": "orders", "state": "backing_off", "error": "sink down", "holder": "h:1",
            "epoch": 3, "rate_in": 12.5, "rate_out": 12.0, "dead_letters": 2,
            "errors": {"transient": 4, "fatal": 0, "data": 2},
            "cursors": [
                {"partition": "in.jsonl", "position": 1234, "age_s": 0.4},
                {"partition": "BTC-USD", "position": 9, "age_s": 1.0,
                 "lag": {"behind": 31, "unit": "trades"}}
            ]
        }]});
        let lines = render(&page);
        assert_eq!(lines.len(), 5, "{lines:#?}");
        assert!(lines[1].starts_with("orders") && lines[1].contains("backing_off"));
        assert!(
            lines[1].contains("12.5")
                && lines[1].contains("4/0/2")
                && lines[1].ends_with("h:1 (3)")
        );
        assert_eq!(lines[2], "    error: sink down");
        assert_eq!(lines[3], "    in.jsonl = 1234 (0.4 s ago)");
        assert_eq!(lines[4], "    BTC-USD = 9 (1.0 s ago, 31 trades behind)");
    }

    #[test]
    fn a_redraw_goes_back_over_every_row_an_entry_takes() {
        let view = vec![
            "header".to_owned(),
            "a running\n    heartbeat: 1.0 s ago\n    last control refused: x".to_owned(),
            "b paused".to_owned(),
        ];
        assert_eq!(
            screen_rows(&view),
            [
                "header",
                "a running",
                "    heartbeat: 1.0 s ago",
                "    last control refused: x",
                "b paused"
            ]
        );
    }
}
