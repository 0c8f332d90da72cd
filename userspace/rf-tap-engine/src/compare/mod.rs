//! Comparing a target's response with the production response captured for the same
//! request: the core of HTTP replay and shadow mirroring, sans IO.
//!
//! - Status, then headers (volatile ones such as Date, Server, Set-Cookie, ETag and
//!   X-Request-Id ignored by default), then the body: JSON structurally, field by field
//!   with JSON paths (`$.user.avatar`, `$.items[3].id`); anything else as text, line by line.
//! - `ignore` paths (`$.created_at`, `$.items[*].id`, `$..updated_at`) and regex masks leave
//!   known-variable values out; [`noise_paths`] finds them from two target responses to the
//!   same request (Diffy's idea).
//! - A production response captured with a gap or cut by the snaplen is compared only on
//!   what was captured: status and headers, never the body (no false diffs).
//! - [`endpoint_key`] groups requests by endpoint with id-like path segments collapsed
//!   (`GET /api/users/{id}`); [`schema_hint`] recognises a 5xx body that names a missing
//!   column or table.

pub mod endpoint;
pub mod json;
pub mod noise;

use std::fmt;

use crate::http::message::Headers;

pub use endpoint::endpoint_key;
pub use json::{noise_paths, JsonPath};
pub use noise::{judge, Noise, NoiseModel, Verdict};

/// One side of a comparison: a response, its body already decoded (Content-Encoding).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ResponseView {
    pub status: u16,
    pub headers: Headers,
    pub body: Vec<u8>,
    /// The body is not whole (capture gap, snaplen, or a body too large to keep).
    pub body_incomplete: bool,
}

impl ResponseView {
    /// The body as JSON for comparisons: gRPC messages as field-number trees, else the
    /// body if it parses as JSON.
    pub fn comparable_json(&self) -> Option<serde_json::Value> {
        crate::grpc::body_json(&self.headers, &self.body)
            .or_else(|| serde_json::from_slice(&self.body).ok())
    }

    fn header(&self, name: &str) -> Option<&[u8]> {
        self.headers.get(name)
    }
    fn is_json(&self) -> bool {
        self.header("content-type").is_some_and(|ct| {
            let ct = String::from_utf8_lossy(ct).to_ascii_lowercase();
            ct.contains("json")
        }) || matches!(
            self.body.iter().find(|b| !b.is_ascii_whitespace()),
            Some(b'{' | b'[')
        )
    }
}

/// Headers whose values differ between any two responses and say nothing about behaviour.
pub const VOLATILE_HEADERS: &[&str] = &[
    "date",
    "server",
    "set-cookie",
    "etag",
    "last-modified",
    "expires",
    "age",
    "x-request-id",
    "x-correlation-id",
    "x-amzn-trace-id",
    "x-amzn-requestid",
    "traceparent",
    "tracestate",
    "x-runtime",
    "x-response-time",
    "cf-ray",
    "via",
    "connection",
    "keep-alive",
    "content-length",
    "transfer-encoding",
    "content-encoding",
    "vary",
];

#[derive(Clone, Debug, Default)]
pub struct CompareOptions {
    /// JSON paths whose values are not compared.
    pub ignore: Vec<JsonPath>,
    /// Regexes: matching text is replaced by `<masked>` on both sides before comparing.
    pub masks: Vec<regex::Regex>,
    /// Extra header names to ignore (lower case), beyond [`VOLATILE_HEADERS`].
    pub ignore_headers: Vec<String>,
    /// Compare every header, even the volatile ones.
    pub all_headers: bool,
    /// Most differences reported per response (the count is still exact).
    pub max_reported: usize,
}

/// One difference between production (`prod`) and the target.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Difference {
    Status {
        prod: u16,
        target: u16,
    },
    HeaderAdded {
        name: String,
        target: String,
    },
    HeaderRemoved {
        name: String,
        prod: String,
    },
    HeaderChanged {
        name: String,
        prod: String,
        target: String,
    },
    FieldAdded {
        path: String,
        target: serde_json::Value,
    },
    FieldRemoved {
        path: String,
        prod: serde_json::Value,
    },
    FieldChanged {
        path: String,
        prod: serde_json::Value,
        target: serde_json::Value,
    },
    /// Production's body is JSON and the target's is not (or the reverse).
    BodyFormat {
        prod: String,
        target: String,
    },
    /// Text bodies differ: the first differing line (1-based) and both versions of it.
    BodyText {
        line: usize,
        prod: String,
        target: String,
    },
    /// The gRPC calls ended with different `grpc-status` (None: no status came).
    GrpcStatus {
        prod: Option<u32>,
        target: Option<u32>,
    },
}

fn short(v: &serde_json::Value) -> String {
    let s = v.to_string();
    if s.chars().count() > 60 {
        format!("{}…", s.chars().take(60).collect::<String>())
    } else {
        s
    }
}

