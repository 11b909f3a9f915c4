//! JSON exactly as Python's `json.dump(obj, f, sort_keys=True, indent=4)` writes it, which is how
//! nnU-Net saves `summary.json` and `postprocessing.json` (`batchgenerators save_json`).
//!
//! serde_json cannot represent NaN (it writes `null`), but nnU-Net's summaries hold NaN for labels
//! absent from both masks, and Python writes it as the bare token `NaN`. This module keeps a small
//! value tree that distinguishes ints from floats (nnU-Net writes per-case counts as `5` and means
//! as `5.0`), formats floats like Python's `repr`, and parses files that contain `NaN`/`Infinity`.
use crate::{Error, Result};
use std::collections::BTreeMap;
use std::path::Path;

/// A JSON value as Python's `json` module sees it.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
    List(Vec<Value>),
    /// Keys are sorted on output (`sort_keys=True`); a BTreeMap sorts by code point like Python.
    Dict(BTreeMap<String, Value>),
}

impl Value {
    pub fn get(&self, key: &str) -> Option<&Value> {
        match self {
            Value::Dict(m) => m.get(key),
            _ => None,
        }
    }
    /// The number as f64 (ints converted), or None.
    pub fn as_f64(&self) -> Option<f64> {
        match self {
            Value::Int(i) => Some(*i as f64),
            Value::Float(f) => Some(*f),
            _ => None,
        }
    }
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::Str(s) => Some(s),
            _ => None,
        }
    }
    pub fn dict(entries: impl IntoIterator<Item = (String, Value)>) -> Value {
        Value::Dict(entries.into_iter().collect())
    }
}

/// Serializes through serde (e.g. into `serde_json::Value`): NaN becomes whatever the serializer
/// does with a non-finite float (`null` for serde_json), ints stay ints.
impl serde::Serialize for Value {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        use serde::ser::{SerializeMap, SerializeSeq};
        match self {
            Value::Null => s.serialize_unit(),
            Value::Bool(b) => s.serialize_bool(*b),
            Value::Int(i) => s.serialize_i64(*i),
            Value::Float(f) => s.serialize_f64(*f),
            Value::Str(v) => s.serialize_str(v),
            Value::List(items) => {
                let mut seq = s.serialize_seq(Some(items.len()))?;
                for i in items {
                    seq.serialize_element(i)?;
                }
                seq.end()
            }
            Value::Dict(m) => {
                let mut map = s.serialize_map(Some(m.len()))?;
                for (k, v) in m {
                    map.serialize_entry(k, v)?;
                }
                map.end()
            }
        }
    }
}

/// Python's `repr(float)`: shortest round-trip digits, fixed notation for exponents in [-4, 16),
/// scientific (`1e-05`, `1.5e+16`) otherwise, `NaN`/`Infinity` as `json` writes them.
pub fn float_repr(x: f64) -> String {
    if x.is_nan() {
        return "NaN".into();
    }
    if x.is_infinite() {
        return if x > 0.0 { "Infinity".into() } else { "-Infinity".into() };
    }
    if x == 0.0 {
        return if x.is_sign_negative() { "-0.0".into() } else { "0.0".into() };
    }
    // Rust's `{:e}` without precision prints the shortest round-trip digits, like Python's repr.
    let s = format!("{x:e}");
    let (mant, exp) = s.split_once('e').expect("LowerExp always has an exponent");
    let exp: i32 = exp.parse().expect("integer exponent");
    let (sign, mant) = match mant.strip_prefix('-') {
        Some(m) => ("-", m),
        None => ("", mant),
    };
    let digits: String = mant.chars().filter(|c| *c != '.').collect();
    let out = if (-4..16).contains(&exp) {
        let decpt = exp + 1; // digits before the decimal point
        if decpt <= 0 {
            format!("0.{}{}", "0".repeat((-decpt) as usize), digits)
        } else if decpt as usize >= digits.len() {
            format!("{}{}.0", digits, "0".repeat(decpt as usize - digits.len()))
        } else {
            format!("{}.{}", &digits[..decpt as usize], &digits[decpt as usize..])
        }
    } else {
        let rest = &digits[1..];
        let m = if rest.is_empty() { digits[..1].to_string() } else { format!("{}.{}", &digits[..1], rest) };
        format!("{m}e{}{:02}", if exp < 0 { '-' } else { '+' }, exp.abs())
    };
    format!("{sign}{out}")
}

