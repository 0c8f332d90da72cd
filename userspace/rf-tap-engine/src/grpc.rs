//! gRPC over HTTP/2, read from exchanges: the service and method from the path
//! (`/package.Service/Method`), the length-prefixed messages of each body (a compressed
//! flag and a 4-byte length; `grpc-encoding: gzip` inflated), `grpc-status` and
//! `grpc-message` from the trailers as the call's outcome, and protobuf messages decoded
//! without their .proto files into field-number trees (`1: "alice", 2: {1: 42}`), as
//! `protoc --decode_raw` shows them. `application/grpc+json` messages are JSON.
//!
//! Everything here reads bytes from the network: lengths are checked before use, nesting is
//! bounded ([`MAX_DEPTH`]), and inflated messages are bounded ([`MAX_MESSAGE`]).

use std::{fmt::Write as _, io::Read as _};

use serde_json::Value as Json;

use crate::http::message::Headers;

/// Deepest nesting decoded as messages (deeper length-delimited fields stay bytes).
pub const MAX_DEPTH: usize = 16;
/// Most bytes one inflated message may have.
pub const MAX_MESSAGE: usize = 4 << 20;
/// Most messages read from one body.
pub const MAX_MESSAGES: usize = 4096;

/// Whether a message's headers say gRPC (`content-type: application/grpc[+proto|+json]`).
pub fn is_grpc(headers: &Headers) -> bool {
    headers
        .get_str("content-type")
        .is_some_and(|c| c.to_ascii_lowercase().starts_with("application/grpc"))
}

fn is_json(headers: &Headers) -> bool {
    headers
        .get_str("content-type")
        .is_some_and(|c| c.to_ascii_lowercase().starts_with("application/grpc+json"))
}

/// `("package.Service", "Method")` from a gRPC path.
pub fn service_method(path: &str) -> Option<(&str, &str)> {
    let (service, method) = path.strip_prefix('/')?.split_once('/')?;
    (!service.is_empty() && !method.is_empty() && !method.contains('/'))
        .then_some((service, method))
}

/// The name of a gRPC status code (the canonical codes of grpc/doc/statuscodes.md).
pub fn status_name(code: u32) -> &'static str {
    match code {
        0 => "OK",
        1 => "CANCELLED",
        2 => "UNKNOWN",
        3 => "INVALID_ARGUMENT",
        4 => "DEADLINE_EXCEEDED",
        5 => "NOT_FOUND",
        6 => "ALREADY_EXISTS",
        7 => "PERMISSION_DENIED",
        8 => "RESOURCE_EXHAUSTED",
        9 => "FAILED_PRECONDITION",
        10 => "ABORTED",
        11 => "OUT_OF_RANGE",
        12 => "UNIMPLEMENTED",
        13 => "INTERNAL",
        14 => "UNAVAILABLE",
        15 => "DATA_LOSS",
        16 => "UNAUTHENTICATED",
        _ => "?",
    }
}

/// A response's `grpc-status` (from its trailers, or its headers in a trailers-only
/// response).
pub fn status(headers: &Headers) -> Option<u32> {
    headers.get_str("grpc-status")?.trim().parse().ok()
}

/// `grpc-message`, percent-decoded (RFC 3986 escapes, as gRPC sends it).
pub fn message(headers: &Headers) -> Option<String> {
    let raw = headers.get("grpc-message")?;
    let mut out = Vec::with_capacity(raw.len());
    let mut i = 0;
    while i < raw.len() {
        if raw[i] == b'%' && i + 2 < raw.len() {
            let hex = std::str::from_utf8(&raw[i + 1..i + 3]).ok();
            if let Some(b) = hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                out.push(b);
                i += 3;
                continue;
            }
        }
        out.push(raw[i]);
        i += 1;
    }
    Some(String::from_utf8_lossy(&out).into_owned())
}

/// One length-prefixed message of a body.
#[derive(Clone, Debug, PartialEq)]
pub struct Message {
    /// The compressed flag was set.
    pub compressed: bool,
    /// The message, inflated when it was compressed.
    pub data: Vec<u8>,
    /// Why the message could not be read whole (cut body, unknown encoding, bad gzip).
    pub error: Option<&'static str>,
}

