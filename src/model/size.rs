//! State bytes: what a run's context counts for against the memory budgets. It is the length of the compact JSON
//! the value renders to, plus [`NODE`] bytes for every value in it (scalar, array or object) and for every object
//! member, which is what the in-memory form costs beyond its text (a `serde_json::Value` is 72 bytes, an object
//! member adds its map entry). Patch apply keeps a run's count up to date op by op from the helpers here: an append
//! adds its value's cost, a set replaces the old value's cost, and nothing ever re-measures a whole run. A fresh
//! [`value`] of the context always equals the running count (a property test checks it).

use serde_json::{Map, Number, Value};

/// Bytes counted for each JSON value and each object member, beyond its text.
pub const NODE: usize = 80;

/// Bytes counted for each run beyond its context: its registry entry, its place in the views and its lock.
pub const RUN_OVERHEAD: usize = 1024;

/// The length of `s` inside a JSON string (quotes not counted), escaped as serde_json escapes it: `"` and `\` take
/// two bytes, control characters two (`\n`, `\t`, ...) or six (`\u0001`), everything else its UTF-8 length.
pub fn escaped_len(s: &str) -> usize {
    // Most strings (tokens, keys) need no escape: a check eight bytes at a time says so, and the byte-by-byte
    // count below runs only for the others.
    if !needs_escape(s.as_bytes()) {
        return s.len();
    }
    let mut n = s.len();
    for b in s.bytes() {
        match b {
            b'"' | b'\\' | 0x08 | 0x09 | 0x0a | 0x0c | 0x0d => n += 1,
            0x00..=0x1f => n += 5,
            _ => {}
        }
    }
    n
}

/// Whether some byte of `b` is escaped in a JSON string: `"`, `\` or a control character (SWAR, 8 bytes a step).
fn needs_escape(b: &[u8]) -> bool {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    // A byte of `x` is zero exactly where this sets its high bit (no false positives once `& !x` drops bytes that
    // were >= 0x80).
    let zero = |x: u64| x.wrapping_sub(ONES) & !x & HIGH;
    let mut chunks = b.chunks_exact(8);
    let mut any = 0u64;
    for c in &mut chunks {
        let x = u64::from_le_bytes(c.try_into().expect("8 bytes"));
        // Bytes below 0x20; then bytes equal to `"` and `\`.
        any |= x.wrapping_sub(ONES * 0x20) & !x & HIGH;
        any |= zero(x ^ (ONES * u64::from(b'"'))) | zero(x ^ (ONES * u64::from(b'\\')));
    }
    any != 0 || chunks.remainder().iter().any(|&c| c < 0x20 || c == b'"' || c == b'\\')
}

/// The cost of a string that needs no escape, of `len` bytes.
pub fn plain_string(len: usize) -> usize {
    NODE + 2 + len
}

/// The cost of the value built around one of cost `inner` by wrapping it in one object per key of `keys`, innermost
/// last (`set a.b.c` on a missing `a` stores `{"b":{"c":…}}`).
pub fn wrapped<'k>(inner: usize, keys: impl DoubleEndedIterator<Item = &'k str>) -> usize {
    keys.rev().fold(inner, |cost, key| NODE + 2 + member(key, cost))
}

/// The cost of a string value.
pub fn string(s: &str) -> usize {
    NODE + 2 + escaped_len(s)
}

/// The cost of one object member whose value costs `value`: its key, the colon, the value, and the member's node.
pub fn member(key: &str, value: usize) -> usize {
    NODE + 2 + escaped_len(key) + 1 + value
}

/// What an item of cost `item` adds to an array or object that held `len` items before (the comma before it when
/// it is not the first).
pub fn added(len: usize, item: usize) -> usize {
    item + usize::from(len > 0)
}

/// What removing an item of cost `item` takes from an array or object that held `len` items before.
pub fn removed(len: usize, item: usize) -> usize {
    item + usize::from(len > 1)
}

