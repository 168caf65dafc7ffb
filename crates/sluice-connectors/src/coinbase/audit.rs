//! Proves a destination complete: per product, the trade ids stored against the contiguous
//! range up to the cursor, and every missing id asked of REST — served there (a real hole: the
//! destination lacks a trade that exists) or not (a provider gap, nothing to store).

use std::{collections::BTreeMap, sync::Arc};

use serde::Serialize;
use sluice::SourceError;

use super::{record::Trade, rest::RestClient};

/// One product's audit.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ProductAudit {
    /// The product.
    pub product: String,
    /// The saved cursor (everything up to it should be stored).
    pub cursor: Option<u64>,
    /// The lowest id stored (where the pipeline started).
    pub first: Option<u64>,
    /// Ids stored at or below the cursor.
    pub stored: u64,
    /// Ranges of ids missing between `first` and `cursor`, inclusive.
    pub missing: Vec<(u64, u64)>,
    /// Missing ids REST serves, as ranges: the destination lacks trades that exist.
    pub holes: Vec<(u64, u64)>,
    /// How many ids the holes hold.
    pub hole_ids: u64,
    /// Missing ids REST does not serve (never traded, or past REST's retention).
    pub provider_gaps: u64,
    /// The trades of the holes as REST serves them, when asked for (`--repair`): records the
    /// pipeline's own sink can write.
    #[serde(skip)]
    pub found: Vec<Trade>,
    /// REST trades of the holes that could not be made records (reason per id).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub unreadable: Vec<(u64, String)>,
}

impl ProductAudit {
    /// Whether nothing that exists is missing.
    pub fn complete(&self) -> bool {
        self.holes.is_empty()
    }
}

/// The missing ranges of `ids` (ascending, deduplicated) between the first and `cursor`.
pub fn missing_ranges(ids: &[u64], cursor: u64) -> Vec<(u64, u64)> {
    let mut missing = Vec::new();
    let mut previous: Option<u64> = None;
    for &id in ids.iter().take_while(|id| **id <= cursor) {
        if let Some(p) = previous
            && id > p + 1
        {
            missing.push((p + 1, id - 1));
        }
        previous = Some(id);
    }
    if let Some(p) = previous
        && p < cursor
    {
        missing.push((p + 1, cursor));
    }
    missing
}

/// Audits `product`: `ids` are the trade ids the destination holds (ascending), `cursor` the
/// saved cursor. Missing ranges are asked of REST at `rest_url`, page by page; with `keep`, the
/// trades of the holes are kept as records (`found`) for a repair.
///
/// # Errors
/// REST failing after its retries (transient), or refusing the product (fatal).
pub async fn audit_product(
    rest_url: &str,
    product: &str,
    ids: &[u64],
    cursor: Option<u64>,
    keep: bool,
) -> Result<ProductAudit, SourceError> {
    let shared: Arc<str> = product.into();
    let mut found = Vec::new();
    let mut unreadable = Vec::new();
    let rest = RestClient::new(rest_url, 5)?;
    let stored = cursor.map_or(0, |c| ids.iter().take_while(|id| **id <= c).count() as u64);
    let missing = cursor.map_or_else(Vec::new, |c| missing_ranges(ids, c));
    let mut holes = Vec::new();
    let mut provider_gaps = 0;
    let alive = || {};
    for &(from, to) in &missing {
        // What REST serves in [from, to], paging from the newest end until it is all seen.
        let mut served = BTreeMap::new();
        let mut open = vec![(from - 1, to + 1)];
        while let Some((below, above)) = open.pop() {
            if above <= below + 1 {
                continue;
            }
            let page = rest.window(product, Some(below), above, &alive).await?;
            let (Some(lowest), Some(highest)) = (page.first(), page.last()) else {
                continue;
            };
            open.push((below, lowest.trade_id));
            open.push((highest.trade_id, above));
            for trade in page {
                if served.insert(trade.trade_id, ()).is_none()
                    && keep
                    && (from..=to).contains(&trade.trade_id)
                {
                    match trade.record(&shared) {
                        Ok(record) => found.push(record),
                        Err(reason) => unreadable.push((trade.trade_id, reason)),
                    }
                }
            }
        }
        for id in served.keys().copied() {
            match holes.last_mut() {
                Some((_, to)) if *to + 1 == id => *to = id,
                _ => holes.push((id, id)),
            }
        }
        provider_gaps += (to - from + 1) - served.len() as u64;
    }
    let hole_ids = holes.iter().map(|(a, b)| b - a + 1).sum();
    Ok(ProductAudit {
        product: product.to_owned(),
        hole_ids,
        cursor,
        first: ids.first().copied(),
        stored,
        missing,
        holes,
        provider_gaps,
        found,
        unreadable,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_ranges_lie_between_the_first_id_and_the_cursor() {
        assert_eq!(
            missing_ranges(&[5, 6, 9, 10, 14], 16),
            vec![(7, 8), (11, 13), (15, 16)]
        );
        assert_eq!(missing_ranges(&[5, 6, 7], 7), vec![]);
        assert_eq!(
            missing_ranges(&[5, 6, 30], 7),
            vec![(7, 7)],
            "ids past the cursor count for nothing"
        );
        assert_eq!(missing_ranges(&[], 7), vec![]);
    }
}
