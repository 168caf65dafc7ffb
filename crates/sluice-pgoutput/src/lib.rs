//! Decodes the `pgoutput` logical replication messages (protocol version 1) that arrive inside
//! `XLogData`: relations, inserts, updates, deletes, truncates. Begin and commit are decoded by
//! `pgwire-replication`, which carries the transport.
//!
//! Hand-written: `pgwire-replication` deliberately stops at the transport, and the crates that
//! decode pgoutput rows are unmaintained or tied to another client; the format is small and fixed
//! (PostgreSQL docs, "Logical Replication Message Formats").

use std::collections::HashMap;

/// A column of a relation.
#[derive(Clone, Debug, PartialEq)]
pub struct RelationColumn {
    /// The column name.
    pub name: String,
    /// The type OID (for turning text values into JSON).
    pub type_oid: u32,
    /// Part of the replica identity (the key sent with updates and deletes).
    pub key: bool,
}

/// A table as the server described it in a Relation message.
#[derive(Clone, Debug, PartialEq)]
pub struct Relation {
    /// The schema.
    pub schema: String,
    /// The table.
    pub table: String,
    /// Replica identity: `d` default (primary key), `n` nothing, `f` full, `i` index.
    pub replica_identity: u8,
    /// The columns in order.
    pub columns: Vec<RelationColumn>,
}

/// One column value of a tuple.
#[derive(Clone, Debug, PartialEq)]
pub enum Datum {
    /// SQL NULL.
    Null,
    /// A TOASTed value that did not change: the server did not send it.
    UnchangedToast,
    /// The value in text format.
    Text(String),
}

/// A change of one row (or a truncate).
#[derive(Clone, Debug, PartialEq)]
pub enum Change {
    /// A new row.
    Insert {
        /// The relation OID.
        relation: u32,
        /// The row.
        new: Vec<Datum>,
    },
    /// A changed row; `old` is the key (or the whole old row with REPLICA IDENTITY FULL) when
    /// the key changed or the identity is full.
    Update {
        /// The relation OID.
        relation: u32,
        /// The old key or row, when sent.
        old: Option<Vec<Datum>>,
        /// The new row.
        new: Vec<Datum>,
    },
    /// A deleted row: its key (or whole row with REPLICA IDENTITY FULL).
    Delete {
        /// The relation OID.
        relation: u32,
        /// The old key or row.
        old: Vec<Datum>,
    },
    /// Tables emptied.
    Truncate {
        /// The relation OIDs.
        relations: Vec<u32>,
    },
}

/// A decoded message.
#[derive(Clone, Debug, PartialEq)]
pub enum Message {
    /// A relation description (cache it by OID).
    Relation(u32, Relation),
    /// A row change.
    Change(Change),
    /// The start of a transaction (seen when reading a slot through SQL, where no transport
    /// decodes it).
    Begin {
        /// The LSN of the commit record.
        final_lsn: u64,
        /// Commit time, microseconds since 2000-01-01.
        commit_time_micros: i64,
    },
    /// The end of a transaction.
    Commit {
        /// The end LSN of the commit.
        end_lsn: u64,
    },
    /// Anything else (type, origin): nothing to do.
    Other(u8),
}

/// Why a message could not be decoded.
#[derive(Debug, thiserror::Error)]
#[error("pgoutput: {0}")]
pub struct DecodeError(String);

struct Reader<'a> {
    data: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        if self.data.len() < n {
            return Err(DecodeError(format!(
                "message cut short (wanted {n} more bytes)"
            )));
        }
        let (head, tail) = self.data.split_at(n);
        self.data = tail;
        Ok(head)
    }
    fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.take(1)?[0])
    }
    fn i16(&mut self) -> Result<i16, DecodeError> {
        Ok(i16::from_be_bytes(
            self.take(2)?.try_into().expect("2 bytes"),
        ))
    }
    fn u32(&mut self) -> Result<u32, DecodeError> {
        Ok(u32::from_be_bytes(
            self.take(4)?.try_into().expect("4 bytes"),
        ))
    }
    fn u64(&mut self) -> Result<u64, DecodeError> {
        Ok(u64::from_be_bytes(
            self.take(8)?.try_into().expect("8 bytes"),
        ))
    }
    fn i32(&mut self) -> Result<i32, DecodeError> {
        Ok(i32::from_be_bytes(
            self.take(4)?.try_into().expect("4 bytes"),
        ))
    }
    fn cstring(&mut self) -> Result<String, DecodeError> {
        let end = self
            .data
            .iter()
            .position(|b| *b == 0)
            .ok_or_else(|| DecodeError("string without terminator".into()))?;
        let text = String::from_utf8(self.data[..end].to_vec())
            .map_err(|_| DecodeError("string is not UTF-8".into()))?;
        self.data = &self.data[end + 1..];
        Ok(text)
    }
    fn tuple(&mut self) -> Result<Vec<Datum>, DecodeError> {
        let n = self.i16()?;
        let mut out = Vec::with_capacity(n.max(0) as usize);
        for _ in 0..n {
            out.push(match self.u8()? {
                b'n' => Datum::Null,
                b'u' => Datum::UnchangedToast,
                b't' => {
                    let len = self.i32()?;
                    let bytes = self.take(
                        usize::try_from(len).map_err(|_| DecodeError("negative length".into()))?,
                    )?;
                    Datum::Text(
                        String::from_utf8(bytes.to_vec())
                            .map_err(|_| DecodeError("text value is not UTF-8".into()))?,
                    )
                }
                other => {
                    return Err(DecodeError(format!(
                        "unsupported tuple kind {:?}",
                        other as char
                    )));
                }
            });
        }
        Ok(out)
    }
}

