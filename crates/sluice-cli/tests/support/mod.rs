//! What the CLI test binaries share.

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
#[allow(dead_code)] // not every test binary stops a process
pub(crate) fn sigterm(child: &std::process::Child) {
    assert!(
        std::process::Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .unwrap()
            .success()
    );
}
