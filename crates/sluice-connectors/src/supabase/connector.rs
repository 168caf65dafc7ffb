//! The composition point: the built-in pipeline's id, resources and tables — what `sluice run
//! supabase` builds (the seed's `defineConnector`).

use super::record::{changes_table, state_table};
use crate::template::{Template, TemplateResource};

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
