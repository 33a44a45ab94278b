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

/// Fills entries, one after another, in one buffer kept from entry to entry (a buffer grown anew for every entry
/// cost a fresh page, zeroed by the kernel, each tick).
#[derive(Debug)]
pub struct Writer {
    body: Vec<u8>,
    count: u32,
    /// Where the last event pushed starts.
    last: usize,
}

impl Writer {
    pub fn new() -> Writer {
        Writer { body: Vec::with_capacity(64 * 1024), count: 0, last: 0 }
    }

    /// Encodes `event` at the end of the entry.
    pub fn push(&mut self, event: &SpaceEvent) {
        self.last = self.body.len();
        event.encode_into(&mut self.body);
        self.count += 1;
    }

    /// Takes the last event pushed back out (it made the entry too large).
    pub fn pop(&mut self) {
        self.body.truncate(self.last);
        self.count -= 1;
    }

    /// The events' bytes so far, without the header (a few dozen bytes).
    pub fn len(&self) -> usize {
        self.body.len()
    }

    /// Events in the entry.
    pub fn count(&self) -> u32 {
        self.count
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// The entry's bytes; the writer is empty after, its buffer kept.
    pub fn take(&mut self, header: Header) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.body.len() + 48);
        ciborium::into_writer(&(VERSION, header, self.count), &mut out).expect("a header encodes into memory");
        out.extend_from_slice(&self.body);
        self.body.clear();
        self.count = 0;
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
            w.push(e);
        }
        w.push(&SpaceEvent::LingerExpired { run: RunId::from_u128(3) });
        w.pop();
        let header = Header { node: 7, batch: 9, sent_ms: 10, deadline_ms: 11 };
        let bytes = w.take(header);
        assert_eq!(read(&bytes).unwrap(), (header, events.to_vec()));
        assert_eq!((w.count(), w.len()), (0, 0), "empty after take");
        assert!(read(&bytes[..bytes.len() - 1]).is_err(), "cut short");
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(read(&longer).is_err(), "trailing bytes");
        assert_eq!(subject("a.b *>"), "coworker.space.s612e62202a3e");
    }
}