/// The messages of a gRPC body, with `grpc-encoding` (`gzip`, `deflate` or `identity`) for
/// the compressed ones. The last may be cut (`error`) when the body was.
pub fn messages(body: &[u8], encoding: Option<&str>) -> Vec<Message> {
    let mut out = Vec::new();
    let mut at = 0;
    while at < body.len() && out.len() < MAX_MESSAGES {
        let Some(head) = body.get(at..at + 5) else {
            out.push(Message {
                compressed: false,
                data: Vec::new(),
                error: Some("body ends inside a message prefix"),
            });
            break;
        };
        let compressed = head[0] & 1 == 1;
        let len = u32::from_be_bytes([head[1], head[2], head[3], head[4]]) as usize;
        let start = at + 5;
        let end = start.saturating_add(len);
        let (raw, cut) = match body.get(start..end) {
            Some(r) => (r, false),
            None => (&body[start..], true),
        };
        let mut m = Message {
            compressed,
            data: Vec::new(),
            error: cut.then_some("body ends inside a message (cut)"),
        };
        if compressed && !cut {
            match inflate(raw, encoding) {
                Ok(d) => m.data = d,
                Err(e) => m.error = Some(e),
            }
        } else {
            m.data = raw.to_vec();
        }
        out.push(m);
        if cut {
            break;
        }
        at = end;
    }
    out
}

fn inflate(raw: &[u8], encoding: Option<&str>) -> Result<Vec<u8>, &'static str> {
    let mut out = Vec::new();
    let limit = MAX_MESSAGE as u64 + 1;
    let r = match encoding.map(str::trim) {
        Some("gzip") => flate2::read::GzDecoder::new(raw)
            .take(limit)
            .read_to_end(&mut out),
        Some("deflate") => flate2::read::ZlibDecoder::new(raw)
            .take(limit)
            .read_to_end(&mut out),
        Some("identity") | None => return Err("compressed flag without grpc-encoding"),
        Some(_) => return Err("grpc-encoding not supported"),
    };
    match r {
        Ok(_) if out.len() > MAX_MESSAGE => Err("message longer than 4 MiB inflated"),
        Ok(_) => Ok(out),
        Err(_) => Err("compressed message does not inflate"),
    }
}

/// A protobuf value, as the wire says it without a schema.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    /// Wire type 0 (int32/64, uint, bool, enum; sint zig-zag cannot be told apart).
    Varint(u64),
    /// Wire type 1 (fixed64, sfixed64, double).
    Fixed64(u64),
    /// Wire type 5 (fixed32, sfixed32, float).
    Fixed32(u32),
    /// Wire type 2 read as UTF-8 text.
    Str(String),
    /// Wire type 2 that is neither text nor a message.
    Bytes(Vec<u8>),
    /// Wire type 2 that parses whole as a message.
    Msg(Vec<(u32, Value)>),
}

fn varint(b: &[u8], at: &mut usize) -> Option<u64> {
    let mut v = 0u64;
    for i in 0..10 {
        let byte = *b.get(*at)?;
        *at += 1;
        v |= u64::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            return Some(v);
        }
    }
    None
}

fn printable(s: &str) -> bool {
    s.chars()
        .all(|c| !c.is_control() || matches!(c, '\n' | '\r' | '\t'))
}

/// Decodes a protobuf message into its fields, in wire order; `None` when the bytes are
/// not one (a bad tag, a length past the end, a group, field number 0).
pub fn decode(b: &[u8]) -> Option<Vec<(u32, Value)>> {
    decode_at(b, 0)
}

fn decode_at(b: &[u8], depth: usize) -> Option<Vec<(u32, Value)>> {
    let mut fields = Vec::new();
    let mut at = 0;
    while at < b.len() {
        let tag = varint(b, &mut at)?;
        let number = u32::try_from(tag >> 3).ok().filter(|n| *n > 0)?;
        let value = match tag & 7 {
            0 => Value::Varint(varint(b, &mut at)?),
            1 => {
                let x = b.get(at..at + 8)?;
                at += 8;
                Value::Fixed64(u64::from_le_bytes(x.try_into().ok()?))
            }
            5 => {
                let x = b.get(at..at + 4)?;
                at += 4;
                Value::Fixed32(u32::from_le_bytes(x.try_into().ok()?))
            }
            2 => {
                let len = usize::try_from(varint(b, &mut at)?).ok()?;
                let x = b.get(at..at.checked_add(len)?)?;
                at += len;
                length_delimited(x, depth)
            }
            _ => return None,
        };
        fields.push((number, value));
    }
    Some(fields)
}

