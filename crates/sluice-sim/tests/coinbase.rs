//! The simulator follows protocols.md §1: handshake, frames, REST windows, errors.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use sluice_sim::coinbase::{CoinbaseSim, CoinbaseSimConfig};
use tokio_tungstenite::tungstenite::Message;

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn connect(sim: &CoinbaseSim) -> Socket {
    tokio_tungstenite::connect_async(sim.ws_url())
        .await
        .unwrap()
        .0
}

async fn next_json(socket: &mut Socket) -> Value {
    loop {
        let message = tokio::time::timeout(Duration::from_secs(5), socket.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        if let Message::Text(text) = message {
            return serde_json::from_str(&text).unwrap();
        }
    }
}

async fn subscribe(socket: &mut Socket, products: &[&str]) {
    let message =
        json!({"type": "subscribe", "product_ids": products, "channels": ["matches", "heartbeat"]});
    socket
        .send(Message::Text(message.to_string().into()))
        .await
        .unwrap();
}

#[tokio::test]
async fn a_subscription_gets_the_reply_last_match_then_consecutive_matches_and_heartbeats() {
    let sim = CoinbaseSim::start(CoinbaseSimConfig {
        rate: 0.0,
        heartbeat: Duration::from_millis(200),
        ..CoinbaseSimConfig::default()
    })
    .await
    .unwrap();
    sim.burst(10);
    let mut socket = connect(&sim).await;
    subscribe(&mut socket, &["BTC-USD", "ETH-USD"]).await;
    let reply = next_json(&mut socket).await;
    assert_eq!(reply["type"], "subscriptions");
    assert_eq!(
        reply["channels"][0],
        json!({"name": "matches", "product_ids": ["BTC-USD", "ETH-USD"]})
    );
    let mut last = std::collections::HashMap::new();
    for _ in 0..2 {
        let frame = next_json(&mut socket).await;
        assert_eq!(frame["type"], "last_match");
        last.insert(
            frame["product_id"].as_str().unwrap().to_owned(),
            frame["trade_id"].as_u64().unwrap(),
        );
    }
    assert_eq!(last["BTC-USD"], *sim.trade_range("BTC-USD").unwrap().end());
    sim.burst(6);
    let mut seen = 0;
    let mut heartbeats = 0;
    while seen < 6 || heartbeats < 2 {
        let frame = next_json(&mut socket).await;
        match frame["type"].as_str().unwrap() {
            "match" => {
                let product = frame["product_id"].as_str().unwrap().to_owned();
                let id = frame["trade_id"].as_u64().unwrap();
                assert_eq!(id, last[&product] + 1, "consecutive ids per product");
                last.insert(product, id);
                seen += 1;
            }
            "heartbeat" => {
                heartbeats += 1;
                let product = frame["product_id"].as_str().unwrap();
                assert!(
                    frame["last_trade_id"].as_u64().unwrap()
                        <= *sim.trade_range(product).unwrap().end()
                );
            }
            other => panic!("unexpected {other}"),
        }
    }
}

#[tokio::test]
async fn unknown_and_delisted_products_get_the_documented_error_frames() {
    let sim = CoinbaseSim::start(CoinbaseSimConfig::default())
        .await
        .unwrap();
    for (product, reason) in [
        ("BTC-USDX", "BTC-USDX is not a valid product"),
        ("LOOM-USDC", "LOOM-USDC is delisted"),
    ] {
        let mut socket = connect(&sim).await;
        subscribe(&mut socket, &[product]).await;
        let frame = next_json(&mut socket).await;
        assert_eq!(
            frame,
            json!({"type": "error", "message": "Failed to subscribe", "reason": reason})
        );
    }
}

#[tokio::test]
async fn a_client_that_does_not_subscribe_in_time_is_disconnected() {
    let sim = CoinbaseSim::start(CoinbaseSimConfig {
        subscribe_timeout: Duration::from_millis(100),
        ..CoinbaseSimConfig::default()
    })
    .await
    .unwrap();
    let mut socket = connect(&sim).await;
    let end = tokio::time::timeout(Duration::from_secs(5), async {
        while let Some(Ok(message)) = socket.next().await {
            if matches!(message, Message::Close(_)) {
                break;
            }
        }
    })
    .await;
    assert!(end.is_ok());
}

#[tokio::test]
async fn rest_windows_are_exclusive_newest_first_with_cursor_headers() {
    let sim = CoinbaseSim::start(CoinbaseSimConfig {
        rate: 0.0,
        products: vec!["BTC-USD".into()],
        rest_retention: Some(500),
        ..CoinbaseSimConfig::default()
    })
    .await
    .unwrap();
    sim.burst(1000);
    let range = sim.trade_range("BTC-USD").unwrap();
    let (first, last) = (*range.start(), *range.end());
    let client = reqwest::Client::new();
    let l = last - 300;
    let url = format!(
        "{}/products/BTC-USD/trades?before={l}&after={}&limit=100",
        sim.rest_url(),
        l + 101
    );
    let response = client.get(&url).send().await.unwrap();
    assert_eq!(
        response.headers()["cb-before"],
        (l + 100).to_string().as_str()
    );
    assert_eq!(response.headers()["cb-after"], (l + 1).to_string().as_str());
    let page: Vec<Value> = response.json().await.unwrap();
    let ids: Vec<u64> = page
        .iter()
        .map(|t| t["trade_id"].as_u64().unwrap())
        .collect();
    assert_eq!(ids, (l + 1..=l + 100).rev().collect::<Vec<_>>());
    assert!(
        page[0]["price"].as_str().unwrap().ends_with("000000"),
        "REST prices carry trailing zeros"
    );
    assert!(page[0].get("product_id").is_none());
    // Beyond the retention: nothing older than the newest 500.
    let old = format!(
        "{}/products/BTC-USD/trades?before={first}&after={}",
        sim.rest_url(),
        first + 50
    );
    let page: Vec<Value> = client.get(&old).send().await.unwrap().json().await.unwrap();
    assert!(page.is_empty());
    let missing = client
        .get(format!("{}/products/NOPE-USD/trades", sim.rest_url()))
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), 404);
    let too_big = client
        .get(format!(
            "{}/products/BTC-USD/trades?limit=5000",
            sim.rest_url()
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(too_big.status(), 400);
}

#[tokio::test]
async fn rest_keeps_the_documented_public_rate_limit() {
    let sim = CoinbaseSim::start(CoinbaseSimConfig {
        rate: 0.0,
        products: vec!["BTC-USD".into()],
        ..CoinbaseSimConfig::default()
    })
    .await
    .unwrap();
    sim.burst(10);
    let client = reqwest::Client::new();
    let url = format!("{}/products/BTC-USD/trades?limit=1", sim.rest_url());
    let mut statuses = Vec::new();
    for _ in 0..60 {
        statuses.push(client.get(&url).send().await.unwrap().status().as_u16());
    }
    let ok = statuses.iter().filter(|s| **s == 200).count();
    // A burst of 15, plus what refills (10 a second) while the requests are made.
    assert!(ok < 60, "none refused: {statuses:?}");
    assert!(statuses[..15].iter().all(|s| *s == 200), "{statuses:?}");
    assert_eq!(
        sim.counters()
            .rest_rate_limited
            .load(std::sync::atomic::Ordering::Relaxed),
        60 - ok as u64
    );
}