fn field_name(path: &str) -> &str {
    path.rsplit(['.', '['])
        .next()
        .map_or(path, |s| s.trim_end_matches(']'))
}

impl fmt::Display for Difference {
    /// The difference in words, as `replay diff` prints it.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Status { prod, target } => write!(f, "{prod} → {target}"),
            Self::HeaderAdded { name, target } => {
                write!(f, "New header {name}: {target} in target response")
            }
            Self::HeaderRemoved { name, prod } => {
                write!(f, "Header {name} ({prod}) missing from target response")
            }
            Self::HeaderChanged { name, prod, target } => {
                write!(f, "Header {name} changed: {prod} → {target}")
            }
            Self::FieldAdded { path, target } => write!(
                f,
                "New field \"{}\" in target response ({path} = {})",
                field_name(path),
                short(target)
            ),
            Self::FieldRemoved { path, prod } => write!(
                f,
                "Field \"{}\" missing from target response ({path} was {})",
                field_name(path),
                short(prod)
            ),
            Self::FieldChanged { path, prod, target } => {
                write!(f, "{path} changed: {} → {}", short(prod), short(target))
            }
            Self::BodyFormat { prod, target } => {
                write!(f, "Body format changed: {prod} → {target}")
            }
            Self::BodyText { line, prod, target } => {
                write!(f, "Body differs at line {line}: {prod:?} → {target:?}")
            }
            Self::GrpcStatus { prod, target } => {
                let name = |c: &Option<u32>| match c {
                    Some(c) => format!("{} ({c})", crate::grpc::status_name(*c)),
                    None => "none".into(),
                };
                write!(f, "gRPC status {} → {}", name(prod), name(target))
            }
        }
    }
}

/// What a comparison found.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize)]
pub struct Comparison {
    /// Up to `max_reported` differences, in order: status, headers, body.
    pub differences: Vec<Difference>,
    /// Every difference found (may exceed `differences.len()`).
    pub count: usize,
    /// The body was not compared because production's capture of it is incomplete.
    pub body_skipped: bool,
}

impl Comparison {
    pub fn differs(&self) -> bool {
        self.count > 0
    }
}

fn mask(text: &str, masks: &[regex::Regex]) -> String {
    let mut t = text.to_string();
    for m in masks {
        t = m.replace_all(&t, "<masked>").into_owned();
    }
    t
}

fn show(v: &[u8]) -> String {
    String::from_utf8_lossy(v).into_owned()
}

