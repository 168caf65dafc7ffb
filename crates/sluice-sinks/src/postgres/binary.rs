//! `COPY … FROM STDIN (FORMAT binary)`: rows encoded in Postgres's binary wire format.
//!
//! Written by hand: tokio-postgres's `BinaryCopyInWriter` needs a `ToSql` value per cell and
//! has none for `numeric`, and the crates that add one (`rust_decimal`) hold at most 28 digits,
//! while a numeric here may be any width. Each cell is encoded from its exact text: numerics
//! digit for digit (base 10000, with the display scale that keeps trailing zeros), timestamps
//! as microseconds since 2000-01-01 UTC. A cell that does not fit its column is a data error
//! for its record (the batch is bisected to find it), as the server's would be.

use chrono::{DateTime, NaiveDateTime, Utc};
use sluice::{Cell, CellWriter, ColumnType};

/// The file header: signature, flags, header extension length.
pub(super) const HEADER: &[u8] = b"PGCOPY\n\xff\r\n\0\0\0\0\0\0\0\0\0";
/// The file trailer: a field count of -1.
pub(super) const TRAILER: &[u8] = &(-1i16).to_be_bytes();

/// Writes one record as a row of binary COPY: its field count, then each cell.
pub(super) struct BinaryRow<'a> {
    pub(super) out: &'a mut Vec<u8>,
    pub(super) kinds: &'a [ColumnType],
    pub(super) next: usize,
}

impl BinaryRow<'_> {
    /// Starts a row of `fields` cells.
    pub(super) fn start(out: &mut Vec<u8>, fields: usize) -> Result<(), String> {
        let fields = i16::try_from(fields).map_err(|_| "more than 32767 columns".to_owned())?;
        out.extend_from_slice(&fields.to_be_bytes());
        Ok(())
    }

    /// A field: its length, then its bytes, written by `body`.
    fn field(
        &mut self,
        body: impl FnOnce(&mut Vec<u8>) -> Result<(), String>,
    ) -> Result<(), String> {
        let at = self.out.len();
        self.out.extend_from_slice(&[0; 4]);
        body(self.out)?;
        let len =
            i32::try_from(self.out.len() - at - 4).map_err(|_| "a cell over 2 GiB".to_owned())?;
        self.out[at..at + 4].copy_from_slice(&len.to_be_bytes());
        Ok(())
    }
}

