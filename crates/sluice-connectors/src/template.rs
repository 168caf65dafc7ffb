//! What a connector's `connector.rs` hands the CLI: the built-in pipeline as data — its id and
//! resources with their tables — which the CLI turns into a pipeline into SQLite (default) or
//! another sink. A connector never builds CLI configuration itself, and the CLI never hard-codes
//! a connector's tables.

use sluice::TableSchema;

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
