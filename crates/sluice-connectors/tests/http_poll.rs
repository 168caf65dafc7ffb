//! The `http_poll` source against the simulated paginated API: keyset and page-number
//! pagination, equal cursor values across pages, inserts and updates while paging, 429s and
//! 500s, restarts at random points. Every test ends by comparing what was stored with the
//! API's items: the newest version of every item, none missing.

use std::{collections::BTreeMap, sync::Arc, time::Duration};

use serde_json::Value;
use sluice::{
    BackoffPolicy, BatchLimits, DeadLetter, MemoryStore, Pipeline, PipelineOptions, Resource,
    Resources, Row,
    testing::{RecordingSink, eventually_with},
};
use sluice_connectors::http_poll::Auth;
use sluice_connectors::http_poll::{
    BodyFormat, CursorConfig, CursorKind, HttpPollConfig, HttpPollSource, Method, Order, PageSize,
    Pagination, ParamsIn, Rule, StreamConfig,
};
use sluice_sim::http_api::{ApiFaults, HttpApiConfig, HttpApiSim, OAuthSim};
use tokio_util::sync::CancellationToken;

const PIPELINE: &str = "poll";

/// A Stripe-style stream: `starting_after` keyset pages of `data`, `has_more`.
fn keyset(sim: &HttpApiSim) -> HttpPollConfig {
    config(
        sim,
        StreamConfig {
            name: "items".into(),
            path: "/items".into(),
            method: Method::Get,
            query: BTreeMap::new(),
            headers: BTreeMap::new(),
            body: serde_json::Map::new(),
            body_format: BodyFormat::Json,
            params_in: ParamsIn::Query,
            rules: Vec::new(),
            records: "data".into(),
            primary_key: vec!["id".into()],
            cursor: Some(CursorConfig {
                field: "updated_at".into(),
                kind: CursorKind::Datetime,
                param: "since".into(),
                inject: None,
                end_param: None,
                step: None,
                initial: None,
                lookback: 0,
                order: Order::Ascending,
            }),
            pagination: Pagination::Token {
                param: "starting_after".into(),
                path: String::new(),
                token_field: "cursor".into(),
                has_more: "has_more".into(),
                page_size: Some(PageSize {
                    param: "limit".into(),
                    size: 100,
                }),
            },
            fields: BTreeMap::from([("stream".into(), Value::from("items"))]),
        },
    )
}

/// A GitHub-style stream: page numbers and `Link` headers over a JSON array.
fn pages(sim: &HttpApiSim, lookback: u64) -> HttpPollConfig {
    let mut config = keyset(sim);
    let stream = &mut config.streams[0];
    stream.path = "/issues".into();
    stream.records = String::new();
    stream.pagination = Pagination::Link {
        page_size: Some(PageSize {
            param: "per_page".into(),
            size: 30,
        }),
    };
    stream.cursor.as_mut().unwrap().lookback = lookback;
    config
}

fn config(sim: &HttpApiSim, stream: StreamConfig) -> HttpPollConfig {
    HttpPollConfig {
        base_url: sim.url(),
        streams: vec![stream],
        auth: Default::default(),
        headers: BTreeMap::new(),
        interval_ms: 300,
        jitter_ms: 50,
        requests_per_second: 200,
        timeout_ms: 5_000,
        rules: Vec::new(),
    }
}

struct Running {
    sink: RecordingSink<Row>,
    dead: RecordingSink<DeadLetter>,
    shutdown: CancellationToken,
    handle: tokio::task::JoinHandle<Result<sluice::PipelineExit, sluice::PipelineError>>,
}

fn start(
    config: HttpPollConfig,
    store: Arc<MemoryStore>,
    sink: RecordingSink<Row>,
    dead: RecordingSink<DeadLetter>,
) -> Running {
    let limits = BatchLimits {
        max_records: 50,
        max_bytes: usize::MAX,
        linger: Duration::from_millis(20),
    };
    let quick = BackoffPolicy {
        initial: Duration::from_millis(50),
        max: Duration::from_millis(500),
        multiplier: 2.0,
        stable_after: Duration::from_secs(2),
    };
    let pipeline = Pipeline::new(
        PIPELINE,
        HttpPollSource::new(config).unwrap(),
        store,
        Resources::new().with("items", Resource::direct("items")),
    )
    .sink("items", sink.clone(), limits)
    .dead_letters(dead.clone(), limits)
    .options(PipelineOptions {
        reconnect: quick,
        retry: quick,
        holder: "test".into(),
        commit_interval: Duration::from_millis(20),
        ..PipelineOptions::default()
    });
    let shutdown = CancellationToken::new();
    let handle = tokio::spawn(pipeline.run(shutdown.clone()));
    Running {
        sink,
        dead,
        shutdown,
        handle,
    }
}