fn write_str(out: &mut String, s: &str) {
    // ensure_ascii=True: non-ASCII as \uXXXX (UTF-16 units).
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            c if (c as u32) < 0x20 || (c as u32) > 0x7e => {
                let mut buf = [0u16; 2];
                for u in c.encode_utf16(&mut buf) {
                    out.push_str(&format!("\\u{:04x}", u));
                }
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

fn write_value(out: &mut String, v: &Value, level: usize) {
    let pad = |n: usize| "    ".repeat(n);
    match v {
        Value::Null => out.push_str("null"),
        Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Value::Int(i) => out.push_str(&i.to_string()),
        Value::Float(f) => out.push_str(&float_repr(*f)),
        Value::Str(s) => write_str(out, s),
        Value::List(items) => {
            if items.is_empty() {
                out.push_str("[]");
                return;
            }
            out.push_str("[\n");
            for (i, item) in items.iter().enumerate() {
                out.push_str(&pad(level + 1));
                write_value(out, item, level + 1);
                if i + 1 < items.len() {
                    out.push(',');
                }
                out.push('\n');
            }
            out.push_str(&pad(level));
            out.push(']');
        }
        Value::Dict(map) => {
            if map.is_empty() {
                out.push_str("{}");
                return;
            }
            out.push_str("{\n");
            for (i, (k, item)) in map.iter().enumerate() {
                out.push_str(&pad(level + 1));
                write_str(out, k);
                out.push_str(": ");
                write_value(out, item, level + 1);
                if i + 1 < map.len() {
                    out.push(',');
                }
                out.push('\n');
            }
            out.push_str(&pad(level));
            out.push('}');
        }
    }
}

/// `json.dumps(v, sort_keys=True, indent=4)`.
pub fn to_string(v: &Value) -> String {
    let mut out = String::new();
    write_value(&mut out, v, 0);
    out
}

/// Writes `v` atomically in Python's layout (no trailing newline, like `json.dump`).
pub fn save(path: &Path, v: &Value) -> Result<()> {
    crate::hash::write_atomic(path, to_string(v).as_bytes())
}

const NAN_SENTINEL: &str = "\u{1}NaN";
const INF_SENTINEL: &str = "\u{1}Infinity";
const NEG_INF_SENTINEL: &str = "\u{1}-Infinity";

/// Parses JSON that may hold Python's `NaN`, `Infinity` and `-Infinity` tokens.
pub fn parse(text: &str) -> std::result::Result<Value, String> {
    // Replace the bare tokens (outside strings) with sentinel strings serde_json accepts.
    let mut cleaned = String::with_capacity(text.len());
    let mut in_str = false;
    let mut escaped = false;
    let mut rest = text;
    while let Some(c) = rest.chars().next() {
        if in_str {
            cleaned.push(c);
            if escaped {
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == '"' {
                in_str = false;
            }
            rest = &rest[c.len_utf8()..];
            continue;
        }
        if c == '"' {
            in_str = true;
        } else {
            let mut hit = None;
            for (tok, sent) in [("NaN", NAN_SENTINEL), ("-Infinity", NEG_INF_SENTINEL), ("Infinity", INF_SENTINEL)] {
                if rest.starts_with(tok) {
                    hit = Some((tok.len(), sent));
                    break;
                }
            }
            if let Some((n, sent)) = hit {
                cleaned.push('"');
                cleaned.push_str(&sent.replace('\u{1}', "\\u0001"));
                cleaned.push('"');
                rest = &rest[n..];
                continue;
            }
        }
        cleaned.push(c);
        rest = &rest[c.len_utf8()..];
    }
    let v: serde_json::Value = serde_json::from_str(&cleaned).map_err(|e| e.to_string())?;
    Ok(from_serde(v))
}

fn from_serde(v: serde_json::Value) -> Value {
    match v {
        serde_json::Value::Null => Value::Null,
        serde_json::Value::Bool(b) => Value::Bool(b),
        serde_json::Value::Number(n) => {
            if let Some(i) = n.as_i64() {
                Value::Int(i)
            } else {
                Value::Float(n.as_f64().unwrap_or(f64::NAN))
            }
        }
        serde_json::Value::String(s) => match s.as_str() {
            NAN_SENTINEL => Value::Float(f64::NAN),
            INF_SENTINEL => Value::Float(f64::INFINITY),
            NEG_INF_SENTINEL => Value::Float(f64::NEG_INFINITY),
            _ => Value::Str(s),
        },
        serde_json::Value::Array(a) => Value::List(a.into_iter().map(from_serde).collect()),
        serde_json::Value::Object(o) => Value::Dict(o.into_iter().map(|(k, v)| (k, from_serde(v))).collect()),
    }
}

/// Reads a Python-written JSON file (NaN allowed).
pub fn load(path: &Path) -> Result<Value> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    parse(&text).map_err(|m| Error::format(path, format!("cannot parse JSON: {m}")))
}

/// Converts a serde_json value (no NaN possible) into a [`Value`].
pub fn from_json(v: serde_json::Value) -> Value {
    from_serde(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn floats_print_like_python_repr() {
        // python3 -c "print([repr(x) for x in [0.5, 1.0, 2/3, 1e-05, 0.0001, 1e16, 1e15, 1.5e16, 123.456, -2.5e-7, 100.0]])"
        let cases = [
            (0.5, "0.5"),
            (1.0, "1.0"),
            (2.0 / 3.0, "0.6666666666666666"),
            (1e-05, "1e-05"),
            (0.0001, "0.0001"),
            (1e16, "1e+16"),
            (1e15, "1000000000000000.0"),
            (1.5e16, "1.5e+16"),
            (123.456, "123.456"),
            (-2.5e-7, "-2.5e-07"),
            (100.0, "100.0"),
        ];
        for (x, want) in cases {
            assert_eq!(float_repr(x), want, "{x}");
        }
        assert_eq!(float_repr(f64::NAN), "NaN");
    }

    #[test]
    fn layout_matches_json_dump_indent_4() {
        // python3 -c "import json; print(json.dumps({'b': [1, 2.0], 'a': {'x': float('nan')}, 'c': [], 'd': 'é'}, sort_keys=True, indent=4))"
        let v = Value::dict([
            ("b".to_string(), Value::List(vec![Value::Int(1), Value::Float(2.0)])),
            ("a".to_string(), Value::dict([("x".to_string(), Value::Float(f64::NAN))])),
            ("c".to_string(), Value::List(vec![])),
            ("d".to_string(), Value::Str("é".into())),
        ]);
        let want = "{\n    \"a\": {\n        \"x\": NaN\n    },\n    \"b\": [\n        1,\n        2.0\n    ],\n    \"c\": [],\n    \"d\": \"\\u00e9\"\n}";
        assert_eq!(to_string(&v), want);
        let back = parse(want).unwrap();
        assert!(back.get("a").unwrap().get("x").unwrap().as_f64().unwrap().is_nan());
        assert_eq!(back.get("b"), Some(&Value::List(vec![Value::Int(1), Value::Float(2.0)])));
        assert_eq!(back.get("d").unwrap().as_str(), Some("é"));
    }

    #[test]
    fn nan_inside_strings_is_left_alone() {
        let v = parse(r#"{"NaN": "NaN file", "v": -Infinity}"#).unwrap();
        assert_eq!(v.get("NaN").unwrap().as_str(), Some("NaN file"));
        assert_eq!(v.get("v").unwrap().as_f64(), Some(f64::NEG_INFINITY));
    }
}