/// Text if it reads as printable UTF-8, else a message if it parses whole as one, else
/// bytes (empty is the empty string).
fn length_delimited(x: &[u8], depth: usize) -> Value {
    if let Ok(s) = std::str::from_utf8(x) {
        if printable(s) {
            return Value::Str(s.to_string());
        }
    }
    if depth + 1 < MAX_DEPTH {
        if let Some(m) = decode_at(x, depth + 1) {
            return Value::Msg(m);
        }
    }
    Value::Bytes(x.to_vec())
}

fn hex(b: &[u8]) -> String {
    b.iter().fold(String::new(), |mut s, x| {
        let _ = write!(s, "{x:02x}");
        s
    })
}

fn value_json(v: &Value) -> Json {
    match v {
        Value::Varint(n) | Value::Fixed64(n) => Json::from(*n),
        Value::Fixed32(n) => Json::from(*n),
        Value::Str(s) => Json::String(s.clone()),
        Value::Bytes(b) => Json::String(format!("0x{}", hex(b))),
        Value::Msg(m) => tree_json(m),
    }
}

/// A message as JSON keyed by field number (`{"1": "alice", "2": {"1": 42}}`); a field
/// repeated on the wire becomes an array. Bytes are `0x...` strings.
pub fn tree_json(fields: &[(u32, Value)]) -> Json {
    let mut by: std::collections::BTreeMap<u32, Vec<Json>> = std::collections::BTreeMap::new();
    for (n, v) in fields {
        by.entry(*n).or_default().push(value_json(v));
    }
    Json::Object(
        by.into_iter()
            .map(|(n, mut vs)| {
                let v = if vs.len() == 1 {
                    vs.pop().unwrap_or(Json::Null)
                } else {
                    Json::Array(vs)
                };
                (n.to_string(), v)
            })
            .collect(),
    )
}

/// A message as text, as `requests show` prints it: `1: "alice", 2: {1: 42}`.
pub fn tree_text(fields: &[(u32, Value)]) -> String {
    let mut s = String::new();
    for (i, (n, v)) in fields.iter().enumerate() {
        if i > 0 {
            s.push_str(", ");
        }
        let _ = write!(s, "{n}: ");
        match v {
            Value::Varint(x) | Value::Fixed64(x) => {
                let _ = write!(s, "{x}");
            }
            Value::Fixed32(x) => {
                let _ = write!(s, "{x}");
            }
            Value::Str(t) => {
                let _ = write!(s, "{t:?}");
            }
            Value::Bytes(b) => {
                let _ = write!(s, "0x{}", hex(b));
            }
            Value::Msg(m) => {
                let _ = write!(s, "{{{}}}", tree_text(m));
            }
        }
    }
    s
}

/// One message as JSON: its field tree (protobuf), its JSON (`application/grpc+json`), or
/// `{"undecodable": why, "bytes": n}`.
fn message_json(m: &Message, json: bool) -> Json {
    if let Some(e) = m.error {
        return serde_json::json!({"undecodable": e, "bytes": m.data.len()});
    }
    if json {
        return serde_json::from_slice(&m.data).unwrap_or_else(
            |_| serde_json::json!({"undecodable": "not JSON", "bytes": m.data.len()}),
        );
    }
    match decode(&m.data) {
        Some(f) => tree_json(&f),
        None => serde_json::json!({"undecodable": "not a protobuf message", "bytes": m.data.len()}),
    }
}

/// One message as text (`requests show`).
pub fn message_text(m: &Message, json: bool) -> String {
    if let Some(e) = m.error {
        return format!("({e}; {} bytes)", m.data.len());
    }
    if json {
        return String::from_utf8_lossy(&m.data).into_owned();
    }
    match decode(&m.data) {
        Some(f) if f.is_empty() => "{}".into(),
        Some(f) => tree_text(&f),
        None => format!("(not a protobuf message; {} bytes)", m.data.len()),
    }
}

