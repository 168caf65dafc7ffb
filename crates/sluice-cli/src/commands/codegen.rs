//! `sluice codegen`: Rust record types from a Postgres schema (`information_schema`).

use std::process::ExitCode;

use anyhow::Context;

/// `sluice codegen`: introspect, generate, write.
pub(crate) async fn codegen(args: crate::cli::CodegenArgs) -> anyhow::Result<ExitCode> {
    use sluice_connectors::supabase::codegen;
    let (client, connection) = tokio_postgres::connect(&args.url, tokio_postgres::NoTls)
        .await
        .map_err(|e| anyhow::anyhow!("codegen: cannot connect: {e}"))?;
    tokio::spawn(connection);
    let tables = codegen::introspect(&client, &args.schema, &args.tables)
        .await
        .map_err(|e| anyhow::anyhow!("codegen: {e}"))?;
    let source = codegen::generate(&tables);
    match &args.out {
        Some(path) => std::fs::write(path, source)
            .with_context(|| format!("cannot write {}", path.display()))?,
        None => print!("{source}"),
    }
    Ok(ExitCode::SUCCESS)
}
