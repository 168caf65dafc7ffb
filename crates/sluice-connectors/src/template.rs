//! What a connector's `connector.rs` hands the CLI: the kind (its configuration type, how to
//! check it and build the source, the tables its records fit) and, for the built-in pipelines,
//! the pipeline as data — id and resources with their tables. The CLI lists kinds in one place
//! (its `registry.rs`) and never hard-codes a connector's tables; a connector never builds CLI
//! configuration.

use serde::de::DeserializeOwned;
use sluice::{IntoRecords, Record, Source, SourceError, TableSchema};

/// A source kind as configuration names it (`source = { kind = "…", … }`).
///
/// The CLI promises: `validate` is called before `build`, and by `sluice validate` without a
/// `build`; `build` is called once per pipeline start. Implementers guarantee: `validate` refuses
/// everything `build` or the first session would refuse for a configuration reason, without
/// touching the network; errors name the key and never carry a secret.
pub trait SourceKind {
    /// The `source = { … }` table, without its `kind`.
    type Config: DeserializeOwned + Clone + std::fmt::Debug;
    /// The source it builds. Its payloads are its records (typed, or JSON rows), written as they
    /// are when a resource has no transform.
    type Source: Source<
            Payload: Record
                         + IntoRecords<<Self::Source as Source>::Payload>
                         + serde::Serialize
                         + Clone
                         + std::fmt::Debug,
        > + std::fmt::Debug
        + 'static;

    /// Checks a configuration; `Err` says what is wrong, for the user.
    ///
    /// # Errors
    /// What is wrong.
    fn validate(config: &Self::Config) -> Result<(), String>;

    /// The source for a checked configuration.
    ///
    /// # Errors
    /// Fatal when it cannot be built.
    fn build(config: Self::Config) -> Result<Self::Source, SourceError>;

    /// The table (and version column) a resource named `resource` gets in a table sink when the
    /// configuration lists no columns — for sources whose records have a fixed shape. `None`:
    /// columns must be configured.
    fn default_table(resource: &str, table: &str) -> Option<(TableSchema, Option<&'static str>)> {
        let _ = (resource, table);
        None
    }
}

/// A built-in pipeline.
#[derive(Clone, Debug)]
pub struct Template {
    /// The pipeline id (the cursors' key in the store).
    pub pipeline: &'static str,
    /// Its resources; the first is the main one (what `--sink` redirects).
    pub resources: Vec<TemplateResource>,
}

/// One resource of a built-in pipeline.
#[derive(Clone, Debug)]
pub struct TemplateResource {
    /// The resource name the source emits.
    pub name: &'static str,
    /// The table (or topic name) its records land in.
    pub table: TableSchema,
    /// The version column, when a newer version must win (current-state tables).
    pub version: Option<&'static str>,
    /// Always written to the SQLite file that holds the cursors (bookkeeping such as holes),
    /// even when `--sink` sends the data elsewhere.
    pub beside_cursors: bool,
    /// Follows the main resource to `--sink` (a second table of the same data).
    pub follows_sink: bool,
}

impl TemplateResource {
    /// A data resource: to the default SQLite file, or to `--sink`.
    pub fn main(name: &'static str, table: TableSchema) -> Self {
        Self {
            name,
            table,
            version: None,
            beside_cursors: false,
            follows_sink: true,
        }
    }

    /// A bookkeeping resource kept beside the cursors.
    pub fn beside_cursors(name: &'static str, table: TableSchema) -> Self {
        Self {
            beside_cursors: true,
            follows_sink: false,
            ..Self::main(name, table)
        }
    }

    /// With a version column (newest wins).
    pub fn versioned(mut self, column: &'static str) -> Self {
        self.version = Some(column);
        self
    }
}