impl CellWriter for BinaryRow<'_> {
    fn cell(&mut self, cell: Cell<'_>) -> Result<(), String> {
        let Some(&kind) = self.kinds.get(self.next) else {
            return Err(format!("more cells than the {} columns", self.kinds.len()));
        };
        self.next += 1;
        let mismatch = || format!("a {} cell does not fit a {kind:?} column", cell_kind(&cell));
        if matches!(cell, Cell::Null) {
            self.out.extend_from_slice(&(-1i32).to_be_bytes());
            return Ok(());
        }
        match (kind, cell) {
            (ColumnType::Json, other) => self.field(|out| {
                out.push(1); // jsonb version
                other.write_json(out);
                Ok(())
            }),
            (ColumnType::Integer, Cell::Int(i)) => self.field(|out| int8(out, i)),
            (ColumnType::Integer, Cell::UInt(u)) => {
                let i = i64::try_from(u).map_err(|_| format!("{u} is out of range for bigint"))?;
                self.field(|out| int8(out, i))
            }
            (ColumnType::Integer, Cell::Number(s) | Cell::Text(s)) => {
                let i = s
                    .trim()
                    .parse::<i64>()
                    .map_err(|_| format!("{s:?} is not a bigint"))?;
                self.field(|out| int8(out, i))
            }
            (ColumnType::Float, Cell::Float(f)) => self.field(|out| float8(out, f)),
            #[allow(clippy::cast_precision_loss)] // the column is float: the user chose so
            (ColumnType::Float, Cell::Int(i)) => self.field(|out| float8(out, i as f64)),
            #[allow(clippy::cast_precision_loss)]
            (ColumnType::Float, Cell::UInt(u)) => self.field(|out| float8(out, u as f64)),
            (ColumnType::Float, Cell::Number(s) | Cell::Text(s)) => {
                let f = s
                    .trim()
                    .parse::<f64>()
                    .map_err(|_| format!("{s:?} is not a double precision"))?;
                self.field(|out| float8(out, f))
            }
            (ColumnType::Decimal, Cell::Number(s) | Cell::Text(s)) => {
                self.field(|out| numeric(out, s))
            }
            (ColumnType::Decimal, Cell::Int(i)) => self.field(|out| numeric(out, &i.to_string())),
            (ColumnType::Decimal, Cell::UInt(u)) => self.field(|out| numeric(out, &u.to_string())),
            (ColumnType::Decimal, Cell::Float(f)) => {
                self.field(|out| numeric(out, &format!("{f:?}")))
            }
            (ColumnType::Text, Cell::Text(s) | Cell::Number(s)) => self.field(|out| {
                out.extend_from_slice(s.as_bytes());
                Ok(())
            }),
            (ColumnType::Text, Cell::Int(i)) => self.field(|out| text(out, i)),
            (ColumnType::Text, Cell::UInt(u)) => self.field(|out| text(out, u)),
            (ColumnType::Text, Cell::Float(f)) => self.field(|out| text(out, format!("{f:?}"))),
            (ColumnType::Text, Cell::Bool(b)) => {
                self.field(|out| text(out, if b { "t" } else { "f" }))
            }
            (ColumnType::Text, Cell::Json(value)) => self.field(|out| text(out, value)),
            (ColumnType::Boolean, Cell::Bool(b)) => self.field(|out| {
                out.push(u8::from(b));
                Ok(())
            }),
            (ColumnType::Boolean, Cell::Text(s)) => {
                let b = boolean(s).ok_or_else(|| format!("{s:?} is not a boolean"))?;
                self.field(|out| {
                    out.push(u8::from(b));
                    Ok(())
                })
            }
            (ColumnType::Timestamp, Cell::Text(s)) => {
                let micros = timestamp_micros(s)?;
                self.field(|out| int8(out, micros))
            }
            (ColumnType::Timestamp, Cell::Int(unix_micros)) => {
                let micros = unix_micros
                    .checked_sub(POSTGRES_EPOCH_MICROS)
                    .ok_or_else(mismatch)?;
                self.field(|out| int8(out, micros))
            }
            _ => Err(mismatch()),
        }
    }
}

