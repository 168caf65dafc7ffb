use std::{sync::Arc, time::Duration};

use serde_json::{Value, json};
use sluice::{
    Checkpoint, Column, ColumnType, DeadLetter, Envelope, ErrorClass, MemoryStore, Pipeline,
    PipelineError, Resource, Resources, Sink, TableSchema,
    testing::{RecordingSink, ScriptedSource, int_positions, json_log},
};
use sluice_sinks::clickhouse::{ClickHouseEndpoint, ClickHouseOptions, ClickHouseSink};
use tokio_util::sync::CancellationToken;

use crate::common::{Proxy, fast_options, limits, service, unique};

fn col(name: &str, kind: ColumnType) -> Column {
    Column {
        name: name.into(),
        kind,
        nullable: true,
    }
}

fn trades(table: &str) -> TableSchema {
    TableSchema {
        table: table.into(),
        columns: vec![
            col("id", ColumnType::Integer),
            col("price", ColumnType::Decimal),
            col("time", ColumnType::Timestamp),
            col("side", ColumnType::Text),
            col("seq", ColumnType::Integer),
        ],
        key: vec!["id".into()],
    }
}

fn counts(table: &str) -> TableSchema {
    TableSchema {
        table: table.into(),
        columns: vec![col("n", ColumnType::Integer)],
        key: vec!["n".into()],
    }
}

/// Runs `sql` with the test server's default user and returns the text.
async fn query(url: &str, sql: &str) -> String {
    let endpoint = reqwest::Url::parse(url).unwrap();
    let base = format!(
        "http://{}:{}/",
        endpoint.host_str().unwrap(),
        endpoint.port().unwrap()
    );
    let response = reqwest::Client::new()
        .post(base)
        .body(sql.to_owned())
        .send()
        .await
        .unwrap();
    let status = response.status();
    let text = response.text().await.unwrap();
    assert!(status.is_success(), "{sql}: {text}");
    text
}

fn options() -> ClickHouseOptions {
    ClickHouseOptions {
        request_timeout: Duration::from_secs(5),
        retries: 2,
        backoff: sluice::BackoffPolicy {
            initial: Duration::from_millis(20),
            max: Duration::from_millis(100),
            multiplier: 2.0,
            stable_after: Duration::ZERO,
        },
    }
}

fn sink(url: &str, schema: TableSchema) -> ClickHouseSink {
    ClickHouseSink::new(ClickHouseEndpoint::parse(url).unwrap(), schema, options()).unwrap()
}

fn trade(id: i64, price: &str, seq: i64) -> Value {
    json!({"id": id, "price": price, "time": "2026-11-27T08:00:01.250000Z", "side": "buy", "seq": seq})
}

#[tokio::test]
async fn batches_land_exactly_with_exact_decimals() {
    let Some(url) = service("SLUICE_TEST_CLICKHOUSE_URL") else {
        return;
    };
    let table = unique("ch_exact");
    let mut sink = sink(&url, trades(&table));
    Sink::<Value>::prepare(&mut sink).await.unwrap();
    Sink::<Value>::prepare(&mut sink).await.unwrap(); // idempotent
    let batch: Vec<Value> = (1..=500).map(|i| trade(i, "84140.83000000", i)).collect();
    Sink::<Value>::write(&mut sink, &batch[..200], None)
        .await
        .unwrap();
    Sink::<Value>::write(&mut sink, &batch[200..], None)
        .await
        .unwrap();
    let text = query(
        &url,
        &format!("SELECT count(), uniqExact(id), min(id), max(id) FROM {table}"),
    )
    .await;
    assert_eq!(text.trim(), "500\t500\t1\t500");
    let text = query(
        &url,
        &format!("SELECT price = toDecimal128('84140.83', 18), side FROM {table} WHERE id = 7"),
    )
    .await;
    assert_eq!(text.trim(), "1\tbuy");
    assert_eq!(sink.format(), Some("RowBinary"), "a table the sink made");
    // numeric(20,8) near 10^12 with trailing zeros, and the time to the microsecond where the
    // server keeps it.
    let exact: Value =
        serde_json::from_str("999999999999.12345670").expect("a JSON number, exact digits");
    let row = json!({"id": 9001, "price": exact, "time": "2026-11-27T08:00:01.250001Z", "side": "sell", "seq": 1});
    Sink::<Value>::write(&mut sink, &[row], None).await.unwrap();
    let text = query(
        &url,
        &format!("SELECT toString(price), toString(time) FROM {table} WHERE id = 9001"),
    )
    .await;
    let (price, time) = text.trim().split_once('\t').unwrap();
    assert_eq!(price, "999999999999.123456700000000000");
    assert!(time.starts_with("2026-11-27 08:00:01"), "{time}");
}

