//! What the CLI test binaries share.

// Each test binary uses a part of it.
#![allow(dead_code)]

/// Runs `sluice audit ARGS --json`: its exit code and the JSON it printed.
pub(crate) fn audit(args: &[&str]) -> (Option<i32>, serde_json::Value) {
    audit_env(args, &[])
}

/// `sluice audit ARGS --json` with `envs` set: its exit code and JSON.
pub(crate) fn audit_env(args: &[&str], envs: &[(&str, &str)]) -> (Option<i32>, serde_json::Value) {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_sluice"))
        .arg("audit")
        .args(args)
        .arg("--json")
        .env("RUST_LOG", "warn")
        .env_remove("SLUICE_DB")
        .envs(envs.iter().copied())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let json = serde_json::from_str(&stdout).unwrap_or_else(|e| {
        panic!(
            "audit printed no JSON ({e}): {stdout} {}",
            String::from_utf8_lossy(&output.stderr)
        )
    });
    (output.status.code(), json)
}

/// Sends SIGTERM to `child` (a graceful stop: drain, save, exit 0).
pub(crate) fn sigterm(child: &std::process::Child) {
    assert!(
        std::process::Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .unwrap()
            .success()
    );
}

/// A client of the Postgres at `url` (plaintext, as the services serve it on loopback).
pub(crate) async fn pg_connect(url: &str) -> tokio_postgres::Client {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    client
}
