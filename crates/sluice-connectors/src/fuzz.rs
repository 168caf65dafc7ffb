//! Fuzz targets: every decoder that reads bytes from the network, as one function each that
//! takes the raw bytes and runs the connector's own decoding. A target returns `Ok` when the
//! input decoded and `Err(reason)` when it is bad input (what the connector dead-letters or
//! reports as a data error) — and must never panic. The property tests (`tests/fuzz.rs`) and
//! `sluice-bench fuzz` drive them with arbitrary and mutated inputs; [`seeds`] are valid inputs
//! to mutate.

/// A named fuzz target.
pub type Target = fn(&[u8]) -> Result<(), String>;

/// Every target with its name.
pub fn targets() -> Vec<(&'static str, Target)> {
    let mut out: Vec<(&'static str, Target)> = Vec::new();
    #[cfg(feature = "coinbase")]
    {
        out.push(("coinbase_frame", coinbase_frame));
        out.push(("coinbase_rest_page", coinbase_rest_page));
    }
    #[cfg(feature = "supabase")]
    {
        out.push(("phoenix_frame", phoenix_frame));
        out.push(("postgrest_page", postgrest_page));
    }
    #[cfg(feature = "postgres_cdc")]
    out.push(("pgoutput_message", pgoutput_message));
    out
}

/// Valid inputs of a target, to mutate.
pub fn seeds(target: &str) -> Vec<Vec<u8>> {
    let text = |items: &[&str]| items.iter().map(|s| s.as_bytes().to_vec()).collect();
    match target {
        "coinbase_frame" => text(&[
            r#"{"type":"match","trade_id":1099995625,"sequence":5928281084,"maker_order_id":"ac928c66-ca53-498f-9c13-a110027a60e8","taker_order_id":"f6a8f4da-8e3e-4b19-9c3f-9c1d3b5b0a36","time":"2026-09-29T13:45:58.204113Z","product_id":"BTC-USD","size":"0.00731000","price":"84140.80000000","side":"buy"}"#,
            r#"{"type":"heartbeat","sequence":90,"last_trade_id":20,"product_id":"BTC-USD","time":"2026-09-29T13:45:58.204113Z"}"#,
            r#"{"type":"subscriptions","channels":[{"name":"matches","product_ids":["BTC-USD"]}]}"#,
            r#"{"type":"error","message":"Failed to subscribe","reason":"BTC-USDX is not a valid product"}"#,
        ]),
        "coinbase_rest_page" => text(&[
            r#"[{"time":"2026-09-29T13:45:58.204113Z","trade_id":1099995625,"price":"84140.80000000","size":"0.00731000","side":"buy"},{"time":"2026-09-29T13:45:58.116787Z","trade_id":1099995623,"price":"84140.83000000","size":"0.00004104","side":"sell"}]"#,
        ]),
        "phoenix_frame" => text(&[
            r#"["3","3","realtime:sluice","postgres_changes",{"data":{"table":"orders","type":"INSERT","record":{"id":1,"total":-331524391015.26794365},"commit_timestamp":"2026-09-29T13:46:08.990Z","errors":null},"ids":[38606455]}]"#,
            r#"{"topic":"phoenix","event":"phx_reply","payload":{"status":"ok","response":{}},"ref":"1"}"#,
        ]),
        "postgrest_page" => text(&[
            r#"[{"id":1,"status":"new","total":106262360299.10000000,"updated_at":"2026-09-29T13:46:08.990112+00:00"}]"#,
        ]),
        "pgoutput_message" => pgoutput_seeds(),
        _ => Vec::new(),
    }
}

/// A Coinbase feed frame, decoded as the source does (a trade is built from `match` frames).
#[cfg(feature = "coinbase")]
pub fn coinbase_frame(bytes: &[u8]) -> Result<(), String> {
    let text = std::str::from_utf8(bytes).map_err(|e| e.to_string())?;
    crate::coinbase::decode_frame(text)
}

/// A REST trades page, each trade turned into its record.
#[cfg(feature = "coinbase")]
pub fn coinbase_rest_page(bytes: &[u8]) -> Result<(), String> {
    crate::coinbase::decode_rest_page(bytes, "BTC-USD")
}

/// A Phoenix frame (vsn 1.0.0 object or 2.0.0 array).
#[cfg(feature = "supabase")]
pub fn phoenix_frame(bytes: &[u8]) -> Result<(), String> {
    let text = std::str::from_utf8(bytes).map_err(|e| e.to_string())?;
    crate::supabase::phoenix::Frame::decode(text).map(drop)
}

/// A PostgREST page: a JSON array of row objects.
#[cfg(feature = "supabase")]
pub fn postgrest_page(bytes: &[u8]) -> Result<(), String> {
    crate::supabase::rest::parse_page(bytes).map(drop)
}

/// A pgoutput message; a Relation is remembered for the changes that follow within one input
/// (several messages, each prefixed by its big-endian u32 length), whose tuples are turned into
/// JSON rows as the source does.
#[cfg(feature = "postgres_cdc")]
pub fn pgoutput_message(bytes: &[u8]) -> Result<(), String> {
    use crate::postgres_cdc::pgoutput::{Change, Message, RelationCache, decode, tuple_json};
    let mut relations = RelationCache::new();
    let mut rest = bytes;
    let mut decoded = 0;
    while rest.len() >= 4 {
        let len = u32::from_be_bytes(rest[..4].try_into().expect("4 bytes")) as usize;
        let body = rest.get(4..4 + len).ok_or("frame cut short")?;
        rest = &rest[4 + len..];
        match decode(body).map_err(|e| e.to_string())? {
            Message::Relation(oid, relation) => {
                relations.insert(oid, relation);
            }
            Message::Change(
                Change::Insert { relation, new } | Change::Update { relation, new, .. },
            ) => {
                if let Some(rel) = relations.get(&relation) {
                    tuple_json(rel, &new, false);
                    tuple_json(rel, &new, true);
                }
            }
            Message::Change(Change::Delete { relation, old }) => {
                if let Some(rel) = relations.get(&relation) {
                    tuple_json(rel, &old, true);
                }
            }
            _ => {}
        }
        decoded += 1;
    }
    if decoded == 0 {
        return Err("no message".into());
    }
    Ok(())
}

/// A Relation then an Insert, length-prefixed (see [`pgoutput_message`]).
fn pgoutput_seeds() -> Vec<Vec<u8>> {
    let mut relation = vec![b'R'];
    relation.extend(16_384u32.to_be_bytes());
    relation.extend(b"public\0orders\0");
    relation.push(b'd');
    relation.extend(3i16.to_be_bytes());
    for (flags, name, oid) in [(1u8, "id", 20u32), (0, "doc", 3802), (0, "total", 1700)] {
        relation.push(flags);
        relation.extend(name.as_bytes());
        relation.push(0);
        relation.extend(oid.to_be_bytes());
        relation.extend((-1i32).to_be_bytes());
    }
    let mut insert = vec![b'I'];
    insert.extend(16_384u32.to_be_bytes());
    insert.push(b'N');
    insert.extend(3i16.to_be_bytes());
    for value in [
        "7",
        r#"{"big": -12345678901234567890}"#,
        "106262360299.10000000",
    ] {
        insert.push(b't');
        insert.extend((value.len() as i32).to_be_bytes());
        insert.extend(value.as_bytes());
    }
    let mut framed = Vec::new();
    for message in [&relation, &insert] {
        framed.extend((message.len() as u32).to_be_bytes());
        framed.extend(message);
    }
    vec![framed]
}

/// One mutation of `seed` drawn from `rng`: bytes flipped, inserted, deleted, the input cut,
/// or a span repeated — the shapes a broken network or a hostile peer produce.
pub fn mutate(seed: &[u8], rng: &mut impl FnMut(usize) -> usize) -> Vec<u8> {
    let mut out = seed.to_vec();
    let edits = 1 + rng(4);
    for _ in 0..edits {
        let at = if out.is_empty() { 0 } else { rng(out.len()) };
        match rng(5) {
            0 if !out.is_empty() => out[at] ^= 1 << rng(8),
            1 => out.insert(at, rng(256) as u8),
            2 if !out.is_empty() => {
                out.remove(at);
            }
            3 => out.truncate(at),
            _ if !out.is_empty() => {
                let end = (at + 1 + rng(16)).min(out.len());
                let span = out[at..end].to_vec();
                out.splice(at..at, span);
            }
            _ => out.push(rng(256) as u8),
        }
    }
    out
}