/// Decodes one pgoutput message.
///
/// # Errors
/// When the message is cut short or malformed.
pub fn decode(data: &[u8]) -> Result<Message, DecodeError> {
    let mut r = Reader { data };
    let tag = r.u8()?;
    Ok(match tag {
        b'R' => {
            let oid = r.u32()?;
            let schema = r.cstring()?;
            let table = r.cstring()?;
            let replica_identity = r.u8()?;
            let n = r.i16()?;
            let mut columns = Vec::with_capacity(n.max(0) as usize);
            for _ in 0..n {
                let flags = r.u8()?;
                let name = r.cstring()?;
                let type_oid = r.u32()?;
                let _typmod = r.i32()?;
                columns.push(RelationColumn {
                    name,
                    type_oid,
                    key: flags & 1 == 1,
                });
            }
            Message::Relation(
                oid,
                Relation {
                    schema,
                    table,
                    replica_identity,
                    columns,
                },
            )
        }
        b'I' => {
            let relation = r.u32()?;
            expect(r.u8()?, b"N")?;
            Message::Change(Change::Insert {
                relation,
                new: r.tuple()?,
            })
        }
        b'U' => {
            let relation = r.u32()?;
            let mut kind = r.u8()?;
            let mut old = None;
            if kind == b'K' || kind == b'O' {
                old = Some(r.tuple()?);
                kind = r.u8()?;
            }
            expect(kind, b"N")?;
            Message::Change(Change::Update {
                relation,
                old,
                new: r.tuple()?,
            })
        }
        b'D' => {
            let relation = r.u32()?;
            expect(r.u8()?, b"KO")?;
            Message::Change(Change::Delete {
                relation,
                old: r.tuple()?,
            })
        }
        b'T' => {
            let n = r.u32()?;
            let _options = r.u8()?;
            let relations = (0..n).map(|_| r.u32()).collect::<Result<_, _>>()?;
            Message::Change(Change::Truncate { relations })
        }
        b'B' => {
            let final_lsn = r.u64()?;
            let commit_time_micros = r.u64()? as i64;
            Message::Begin {
                final_lsn,
                commit_time_micros,
            }
        }
        b'C' => {
            let _flags = r.u8()?;
            let _commit_lsn = r.u64()?;
            Message::Commit { end_lsn: r.u64()? }
        }
        other => Message::Other(other),
    })
}

fn expect(got: u8, allowed: &[u8]) -> Result<(), DecodeError> {
    if allowed.contains(&got) {
        Ok(())
    } else {
        Err(DecodeError(format!(
            "unexpected tuple marker {:?}",
            got as char
        )))
    }
}

/// Relations seen in this session, by OID. The server sends a Relation message before the first
/// change of each table in a session and again after its definition changes.
pub type RelationCache = HashMap<u32, Relation>;

#[cfg(test)]
mod tests {
    use super::*;

    fn relation_message() -> Vec<u8> {
        let mut m = vec![b'R'];
        m.extend(16_384u32.to_be_bytes());
        m.extend(b"public\0items\0d");
        m.extend(3i16.to_be_bytes());
        for (flags, name, oid) in [(1u8, "id", 20u32), (0, "price", 1700), (0, "body", 25)] {
            m.push(flags);
            m.extend(name.as_bytes());
            m.push(0);
            m.extend(oid.to_be_bytes());
            m.extend((-1i32).to_be_bytes());
        }
        m
    }

    fn text(m: &mut Vec<u8>, value: &str) {
        m.push(b't');
        m.extend((value.len() as i32).to_be_bytes());
        m.extend(value.as_bytes());
    }

    #[test]
    fn relations_and_updates_with_unchanged_toast_decode() {
        let Message::Relation(oid, relation) = decode(&relation_message()).unwrap() else {
            panic!("not a relation")
        };
        assert_eq!(oid, 16_384);
        assert_eq!(
            (relation.schema.as_str(), relation.table.as_str()),
            ("public", "items")
        );
        assert!(relation.columns[0].key && !relation.columns[1].key);
        let mut m = vec![b'U'];
        m.extend(16_384u32.to_be_bytes());
        m.push(b'N');
        m.extend(3i16.to_be_bytes());
        text(&mut m, "7");
        text(&mut m, "12.500");
        m.push(b'u');
        let Message::Change(Change::Update { new, old: None, .. }) = decode(&m).unwrap() else {
            panic!("not an update")
        };
        assert_eq!(
            new,
            vec![
                Datum::Text("7".into()),
                Datum::Text("12.500".into()),
                Datum::UnchangedToast
            ]
        );
    }

    #[test]
    fn malformed_messages_are_errors_not_panics() {
        for bad in [
            &b"I"[..],
            b"I\0\0\0\x01X",
            b"R\0\0\0\x01public",
            b"U\0\0\0\x01N\0\x01t\xff\xff\xff\xff",
        ] {
            assert!(decode(bad).is_err(), "{bad:?}");
        }
        assert!(matches!(decode(b"Y..."), Ok(Message::Other(b'Y'))));
    }
}
