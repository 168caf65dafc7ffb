//! Defines the command line.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// Durable connector pipelines: feeds, change streams and files into SQLite, with cursors saved
/// only after the writes.
#[derive(Debug, Parser)]
#[command(name = "sluice", version, about)]
pub(crate) struct Cli {
    #[command(subcommand)]
    pub(crate) command: Command,
}

#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Run a built-in pipeline (`sluice run coinbase`) or pipelines from a config file
    /// (`sluice run --config FILE [PIPELINE…]`) until they finish or SIGTERM/SIGINT (then drain,
    /// save, exit 0).
    Run(RunArgs),
    /// Check a config file: syntax, references, schemas, jq programs.
    Validate(ConfigArgs),
    /// Show or reset saved cursors.
    #[command(subcommand)]
    Checkpoints(CheckpointsCommand),
    /// Run a simulated service on loopback.
    #[command(subcommand)]
    Sim(SimCommand),
    /// Generate Rust record types for tables from a Postgres schema (information_schema).
    Codegen(CodegenArgs),
    /// The whole thing offline: a simulated Coinbase with faults, the Coinbase pipeline into a
    /// fresh SQLite file, live progress, and a verification against the simulator's trade log.
    Demo(DemoArgs),
    /// Prove the destination holds what the provider holds: every trade up to the saved
    /// cursors, each missing id asked of the provider (exit 1 when trades that exist are
    /// missing).
    Audit(AuditArgs),
    /// A live view of the pipelines of a running `sluice run` (its `--metrics-addr`): state,
    /// lease holder and epoch, cursors and their age, records/s, errors, dead letters.
    Status(StatusArgs),
    /// Pause a pipeline: the running process stops its session, writes and saves what it read,
    /// and keeps its lease; it stays paused across restarts until resumed.
    Pause(CheckpointArgs),
    /// Resume a paused pipeline: a new session from its saved cursors.
    Resume(CheckpointArgs),
    /// Run a Temporal worker: it runs the workflows and pipelines the fleet gives it, each as
    /// a heartbeating activity, fenced by the store's lease (docs/fleet.md).
    #[cfg(feature = "temporal")]
    Worker(WorkerArgs),
    /// Start one long-running workflow per pipeline on the fleet (idempotent: a pipeline
    /// already deployed is left as it is).
    #[cfg(feature = "temporal")]
    Deploy(DeployArgs),
    /// Cancel pipelines' workflows: each drains, saves and ends.
    #[cfg(feature = "temporal")]
    Undeploy(UndeployArgs),
    /// Operate pipelines on the fleet: pause, resume and rewind signals, and the fleet status.
    #[cfg(feature = "temporal")]
    #[command(subcommand)]
    Fleet(FleetCommand),
}

#[cfg(feature = "temporal")]
/// Where the fleet's Temporal is.
#[derive(Clone, Debug, Args)]
pub(crate) struct TemporalArgs {
    /// The Temporal frontend, HOST:PORT.
    #[arg(long = "temporal", env = "SLUICE_TEMPORAL", value_name = "HOST:PORT")]
    pub(crate) address: String,
    /// The Temporal namespace.
    #[arg(long, env = "SLUICE_TEMPORAL_NAMESPACE", default_value = "default")]
    pub(crate) namespace: String,
    /// The task queue the workers poll and the workflows run on.
    #[arg(long, env = "SLUICE_TASK_QUEUE", default_value = "sluice")]
    pub(crate) task_queue: String,
}

/// The fleet's pipelines file, the same on every worker (its store should be Postgres).
#[cfg(feature = "temporal")]
#[derive(Debug, Args)]
pub(crate) struct FleetConfigArgs {
    /// The pipelines file.
    #[arg(long, short)]
    pub(crate) config: PathBuf,
    /// The SQLite file for SQLite destinations of the config.
    #[arg(long, env = "SLUICE_DB", default_value = "sluice.db")]
    pub(crate) db: PathBuf,
    #[command(flatten)]
    pub(crate) store: StoreArg,
}

#[cfg(feature = "temporal")]
impl FleetConfigArgs {
    /// The config, with `--store` over its `[store]`.
    pub(crate) fn load(&self) -> anyhow::Result<crate::config::Config> {
        crate::config::Config::load(&self.config, &self.db)?.with_store(self.store.url.as_deref())
    }
}