/// A pipeline of `config` with an empty store and fresh sinks.
fn start_fresh(config: HttpPollConfig) -> Running {
    start(
        config,
        Arc::new(MemoryStore::new()),
        RecordingSink::new(),
        RecordingSink::new(),
    )
}

/// Waits for `running` to fail fatally; its error with the cause chain.
async fn fatal(running: Running) -> String {
    let error = tokio::time::timeout(Duration::from_secs(20), running.handle)
        .await
        .unwrap()
        .unwrap()
        .unwrap_err();
    assert_eq!(error.class(), sluice::ErrorClass::Fatal);
    format!("{error:#} {error:?}")
}

/// The newest version stored of each item.
fn stored(sink: &RecordingSink<Row>) -> BTreeMap<u64, u64> {
    let mut newest = BTreeMap::new();
    for row in sink.json() {
        let (Some(id), Some(version)) = (row["id"].as_u64(), row["version"].as_u64()) else {
            continue;
        };
        let entry = newest.entry(id).or_insert(version);
        *entry = (*entry).max(version);
    }
    newest
}

/// Waits until the destination holds the API's newest version of every item.
async fn converged(sim: &HttpApiSim, sink: &RecordingSink<Row>, timeout: Duration) {
    eventually_with(
        timeout,
        || stored(sink) == sim.versions(),
        || {
            let (want, got) = (sim.versions(), stored(sink));
            let missing: Vec<_> = want.keys().filter(|k| !got.contains_key(k)).take(10).collect();
            let stale: Vec<_> = want
                .iter()
                .filter(|(k, v)| got.get(k).is_some_and(|g| g < v))
                .take(10)
                .collect();
            format!(
                "every item's newest version: {} items, {} stored; missing {missing:?}; stale {stale:?}",
                want.len(),
                got.len()
            )
        },
    )
    .await;
}

/// Keyset pages while the API inserts, updates items already served, throttles and fails:
/// every item's newest version arrives, amounts exact, nothing dead-lettered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keyset_pages_under_changes_and_faults_lose_nothing() {
    let sim = HttpApiSim::start(HttpApiConfig {
        initial: 500,
        faults: ApiFaults {
            rate_429: 0.1,
            rate_500: 0.1,
            insert_while_paging: 0.3,
            update_while_paging: 0.5,
            ..ApiFaults::default()
        },
        ..HttpApiConfig::default()
    })
    .await
    .unwrap();
    let store = Arc::new(MemoryStore::new());
    let running = start(
        keyset(&sim),
        store.clone(),
        RecordingSink::new(),
        RecordingSink::new(),
    );
    tokio::time::sleep(Duration::from_secs(3)).await;
    sim.set_faults(ApiFaults::default());
    converged(&sim, &running.sink, Duration::from_secs(30)).await;
    assert!(running.dead.rows().is_empty(), "{:?}", running.dead.rows());
    let counters = sim.counters();
    let load = |c: &std::sync::atomic::AtomicU64| c.load(std::sync::atomic::Ordering::Relaxed);
    assert!(load(&counters.updated_while_paging) > 0 && load(&counters.inserted_while_paging) > 0);
    assert!(load(&counters.throttled) > 0 && load(&counters.errors) > 0);
    let row = running
        .sink
        .json()
        .into_iter()
        .find(|r| r["id"] == 3)
        .unwrap();
    assert_eq!(row["stream"], "items");
    assert!(
        row["amount"].to_string().starts_with("999999999003."),
        "{row}"
    );
    assert_eq!(
        row["amount"].to_string().len(),
        "999999999003.00000010".len(),
        "trailing zeros kept: {row}"
    );
    assert!(
        matches!(
            store.snapshot(PIPELINE).get("items"),
            Some(sluice::Position::Text(_))
        ),
        "the cursor is saved"
    );
    running.shutdown.cancel();
    running.handle.await.unwrap().unwrap();
}

