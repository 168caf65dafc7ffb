//! `sluice codegen`'s generator against a real table (the Postgres of `scripts/services`): the
//! output equals the checked-in `golden/orders.rs` (set `SLUICE_UPDATE_GOLDEN=1` to rewrite it
//! after changing the generator), and that file compiles here and is used as a transform's
//! typed record: rows that do not fit the type are dead-lettered.

use std::sync::Arc;

use serde_json::{Value, json};
use sluice::{
    Checkpoint, DeadLetter, Envelope, EnvelopeMeta, MemoryStore, Pipeline, Resource, Resources,
    TransformError, Transformed,
    testing::{RecordingSink, ScriptedSource},
};
use sluice_connectors::supabase::codegen;
use tokio_util::sync::CancellationToken;

#[rustfmt::skip]
#[allow(unreachable_pub)] // generated for use from other crates
#[path = "golden/orders.rs"]
mod generated;

const GOLDEN: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/golden/orders.rs");

#[tokio::test]
async fn generated_types_match_the_golden_file() {
    let Some(url) = sluice::testing::service_env("SLUICE_TEST_POSTGRES_URL") else {
        return;
    };
    let (client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    client
        .batch_execute(
            "DROP SCHEMA IF EXISTS codegen_test CASCADE; CREATE SCHEMA codegen_test;
             CREATE TABLE codegen_test.orders (id bigint PRIMARY KEY, status text NOT NULL,
               total numeric(12,2), paid boolean, meta jsonb, \"type\" text,
               \"Created At\" timestamptz DEFAULT now(), qty integer NOT NULL DEFAULT 1,
               updated_at timestamptz NOT NULL DEFAULT now());",
        )
        .await
        .unwrap();
    let tables = codegen::introspect(&client, "codegen_test", &["orders".into()])
        .await
        .unwrap();
    assert_eq!(tables[0].primary_key, ["id"]);
    let source = codegen::generate(&tables);
    if std::env::var_os("SLUICE_UPDATE_GOLDEN").is_some() {
        std::fs::write(GOLDEN, &source).unwrap();
    }
    assert_eq!(
        source,
        std::fs::read_to_string(GOLDEN).unwrap(),
        "the generator changed: review and set SLUICE_UPDATE_GOLDEN=1"
    );
    let missing = codegen::introspect(&client, "codegen_test", &["nope".into()])
        .await
        .unwrap_err();
    assert!(
        missing.contains("codegen_test.nope does not exist"),
        "{missing}"
    );
}

/// A transform decodes each change's `row` into the generated type and writes it back typed:
/// a numeric sent as a JSON number (Realtime) stays exact text, a row that does not fit goes to
/// the dead letters with the reason.
fn typed(payload: &Value, _: &EnvelopeMeta<'_>) -> Result<Transformed<Value>, TransformError> {
    let row: generated::Orders = serde_json::from_value(payload["row"].clone()).map_err(|e| {
        TransformError::new(format!(
            "row does not fit {}: {e}",
            generated::Orders::TABLE
        ))
    })?;
    serde_json::to_value(row)
        .map(Transformed::One)
        .map_err(|e| TransformError::new(e.to_string()))
}

#[tokio::test]
async fn the_generated_type_checks_rows_in_a_transform() {
    let schema = generated::Orders::table_schema();
    assert_eq!(schema.key, ["id"]);
    assert!(schema.validate().is_ok());
    let change = |n: u64, row: Value| {
        Envelope::new("changes", json!({"table": "orders", "row": row}))
            .with_checkpoint(Checkpoint::new("orders", n))
    };
    let log = vec![
        change(
            1,
            json!({"id": 1, "status": "new", "total": 129.5, "qty": 2, "updated_at": "2026-09-29T13:46:02.401771+00:00", "Created At": null, "type": "web"}),
        ),
        change(
            2,
            json!({"id": 2, "status": "new", "total": "oops", "qty": 1, "updated_at": "2026-09-29T13:46:03+00:00"}),
        ),
        change(
            3,
            json!({"id": 3, "qty": 1, "updated_at": "2026-09-29T13:46:04+00:00"}),
        ),
    ];
    let sink = RecordingSink::new();
    let dead = RecordingSink::<DeadLetter>::new();
    Pipeline::new(
        "typed",
        ScriptedSource::new(log),
        Arc::new(MemoryStore::new()),
        Resources::new().with("changes", Resource::with_transform("orders", typed)),
    )
    .sink("orders", sink.clone(), sluice::BatchLimits::default())
    .dead_letters(dead.clone(), sluice::BatchLimits::default())
    .run(CancellationToken::new())
    .await
    .unwrap();
    let rows = sink.rows();
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0]["total"], "129.5");
    assert_eq!(rows[0]["type"], "web");
    let reasons: Vec<_> = dead.rows().iter().map(|d| d.reason.clone()).collect();
    assert_eq!(reasons.len(), 2, "{reasons:?}");
    assert!(reasons[0].contains("expected a decimal"), "{reasons:?}");
    assert!(reasons[1].contains("missing field `status`"), "{reasons:?}");
}