#[cfg(feature = "temporal")]
#[derive(Debug, Args)]
pub(crate) struct WorkerArgs {
    #[command(flatten)]
    pub(crate) temporal: TemporalArgs,
    #[command(flatten)]
    pub(crate) pipelines: FleetConfigArgs,
    /// How many pipelines this worker runs at once (activity slots).
    #[arg(long, default_value_t = 100)]
    pub(crate) max_pipelines: usize,
    /// Serve Prometheus /metrics, /health, /ready and /status (the pipelines running on this
    /// worker) at this address.
    #[arg(long, env = "SLUICE_METRICS_ADDR")]
    pub(crate) metrics_addr: Option<std::net::SocketAddr>,
}

#[cfg(feature = "temporal")]
#[derive(Debug, Args)]
pub(crate) struct DeployArgs {
    #[command(flatten)]
    pub(crate) temporal: TemporalArgs,
    #[command(flatten)]
    pub(crate) file: FleetConfigArgs,
    /// The pipelines to deploy (all of the file's when none).
    pub(crate) pipelines: Vec<String>,
    /// How long a worker may go silent before its pipelines are given to another (seconds).
    #[arg(long, default_value_t = 10)]
    pub(crate) heartbeat_timeout_s: u64,
    /// Continue-as-new once a workflow's history holds this many events.
    #[arg(long, default_value_t = 2000)]
    pub(crate) history_limit: u32,
    /// Deploy paused (`sluice fleet resume` starts them).
    #[arg(long)]
    pub(crate) paused: bool,
}

#[cfg(feature = "temporal")]
#[derive(Debug, Args)]
pub(crate) struct UndeployArgs {
    #[command(flatten)]
    pub(crate) temporal: TemporalArgs,
    /// The pipelines to undeploy.
    #[arg(required = true)]
    pub(crate) pipelines: Vec<String>,
    /// Wait until each has drained, saved and ended.
    #[arg(long)]
    pub(crate) wait: bool,
}

#[cfg(feature = "temporal")]
#[derive(Debug, Subcommand)]
pub(crate) enum FleetCommand {
    /// Signal `pause`: the pipeline stops its session, writes and saves what it read, keeps
    /// its lease; it stays paused until resumed.
    Pause(FleetTarget),
    /// Signal `resume`.
    Resume(FleetTarget),
    /// Signal `rewind`: the run is stopped (drained, saved), the cursor set (and recorded, as
    /// `sluice checkpoints set` does), the run started again from it.
    Rewind(FleetRewindArgs),
    /// Each pipeline's workflow, state, lease holder and epoch, and cursors.
    Status(FleetStatusArgs),
}

#[cfg(feature = "temporal")]
#[derive(Debug, Args)]
pub(crate) struct FleetTarget {
    #[command(flatten)]
    pub(crate) temporal: TemporalArgs,
    /// The pipeline id.
    pub(crate) pipeline: String,
}

#[cfg(feature = "temporal")]
#[derive(Debug, Args)]
pub(crate) struct FleetRewindArgs {
    #[command(flatten)]
    pub(crate) target: FleetTarget,
    /// The partition (a product, a file, a table, a stream).
    pub(crate) partition: String,
    /// The position, as `sluice checkpoints set` takes it.
    pub(crate) position: String,
}

#[cfg(feature = "temporal")]
#[derive(Debug, Args)]
pub(crate) struct FleetStatusArgs {
    #[command(flatten)]
    pub(crate) temporal: TemporalArgs,
    #[command(flatten)]
    pub(crate) file: FleetConfigArgs,
    /// The pipelines (all of the file's when none).
    pub(crate) pipelines: Vec<String>,
    /// Keep showing it: redrawn in place on a terminal, stamped blocks when piped.
    #[arg(long)]
    pub(crate) watch: bool,
    /// Refresh interval of --watch, in milliseconds.
    #[arg(long, default_value_t = 1000)]
    pub(crate) interval_ms: u64,
}