/// Page numbers shift when an item served is updated (it moves to the end and every page after
/// it starts one item later): an oldest-first listing paged by position starts again from the
/// highest value read after each page, so nothing is pushed out of reach — without a lookback.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shifted_page_numbers_lose_nothing() {
    let sim = HttpApiSim::start(HttpApiConfig {
        initial: 300,
        faults: ApiFaults {
            update_while_paging: 0.5,
            ..ApiFaults::default()
        },
        ..HttpApiConfig::default()
    })
    .await
    .unwrap();
    let running = start(
        pages(&sim, 0),
        Arc::new(MemoryStore::new()),
        RecordingSink::new(),
        RecordingSink::new(),
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    sim.set_faults(ApiFaults::default());
    converged(&sim, &running.sink, Duration::from_secs(30)).await;
    running.shutdown.cancel();
    running.handle.await.unwrap().unwrap();
}

/// The pipeline is killed at random points (its task aborted: nothing flushed, nothing
/// saved) and restarted on the same store while the API changes: it resumes from the
/// durable cursor and converges.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kills_at_random_points_resume_from_the_durable_cursor() {
    let sim = HttpApiSim::start(HttpApiConfig {
        initial: 400,
        faults: ApiFaults {
            insert_while_paging: 0.3,
            update_while_paging: 0.3,
            delay: Duration::from_millis(5),
            ..ApiFaults::default()
        },
        ..HttpApiConfig::default()
    })
    .await
    .unwrap();
    let store = Arc::new(MemoryStore::new());
    let sink = RecordingSink::new();
    let mut rng = fastrand::Rng::with_seed(11);
    for _ in 0..5 {
        let running = start(
            keyset(&sim),
            store.clone(),
            sink.clone(),
            RecordingSink::new(),
        );
        tokio::time::sleep(Duration::from_millis(rng.u64(50..600))).await;
        running.handle.abort();
        let _ = running.handle.await;
    }
    let saved = store.snapshot(PIPELINE);
    assert!(
        saved.contains_key("items"),
        "some progress was saved: {saved:?}"
    );
    sim.set_faults(ApiFaults::default());
    let last = start(keyset(&sim), store, sink.clone(), RecordingSink::new());
    converged(&sim, &sink, Duration::from_secs(30)).await;
    last.shutdown.cancel();
    last.handle.await.unwrap().unwrap();
}

/// Pages shorter than asked (the API caps `per_page` at 100, the stream asks 200) do not end
/// the listing: only an empty page does. Newest first, the cursor moves only once the whole
/// listing was read, so a listing cut short would lose everything older than its first page.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn short_pages_do_not_end_the_listing() {
    let sim = HttpApiSim::start(HttpApiConfig {
        initial: 450,
        page_cap: 100,
        ..HttpApiConfig::default()
    })
    .await
    .unwrap();
    let mut config = pages(&sim, 0);
    config.streams[0]
        .query
        .insert("direction".into(), "desc".into());
    config.streams[0].cursor.as_mut().unwrap().order = Order::Descending;
    config.streams[0].pagination = Pagination::Page {
        param: "page".into(),
        first: 1,
        page_size: PageSize {
            param: "per_page".into(),
            size: 200,
        },
    };
    let running = start_fresh(config);
    converged(&sim, &running.sink, Duration::from_secs(30)).await;
    running.shutdown.cancel();
    running.handle.await.unwrap().unwrap();
}

fn oauth_sim(secret: &str) -> HttpApiConfig {
    HttpApiConfig {
        initial: 300,
        oauth: Some(OAuthSim {
            client_id: "sluice".into(),
            client_secret: secret.into(),
            lifetime: Duration::from_secs(2),
        }),
        ..HttpApiConfig::default()
    }
}

/// The stream with OAuth, its secret in a file (a mounted secret).
fn with_oauth(
    mut config: HttpPollConfig,
    sim: &HttpApiSim,
    secret: &str,
) -> (HttpPollConfig, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("client_secret");
    std::fs::write(&file, format!("{secret}\n")).unwrap();
    config.auth = Auth::Oauth2 {
        token_url: format!("{}/oauth/token", sim.url()),
        client_id: "sluice".into(),
        client_secret_env: None,
        client_secret_file: Some(file),
        scope: Some("read items".into()),
    };
    (config, dir)
}

