//! The fast path for the hottest frame: a `patch` as producers send it (`{"type":"patch","run":"<uuid>","ops":[…]}`,
//! keys in any order, an optional `id`). It reads the envelope with a few byte comparisons instead of serde's
//! derive, copies a string value without escapes as it is, leaves every other value (`id`, an op's `value` and
//! `index`) to serde_json itself, and turns each op into a [`PatchOp`] with the general path's own `patch_op`.
//!
//! It checks the depth limit on the values it reads (the only part of such a frame that can nest), so a frame it
//! takes is never scanned twice. It never decides an error: anything it does not recognise exactly (an escape in a
//! key or a plain string, an unknown or repeated key, an invalid value, a failing op, trailing text) makes it
//! answer `None`, and the general parser reads the frame from the start, so every message and every error is the
//! general parser's. `tests::fast_path_agrees_with_the_general_parser` checks that whatever it accepts, the general
//! parser accepts the same way: a change to what the general parser accepts in a `patch` must be made here too,
//! and taught to that test's generator.

use super::{
    ClientMsg, Element, ParseLimits, WireOp, escaped_in_json, json_depth_exceeds, parse_uuid, patch_op, valid_id,
};
use crate::model::patch::PatchOp;
use serde_json::Value;
use std::borrow::Cow;

/// Parses `text` when it is a `patch` or a `patches` frame the fast path recognises and the general parser would
/// accept; else `None`.
pub(super) fn patch(text: &str, limits: &ParseLimits) -> Option<ClientMsg> {
    // A `patch`'s object, `ops` array and op objects nest three deep; a `patches` frame's `patches` array and
    // element objects, two more.
    let depth = |levels: usize| limits.max_json_depth.checked_sub(levels);
    let mut s = Scan(text);
    s.byte(b'{')?;
    let (mut ty, mut id, mut run, mut ops, mut elements) = (None, None, None, None, None);
    loop {
        let key = s.plain_string()?;
        s.byte(b':')?;
        match key {
            "type" if ty.is_none() => ty = Some(s.plain_string()?),
            "id" if id.is_none() => id = Some(s.value(depth(1)?)?.0),
            "run" if run.is_none() => run = Some(parse_uuid(s.plain_string()?, "run").ok()?),
            "ops" if ops.is_none() => ops = Some(s.ops(limits, depth(3)?)?),
            "patches" if elements.is_none() => elements = Some(s.elements(limits, depth(5)?)?),
            _ => return None,
        }
        if !s.comma_or(b'}')? {
            break;
        }
    }
    s.end()?;
    let id = id.filter(|v: &Value| !v.is_null());
    if !id.as_ref().is_none_or(valid_id) {
        return None;
    }
    match (ty?, run, ops, elements) {
        ("patch", Some(run), Some(ops), None) => Some(ClientMsg::Patch { id, run, ops }),
        ("patches", None, None, Some(elements)) => Some(ClientMsg::Patches { id, elements }),
        _ => None,
    }
}

/// What is left of the frame. Every method consumes what it read, skipping JSON whitespace before it.
struct Scan<'a>(&'a str);

impl<'a> Scan<'a> {
    fn skip_ws(&mut self) {
        let gap = self.0.bytes().take_while(|b| matches!(b, b' ' | b'\t' | b'\n' | b'\r')).count();
        self.0 = &self.0[gap..];
    }

    fn byte(&mut self, b: u8) -> Option<()> {
        self.skip_ws();
        (self.0.as_bytes().first() == Some(&b)).then(|| self.0 = &self.0[1..])
    }

    /// After an item: `true` on `,`, `false` on `close`.
    fn comma_or(&mut self, close: u8) -> Option<bool> {
        self.skip_ws();
        let more = match self.0.as_bytes().first()? {
            b',' => true,
            b if *b == close => false,
            _ => return None,
        };
        self.0 = &self.0[1..];
        Some(more)
    }