/// The body of a gRPC message (request or response) as JSON for comparison: one message
/// as its tree, several (streaming) as an array of trees. `None` if not gRPC.
pub fn body_json(headers: &Headers, body: &[u8]) -> Option<Json> {
    if !is_grpc(headers) {
        return None;
    }
    let enc = headers.get_str("grpc-encoding");
    let json = is_json(headers);
    let ms = messages(body, enc.as_deref());
    Some(match ms.as_slice() {
        [one] => message_json(one, json),
        many => Json::Array(many.iter().map(|m| message_json(m, json)).collect()),
    })
}

/// The messages of a gRPC body as text lines (`requests show`).
pub fn body_text(headers: &Headers, body: &[u8]) -> Vec<String> {
    let enc = headers.get_str("grpc-encoding");
    let json = is_json(headers);
    messages(body, enc.as_deref())
        .iter()
        .map(|m| {
            format!(
                "{}{}",
                if m.compressed { "(compressed) " } else { "" },
                message_text(m, json)
            )
        })
        .collect()
}

/// A JSON path of a gRPC body's tree in words: `$.2.1` → `field 2.1`, `$[1].3` →
/// `message 2 field 3` (streams), `$` → `message`.
pub fn path_words(path: &str) -> String {
    let rest = path.strip_prefix('$').unwrap_or(path);
    let (msg, fields) = match rest.strip_prefix('[') {
        Some(r) => match r.split_once(']') {
            Some((i, f)) => (i.parse::<usize>().ok().map(|i| i + 1), f),
            None => (None, rest),
        },
        None => (None, rest),
    };
    let fields = fields.strip_prefix('.').unwrap_or(fields);
    match (msg, fields.is_empty()) {
        (Some(i), true) => format!("message {i}"),
        (Some(i), false) => format!("message {i} field {fields}"),
        (None, true) => "message".into(),
        (None, false) => format!("field {fields}"),
    }
}

/// What `requests`, `requests show` and JSONL say about a gRPC call (JSONL carries no
/// bodies, so its messages are in `requests show` only).
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct Call {
    pub service: String,
    pub method: String,
    /// `grpc-status` (None: no trailers seen, the call did not end in the capture).
    pub status: Option<u32>,
    pub status_name: Option<&'static str>,
    /// `grpc-message` (None when absent or empty).
    pub message: Option<String>,
}