/// OAuth 2.0 client credentials: tokens that expire are fetched again before they do, and a
/// token the API revokes (401) is replaced once and the request retried; nothing is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oauth_tokens_are_refreshed_and_a_revoked_one_replaced() {
    let sim = HttpApiSim::start(oauth_sim("s3cret-value")).await.unwrap();
    let (config, _secret) = with_oauth(keyset(&sim), &sim, "s3cret-value");
    let running = start_fresh(config);
    converged(&sim, &running.sink, Duration::from_secs(30)).await;
    sim.revoke_tokens();
    sim.insert(20);
    tokio::time::sleep(Duration::from_millis(2500)).await;
    sim.insert(20);
    converged(&sim, &running.sink, Duration::from_secs(30)).await;
    let load = |c: &std::sync::atomic::AtomicU64| c.load(std::sync::atomic::Ordering::Relaxed);
    assert!(
        load(&sim.counters().tokens_issued) >= 2,
        "tokens were refreshed"
    );
    assert!(
        load(&sim.counters().unauthorized) >= 1,
        "the revoked token was refused"
    );
    assert!(running.dead.rows().is_empty());
    running.shutdown.cancel();
    running.handle.await.unwrap().unwrap();
}

/// A wrong client secret is fatal, with the API's reason and never the secret.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_client_secret_is_fatal_and_not_shown() {
    let sim = HttpApiSim::start(oauth_sim("s3cret-value")).await.unwrap();
    let (config, _secret) = with_oauth(keyset(&sim), &sim, "not-the-secret");
    let running = start_fresh(config);
    let text = fatal(running).await;
    assert!(text.contains("invalid_client"), "{text}");
    assert!(
        !text.contains("not-the-secret"),
        "the secret leaked: {text}"
    );
}

fn rule(value: serde_json::Value) -> Rule {
    serde_json::from_value(value).unwrap()
}

/// A Notion-style search (`POST /search`, parameters nested in a JSON body, a numeric page
/// size) read in 30-second windows from `initial`; the API answers "busy" with 200 error
/// objects, which a rule retries.
fn search(sim: &HttpApiSim, initial: &str) -> HttpPollConfig {
    let mut config = keyset(sim);
    let stream = &mut config.streams[0];
    stream.path = "/search".into();
    stream.method = Method::Post;
    stream.params_in = ParamsIn::Body;
    stream.records = "results".into();
    stream.body =
        serde_json::from_value(serde_json::json!({"filter": {"property": "updated_at"}})).unwrap();
    let cursor = stream.cursor.as_mut().unwrap();
    cursor.param = "filter.updated_at.on_or_after".into();
    cursor.end_param = Some("filter.updated_at.before".into());
    cursor.step = Some(30_000);
    cursor.initial = Some(initial.into());
    stream.pagination = Pagination::Token {
        param: "start_cursor".into(),
        path: "next_cursor".into(),
        token_field: String::new(),
        has_more: "has_more".into(),
        page_size: Some(PageSize {
            param: "page_size".into(),
            size: 50,
        }),
    };
    stream.rules = vec![rule(
        serde_json::json!({"body_path": "object", "equals": "error", "action": "retry"}),
    )];
    config
}

fn rfc3339(at: chrono::DateTime<chrono::Utc>) -> String {
    at.format("%Y-%m-%dT%H:%M:%SZ").to_string()
}

