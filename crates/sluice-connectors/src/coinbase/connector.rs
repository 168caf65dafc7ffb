//! The composition point: the built-in pipeline's id, resources and tables — what `sluice run
//! coinbase` builds (the seed's `defineConnector`).

use sluice::{SourceError, TableSchema};

use super::{
    CoinbaseConfig, CoinbaseSource,
    record::{holes_table, trades_table},
};
use crate::template::{SourceKind, Template, TemplateResource};

/// `kind = "coinbase"`.
#[derive(Debug)]
pub struct Coinbase;

impl SourceKind for Coinbase {
    type Config = CoinbaseConfig;
    type Source = CoinbaseSource;

    fn validate(config: &CoinbaseConfig) -> Result<(), String> {
        config.validate()
    }

    fn build(config: CoinbaseConfig) -> Result<CoinbaseSource, SourceError> {
        CoinbaseSource::new(config)
    }

    fn default_table(resource: &str, table: &str) -> Option<(TableSchema, Option<&'static str>)> {
        let mut schema = match resource {
            RESOURCE => trades_table(),
            HOLES_RESOURCE => holes_table(),
            _ => return None,
        };
        schema.table = table.to_owned();
        Some((schema, None))
    }
}

/// The built-in pipeline id.
pub const PIPELINE_ID: &str = "coinbase-trades-listener";

/// The resource of every trade.
pub const RESOURCE: &str = "matches";

/// The resource of holes skipped under [`OnUnfillable::Skip`](super::OnUnfillable::Skip).
pub const HOLES_RESOURCE: &str = "holes";

/// The built-in pipeline: trades into `coinbase_trades` (or the chosen sink), holes skipped by
/// policy into `coinbase_holes` beside the cursors.
pub fn template() -> Template {
    Template {
        pipeline: PIPELINE_ID,
        resources: vec![
            TemplateResource::main(RESOURCE, trades_table()),
            TemplateResource::beside_cursors(HOLES_RESOURCE, holes_table()),
        ],
    }
}
