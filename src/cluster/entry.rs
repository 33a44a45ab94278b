//! One entry of the cluster's log: a batch of one node's [`SpaceEvent`]s for one space, as it travels through
//! JetStream, and the subject a space's entries go to. The bytes are a header item (version, node, batch,
//! deadline, count) followed by each event as [`SpaceEvent::encode`] writes it, all CBOR: a publisher sizes an
//! entry while it fills it, without encoding anything twice.

use crate::error::{Error, ErrorCode, Result};
use crate::space::event::{SpaceEvent, VERSION};

/// The subjects of every space: `coworker.space.s<hex of the name>` (the `s` keeps the empty name a token).
pub const SUBJECTS: &str = "coworker.space.*";

/// The subject of one space's entries. Hex keeps any name (dots, spaces, wildcards) one valid token.
pub fn subject(space: &str) -> String {
    format!("coworker.space.s{}", hex(space))
}

/// A space's key in the key-value buckets (keys allow `[-/_=.a-zA-Z0-9]`).
pub fn key(space: &str) -> String {
    format!("s{}", hex(space))
}

fn hex(s: &str) -> String {
    use std::fmt::Write;
    let mut out = String::with_capacity(s.len() * 2);
    for b in s.bytes() {
        let _ = write!(out, "{b:02x}");
    }
    out
}

/// An entry's header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Header {
    /// The node that published it.
    pub node: u64,
    /// That node's number for it: the node answers the entry's requests when it comes back.
    pub batch: u64,
    /// When it was published: milliseconds since the epoch, on the publisher's clock.
    pub sent_ms: u64,
    /// Milliseconds since the epoch: an entry the log stored later than this is refused by every node (its
    /// requests were already told `unavailable`).
    pub deadline_ms: u64,
}

/// Fills one entry.
#[derive(Debug)]
pub struct Writer {
    bytes: Vec<u8>,
    count: u32,
}

impl Writer {
    pub fn new() -> Writer {
        Writer { bytes: Vec::with_capacity(256), count: 0 }
    }

    /// Adds an event already encoded with [`SpaceEvent::encode`].
    pub fn push(&mut self, event: &[u8]) {
        self.bytes.extend_from_slice(event);
        self.count += 1;
    }

    /// Bytes so far, without the header (a few dozen bytes).
    pub fn len(&self) -> usize {
        self.bytes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// The entry's bytes.
    pub fn finish(self, header: Header) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.bytes.len() + 40);
        ciborium::into_writer(&(VERSION, header, self.count), &mut out).expect("a header encodes into memory");
        out.extend_from_slice(&self.bytes);
        out
    }
}

impl Default for Writer {
    fn default() -> Self {
        Writer::new()
    }
}

/// Reads an entry: its header and events. An entry of another version, or one cut short, is refused whole.
pub fn read(bytes: &[u8]) -> Result<(Header, Vec<SpaceEvent>)> {
    let bad = |why: String| Error::new(ErrorCode::Internal, format!("an undecodable log entry: {why}"));
    let mut rest = bytes;
    let (version, header, count): (u8, Header, u32) =
        ciborium::from_reader(&mut rest).map_err(|e| bad(e.to_string()))?;
    if version != VERSION {
        return Err(bad(format!("version {version}")));
    }
    let mut events = Vec::with_capacity(count.min(4096) as usize);
    for _ in 0..count {
        let (v, event): (u8, SpaceEvent) = ciborium::from_reader(&mut rest).map_err(|e| bad(e.to_string()))?;
        if v != VERSION {
            return Err(bad(format!("event version {v}")));
        }
        events.push(event);
    }
    if !rest.is_empty() {
        return Err(bad(format!("{} bytes after its events", rest.len())));
    }
    Ok((header, events))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::context::RunId;

    #[test]
    fn entries_round_trip_and_damage_is_refused() {
        let events = [
            SpaceEvent::LingerExpired { run: RunId::from_u128(1) },
            SpaceEvent::LingerExpired { run: RunId::from_u128(2) },
        ];
        let mut w = Writer::new();
        for e in &events {
            w.push(&e.encode());
        }
        let header = Header { node: 7, batch: 9, sent_ms: 10, deadline_ms: 11 };
        let bytes = w.finish(header);
        assert_eq!(read(&bytes).unwrap(), (header, events.to_vec()));
        assert!(read(&bytes[..bytes.len() - 1]).is_err(), "cut short");
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(read(&longer).is_err(), "trailing bytes");
        assert_eq!(subject("a.b *>"), "coworker.space.s612e62202a3e");
    }
}
