//! Patch paths: parses the seed's syntax (`output.value`, `steps[0].output`) and JSON Pointer (`/steps/0/output`)
//! into segments once, enforces the path limits and the read-only fields, and renders resolved paths as JSON Pointer.
//! It knows nothing about runs beyond the names of their top-level fields.

use crate::error::{Error, ErrorCode, Result};
use compact_str::CompactString;
use std::fmt::Write;

/// Top-level context fields a patch may not touch: the engine owns them.
pub const READ_ONLY_FIELDS: [&str; 10] =
    ["id", "timestamp", "operation", "owner", "space", "parentRun", "status", "success", "error", "duration"];

/// Top-level context fields a patch may set but not remove (the context always has them).
pub const CORE_FIELDS: [&str; 7] = ["doctype", "flow", "input", "options", "agent", "steps", "output"];

/// One segment as written by the client. Whether it is an object key or an array index is decided against the
/// value it lands on; `bracket` records the seed's `[n]` form, which can only be an array index.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RawSeg {
    /// Inline up to 24 bytes (no allocation for the usual field names; cloned by copy).
    pub text: CompactString,
    pub index: Option<usize>,
    pub bracket: bool,
}

/// A parsed, validated path: at least one segment, the first being a patchable top-level field.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Path {
    pub segs: Vec<RawSeg>,
    /// The most state bytes a write at this path can add besides its value (the objects built along it, their
    /// keys, a comma): measured once here, read by every admission of the patch.
    pub growth: usize,
}

/// A segment resolved against the run: an object key or an array index.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Seg {
    Key(CompactString),
    Index(usize),
}

/// Limits applied while parsing.
#[derive(Debug, Clone, Copy)]
pub struct PathLimits {
    pub max_bytes: usize,
    pub max_depth: usize,
}

fn bad(msg: impl Into<String>) -> Error {
    Error::new(ErrorCode::BadPath, msg)
}