/// Compares the target's response with production's.
pub fn compare(prod: &ResponseView, target: &ResponseView, opts: &CompareOptions) -> Comparison {
    let limit = if opts.max_reported == 0 {
        50
    } else {
        opts.max_reported
    };
    let mut out = Comparison::default();
    let push = |d: Difference, out: &mut Comparison| {
        out.count += 1;
        if out.differences.len() < limit {
            out.differences.push(d);
        }
    };
    if prod.status != target.status {
        push(
            Difference::Status {
                prod: prod.status,
                target: target.status,
            },
            &mut out,
        );
    }
    let grpc = crate::grpc::is_grpc(&prod.headers) || crate::grpc::is_grpc(&target.headers);
    if grpc {
        let (p, t) = (
            crate::grpc::status(&prod.headers),
            crate::grpc::status(&target.headers),
        );
        if p != t {
            push(Difference::GrpcStatus { prod: p, target: t }, &mut out);
        }
    }
    let ignored = |name: &str| {
        let n = name.to_ascii_lowercase();
        (!opts.all_headers && VOLATILE_HEADERS.contains(&n.as_str()))
            || opts.ignore_headers.contains(&n)
            || (grpc && n == "grpc-status")
    };
    for (name, pv) in &prod.headers {
        if ignored(name) {
            continue;
        }
        match target.header(name) {
            None => push(
                Difference::HeaderRemoved {
                    name: name.clone(),
                    prod: show(pv),
                },
                &mut out,
            ),
            Some(tv) => {
                let (p, t) = (mask(&show(pv), &opts.masks), mask(&show(tv), &opts.masks));
                if p != t {
                    push(
                        Difference::HeaderChanged {
                            name: name.clone(),
                            prod: p,
                            target: t,
                        },
                        &mut out,
                    )
                }
            }
        }
    }
    for (name, tv) in &target.headers {
        if !ignored(name) && prod.header(name).is_none() {
            push(
                Difference::HeaderAdded {
                    name: name.clone(),
                    target: show(tv),
                },
                &mut out,
            );
        }
    }
    if prod.body_incomplete {
        out.body_skipped = true;
        return out;
    }
    if grpc {
        // Messages compared as field-number trees (or JSON for application/grpc+json),
        // their paths said as fields: `field 2.1 changed: 42 → 43`.
        let (p, t) = (
            crate::grpc::body_json(&prod.headers, &prod.body),
            crate::grpc::body_json(&target.headers, &target.body),
        );
        let mut diffs = Vec::new();
        json::diff(
            &p.unwrap_or(serde_json::Value::Null),
            &t.unwrap_or(serde_json::Value::Null),
            &opts.ignore,
            &mut diffs,
        );
        for mut d in diffs {
            if let Difference::FieldAdded { path, .. }
            | Difference::FieldRemoved { path, .. }
            | Difference::FieldChanged { path, .. } = &mut d
            {
                *path = crate::grpc::path_words(path);
            }
            push(d, &mut out);
        }
        return out;
    }
    let (pj, tj) = (prod.is_json(), target.is_json());
    let parse = |b: &[u8]| -> Option<serde_json::Value> {
        let text = mask(&String::from_utf8_lossy(b), &opts.masks);
        serde_json::from_str(&text).ok()
    };
    match (
        pj.then(|| parse(&prod.body)).flatten(),
        tj.then(|| parse(&target.body)).flatten(),
    ) {
        (Some(p), Some(t)) => {
            let mut diffs = Vec::new();
            json::diff(&p, &t, &opts.ignore, &mut diffs);
            for d in diffs {
                push(d, &mut out);
            }
        }
        (Some(_), None) if !target.body.is_empty() || !prod.body.is_empty() => push(
            Difference::BodyFormat {
                prod: "JSON".into(),
                target: if target.body.is_empty() {
                    "empty".into()
                } else {
                    "not JSON".into()
                },
            },
            &mut out,
        ),
        (None, Some(_)) if pj || !prod.body.is_empty() => push(
            Difference::BodyFormat {
                prod: if prod.body.is_empty() {
                    "empty".into()
                } else {
                    "not JSON".into()
                },
                target: "JSON".into(),
            },
            &mut out,
        ),
        _ => {
            let p = mask(&String::from_utf8_lossy(&prod.body), &opts.masks);
            let t = mask(&String::from_utf8_lossy(&target.body), &opts.masks);
            if p != t {
                let (mut pl, mut tl) = (p.lines(), t.lines());
                let mut line = 1;
                loop {
                    match (pl.next(), tl.next()) {
                        (Some(a), Some(b)) if a == b => line += 1,
                        (a, b) => {
                            push(
                                Difference::BodyText {
                                    line,
                                    prod: a.unwrap_or("").chars().take(120).collect(),
                                    target: b.unwrap_or("").chars().take(120).collect(),
                                },
                                &mut out,
                            );
                            break;
                        }
                    }
                }
            }
        }
    }
    out
}

