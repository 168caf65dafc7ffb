//! The composition point of the `postgres_cdc` kind: its records are change records, so a table
//! sink without configured columns gets the change-log table.

use sluice::{SourceError, TableSchema};

use super::{PostgresCdcConfig, PostgresCdcSource, changes_table};
use crate::template::SourceKind;

/// `kind = "postgres_cdc"`.
#[derive(Debug)]
pub struct PostgresCdc;

impl SourceKind for PostgresCdc {
    type Config = PostgresCdcConfig;
    type Source = PostgresCdcSource;

    fn validate(config: &PostgresCdcConfig) -> Result<(), String> {
        config.validate()
    }

    fn build(config: PostgresCdcConfig) -> Result<PostgresCdcSource, SourceError> {
        Ok(PostgresCdcSource::new(config))
    }

    fn default_table(_resource: &str, table: &str) -> Option<(TableSchema, Option<&'static str>)> {
        Some((changes_table(table), None))
    }
}