#[derive(Debug, Args)]
pub(crate) struct StatusArgs {
    /// The `--metrics-addr` of the running process.
    #[arg(long, env = "SLUICE_STATUS_ADDR", default_value = "127.0.0.1:9464")]
    pub(crate) addr: String,
    /// Keep showing it: redrawn in place on a terminal, a block of lines per refresh when piped.
    #[arg(long)]
    pub(crate) watch: bool,
    /// Refresh interval of --watch, in milliseconds.
    #[arg(long, default_value_t = 1000)]
    pub(crate) interval_ms: u64,
    /// Print the status document as JSON.
    #[arg(long)]
    pub(crate) json: bool,
    /// A fleet instead of one process: the Temporal frontend, HOST:PORT. With `--config`, every
    /// pipeline of the file, as `sluice fleet status` shows them.
    #[cfg(feature = "temporal")]
    #[arg(
        long,
        value_name = "HOST:PORT",
        requires = "config",
        conflicts_with = "json"
    )]
    pub(crate) temporal: Option<String>,
    /// With --temporal: the Temporal namespace.
    #[cfg(feature = "temporal")]
    #[arg(long, default_value = "default", requires = "temporal")]
    pub(crate) namespace: String,
    /// With --temporal: the task queue of the fleet.
    #[cfg(feature = "temporal")]
    #[arg(long, default_value = "sluice", requires = "temporal")]
    pub(crate) task_queue: String,
    /// With --temporal: the fleet's pipelines file.
    #[cfg(feature = "temporal")]
    #[arg(long, short, requires = "temporal")]
    pub(crate) config: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub(crate) struct AuditArgs {
    /// What to audit: `coinbase` (the built-in pipeline's SQLite file), or a pipeline of
    /// `--config` (postgres_cdc into a SQLite table).
    pub(crate) target: String,
    /// The config file of the pipeline.
    #[arg(long, short)]
    pub(crate) config: Option<PathBuf>,
    /// The SQLite file holding the records and cursors.
    #[arg(long, env = "SLUICE_DB", default_value = "sluice.db")]
    pub(crate) db: PathBuf,
    /// The REST base URL (Coinbase's by default).
    #[arg(long, env = "COINBASE_REST_URL")]
    pub(crate) rest_url: Option<String>,
    /// http_poll: read the API again from this cursor value (less the lookback) instead of
    /// from the start.
    #[arg(long)]
    pub(crate) from: Option<String>,
    /// Print the result as JSON.
    #[arg(long)]
    pub(crate) json: bool,
    /// coinbase: write the trades of every hole found (as REST serves them) into the
    /// destination table through the pipeline's sink, then audit again.
    #[arg(long)]
    pub(crate) repair: bool,
}

#[derive(Debug, Args)]
pub(crate) struct ConfigArgs {
    /// The pipelines file (TOML).
    #[arg(long, short)]
    pub(crate) config: PathBuf,
    /// The SQLite file used when the config names none.
    #[arg(long, env = "SLUICE_DB", default_value = "sluice.db")]
    pub(crate) db: PathBuf,
}

#[derive(Debug, Args)]
pub(crate) struct RunArgs {
    /// The pipelines file (TOML); without it, the first argument names a built-in pipeline.
    #[arg(long, short)]
    pub(crate) config: Option<PathBuf>,
    /// The SQLite file: records and cursors of built-in pipelines; the store of configs that
    /// name none.
    #[arg(long, env = "SLUICE_DB", default_value = "sluice.db")]
    pub(crate) db: PathBuf,
    /// With --config: pipelines to run (default: all). Without: `coinbase` or `supabase` (from
    /// SUPABASE_URL, SUPABASE_SERVICE_ROLE_KEY, SUPABASE_SCHEMA, SUPABASE_TABLES).
    pub(crate) targets: Vec<String>,
    /// Built-in pipelines: write records here instead of the SQLite file
    /// (`clickhouse://user:password@host:8123/database`, `kafka://host:9092/topic` or
    /// `postgres://user:password@host:5432/database`); cursors and dead letters stay beside
    /// each other (the SQLite file, or the database of `--store`).
    #[arg(long, env = "SLUICE_SINK", hide_env_values = true)]
    pub(crate) sink: Option<String>,
    /// Serve Prometheus metrics on /metrics and health on /health and /ready at this address.
    #[arg(long, env = "SLUICE_METRICS_ADDR")]
    pub(crate) metrics_addr: Option<std::net::SocketAddr>,
    #[command(flatten)]
    pub(crate) store: StoreArg,
    #[command(flatten)]
    pub(crate) coinbase: CoinbaseArgs,
}

/// The checkpoint store, over the config's `[store]`.
#[derive(Debug, Args)]
pub(crate) struct StoreArg {
    /// The checkpoint store: `postgres://user@host/db` (shared by several processes or
    /// machines), or `sqlite:PATH`; overrides the config's `[store]`.
    #[arg(long = "store", env = "SLUICE_STORE", hide_env_values = true)]
    pub(crate) url: Option<String>,
}