    /// A string without escapes or control characters, borrowed from the frame.
    fn plain_string(&mut self) -> Option<&'a str> {
        self.byte(b'"')?;
        // One byte loop, not `str::find`: these strings are short, where memchr's set-up costs more than the scan.
        let len = self.0.bytes().position(escaped_in_json)?;
        (self.0.as_bytes()[len] == b'"').then_some(())?;
        let (text, rest) = self.0.split_at(len);
        self.0 = &rest[1..];
        Some(text)
    }

    /// Any JSON value, read by serde_json, if it nests at most `depth` deep (the frame's limit, less the levels
    /// around the value); with its state bytes when they are known without another pass (a plain string).
    fn value(&mut self, depth: usize) -> Option<(Value, Option<usize>)> {
        // The usual token, a string without escapes, is taken as it is; serde_json reads anything else.
        let mut string = Scan(self.0);
        if let Some(text) = string.plain_string() {
            self.0 = string.0;
            return Some((Value::String(text.to_owned()), Some(crate::model::size::plain_string(text.len()))));
        }
        let mut values = serde_json::Deserializer::from_str(self.0).into_iter::<Value>();
        let value = values.next()?.ok()?;
        let (text, rest) = self.0.split_at(values.byte_offset());
        if (value.is_array() || value.is_object()) && json_depth_exceeds(text, depth) {
            return None;
        }
        self.0 = rest;
        Some((value, None))
    }

    /// `[op, …]`: at least one op and at most the limit, each one a valid patch op.
    fn ops(&mut self, limits: &ParseLimits, value_depth: usize) -> Option<Vec<PatchOp>> {
        self.byte(b'[')?;
        let mut ops = Vec::new();
        loop {
            ops.push(patch_op(self.op(value_depth)?, limits).ok()?);
            if ops.len() > limits.max_ops_per_patch {
                return None;
            }
            if !self.comma_or(b']')? {
                return Some(ops);
            }
        }
    }

    /// `[{"run":…,"ops":[…]}, …]`: at least one element and at most the limit, each valid, with at most the
    /// frame's limit of ops in all.
    fn elements(&mut self, limits: &ParseLimits, value_depth: usize) -> Option<Vec<Element>> {
        self.byte(b'[')?;
        let (mut elements, mut total_ops) = (Vec::new(), 0);
        loop {
            self.byte(b'{')?;
            let (mut run, mut ops) = (None, None);
            loop {
                let key = self.plain_string()?;
                self.byte(b':')?;
                match key {
                    "run" if run.is_none() => run = Some(parse_uuid(self.plain_string()?, "run").ok()?),
                    "ops" if ops.is_none() => ops = Some(self.ops(limits, value_depth)?),
                    _ => return None,
                }
                if !self.comma_or(b'}')? {
                    break;
                }
            }
            let ops: Vec<PatchOp> = ops?;
            total_ops += ops.len();
            elements.push(Element::Valid { run: run?, ops });
            if elements.len() > limits.max_patches_per_frame || total_ops > limits.max_ops_per_frame {
                return None;
            }
            if !self.comma_or(b']')? {
                return Some(elements);
            }
        }
    }

    /// `{"op":…,"path":…,"value":…,"index":…}`, keys in any order, each at most once.
    fn op(&mut self, value_depth: usize) -> Option<WireOp<'a>> {
        self.byte(b'{')?;
        let mut op = WireOp { op: Cow::Borrowed(""), path: None, value: None, index: None, cost: None };
        let mut named = false;
        loop {
            let key = self.plain_string()?;
            self.byte(b':')?;
            match key {
                "op" if !named => {
                    op.op = Cow::Borrowed(self.plain_string()?);
                    named = true;
                }
                "path" if op.path.is_none() => op.path = Some(Cow::Borrowed(self.plain_string()?)),
                "value" if op.value.is_none() => {
                    let (value, cost) = self.value(value_depth)?;
                    (op.value, op.cost) = (Some(value), cost);
                }
                "index" if op.index.is_none() => op.index = Some(self.value(value_depth)?.0.as_u64()?),
                _ => return None,
            }
            if !self.comma_or(b'}')? {
                return named.then_some(op);
            }
        }
    }

    /// Nothing but whitespace left.
    fn end(&mut self) -> Option<()> {
        self.skip_ws();
        self.0.is_empty().then_some(())
    }
}

#[cfg(test)]
mod tests {
    use super::super::parse_general;
    use super::*;
    use crate::model::path::PathLimits;
    use proptest::prelude::*;
    use proptest::test_runner::{Config, TestRunner};