/// A table made by someone else, with other column types, gets JSONEachRow (the server
/// converts) and the values still land exactly.
#[tokio::test]
async fn a_table_with_other_types_is_written_as_json_rows() {
    let Some(url) = service("SLUICE_TEST_CLICKHOUSE_URL") else {
        return;
    };
    let table = unique("ch_theirs");
    query(
        &url,
        &format!(
            "CREATE TABLE {table} (id Int64, price Decimal(38, 18), time DateTime('UTC'), side String, seq Int64) ENGINE = MergeTree() ORDER BY id"
        ),
    )
    .await;
    let mut sink = sink(&url, trades(&table));
    Sink::<Value>::prepare(&mut sink).await.unwrap();
    assert_eq!(sink.format(), Some("JSONEachRow"));
    Sink::<Value>::write(&mut sink, &[trade(1, "84140.83000000", 1)], None)
        .await
        .unwrap();
    let text = query(
        &url,
        &format!("SELECT price = toDecimal128('84140.83', 18), side FROM {table}"),
    )
    .await;
    assert_eq!(text.trim(), "1\tbuy");
}

#[tokio::test]
async fn a_replayed_batch_converges_and_never_beats_newer_data() {
    let Some(url) = service("SLUICE_TEST_CLICKHOUSE_URL") else {
        return;
    };
    let table = unique("ch_replay");
    let mut sink = sink(&url, trades(&table)).version("seq").unwrap();
    Sink::<Value>::prepare(&mut sink).await.unwrap();
    let old: Vec<Value> = (1..=100).map(|i| trade(i, "1.5", 10)).collect();
    let new: Vec<Value> = (1..=50).map(|i| trade(i, "2.5", 20)).collect();
    Sink::<Value>::write(&mut sink, &old, None).await.unwrap();
    Sink::<Value>::write(&mut sink, &new, None).await.unwrap();
    // The old batch again, after the newer one (a replay after a crash).
    Sink::<Value>::write(&mut sink, &old, None).await.unwrap();
    let text = query(&url, &format!("SELECT count() FROM {table}")).await;
    assert_eq!(
        text.trim(),
        "250",
        "three inserts are stored before merging"
    );
    let text = query(
        &url,
        &format!("SELECT count(), countIf(price = toDecimal128('2.5', 18)), countIf(price = toDecimal128('1.5', 18)) FROM {table} FINAL"),
    )
    .await;
    assert_eq!(
        text.trim(),
        "100\t50\t50",
        "the newer version wins for ids 1..=50"
    );
}

#[tokio::test]
async fn a_bad_row_is_dead_lettered_and_the_rest_lands() {
    let Some(url) = service("SLUICE_TEST_CLICKHOUSE_URL") else {
        return;
    };
    let table = unique("ch_poison");
    let mut log: Vec<Envelope<Value>> = (1..=20)
        .map(|i| {
            let price = if i == 13 {
                "thirteen".to_owned()
            } else {
                format!("{i}.25")
            };
            Envelope::new("r", json!({"id": i, "price": price, "seq": i}))
                .with_checkpoint(Checkpoint::new("p", i as u64))
        })
        .collect();
    log.truncate(20);
    let memory = Arc::new(MemoryStore::new());
    let dead = RecordingSink::<DeadLetter>::new();
    Pipeline::new(
        "p",
        ScriptedSource::new(log),
        memory.clone(),
        Resources::new().with("r", Resource::direct("ch")),
    )
    .sink("ch", sink(&url, trades(&table)), limits(100))
    .dead_letters(dead.clone(), limits(100))
    .options(fast_options())
    .run(CancellationToken::new())
    .await
    .unwrap();
    let text = query(&url, &format!("SELECT count(), sum(id) FROM {table}")).await;
    assert_eq!(text.trim(), format!("19\t{}", (1..=20).sum::<i64>() - 13));
    let letters = dead.rows();
    assert_eq!(letters.len(), 1);
    assert!(
        letters[0].reason.contains("column price"),
        "{}",
        letters[0].reason
    );
    assert_eq!(int_positions(&memory.snapshot("p")), vec![("p".into(), 20)]);
}