fn cell_kind(cell: &Cell<'_>) -> &'static str {
    match cell {
        Cell::Null => "null",
        Cell::Bool(_) => "boolean",
        Cell::Int(_) | Cell::UInt(_) => "integer",
        Cell::Float(_) => "float",
        Cell::Number(_) => "number",
        Cell::Text(_) => "text",
        Cell::Json(_) => "JSON",
    }
}

fn int8(out: &mut Vec<u8>, i: i64) -> Result<(), String> {
    out.extend_from_slice(&i.to_be_bytes());
    Ok(())
}

fn float8(out: &mut Vec<u8>, f: f64) -> Result<(), String> {
    out.extend_from_slice(&f.to_be_bytes());
    Ok(())
}

fn text(out: &mut Vec<u8>, value: impl std::fmt::Display) -> Result<(), String> {
    use std::io::Write as _;
    write!(out, "{value}").map_err(|e| e.to_string())
}

/// What Postgres's `boolin` accepts (the common spellings).
fn boolean(s: &str) -> Option<bool> {
    match s.trim().to_ascii_lowercase().as_str() {
        "t" | "true" | "y" | "yes" | "on" | "1" => Some(true),
        "f" | "false" | "n" | "no" | "off" | "0" => Some(false),
        _ => None,
    }
}

/// Microseconds from the Unix epoch to Postgres's (2000-01-01 00:00:00 UTC).
const POSTGRES_EPOCH_MICROS: i64 = 946_684_800_000_000;

/// An RFC 3339 time (or `YYYY-MM-DD HH:MM:SS[.f][+zz:zz]`, UTC when no offset) as microseconds
/// since 2000-01-01 UTC, rounded to the microsecond as Postgres rounds (half to even).
fn timestamp_micros(s: &str) -> Result<i64, String> {
    let time: DateTime<Utc> = DateTime::parse_from_rfc3339(s)
        .or_else(|_| DateTime::parse_from_str(s, "%Y-%m-%d %H:%M:%S%.f%#z"))
        .map(|t| t.with_timezone(&Utc))
        .or_else(|_| {
            NaiveDateTime::parse_from_str(s, "%Y-%m-%d %H:%M:%S%.f")
                .or_else(|_| NaiveDateTime::parse_from_str(s, "%Y-%m-%dT%H:%M:%S%.f"))
                .map(|t| t.and_utc())
        })
        .map_err(|e| format!("is not an RFC 3339 time ({e}): {s:?}"))?;
    let seconds = time.timestamp();
    let nanos = i64::from(time.timestamp_subsec_nanos());
    let (mut micros, rest) = (nanos / 1000, nanos % 1000);
    if rest > 500 || (rest == 500 && micros % 2 == 1) {
        micros += 1;
    }
    seconds
        .checked_mul(1_000_000)
        .and_then(|s| s.checked_add(micros))
        .and_then(|m| m.checked_sub(POSTGRES_EPOCH_MICROS))
        .ok_or_else(|| format!("{s:?} is out of range"))
}

/// A decimal's text (sign, digits, point, exponent; or `NaN`) as Postgres's binary `numeric`:
/// base-10000 digits, the weight of the first, the sign, and the display scale (the digits
/// after the point, trailing zeros included: `84140.83000000` keeps its eight).
fn numeric(out: &mut Vec<u8>, s: &str) -> Result<(), String> {
    let bad = || format!("{s:?} is not a number");
    let text = s.trim();
    if text.eq_ignore_ascii_case("nan") {
        out.extend_from_slice(&[0, 0, 0, 0, 0xC0, 0, 0, 0]);
        return Ok(());
    }
    let (negative, unsigned) = match text.as_bytes().first() {
        Some(b'-') => (true, &text[1..]),
        Some(b'+') => (false, &text[1..]),
        _ => (false, text),
    };
    let (mantissa, exponent) = match unsigned.find(['e', 'E']) {
        Some(at) => (
            &unsigned[..at],
            unsigned[at + 1..].parse::<i32>().map_err(|_| bad())?,
        ),
        None => (unsigned, 0),
    };
    let (whole, fraction) = mantissa.split_once('.').unwrap_or((mantissa, ""));
    if (whole.is_empty() && fraction.is_empty())
        || !whole
            .bytes()
            .chain(fraction.bytes())
            .all(|b| b.is_ascii_digit())
    {
        return Err(bad());
    }
    // All digits, and where the point falls among them once the exponent is applied.
    let mut digits: Vec<u8> = whole
        .bytes()
        .chain(fraction.bytes())
        .map(|b| b - b'0')
        .collect();
    let mut point = i64::try_from(whole.len()).map_err(|_| bad())? + i64::from(exponent);
    if digits.len() > 200_000 || point.abs() > 200_000 {
        return Err(format!("{s:?} is out of range for numeric"));
    }
    if point < 0 {
        let pad = usize::try_from(-point).map_err(|_| bad())?;
        digits.splice(0..0, std::iter::repeat_n(0, pad));
        point = 0;
    }
    let point = usize::try_from(point).map_err(|_| bad())?;
    if point > digits.len() {
        digits.resize(point, 0);
    }
    let scale = digits.len() - point;
    // Align to groups of four around the point.
    let lead = (4 - point % 4) % 4;
    let mut aligned = vec![0u8; lead];
    aligned.extend_from_slice(&digits);
    aligned.resize(aligned.len().div_ceil(4) * 4, 0);
    let mut groups: Vec<i16> = aligned
        .chunks(4)
        .map(|c| c.iter().fold(0i16, |n, &d| n * 10 + i16::from(d)))
        .collect();
    let mut weight = i64::try_from((point + lead) / 4).map_err(|_| bad())? - 1;
    let leading = groups.iter().take_while(|&&g| g == 0).count();
    groups.drain(..leading);
    weight -= i64::try_from(leading).map_err(|_| bad())?;
    while groups.last() == Some(&0) {
        groups.pop();
    }
    let (sign, weight) = if groups.is_empty() {
        (0u16, 0i16)
    } else {
        (
            if negative { 0x4000 } else { 0 },
            i16::try_from(weight).map_err(|_| format!("{s:?} is out of range for numeric"))?,
        )
    };
    let ndigits =
        i16::try_from(groups.len()).map_err(|_| format!("{s:?} is out of range for numeric"))?;
    let dscale = u16::try_from(scale).map_err(|_| format!("{s:?} is out of range for numeric"))?;
    out.extend_from_slice(&ndigits.to_be_bytes());
    out.extend_from_slice(&weight.to_be_bytes());
    out.extend_from_slice(&sign.to_be_bytes());
    out.extend_from_slice(&dscale.to_be_bytes());
    for group in groups {
        out.extend_from_slice(&group.to_be_bytes());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// (ndigits, weight, sign, dscale, digits) of an encoded numeric.
    fn decode(bytes: &[u8]) -> (i16, i16, u16, u16, Vec<i16>) {
        let word = |i: usize| [bytes[2 * i], bytes[2 * i + 1]];
        let n = i16::from_be_bytes(word(0));
        let digits = (0..usize::try_from(n).unwrap())
            .map(|i| i16::from_be_bytes(word(4 + i)))
            .collect();
        (
            n,
            i16::from_be_bytes(word(1)),
            u16::from_be_bytes(word(2)),
            u16::from_be_bytes(word(3)),
            digits,
        )
    }

    fn encode(s: &str) -> (i16, i16, u16, u16, Vec<i16>) {
        let mut out = Vec::new();
        numeric(&mut out, s).unwrap();
        decode(&out)
    }

    #[test]
    fn numerics_keep_every_digit_and_their_scale() {
        assert_eq!(encode("84140.83000000"), (3, 1, 0, 8, vec![8, 4140, 8300]));
        assert_eq!(encode("0"), (0, 0, 0, 0, vec![]));
        assert_eq!(encode("0.00"), (0, 0, 0, 2, vec![]));
        assert_eq!(encode("-0.5"), (1, -1, 0x4000, 1, vec![5000]));
        assert_eq!(encode("0.00012"), (2, -1, 0, 5, vec![1, 2000]));
        // numeric(20,8) near 10^12.
        assert_eq!(
            encode("999999999999.99999999"),
            (5, 2, 0, 8, vec![9999, 9999, 9999, 9999, 9999])
        );
        // Past 2^64.
        assert_eq!(
            encode("18446744073709551616"),
            (5, 4, 0, 0, vec![1844, 6744, 737, 955, 1616])
        );
        assert_eq!(encode("1.5e3"), (1, 0, 0, 0, vec![1500]));
        assert_eq!(encode("1e-3"), (1, -1, 0, 3, vec![10]));
        assert_eq!(encode("+10000"), (1, 1, 0, 0, vec![1]));
        for bad in ["", ".", "1.2.3", "1e", "abc", "--1", "1 2"] {
            assert!(numeric(&mut Vec::new(), bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn timestamps_are_microseconds_since_2000_rounded_half_to_even() {
        assert_eq!(timestamp_micros("2000-01-01T00:00:00Z").unwrap(), 0);
        assert_eq!(
            timestamp_micros("2000-01-01T00:00:01.000001+00:00").unwrap(),
            1_000_001
        );
        assert_eq!(timestamp_micros("2000-01-01 01:00:00+01").unwrap(), 0);
        assert_eq!(timestamp_micros("1999-12-31T23:59:59.9999995Z").unwrap(), 0);
        assert_eq!(timestamp_micros("2000-01-01T00:00:00.0000005Z").unwrap(), 0);
        assert_eq!(timestamp_micros("2000-01-01T00:00:00.0000015Z").unwrap(), 2);
        assert!(timestamp_micros("yesterday").is_err());
    }
}
