//! The records of an HTTP replay's results file (`FILE.replay/run-*.jsonl`): one JSON object
//! per line, told apart by `type`. `rf-tap replay` writes them and `rf-tap replay diff`
//! reads them back with these same types, so a field cannot be renamed on one side only.
//!
//! ```text
//! {"type":"run", capture, target, label, started, speed, concurrency, noise_runs}
//! {"type":"diff", id, conn, method, target, endpoint, n, partial, production, target_response,
//!  differences, count, words, hint, noise_ignored, latency_ms, production_latency_ms}
//! {"type":"failure", id, conn, method, target, endpoint, error, words, detail, hint}
//! {"type":"summary", ...the run's totals and gates, as `replay --json` prints them}
//! ```

use serde::{Deserialize, Serialize};

use crate::{
    compare::{Difference, ResponseView},
    redact::Redaction,
};

/// Bodies are kept in results files up to this many bytes (the rest is counted).
pub const SAVED_BODY: usize = 16 << 10;

/// One line of a results file.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ResultRecord {
    Run(RunRecord),
    Diff(Box<DiffRecord>),
    Failure(FailureRecord),
    /// The run's totals and gate results (their shape is `replay --json`'s).
    Summary(serde_json::Map<String, serde_json::Value>),
}

/// The first line: what was replayed, where, how.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RunRecord {
    pub capture: String,
    pub target: String,
    /// What the target is called in words (`candidate`, `target`).
    pub label: String,
    pub started: String,
    pub speed: String,
    pub concurrency: usize,
    pub noise_runs: usize,
}

/// Which captured request a record is about.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RequestRef {
    /// The exchange's id in the capture.
    pub id: u64,
    pub conn: u64,
    pub method: String,
    pub target: String,
    /// Its endpoint group (`GET /api/users/{id}`).
    pub endpoint: String,
}

/// A response as results files keep it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SavedResponse {
    pub status: u16,
    /// `[name, value]` pairs in wire order.
    pub headers: Vec<[String; 2]>,
    /// The body as text, cut at [`SAVED_BODY`] bytes with a note of what was left out.
    pub body: String,
    pub body_incomplete: bool,
}

impl SavedResponse {
    /// What a results file keeps of a response: credentials masked by `redaction`.
    pub fn of(v: &ResponseView, redaction: &Redaction) -> Self {
        let ct = v.headers.get_str("content-type");
        Self {
            status: v.status,
            headers: v
                .headers
                .iter()
                .map(|(n, v)| {
                    let v = String::from_utf8_lossy(v);
                    [n.clone(), redaction.header(n, &v).into_owned()]
                })
                .collect(),
            // gRPC: the messages as field trees, one per line (the bytes are binary).
            body: if crate::grpc::is_grpc(&v.headers) {
                let lines = crate::grpc::body_text(&v.headers, &v.body);
                let text = if lines.is_empty() {
                    "(no messages)".to_string()
                } else {
                    lines.join("\n")
                };
                body_text(text.as_bytes(), SAVED_BODY)
            } else {
                body_text(&redaction.body(ct.as_deref(), &v.body), SAVED_BODY)
            },
            body_incomplete: v.body_incomplete,
        }
    }
}

/// At most `max` bytes of `b` as text, with a note of how many more there were.
pub fn body_text(b: &[u8], max: usize) -> String {
    let mut s = String::from_utf8_lossy(&b[..b.len().min(max)]).into_owned();
    if b.len() > max {
        s.push_str(&format!("… ({} more bytes)", b.len() - max));
    }
    s
}

/// A target's response that differed from production's.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DiffRecord {
    #[serde(flatten)]
    pub request: RequestRef,
    /// Its number among the run's diffs (1, 2, ...), set when it is saved.
    #[serde(default)]
    pub n: u64,
    /// Production's response was captured with gaps or cut: compared on status and
    /// headers only.
    pub partial: bool,
    pub production: SavedResponse,
    pub target_response: SavedResponse,
    /// The differences reported (at most the comparison's limit).
    pub differences: Vec<Difference>,
    /// Every difference found.
    pub count: usize,
    /// `differences` in words.
    pub words: Vec<String>,
    /// A hint from the target's body (a missing column or table).
    pub hint: Option<String>,
    /// Differences on noise fields and headers, left out.
    pub noise_ignored: usize,
    pub latency_ms: f64,
    pub production_latency_ms: Option<f64>,
}

