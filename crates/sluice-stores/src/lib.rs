//! Checkpoint stores for sluice.
//!
//! - [`sqlite`]: the embedded default. One file holds cursors and leases, and (through
//!   `sluice-sinks`' SQLite sink) the records too, so both commit in one transaction.
//! - [`postgres`]: the shared state of pipelines on more than one machine: leases fenced by
//!   token in every save, expiry by the server's clock.
//!
//! The memory store for tests lives in the core crate ([`sluice::MemoryStore`]).

#[cfg(feature = "postgres")]
mod pg_tls;
#[cfg(feature = "postgres")]
pub mod postgres;
#[cfg(feature = "sqlite")]
pub mod sqlite;

/// Whether a `host:pid` holder may still be alive. On this host (the same kernel and pid
/// namespace: [`sluice::host_identity`]) a missing process is dead at once (a SIGKILLed run
/// must not block its restart until the lease expires); elsewhere only the expiry tells.
pub(crate) fn holder_alive(holder: &str) -> bool {
    let Some((host, pid)) = holder.rsplit_once(':') else {
        return true;
    };
    // A fleet attempt's holder is `attempt@host:pid`.
    let host = host.rsplit_once('@').map_or(host, |(_, host)| host);
    match (pid.parse::<u32>(), sluice::host_identity()) {
        (Ok(pid), Some(ours)) if host == ours => process_alive(pid),
        _ => true,
    }
}

/// Whether process `pid` of this host runs: it exists and is neither a zombie (killed, not yet
/// reaped by its parent) nor dead.
fn process_alive(pid: u32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    // `pid (comm) state …`: the command may hold spaces and parentheses, the state follows the
    // last `)`.
    let state = stat
        .rsplit_once(')')
        .and_then(|(_, rest)| rest.trim_start().chars().next());
    !matches!(state, Some('Z' | 'X' | 'x'))
}
