//! The Postgres checkpoint store against the real Postgres of `scripts/services`: the store
//! contract — monotonic cursors that survive a new connection, a lease that keeps others out
//! while live, expiry and takeover with a larger token, a fenced writer refused.

use std::time::Duration;

use sluice::{Checkpoint, CheckpointStore, ErrorClass, Position};
use sluice_stores::postgres::{PostgresStore, SCHEMA_VERSION};

fn url() -> Option<String> {
    sluice::testing::service_env("SLUICE_TEST_POSTGRES_URL")
}

fn pipeline(name: &str) -> String {
    format!("{name}-{}", std::process::id())
}

#[tokio::test]
async fn cursors_are_monotonic_and_survive_a_new_connection() {
    let Some(url) = url() else { return };
    let store = PostgresStore::connect(&url).await.unwrap();
    let id = pipeline("pg-monotonic");
    // Another host's holder: only the expiry tells whether it is alive.
    let lease = store
        .acquire(&id, "elsewhere:1", Duration::from_secs(30))
        .await
        .unwrap();
    store
        .save(
            &lease,
            &[
                Checkpoint::new("a", 5u64),
                Checkpoint::new("b", Position::Text("x".into())),
            ],
        )
        .await
        .unwrap();
    store
        .save(&lease, &[Checkpoint::new("a", 3u64)])
        .await
        .unwrap();
    let again = PostgresStore::connect(&url).await.unwrap();
    let saved = again.load(&id).await.unwrap();
    assert_eq!(saved.get("a"), Some(&Position::Int(5)), "never backwards");
    assert_eq!(saved.get("b"), Some(&Position::Text("x".into())));
    store.release(&lease).await.unwrap();
}

#[tokio::test]
async fn a_live_lease_keeps_others_out_and_a_fenced_writer_is_refused() {
    let Some(url) = url() else { return };
    let first = PostgresStore::connect(&url).await.unwrap();
    let second = PostgresStore::connect(&url).await.unwrap();
    let id = pipeline("pg-fence");
    let old = first
        .acquire(&id, "machine-a:1", Duration::from_millis(400))
        .await
        .unwrap();
    let refused = second
        .acquire(&id, "machine-b:2", Duration::from_secs(30))
        .await
        .unwrap_err();
    assert_eq!(refused.class(), ErrorClass::Fatal);
    assert!(refused.to_string().contains("machine-a:1"), "{refused}");
    // machine-a is cut off past its lease: machine-b takes over with a larger token.
    tokio::time::sleep(Duration::from_millis(600)).await;
    let new = second
        .acquire(&id, "machine-b:2", Duration::from_secs(30))
        .await
        .unwrap();
    assert!(new.token > old.token);
    // machine-a comes back: its saves and renewals are refused, nothing of it is stored.
    let late = first
        .save(&old, &[Checkpoint::new("p", 99u64)])
        .await
        .unwrap_err();
    assert_eq!(late.class(), ErrorClass::Fatal);
    assert!(first.renew(&old, Duration::from_secs(30)).await.is_err());
    second
        .save(&new, &[Checkpoint::new("p", 7u64)])
        .await
        .unwrap();
    assert_eq!(
        second.load(&id).await.unwrap().get("p"),
        Some(&Position::Int(7))
    );
    // A clean release lets the next one in at once.
    second.release(&new).await.unwrap();
    let next = first
        .acquire(&id, "machine-a:1", Duration::from_secs(30))
        .await
        .unwrap();
    assert!(next.token > new.token);
    first.release(&next).await.unwrap();
}

async fn encrypted(url: &str) -> bool {
    let client = sluice_stores::postgres::target(url)
        .unwrap()
        .connect("test")
        .await
        .unwrap();
    client
        .query_one(
            "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
            &[],
        )
        .await
        .unwrap()
        .get(0)
}

/// TLS as libpq's `sslmode` says: `verify-full` with the server's CA (`sslrootcert`) connects
/// encrypted and the store works over it; `verify-full` without that CA is refused for the
/// certificate; `require` encrypts without verifying; `disable` is plain.
#[tokio::test]
async fn tls_verifies_the_server_when_asked_and_encrypts_when_required() {
    let (Some(url), Some(ca)) = (url(), sluice::testing::service_env("SLUICE_TEST_PG_CA")) else {
        return;
    };
    let verified = format!("{url}?sslmode=verify-full&sslrootcert={ca}");
    assert!(encrypted(&verified).await, "verify-full is encrypted");
    let store = PostgresStore::connect(&verified).await.unwrap();
    let id = pipeline("pg-tls");
    let lease = store
        .acquire(&id, "elsewhere:1", Duration::from_secs(30))
        .await
        .unwrap();
    store
        .save(&lease, &[Checkpoint::new("a", 7u64)])
        .await
        .unwrap();
    assert_eq!(
        store.load(&id).await.unwrap().get("a"),
        Some(&Position::Int(7))
    );
    store.release(&lease).await.unwrap();

    let error = PostgresStore::connect(&format!("{url}?sslmode=verify-full"))
        .await
        .unwrap_err();
    let text = format!("{error:?}");
    assert!(
        text.to_lowercase().contains("certificate") || text.contains("UnknownIssuer"),
        "{text}"
    );
    assert_eq!(
        error.class(),
        ErrorClass::Fatal,
        "a refused certificate is configuration: not retried"
    );
    assert!(
        !text.contains("sluice:sluice"),
        "the password leaked: {text}"
    );
    assert!(encrypted(&format!("{url}?sslmode=require")).await);
    assert!(!encrypted(&format!("{url}?sslmode=disable")).await);
}

/// The tables are versioned: a fresh database is brought to this build's version (recorded in
/// `sluice_schema_version`), a second connect changes nothing, and a database a newer sluice
/// migrated past this build's version is refused with a message saying so.
#[tokio::test]
async fn the_schema_is_versioned_and_a_newer_one_is_refused() {
    let Some(url) = url() else { return };
    let (admin, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    let database = format!("sluice_schema_{}", std::process::id());
    admin
        .batch_execute(&format!("CREATE DATABASE {database}"))
        .await
        .unwrap();
    let fresh = format!("{}/{database}", url.rsplit_once('/').unwrap().0);
    let (db, connection) = tokio_postgres::connect(&fresh, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    let version = || async {
        db.query_one("SELECT version FROM sluice_schema_version", &[])
            .await
            .unwrap()
            .get::<_, i32>(0)
    };

    let store = PostgresStore::connect(&fresh).await.unwrap();
    assert_eq!(version().await as usize, SCHEMA_VERSION);
    drop(store);
    PostgresStore::connect(&fresh).await.unwrap();
    let rows: i64 = db
        .query_one("SELECT count(*) FROM sluice_schema_version", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(rows, 1, "one version row after two connects");

    db.batch_execute("UPDATE sluice_schema_version SET version = 999")
        .await
        .unwrap();
    let error = PostgresStore::connect(&fresh).await.unwrap_err();
    assert_eq!(error.class(), ErrorClass::Fatal);
    assert!(error.to_string().contains("schema version 999"), "{error}");
    drop(db);
    admin
        .batch_execute(&format!("DROP DATABASE {database} WITH (FORCE)"))
        .await
        .unwrap();
}