/// A request that got no usable answer (timeout, reset, refused, not HTTP, 5xx).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FailureRecord {
    #[serde(flatten)]
    pub request: RequestRef,
    /// A stable key (`timeout`, `reset`, `server_error_5xx`, ...).
    pub error: String,
    pub words: String,
    pub detail: String,
    #[serde(default)]
    pub hint: Option<String>,
}

impl ResultRecord {
    /// The request the record is about (diffs and failures).
    pub fn request(&self) -> Option<&RequestRef> {
        match self {
            ResultRecord::Diff(d) => Some(&d.request),
            ResultRecord::Failure(f) => Some(&f.request),
            ResultRecord::Run(_) | ResultRecord::Summary(_) => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request() -> RequestRef {
        RequestRef {
            id: 3,
            conn: 1,
            method: "GET".into(),
            target: "/api/users/7".into(),
            endpoint: "GET /api/users/{id}".into(),
        }
    }

    #[test]
    fn saved_responses_mask_credentials_unless_asked() {
        let view = ResponseView {
            status: 200,
            headers: vec![
                ("Set-Cookie".into(), b"sid=S3CR3T; Path=/".to_vec()),
                ("Content-Type".into(), b"application/json".to_vec()),
            ]
            .into(),
            body: br#"{"user":"ann","access_token":"T0K3N"}"#.to_vec(),
            body_incomplete: false,
        };
        let saved =
            serde_json::to_string(&SavedResponse::of(&view, &Redaction::default())).unwrap();
        assert!(
            !saved.contains("S3CR3T") && !saved.contains("T0K3N"),
            "{saved}"
        );
        assert!(
            saved.contains("sid=****; Path=/") && saved.contains("ann"),
            "{saved}"
        );
        let clear = serde_json::to_string(&SavedResponse::of(&view, &Redaction::off())).unwrap();
        assert!(
            clear.contains("S3CR3T") && clear.contains("T0K3N"),
            "{clear}"
        );
    }

    #[test]
    fn records_read_back_as_written_with_the_documented_keys() {
        let view = ResponseView {
            status: 200,
            headers: vec![("Content-Type".into(), b"application/json".to_vec())].into(),
            body: vec![b'x'; SAVED_BODY + 5],
            body_incomplete: false,
        };
        let records = [
            ResultRecord::Run(RunRecord {
                capture: "c.pcap".into(),
                target: "http://t".into(),
                label: "candidate".into(),
                started: "2026-12-02T00:00:00Z".into(),
                speed: "1x".into(),
                concurrency: 4,
                noise_runs: 1,
            }),
            ResultRecord::Diff(Box::new(DiffRecord {
                request: request(),
                n: 1,
                partial: false,
                production: SavedResponse::of(&view, &Redaction::default()),
                target_response: SavedResponse {
                    status: 500,
                    ..SavedResponse::default()
                },
                differences: vec![Difference::Status {
                    prod: 200,
                    target: 500,
                }],
                count: 1,
                words: vec!["status 200 → 500".into()],
                hint: None,
                noise_ignored: 0,
                latency_ms: 1.5,
                production_latency_ms: Some(1.0),
            })),
            ResultRecord::Failure(FailureRecord {
                request: request(),
                error: "timeout".into(),
                words: "timed out".into(),
                detail: "no answer in 5 s".into(),
                hint: None,
            }),
            ResultRecord::Summary(
                serde_json::json!({"requests": 2, "gates": []})
                    .as_object()
                    .cloned()
                    .unwrap(),
            ),
        ];
        for r in &records {
            let line = serde_json::to_string(r).unwrap();
            let back: ResultRecord = serde_json::from_str(&line).unwrap();
            assert_eq!(&back, r, "{line}");
        }
        let diff = serde_json::to_value(&records[1]).unwrap();
        assert_eq!(diff["type"], "diff");
        assert_eq!(diff["endpoint"], "GET /api/users/{id}");
        assert_eq!(diff["differences"][0]["kind"], "status");
        let body = diff["production"]["body"].as_str().unwrap();
        assert!(
            body.ends_with("… (5 more bytes)"),
            "{}",
            &body[body.len() - 30..]
        );
        assert_eq!(
            serde_json::to_value(&records[3]).unwrap()["type"],
            "summary"
        );
        assert_eq!(records[2].request().map(|r| r.id), Some(3));
        // A line of another kind is an error, not a silent default.
        assert!(serde_json::from_str::<ResultRecord>(r#"{"type":"nope"}"#).is_err());
    }
}