#[tokio::test]
async fn permanent_errors_are_fatal_with_a_clear_message() {
    let Some(url) = service("SLUICE_TEST_CLICKHOUSE_URL") else {
        return;
    };
    // A table that exists without a column of the schema.
    let table = unique("ch_missing");
    query(
        &url,
        &format!("CREATE TABLE {table} (id Int64) ENGINE = MergeTree() ORDER BY id"),
    )
    .await;
    let error = Sink::<Value>::prepare(&mut sink(&url, trades(&table)))
        .await
        .unwrap_err();
    assert_eq!(error.class(), ErrorClass::Fatal);
    assert!(
        error
            .to_string()
            .contains("without column(s) price, time, side, seq"),
        "{error}"
    );
    // Wrong password: fatal, and the password is not in the message.
    let parsed = reqwest::Url::parse(&url).unwrap();
    let bad = format!(
        "clickhouse://sluice:not-the-password@{}:{}/default",
        parsed.host_str().unwrap(),
        parsed.port().unwrap()
    );
    let error = Sink::<Value>::prepare(&mut sink(&bad, counts(&unique("ch_auth"))))
        .await
        .unwrap_err();
    assert_eq!(error.class(), ErrorClass::Fatal, "{error}");
    let shown = format!("{error} {error:?}");
    assert!(!shown.contains("not-the-password"), "{shown}");
    assert!(shown.contains("sluice@"), "{shown}");
    // The right password works.
    let good = bad.replace("not-the-password", "s3cret-sluice");
    Sink::<Value>::prepare(&mut sink(&good, counts(&unique("ch_auth_ok"))))
        .await
        .unwrap();
    // An unknown database is fatal too: the pipeline stops with the server's reason.
    let nowhere = good.replace("/default", "/no_such_db");
    let error = Pipeline::new(
        "p",
        ScriptedSource::new(json_log("r", 3, 1)),
        Arc::new(MemoryStore::new()),
        Resources::new().with("r", Resource::direct("ch")),
    )
    .sink("ch", sink(&nowhere, counts("t")), limits(10))
    .dead_letters(RecordingSink::<DeadLetter>::new(), limits(10))
    .options(fast_options())
    .run(CancellationToken::new())
    .await
    .unwrap_err();
    assert!(matches!(error, PipelineError::Sink { .. }), "{error:?}");
    assert!(
        format!("{error:#}").contains("no_such_db") || format!("{error:?}").contains("no_such_db"),
        "{error:?}"
    );
}

/// The server goes away mid-run: inserts fail and are retried, the cursor stays where the last
/// successful insert left it, and once the server is back every record is there exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_outage_loses_nothing_and_holds_the_cursor() {
    let Some(url) = service("SLUICE_TEST_CLICKHOUSE_URL") else {
        return;
    };
    let parsed = reqwest::Url::parse(&url).unwrap();
    let proxy = Proxy::start(format!(
        "{}:{}",
        parsed.host_str().unwrap(),
        parsed.port().unwrap()
    ))
    .await;
    let via_proxy = format!("http://default@127.0.0.1:{}/default", proxy.port);
    let table = unique("ch_outage");
    let total = 20_000u64;
    let memory = Arc::new(MemoryStore::new());
    let run = tokio::spawn(
        Pipeline::new(
            "p",
            ScriptedSource::new(json_log("r", total, 1)),
            memory.clone(),
            Resources::new().with("r", Resource::direct("ch")),
        )
        .sink("ch", sink(&via_proxy, counts(&table)), limits(250))
        .dead_letters(RecordingSink::<DeadLetter>::new(), limits(10))
        .options(fast_options())
        .run(CancellationToken::new()),
    );
    // Wait for the first durable batch, then cut the server off.
    let position = || {
        memory
            .snapshot("p")
            .get("p0")
            .and_then(|p| p.as_int())
            .unwrap_or(0)
    };
    while position() == 0 {
        assert!(!run.is_finished(), "{:?}", run.await);
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    proxy.set_up(false);
    tokio::time::sleep(Duration::from_millis(300)).await; // an insert in flight may still land
    let held = position();
    assert!(
        held < total,
        "the pipeline finished before the outage; make it longer"
    );
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        position(),
        held,
        "the cursor moved while the server was down"
    );
    proxy.set_up(true);
    tokio::time::timeout(Duration::from_secs(60), run)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(position(), total);
    let text = query(
        &url,
        &format!("SELECT count(), uniqExact(n), min(n), max(n) FROM {table} FINAL"),
    )
    .await;
    assert_eq!(text.trim(), format!("{total}\t{total}\t0\t{}", total - 1));
}