/// The gRPC call of an exchange, if it is one.
pub fn call(
    request: Option<&crate::http::message::Request>,
    response: Option<&crate::http::message::Response>,
) -> Option<Call> {
    let grpc = request.is_some_and(|q| is_grpc(&q.headers))
        || response.is_some_and(|r| is_grpc(&r.headers));
    if !grpc {
        return None;
    }
    let (service, method) = request
        .and_then(|q| service_method(&q.target))
        .map_or((String::new(), String::new()), |(s, m)| {
            (s.to_string(), m.to_string())
        });
    let status = response.and_then(|r| status(&r.headers));
    Some(Call {
        service,
        method,
        status,
        status_name: status.map(status_name),
        message: response
            .and_then(|r| message(&r.headers))
            .filter(|m| !m.is_empty()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn framed(m: &[u8], compressed: bool) -> Vec<u8> {
        let mut v = vec![u8::from(compressed)];
        v.extend_from_slice(&(m.len() as u32).to_be_bytes());
        v.extend_from_slice(m);
        v
    }

    // field 1 "alice", field 2 {field 1: 42}
    const ALICE: &[u8] = &[0x0a, 5, b'a', b'l', b'i', b'c', b'e', 0x12, 2, 0x08, 42];

    #[test]
    fn protobuf_without_a_schema_is_a_field_number_tree() {
        let f = decode(ALICE).unwrap();
        assert_eq!(tree_text(&f), "1: \"alice\", 2: {1: 42}");
        assert_eq!(
            tree_json(&f),
            serde_json::json!({"1": "alice", "2": {"1": 42}})
        );
        // Repeated fields, fixed widths, bytes, negative int64 as its varint.
        let mut b = vec![0x18, 1, 0x18, 2, 0x18, 3];
        b.extend([0x21, 1, 0, 0, 0, 0, 0, 0, 0]);
        b.extend([0x2d, 2, 0, 0, 0]);
        b.extend([0x32, 2, 0xff, 0x00]);
        b.extend([
            0x38, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01,
        ]);
        let f = decode(&b).unwrap();
        assert_eq!(
            tree_json(&f),
            serde_json::json!({"3": [1, 2, 3], "4": 1, "5": 2, "6": "0xff00", "7": u64::MAX})
        );
        for bad in [&[0x0a, 9, b'x'][..], &[0x0b], &[0x00, 1], &[0x08, 0xff]] {
            assert_eq!(decode(bad), None, "{bad:?}");
        }
        // Nesting is bounded: deep messages stay bytes, no recursion past the limit.
        let mut deep = vec![0x08, 1];
        for _ in 0..40 {
            let mut outer = vec![0x0a, deep.len() as u8];
            outer.extend(&deep);
            deep = outer;
            if deep.len() > 120 {
                break;
            }
        }
        assert!(decode(&deep).is_some());
    }

    #[test]
    fn messages_are_length_prefixed_and_gzip_inflated() {
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        std::io::Write::write_all(&mut gz, ALICE).unwrap();
        let gz = gz.finish().unwrap();
        let mut body = framed(ALICE, false);
        body.extend(framed(&gz, true));
        body.extend(framed(b"", false));
        let ms = messages(&body, Some("gzip"));
        assert_eq!(ms.len(), 3);
        assert_eq!(
            (ms[0].data.as_slice(), ms[1].data.as_slice()),
            (ALICE, ALICE)
        );
        assert!(ms[1].compressed && ms.iter().all(|m| m.error.is_none()));
        // Cut inside the second message; compressed without an encoding.
        let ms = messages(&body[..body.len() - 10], Some("gzip"));
        assert_eq!(ms.len(), 2);
        assert!(ms[1].error.is_some());
        assert!(messages(&framed(&gz, true), None)[0].error.is_some());
        assert!(messages(&[0, 0, 0], None)[0].error.is_some());
    }

    #[test]
    fn calls_status_and_paths() {
        assert_eq!(service_method("/shop.Cart/Add"), Some(("shop.Cart", "Add")));
        assert_eq!(service_method("/x"), None);
        assert_eq!(status_name(5), "NOT_FOUND");
        let h: Headers = vec![
            ("content-type".to_string(), b"application/grpc".to_vec()),
            ("grpc-status".to_string(), b"5".to_vec()),
            (
                "grpc-message".to_string(),
                b"no such user: %C3%A9mile 100%".to_vec(),
            ),
        ]
        .into();
        assert_eq!(status(&h), Some(5));
        assert_eq!(message(&h).as_deref(), Some("no such user: émile 100%"));
        assert_eq!(path_words("$.2.1"), "field 2.1");
        assert_eq!(path_words("$[1].3"), "message 2 field 3");
        assert_eq!(path_words("$[0]"), "message 1");
        assert_eq!(
            body_json(&h, &framed(ALICE, false)),
            Some(serde_json::json!({"1": "alice", "2": {"1": 42}}))
        );
    }

    #[test]
    fn replies_are_compared_by_status_and_fields() {
        use crate::compare::{compare, CompareOptions, ResponseView};
        let view = |status: &str, msg: &[u8]| ResponseView {
            status: 200,
            headers: vec![
                ("content-type".to_string(), b"application/grpc".to_vec()),
                ("grpc-status".to_string(), status.as_bytes().to_vec()),
            ]
            .into(),
            body: framed(msg, false),
            body_incomplete: false,
        };
        let v2 = [0x0a, 5, b'a', b'l', b'i', b'c', b'e', 0x12, 2, 0x08, 43];
        let c = compare(
            &view("0", ALICE),
            &view("0", &v2),
            &CompareOptions::default(),
        );
        let words: Vec<String> = c.differences.iter().map(|d| d.to_string()).collect();
        assert_eq!(words, ["field 2.1 changed: 42 → 43"]);
        let c = compare(
            &view("0", ALICE),
            &view("5", &[]),
            &CompareOptions::default(),
        );
        let words: Vec<String> = c.differences.iter().map(|d| d.to_string()).collect();
        assert_eq!(words[0], "gRPC status OK (0) → NOT_FOUND (5)");
        assert!(words.len() > 1, "{words:?}");
        assert!(!compare(
            &view("0", ALICE),
            &view("0", ALICE),
            &CompareOptions::default()
        )
        .differs());
    }
}