/// A POST search API with its parameters in the body, read window by window while it
/// inserts, updates, throttles and answers "busy" with a 200: every item's newest version
/// arrives and nothing is dead-lettered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_post_search_is_read_window_by_window_with_its_parameters_in_the_body() {
    let began = chrono::Utc::now();
    let sim = HttpApiSim::start(HttpApiConfig {
        initial: 600,
        faults: ApiFaults {
            rate_429: 0.05,
            soft_error: 0.15,
            insert_while_paging: 0.2,
            update_while_paging: 0.3,
            ..ApiFaults::default()
        },
        ..HttpApiConfig::default()
    })
    .await
    .unwrap();
    // The API's items start ten minutes back; the windows start before them.
    let initial = rfc3339(began - chrono::Duration::seconds(700));
    let store = Arc::new(MemoryStore::new());
    let running = start(
        search(&sim, &initial),
        store.clone(),
        RecordingSink::new(),
        RecordingSink::new(),
    );
    converged(&sim, &running.sink, Duration::from_secs(60)).await;
    let windowed = sim
        .counters()
        .windowed
        .load(std::sync::atomic::Ordering::Relaxed);
    let soft = sim
        .counters()
        .soft_errors
        .load(std::sync::atomic::Ordering::Relaxed);
    assert!(
        windowed >= 20,
        "700 s in 30 s windows: {windowed} windowed requests"
    );
    assert!(soft > 0, "the busy answers were exercised");
    assert!(running.dead.rows().is_empty(), "{:?}", running.dead.rows());
    running.shutdown.cancel();
    running.handle.await.unwrap().unwrap();
}

/// Every window read to its end is saved as the cursor, records in it or not: after a sync of
/// an API whose items are all minutes old, the cursor stands within a window of the settle
/// margin before now (not at the newest item), so a restart does not read the empty windows
/// again. Windows start inside a second, and none of the items on their boundaries is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_window_read_to_its_end_is_saved_as_the_cursor() {
    let began = chrono::Utc::now();
    let sim = HttpApiSim::start(HttpApiConfig {
        initial: 100,
        ..HttpApiConfig::default()
    })
    .await
    .unwrap();
    let store = Arc::new(MemoryStore::new());
    // A start inside a second: every window boundary must still lose nothing.
    let initial = format!(
        "{}.5Z",
        rfc3339(began - chrono::Duration::seconds(700)).trim_end_matches('Z')
    );
    let running = start(
        search(&sim, &initial),
        store.clone(),
        RecordingSink::new(),
        RecordingSink::new(),
    );
    converged(&sim, &running.sink, Duration::from_secs(30)).await;
    // Windows close up to a minute before now; they are 30 s long.
    let newest_window_end = rfc3339(began - chrono::Duration::seconds(120));
    eventually_with(
        Duration::from_secs(10),
        || {
            store
                .snapshot(PIPELINE)
                .get("items")
                .is_some_and(|p| p.to_string() >= format!("\"{newest_window_end}"))
        },
        || {
            format!(
                "cursor {:?}, want ≥ {newest_window_end} (the newest item is at about now - 580 s)",
                store.snapshot(PIPELINE).get("items")
            )
        },
    )
    .await;
    running.shutdown.cancel();
    running.handle.await.unwrap().unwrap();
}

/// Rules decide what a response is, whatever its status: a stream whose endpoint is gone (404)
/// is ignored while the other is read; a 200 carrying an error object stops the pipeline when a
/// rule says to fail, with the API's words.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rules_ignore_a_gone_endpoint_and_fail_on_an_error_body() {
    let sim = HttpApiSim::start(HttpApiConfig {
        initial: 120,
        ..HttpApiConfig::default()
    })
    .await
    .unwrap();
    let mut config = keyset(&sim);
    let mut gone = config.streams[0].clone();
    gone.name = "gone".into();
    gone.path = "/gone".into();
    gone.rules = vec![rule(
        serde_json::json!({"status": [404], "action": "ignore"}),
    )];
    config.streams.insert(0, gone);
    let running = start_fresh(config);
    converged(&sim, &running.sink, Duration::from_secs(20)).await;
    assert!(!running.handle.is_finished(), "an ignored 404 is not fatal");
    running.shutdown.cancel();
    running.handle.await.unwrap().unwrap();

    let busy = HttpApiSim::start(HttpApiConfig {
        initial: 10,
        faults: ApiFaults {
            soft_error: 1.0,
            ..ApiFaults::default()
        },
        ..HttpApiConfig::default()
    })
    .await
    .unwrap();
    let mut config = keyset(&busy);
    config.rules = vec![rule(
        serde_json::json!({"body_path": "object", "equals": "error", "action": "fail"}),
    )];
    let running = start_fresh(config);
    let text = fatal(running).await;
    assert!(
        text.contains("rule says to fail") && text.contains("busy"),
        "{text}"
    );
}