/// A hint when a 5xx body looks like a database schema error.
pub fn schema_hint(status: u16, body: &[u8]) -> Option<&'static str> {
    if !(500..600).contains(&status) {
        return None;
    }
    let text = String::from_utf8_lossy(&body[..body.len().min(64 * 1024)]).to_ascii_lowercase();
    const SIGNS: &[&str] = &[
        "no such column",
        "no such table",
        "unknown column",
        "undefined column",
        "undefinedcolumn",
        "undefined table",
        "undefinedtable",
        "missing column",
        "doesn't exist",
        "does not exist",
        "invalid column name",
        "invalid object name",
    ];
    let dbish = ["column", "table", "relation", "sql", "database", "schema"]
        .iter()
        .any(|w| text.contains(w));
    (dbish && SIGNS.iter().any(|s| text.contains(s)))
        .then_some("Schema mismatch — staging migration may be missing")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resp(status: u16, headers: &[(&str, &str)], body: &str) -> ResponseView {
        ResponseView {
            status,
            headers: headers
                .iter()
                .map(|(n, v)| (n.to_string(), v.as_bytes().to_vec()))
                .collect(),
            body: body.as_bytes().to_vec(),
            body_incomplete: false,
        }
    }

    const JSON: (&str, &str) = ("Content-Type", "application/json");

    #[test]
    fn identical_apart_from_volatile_headers() {
        let p = resp(
            200,
            &[JSON, ("Date", "Mon"), ("X-Request-Id", "a")],
            r#"{"a":1}"#,
        );
        let t = resp(
            200,
            &[JSON, ("Date", "Tue"), ("X-Request-Id", "b")],
            r#"{ "a" : 1 }"#,
        );
        let c = compare(&p, &t, &CompareOptions::default());
        assert!(!c.differs(), "{c:?}");
        let all = CompareOptions {
            all_headers: true,
            ..Default::default()
        };
        assert_eq!(compare(&p, &t, &all).count, 2);
    }

    #[test]
    fn status_headers_and_fields_in_words() {
        let p = resp(
            201,
            &[JSON, ("Cache-Control", "no-store"), ("X-Old", "1")],
            r#"{"id":"u_1","name":"Ann","plan":"free","tags":["a","b"]}"#,
        );
        let t = resp(
            500,
            &[JSON, ("Cache-Control", "private"), ("X-New", "2")],
            r#"{"id":"u_1","avatar":"x.png","plan":"pro","tags":["a"]}"#,
        );
        let c = compare(&p, &t, &CompareOptions::default());
        let words: Vec<String> = c.differences.iter().map(|d| d.to_string()).collect();
        assert_eq!(words[0], "201 → 500");
        assert!(words.contains(&"Header Cache-Control changed: no-store → private".to_string()));
        assert!(words.contains(&"Header X-Old (1) missing from target response".to_string()));
        assert!(words.contains(&"New header X-New: 2 in target response".to_string()));
        assert!(words
            .iter()
            .any(|w| w.starts_with("New field \"avatar\" in target response")));
        assert!(words
            .iter()
            .any(|w| w.starts_with("Field \"name\" missing from target")));
        assert!(words.contains(&"$.plan changed: \"free\" → \"pro\"".to_string()));
        assert!(words
            .iter()
            .any(|w| w.starts_with("Field \"1\" missing") && w.contains("$.tags[1]")));
        assert_eq!(c.count, 8);
    }

    #[test]
    fn ignore_paths_and_masks() {
        let p = resp(
            200,
            &[JSON],
            r#"{"id":1,"created_at":"2024-01-01","items":[{"id":7,"n":1}],"msg":"req 123 ok"}"#,
        );
        let t = resp(
            200,
            &[JSON],
            r#"{"id":1,"created_at":"2026-11-21","items":[{"id":9,"n":1}],"msg":"req 456 ok"}"#,
        );
        let opts = CompareOptions {
            ignore: vec![
                "$.created_at".parse().unwrap(),
                "$.items[*].id".parse().unwrap(),
            ],
            masks: vec![regex::Regex::new(r"req \d+").unwrap()],
            ..Default::default()
        };
        let c = compare(&p, &t, &opts);
        assert!(!c.differs(), "{c:?}");
        let c = compare(&p, &t, &CompareOptions::default());
        assert_eq!(c.count, 3);
    }

    #[test]
    fn incomplete_production_body_is_not_compared() {
        let mut p = resp(200, &[JSON], r#"{"a":1,"b":"#);
        p.body_incomplete = true;
        let t = resp(200, &[JSON], r#"{"a":1,"b":2}"#);
        let c = compare(&p, &t, &CompareOptions::default());
        assert!(!c.differs());
        assert!(c.body_skipped);
        let t500 = resp(500, &[JSON], "{}");
        assert_eq!(compare(&p, &t500, &CompareOptions::default()).count, 1);
    }

    #[test]
    fn text_and_format_differences() {
        let p = resp(200, &[("Content-Type", "text/plain")], "one\ntwo\nthree\n");
        let t = resp(200, &[("Content-Type", "text/plain")], "one\nTWO\nthree\n");
        let c = compare(&p, &t, &CompareOptions::default());
        assert_eq!(
            c.differences,
            vec![Difference::BodyText {
                line: 2,
                prod: "two".into(),
                target: "TWO".into()
            }]
        );
        let j = resp(200, &[JSON], r#"{"a":1}"#);
        let html = resp(200, &[("Content-Type", "text/html")], "<h1>oops</h1>");
        let c = compare(&j, &html, &CompareOptions::default());
        let words: Vec<String> = c.differences.iter().map(|d| d.to_string()).collect();
        assert_eq!(
            words,
            vec![
                "Header Content-Type changed: application/json → text/html",
                "Body format changed: JSON → not JSON"
            ]
        );
    }

    #[test]
    fn schema_hints() {
        let body =
            br#"{"error":"PG::UndefinedColumn: ERROR:  column users.avatar does not exist"}"#;
        assert_eq!(
            schema_hint(500, body),
            Some("Schema mismatch — staging migration may be missing")
        );
        assert!(schema_hint(500, b"sqlite3: no such table: orders").is_some());
        assert!(schema_hint(200, body).is_none());
        assert!(schema_hint(503, b"upstream timed out").is_none());
        assert!(schema_hint(404, b"file does not exist").is_none());
    }

    #[test]
    fn report_is_bounded_but_count_exact() {
        let p: String = format!(
            "{{{}}}",
            (0..200)
                .map(|i| format!("\"k{i}\":{i}"))
                .collect::<Vec<_>>()
                .join(",")
        );
        let t = "{}";
        let c = compare(
            &resp(200, &[JSON], &p),
            &resp(200, &[JSON], t),
            &CompareOptions {
                max_reported: 10,
                ..Default::default()
            },
        );
        assert_eq!(c.count, 200);
        assert_eq!(c.differences.len(), 10);
    }
}