/// Options of the built-in `coinbase` pipeline.
#[derive(Debug, Args)]
pub(crate) struct CoinbaseArgs {
    /// Products, comma-separated [default: BTC-USD,ETH-USD].
    #[arg(long, env = "COINBASE_PRODUCTS")]
    pub(crate) products: Option<String>,
    /// The websocket feed [default: wss://ws-feed.exchange.coinbase.com].
    #[arg(long, env = "COINBASE_WS_URL")]
    pub(crate) ws_url: Option<String>,
    /// The REST API for backfill [default: https://api.exchange.coinbase.com].
    #[arg(long, env = "COINBASE_REST_URL")]
    pub(crate) rest_url: Option<String>,
}

#[derive(Debug, Subcommand)]
pub(crate) enum CheckpointsCommand {
    /// Print the saved cursors of a pipeline.
    Show(CheckpointArgs),
    /// Delete the saved cursors of a pipeline: its next run starts from the beginning.
    Reset(CheckpointArgs),
    /// Set one cursor (rewind or skip ahead), refused while the pipeline runs; recorded with
    /// who, when, from and to (`checkpoints show` lists the changes).
    Set(SetCheckpointArgs),
}

#[derive(Debug, Args)]
pub(crate) struct SetCheckpointArgs {
    #[command(flatten)]
    pub(crate) target: CheckpointArgs,
    /// The partition (a product, a file, a table, a stream).
    pub(crate) partition: String,
    /// The position as JSON: `1234`, `"2026-12-01T00:00:00.000000Z"`, `["v", 7]`; a bare
    /// word is taken as text.
    pub(crate) position: String,
}

#[derive(Debug, Args)]
pub(crate) struct CheckpointArgs {
    /// The pipeline id (`coinbase-trades-listener` for `sluice run coinbase`).
    pub(crate) pipeline: String,
    #[command(flatten)]
    pub(crate) store: StoreArg,
    /// The pipelines file whose store to use; without it, --db.
    #[arg(long, short)]
    pub(crate) config: Option<PathBuf>,
    /// The SQLite store.
    #[arg(long, env = "SLUICE_DB", default_value = "sluice.db")]
    pub(crate) db: PathBuf,
}

#[derive(Debug, Subcommand)]
pub(crate) enum SimCommand {
    /// A simulated Coinbase Exchange: websocket feed on / and REST trades, same port.
    Coinbase(SimArgs),
}

/// Fault injection level.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum ChaosLevel {
    /// No faults.
    Off,
    /// Every fault knob on (drops, duplicates, reorders, stalls, closes, error frames, bad
    /// frames, throttling, REST 429/500).
    On,
}

#[derive(Debug, Args)]
pub(crate) struct SimArgs {
    /// The port on 127.0.0.1 (0: any).
    #[arg(long, default_value_t = 0)]
    pub(crate) port: u16,
    /// Trades per second over all products.
    #[arg(long, default_value_t = 100.0)]
    pub(crate) rate: f64,
    /// Products, comma-separated.
    #[arg(long, default_value = "BTC-USD,ETH-USD")]
    pub(crate) products: String,
    /// Faults.
    #[arg(long, value_enum, default_value_t = ChaosLevel::Off)]
    pub(crate) chaos: ChaosLevel,
    /// The seed of every random choice.
    #[arg(long, default_value_t = 1)]
    pub(crate) seed: u64,
}

#[derive(Debug, Args)]
pub(crate) struct DemoArgs {
    /// How long the simulator trades, in seconds (then the demo waits for the pipeline to catch
    /// up and verifies).
    #[arg(long, default_value_t = 30)]
    pub(crate) duration: u64,
    /// Trades per second over all products.
    #[arg(long, default_value_t = 500.0)]
    pub(crate) rate: f64,
    /// Faults.
    #[arg(long, value_enum, default_value_t = ChaosLevel::On)]
    pub(crate) chaos: ChaosLevel,
    /// The SQLite file (must not exist; default: a new file in the temp directory).
    #[arg(long)]
    pub(crate) db: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub(crate) struct CodegenArgs {
    /// The database (`postgres://user:password@host:port/db`).
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    pub(crate) url: String,
    /// The schema.
    #[arg(long, default_value = "public")]
    pub(crate) schema: String,
    /// Tables, comma-separated.
    #[arg(long, value_delimiter = ',', required = true)]
    pub(crate) tables: Vec<String>,
    /// Write here instead of stdout.
    #[arg(long)]
    pub(crate) out: Option<PathBuf>,
}