fn parse_index(s: &str) -> Option<usize> {
    // RFC 6901: no leading zeros (except "0" itself), digits only.
    if s.is_empty() || (s.len() > 1 && s.starts_with('0')) || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

impl Path {
    /// Parses either syntax. A path starting with `/` is a JSON Pointer; anything else is the seed's dotted syntax.
    pub fn parse(input: &str, limits: PathLimits) -> Result<Path> {
        if input.is_empty() {
            return Err(bad("empty path"));
        }
        if input.len() > limits.max_bytes {
            return Err(bad(format!("path longer than {} bytes", limits.max_bytes)));
        }
        let segs = if input.starts_with('/') { parse_pointer(input)? } else { parse_dotted(input)? };
        if segs.len() > limits.max_depth {
            return Err(bad(format!("path deeper than {} segments", limits.max_depth)));
        }
        let first = &segs[0];
        if first.bracket {
            return Err(bad("a path must start with a field name"));
        }
        if READ_ONLY_FIELDS.contains(&&*first.text) {
            return Err(Error::new(ErrorCode::ReadOnlyPath, format!("field `{}` cannot be patched", first.text)));
        }
        let growth = segs.iter().map(|s| 2 * crate::model::size::NODE + 6 + 6 * s.text.len()).sum::<usize>() + 1;
        Ok(Path { segs, growth })
    }

    /// True when the path names a whole core field (`output`, `steps`, ...).
    pub fn is_core_field(&self) -> bool {
        self.segs.len() == 1 && CORE_FIELDS.contains(&&*self.segs[0].text)
    }
}

fn parse_pointer(input: &str) -> Result<Vec<RawSeg>> {
    let mut segs = Vec::new();
    for part in input[1..].split('/') {
        if part.is_empty() {
            return Err(bad("empty segment in JSON Pointer"));
        }
        let text: CompactString = if part.contains('~') {
            let mut out = String::with_capacity(part.len());
            let mut chars = part.chars();
            while let Some(c) = chars.next() {
                if c == '~' {
                    match chars.next() {
                        Some('0') => out.push('~'),
                        Some('1') => out.push('/'),
                        _ => return Err(bad("bad `~` escape in JSON Pointer")),
                    }
                } else {
                    out.push(c);
                }
            }
            out.into()
        } else {
            part.into()
        };
        let index = parse_index(&text);
        segs.push(RawSeg { text, index, bracket: false });
    }
    Ok(segs)
}

/// Byte loops, not `str::find`: paths are a few short segments, where memchr's set-up costs more than the scan.
fn find_byte(s: &str, b: u8) -> Option<usize> {
    s.bytes().position(|c| c == b)
}

fn parse_dotted(input: &str) -> Result<Vec<RawSeg>> {
    let mut segs = Vec::with_capacity(4);
    let mut rest_of_path = Some(input);
    while let Some(path) = rest_of_path {
        // A byte loop rather than `str::split('.')`, whose searcher costs more than these few bytes.
        let (part, more) = match find_byte(path, b'.') {
            Some(i) => (&path[..i], Some(&path[i + 1..])),
            None => (path, None),
        };
        rest_of_path = more;
        let (name, mut rest) = match find_byte(part, b'[') {
            Some(i) => (&part[..i], &part[i..]),
            None => (part, ""),
        };
        if name.is_empty() && (rest.is_empty() || segs.is_empty()) {
            return Err(bad("empty segment in path"));
        }
        if find_byte(name, b']').is_some() {
            return Err(bad("unbalanced `]` in path"));
        }
        if !name.is_empty() {
            segs.push(RawSeg { text: name.into(), index: parse_index(name), bracket: false });
        }
        while !rest.is_empty() {
            let close = find_byte(rest, b']').ok_or_else(|| bad("unclosed `[` in path"))?;
            let inner = &rest[1..close];
            let index = parse_index(inner).ok_or_else(|| bad(format!("`[{inner}]` is not an array index")))?;
            segs.push(RawSeg { text: inner.into(), index: Some(index), bracket: true });
            rest = &rest[close + 1..];
            if !rest.is_empty() && !rest.starts_with('[') {
                return Err(bad("unexpected text after `]`"));
            }
        }
    }
    Ok(segs)
}

/// Appends `segs` to `out` as JSON Pointer segments (each preceded by `/`, with `~` and `/` escaped).
pub fn write_pointer(out: &mut String, segs: &[Seg]) {
    for seg in segs {
        out.push('/');
        match seg {
            Seg::Index(i) => {
                let _ = write!(out, "{i}");
            }
            Seg::Key(k) => push_escaped(out, k),
        }
    }
}

/// Appends one JSON Pointer segment's text with `~` and `/` escaped.
pub fn push_escaped(out: &mut String, key: &str) {
    if key.contains(['~', '/']) {
        for c in key.chars() {
            match c {
                '~' => out.push_str("~0"),
                '/' => out.push_str("~1"),
                c => out.push(c),
            }
        }
    } else {
        out.push_str(key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: PathLimits = PathLimits { max_bytes: 256, max_depth: 8 };

    fn texts(p: &str) -> Vec<String> {
        Path::parse(p, LIMITS).unwrap().segs.iter().map(|s| s.text.to_string()).collect()
    }

    fn code(p: &str) -> ErrorCode {
        Path::parse(p, LIMITS).unwrap_err().code
    }

    #[test]
    fn both_syntaxes_give_the_same_segments() {
        assert_eq!(texts("steps[0].output.value"), ["steps", "0", "output", "value"]);
        assert_eq!(texts("/steps/0/output/value"), ["steps", "0", "output", "value"]);
        assert_eq!(texts("output.rows[2][3]"), ["output", "rows", "2", "3"]);
        assert_eq!(texts("/output/a~1b~0c"), ["output", "a/b~c"]);
    }

    #[test]
    fn brackets_are_indexes_and_pointer_digits_may_be_either() {
        let p = Path::parse("steps[0]", LIMITS).unwrap();
        assert!(p.segs[1].bracket && p.segs[1].index == Some(0));
        let p = Path::parse("/steps/0", LIMITS).unwrap();
        assert!(!p.segs[1].bracket && p.segs[1].index == Some(0));
        let p = Path::parse("/output/01", LIMITS).unwrap();
        assert_eq!(p.segs[1].index, None, "leading zero is a key, not an index");
    }

    #[test]
    fn bad_paths_are_rejected() {
        for p in ["", ".", "a..b", "output[", "output[x]", "output[1]x", "/", "/output//x", "/output/~2", "[0]", "a]"] {
            assert_eq!(code(p), ErrorCode::BadPath, "{p:?}");
        }
        assert_eq!(code(&"a.".repeat(200)), ErrorCode::BadPath);
        assert_eq!(code("output.a.b.c.d.e.f.g.h"), ErrorCode::BadPath, "too deep");
    }

    #[test]
    fn read_only_fields_are_rejected_in_both_syntaxes() {
        for p in ["status", "/status", "id", "owner.name", "/parentRun", "duration", "error.message"] {
            assert_eq!(code(p), ErrorCode::ReadOnlyPath, "{p:?}");
        }
    }

    #[test]
    fn pointers_escape_on_the_way_out() {
        let mut s = String::new();
        write_pointer(&mut s, &[Seg::Key("a/b~".into()), Seg::Index(3)]);
        assert_eq!(s, "/a~1b~0/3");
    }
}