    const LIMITS: ParseLimits = ParseLimits {
        path: PathLimits { max_bytes: 64, max_depth: 4 },
        max_ops_per_patch: 3,
        max_patches_per_frame: 3,
        max_ops_per_frame: 5,
        max_json_depth: 8,
    };
    const RUN: &str = "0190f5c2-0000-7000-8000-000000000001";

    /// JSON whitespace, or none, or (rarely) a form feed, which JSON does not allow.
    fn ws() -> impl Strategy<Value = &'static str> {
        prop_oneof![200 => Just(""), 10 => Just(" "), 5 => Just("\n\t"), 2 => Just("\r"), 1 => Just("\u{c}")]
    }

    /// Any JSON value, as valid JSON text, sometimes deep; or a few texts that are not JSON.
    fn value() -> impl Strategy<Value = String> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::from),
            any::<i64>().prop_map(Value::from),
            any::<u64>().prop_map(Value::from),
            (-1e9f64..1e9).prop_map(Value::from),
            "[a-z0-9 \"\\\\\u{e9}\u{1F600}\n]{0,12}".prop_map(Value::from),
        ];
        let json = leaf.prop_recursive(8, 32, 4, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(Value::from),
                prop::collection::vec(("[a-z]{1,3}", inner), 0..4)
                    .prop_map(|kv| Value::Object(kv.into_iter().collect())),
            ]
        });
        prop_oneof![
            20 => json.prop_map(|v| v.to_string()),
            1 => prop::sample::select(vec!["tru", "01", "1.", "-", "\"a", "\"a\tb\"", "[1,]", "{\"a\":1,}", "1e", "\"\\x\"", ""])
                .prop_map(String::from),
        ]
    }

    /// A JSON string literal: plain, with an escape, or with a raw control character (not JSON).
    fn string_of(plain: Vec<&'static str>) -> impl Strategy<Value = String> {
        prop_oneof![
            60 => prop::sample::select(plain).prop_map(|s| format!("\"{s}\"")),
            1 => Just(r#""p\u0061tch""#.to_string()),
            1 => Just("\"a\tb\"".to_string()),
            1 => Just("null".to_string()),
            1 => Just("7".to_string()),
        ]
    }

    /// `{"key":value,…}` from the given members in the given order, with whitespace between the tokens.
    fn object(members: Vec<(String, String)>, gaps: Vec<&'static str>) -> String {
        let gap = |i: usize| gaps[i % gaps.len()];
        let mut out = format!("{{{}", gap(0));
        for (i, (k, v)) in members.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            out.push_str(&format!("{}{k}{}:{}{v}{}", gap(i + 1), gap(i + 2), gap(i + 3), gap(i + 4)));
        }
        out.push('}');
        out
    }

    /// Members kept each with its own probability, shuffled, and maybe one repeated or one unknown key.
    fn members(
        candidates: Vec<(f64, BoxedStrategy<(String, String)>)>,
    ) -> impl Strategy<Value = Vec<(String, String)>> {
        let (odds, members): (Vec<f64>, Vec<_>) = candidates.into_iter().unzip();
        let keep: Vec<_> = odds.into_iter().map(prop::bool::weighted).collect();
        (members, keep, 0..30usize, any::<prop::sample::Index>()).prop_flat_map(|(members, keep, extra, which)| {
            let mut kept: Vec<(String, String)> =
                members.into_iter().zip(keep).filter(|(_, k)| *k).map(|(m, _)| m).collect();
            match extra {
                0 | 2 if !kept.is_empty() => kept.push(kept[which.index(kept.len())].clone()),
                1 => kept.push(("\"extra\"".into(), "1".into())),
                _ => {}
            }
            Just(kept).prop_shuffle()
        })
    }

    fn member(key: &'static str, value: impl Strategy<Value = String> + 'static) -> BoxedStrategy<(String, String)> {
        value.prop_map(move |v| (format!("\"{key}\""), v)).boxed()
    }

    fn op_text() -> impl Strategy<Value = String> {
        let op = prop_oneof![
            20 => string_of(vec!["set", "append", "append"]),
            1 => string_of(vec!["remove", "step", "merge"]),
        ];
        let path = prop_oneof![
            20 => string_of(vec!["output.tokens", "output.tokens", "/output/text", "output.a", "steps[0].x"]),
            1 => string_of(vec!["", "a..b", "id", "a.b.c.d.e"]),
        ];
        let index = prop::sample::select(vec!["0", "0", "3", "-1", "1.5", "\"2\"", "null"]).prop_map(String::from);
        let members = members(vec![
            (0.97, member("op", op)),
            (0.95, member("path", path)),
            (0.9, member("value", value())),
            (0.1, member("index", index)),
        ]);
        (members, prop::collection::vec(ws(), 1..6)).prop_map(|(m, gaps)| object(m, gaps))
    }

    fn run_text() -> impl Strategy<Value = String> {
        string_of(vec![RUN, RUN, RUN, RUN, RUN, RUN, "not-a-uuid", "{0190f5c2-0000-7000-8000-000000000001}"])
    }

    fn ops_text() -> impl Strategy<Value = String> {
        prop_oneof![
            40 => prop_oneof![9 => 1..4usize, 1 => 0..6usize]
                .prop_flat_map(|n| prop::collection::vec(op_text(), n))
                .prop_map(|ops| format!("[{}]", ops.join(","))),
            1 => Just("{}".to_string()),
            1 => Just("[{\"op\":\"set\",\"path\":\"x\",\"value\":1},]".to_string()),
        ]
    }

    /// A `patches` array: elements of a run and ops (sometimes more than the limits allow), or not an array.
    fn elements_text() -> impl Strategy<Value = String> {
        let element = (
            members(vec![(0.97, member("run", run_text())), (0.97, member("ops", ops_text()))]),
            prop::collection::vec(ws(), 1..4),
        )
            .prop_map(|(m, gaps)| object(m, gaps))
            .boxed();
        prop_oneof![
            40 => prop_oneof![9 => 1..4usize, 1 => 0..6usize]
                .prop_flat_map(move |n| prop::collection::vec(element.clone(), n))
                .prop_map(|els| format!("[{}]", els.join(","))),
            1 => Just("{}".to_string()),
            1 => Just("[1]".to_string()),
        ]
    }

    fn frame() -> impl Strategy<Value = String> {
        // Mostly the type the members are for, sometimes the other one or another.
        let ty = |usual: &'static str, other: &'static str| {
            string_of(vec![usual, usual, usual, usual, usual, usual, usual, usual, other, "run", "Patch"])
        };
        let id = || prop_oneof![1 => value(), 4 => Just("12".to_string()), 2 => Just("\"r-1\"".to_string())];
        let trailing = prop::sample::select(vec!["", "", "", "", "", "", "", "", "", "", "", " \n", "x", "\u{c}", "}"]);
        // A `patch` frame's members, or a `patches` frame's (each sometimes with the other's).
        let members = prop_oneof![
            members(vec![
                (0.97, member("type", ty("patch", "patches"))),
                (0.4, member("id", id())),
                (0.97, member("run", run_text())),
                (0.97, member("ops", ops_text())),
                (0.02, member("patches", elements_text())),
            ]),
            members(vec![
                (0.97, member("type", ty("patches", "patch"))),
                (0.4, member("id", id())),
                (0.97, member("patches", elements_text())),
                (0.02, member("run", run_text())),
            ]),
        ];
        (members, prop::collection::vec(ws(), 1..6), trailing)
            .prop_map(|(m, gaps, trailing)| object(m, gaps) + trailing)
    }

    /// Whatever the fast path accepts, the general parser accepts as the same message; and the fast path is not
    /// idle: it takes a good share of the generated frames.
    #[test]
    fn fast_path_agrees_with_the_general_parser() {
        let mut runner = TestRunner::new(Config { cases: 5_000, ..Config::default() });
        let (taken, batches) = (std::cell::Cell::new(0u32), std::cell::Cell::new(0u32));
        runner
            .run(&frame(), |text| {
                if let Some(fast) = patch(&text, &LIMITS) {
                    taken.set(taken.get() + 1);
                    batches.set(batches.get() + u32::from(matches!(fast, ClientMsg::Patches { .. })));
                    prop_assert_eq!(Ok(fast), parse_general(&text, &LIMITS), "frame: {}", text);
                }
                Ok(())
            })
            .unwrap();
        // About 350 and 75 are usual (the runner's seed is random); the bounds are far below, so that only an idle
        // fast path fails them.
        assert!(taken.get() > 150, "the fast path took only {} of 5,000 frames", taken.get());
        assert!(batches.get() > 25, "the fast path took only {} `patches` frames of 5,000", batches.get());
    }

    #[test]
    fn takes_the_frames_producers_send() {
        let canonical = [
            format!(
                r#"{{"type":"patch","run":"{RUN}","ops":[{{"op":"append","path":"output.tokens","value":"7:1"}}]}}"#
            ),
            format!(
                r#"{{"type":"patch","id":3,"run":"{RUN}","ops":[{{"op":"set","path":"/output/text","value":{{"a":[1,2.5,"\u00e9\n"]}}}},{{"op":"step","index":0,"value":{{"s":1}}}},{{"op":"remove","path":"output.x"}}]}}"#
            ),
            format!(
                " {{ \"ops\" : [ {{ \"value\" : null , \"path\" : \"a\" , \"op\" : \"set\" }} ] , \"run\" : \"{RUN}\" , \"id\" : \"q\" , \"type\" : \"patch\" }} \n"
            ),
            format!(
                r#"{{"type":"patches","patches":[{{"run":"{RUN}","ops":[{{"op":"append","path":"output.tokens","value":"7:1"}}]}},{{"ops":[{{"op":"set","path":"output.x","value":2}}],"run":"{RUN}"}}]}}"#
            ),
            format!(
                r#"{{"patches":[{{"run":"{RUN}","ops":[{{"op":"remove","path":"output.x"}}]}}],"id":9,"type":"patches"}}"#
            ),
        ];
        for text in canonical {
            let fast = patch(&text, &LIMITS).unwrap_or_else(|| panic!("fast path refused {text}"));
            assert_eq!(Ok(fast), parse_general(&text, &LIMITS), "{text}");
        }
    }

    #[test]
    fn leaves_every_error_to_the_general_parser() {
        let refused = [
            format!(r#"{{"type":"patch","run":"{RUN}","ops":[]}}"#),
            format!(r#"{{"type":"patch","run":"{RUN}","ops":[{{"op":"set","path":"","value":1}}]}}"#),
            format!(r#"{{"type":"patch","run":"{RUN}","ops":[{{"op":"set","path":"x","value":1}}],"ops":[]}}"#),
            format!(r#"{{"type":"patch","id":null,"run":"{RUN}","ops":[{{"op":"set","path":"x","value":1}}]}}x"#),
            format!(r#"{{"type":"patch","id":[1],"run":"{RUN}","ops":[{{"op":"set","path":"x","value":1}}]}}"#),
            r#"{"type":"patch","run":"nope","ops":[{"op":"set","path":"x","value":1}]}"#.to_string(),
            format!(r#"{{"type":"patch","run":"{RUN}","ops":[{{"op":"set","path":"x","value":[[[[[[1]]]]]]}}]}}"#),
            format!(
                r#"{{"type":"patch","id":[[[[[[[[1]]]]]]]],"run":"{RUN}","ops":[{{"op":"set","path":"x","value":1}}]}}"#
            ),
            format!(
                r#"{{"type":"patches","patches":[{{"run":"{RUN}","ops":[{{"op":"set","path":"x","value":[[[[1]]]]}}]}}]}}"#
            ),
            r#"{"type":"patches","patches":[]}"#.to_string(),
            format!(r#"{{"type":"patches","patches":[{{"run":"{RUN}","ops":[]}}]}}"#),
            format!(
                r#"{{"type":"patches","patches":[{{"run":"{RUN}","ops":[{{"op":"set","path":"x","value":1}}],"x":1}}]}}"#
            ),
        ];
        for text in refused {
            assert_eq!(patch(&text, &LIMITS), None, "{text}");
            // A `patches` frame's element errors are the element's own: the frame parses, that element does not.
            let general = parse_general(&text, &LIMITS);
            let element_refused = |m: &ClientMsg| {
                matches!(m, ClientMsg::Patches { elements, .. }
                    if elements.iter().any(|e| matches!(e, Element::Invalid { .. })))
            };
            assert!(general.as_ref().map_or(true, element_refused), "{text}: {general:?}");
        }
    }
}
