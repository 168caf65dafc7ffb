//! The composition point: the built-in pipeline's id, resources and tables — what `sluice run
//! supabase` builds (the seed's `defineConnector`).

use sluice::{SourceError, TableSchema};

use super::{
    SupabaseConfig, SupabaseSource,
    record::{changes_table, state_table},
};
use crate::template::{SourceKind, Template, TemplateResource};

/// `kind = "supabase"`.
#[derive(Debug)]
pub struct Supabase;

impl SourceKind for Supabase {
    type Config = SupabaseConfig;
    type Source = SupabaseSource;

    fn validate(config: &SupabaseConfig) -> Result<(), String> {
        // The key too (from `key_env` when set), as the source resolves it.
        let mut config = config.clone();
        config.resolve_key().and_then(|()| config.validate())
    }

    fn build(config: SupabaseConfig) -> Result<SupabaseSource, SourceError> {
        SupabaseSource::new(config)
    }

    fn default_table(resource: &str, table: &str) -> Option<(TableSchema, Option<&'static str>)> {
        Some(if resource == STATE_RESOURCE {
            (state_table(table), Some("version"))
        } else {
            (changes_table(table), None)
        })
    }
}

/// The pipeline id of `sluice run supabase`.
pub const PIPELINE_ID: &str = "supabase-cdc-listener";
/// The resource every change is emitted on.
pub const RESOURCE: &str = "changes";
/// The resource of the current-state rows (when `current_state` is on).
pub const STATE_RESOURCE: &str = "state";

/// The built-in pipeline: every change into `supabase_changes`, the newest version of each row
/// into `supabase_rows` (both follow `--sink`).
pub fn template() -> Template {
    Template {
        pipeline: PIPELINE_ID,
        resources: vec![
            TemplateResource::main(RESOURCE, changes_table("supabase_changes")),
            TemplateResource::main(STATE_RESOURCE, state_table("supabase_rows"))
                .versioned("version"),
        ],
    }
}