fn number(n: &Number) -> usize {
    if let Some(u) = n.as_u64() {
        digits(u)
    } else if let Some(i) = n.as_i64() {
        1 + digits(i.unsigned_abs())
    } else {
        /// Counts what serde_json writes, without keeping it.
        struct Count(usize);
        impl std::io::Write for Count {
            fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
                self.0 += buf.len();
                Ok(buf.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let mut c = Count(0);
        serde_json::to_writer(&mut c, n).expect("a number serializes");
        c.0
    }
}

fn digits(mut u: u64) -> usize {
    let mut n = 1;
    while u >= 10 {
        u /= 10;
        n += 1;
    }
    n
}

/// The cost of a value, measured whole.
pub fn value(v: &Value) -> usize {
    NODE + match v {
        Value::Null => 4,
        Value::Bool(true) => 4,
        Value::Bool(false) => 5,
        Value::Number(n) => number(n),
        Value::String(s) => 2 + escaped_len(s),
        Value::Array(a) => 2 + a.len().saturating_sub(1) + a.iter().map(value).sum::<usize>(),
        Value::Object(m) => return object(m),
    }
}

/// The cost of an object, measured whole.
pub fn object(m: &Map<String, Value>) -> usize {
    NODE + 2 + m.len().saturating_sub(1) + m.iter().map(|(k, v)| member(k, value(v))).sum::<usize>()
}

/// A run's state bytes, measured whole: its context and its fixed overhead.
pub fn run(ctx: &Map<String, Value>) -> usize {
    RUN_OVERHEAD + object(ctx)
}

/// The change in cost when `old` (cost `old_cost`) is replaced by a value of cost `new_cost`.
pub fn delta(old_cost: usize, new_cost: usize) -> isize {
    new_cost as isize - old_cost as isize
}

/// Which budget refused a write.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Budget {
    Run,
    Owner,
    Server,
}

impl Budget {
    /// The error a write refused by this budget gets.
    pub fn refusal(self, grown: usize) -> crate::error::Error {
        let (code, what) = match self {
            Budget::Run => {
                (crate::error::ErrorCode::RunTooLarge, "the run would exceed its size budget (max_run_bytes)")
            }
            Budget::Owner => (
                crate::error::ErrorCode::QuotaStateBytes,
                "the owner's live runs would exceed their budget (max_owner_state_bytes)",
            ),
            Budget::Server => {
                (crate::error::ErrorCode::OverCapacity, "the server's state budget is spent (max_state_bytes)")
            }
        };
        crate::error::Error::new(code, format!("{what}; the write, {grown} state bytes, was not applied"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// The text part of the cost is exactly the compact JSON's length.
    fn nodes(v: &Value) -> usize {
        match v {
            Value::Array(a) => 1 + a.iter().map(nodes).sum::<usize>(),
            Value::Object(m) => 1 + m.values().map(|v| 1 + nodes(v)).sum::<usize>(),
            _ => 1,
        }
    }

    #[test]
    fn text_part_is_the_json_length() {
        for v in [
            json!(null),
            json!(true),
            json!(false),
            json!(0),
            json!(-12345),
            json!(u64::MAX),
            json!(i64::MIN),
            json!(1.5),
            json!(1e300),
            json!(-0.0),
            json!("plain"),
            json!("quote \" back \\ nl \n tab \t ctl \u{1} del \u{7f} é 😀"),
            json!([]),
            json!({}),
            json!([1, "a", [2, {"k\"": null}]]),
            json!({"a": {"b": [true, false]}, "c\n": "x"}),
        ] {
            let text = serde_json::to_string(&v).unwrap().len();
            assert_eq!(value(&v), text + NODE * nodes(&v), "{v}");
        }
    }

    #[test]
    fn the_escape_check_finds_every_escaped_byte_wherever_it_is() {
        for len in 0..24 {
            let plain = "a".repeat(len);
            assert_eq!(escaped_len(&plain), len);
            for at in 0..len {
                for c in ['"', '\\', '\n', '\u{1}', '\u{1f}'] {
                    let mut s: Vec<char> = plain.chars().collect();
                    s[at] = c;
                    let s: String = s.into_iter().collect();
                    assert_eq!(escaped_len(&s), serde_json::to_string(&s).unwrap().len() - 2, "{s:?}");
                }
                let mut s: Vec<char> = plain.chars().collect();
                s[at] = 'é';
                let s: String = s.into_iter().collect();
                assert_eq!(escaped_len(&s), s.len(), "{s:?}: non-ASCII is not escaped");
            }
        }
        assert_eq!(wrapped(10, ["a", "b"].into_iter()), value(&json!({"a": {"b": null}})) - value(&json!(null)) + 10);
    }

    #[test]
    fn members_and_items_add_up() {
        let mut m = Map::new();
        let mut total = object(&m);
        for (i, k) in ["a", "b\"", "c"].iter().enumerate() {
            let v = json!([i]);
            total += added(m.len(), member(k, value(&v)));
            m.insert(k.to_string(), v);
            assert_eq!(total, object(&m));
        }
        let old = m.remove("b\"").unwrap();
        total -= removed(m.len() + 1, member("b\"", value(&old)));
        assert_eq!(total, object(&m));
    }
}
