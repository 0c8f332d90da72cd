//! The signature index a mock answers from.

use std::{collections::HashMap, time::Duration};

use serde_json::Value;

use crate::{
    compare::{
        json::{rendered_path_matches, JsonPath},
        noise::looks_generated,
    },
    http::{
        exchange::Exchange,
        message::{Request, Response},
    },
};

/// Stands for a value left out of the signature.
const ANY: &str = "\u{2217}";

/// How signatures are made.
#[derive(Clone, Debug, Default)]
pub struct MockOptions {
    /// JSON paths left out of body signatures (`--ignore '$.nonce'`).
    pub ignore: Vec<JsonPath>,
    /// The Host is part of the signature (one mock serving several dependencies).
    pub by_host: bool,
}

/// What identifies a request for matching.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Signature {
    pub method: String,
    pub path: String,
    /// `(name, value)` pairs, sorted; generated-looking values are [`ANY`].
    pub query: Vec<(String, String)>,
    /// Canonical JSON, or the bytes as text (lossy), or empty.
    pub body: String,
    pub host: Option<String>,
}

impl Signature {
    pub fn of(q: &Request, opts: &MockOptions) -> Self {
        let (path, query) = match q.target.split_once('?') {
            Some((p, q)) => (p, q),
            None => (q.target.as_str(), ""),
        };
        // Absolute-form (to a proxy): the path alone.
        let path = match path.find("://") {
            Some(i) => path[i + 3..].find('/').map_or("/", |j| &path[i + 3 + j..]),
            None => path,
        };
        let mut pairs: Vec<(String, String)> = query
            .split('&')
            .filter(|p| !p.is_empty())
            .map(|p| {
                let (k, v) = p.split_once('=').unwrap_or((p, ""));
                let v = if looks_generated(&Value::String(v.to_string()))
                    || looks_generated(&v.parse::<u64>().map(Value::from).unwrap_or(Value::Null))
                {
                    ANY.to_string()
                } else {
                    v.to_string()
                };
                (k.to_string(), v)
            })
            .collect();
        pairs.sort();
        Self {
            method: q.method.to_ascii_uppercase(),
            path: path.to_string(),
            query: pairs,
            body: body_signature(&q.body.data, &opts.ignore),
            host: if opts.by_host {
                q.headers
                    .get_str("host")
                    .map(|h| h.trim().to_ascii_lowercase())
            } else {
                None
            },
        }
    }
}

fn body_signature(data: &[u8], ignore: &[JsonPath]) -> String {
    if data.is_empty() {
        return String::new();
    }
    match serde_json::from_slice::<Value>(data) {
        Ok(mut v) => {
            canonical(&mut v, "$", ignore);
            // serde_json's map is ordered by key: this is the canonical form.
            v.to_string()
        }
        Err(_) => String::from_utf8_lossy(data).into_owned(),
    }
}

/// Leaves out generated-looking values and ignored paths (depth-bounded by the parser's
/// own recursion limit).
fn canonical(v: &mut Value, at: &str, ignore: &[JsonPath]) {
    if at != "$" && rendered_path_matches(ignore, at) {
        *v = Value::String(ANY.into());
        return;
    }
    if looks_generated(v) {
        *v = Value::String(ANY.into());
        return;
    }
    match v {
        Value::Object(o) => {
            for (k, x) in o.iter_mut() {
                let child = if k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                    format!("{at}.{k}")
                } else {
                    format!("{at}[{}]", Value::String(k.clone()))
                };
                canonical(x, &child, ignore);
            }
        }
        Value::Array(a) => {
            for (i, x) in a.iter_mut().enumerate() {
                canonical(x, &format!("{at}[{i}]"), ignore);
            }
        }
        _ => {}
    }
}

/// One recorded answer.
#[derive(Clone, Debug)]
pub struct Recording {
    pub signature: Signature,
    pub response: Response,
    /// Request's last byte to response's first, as captured.
    pub latency: Option<Duration>,
}

/// How a request was answered.
#[derive(Clone, Debug, PartialEq)]
pub enum Lookup {
    Exact(usize),
    /// The closest recording of the same method and path; `score` in 0..1 (1: identical
    /// query and body).
    Fuzzy {
        index: usize,
        score: f64,
    },
    Miss,
}

/// Recordings by signature, each list served in capture order and its last repeated.
#[derive(Debug, Default)]
pub struct MockIndex {
    pub recordings: Vec<Recording>,
    opts: MockOptions,
    exact: HashMap<Signature, (Vec<usize>, usize)>,
    by_endpoint: HashMap<(String, String), Vec<usize>>,
}

impl MockIndex {
    pub fn new(opts: MockOptions) -> Self {
        Self {
            opts,
            ..Self::default()
        }
    }

    /// Adds an exchange that has both a request and a response; returns whether it did.
    pub fn add(&mut self, x: &Exchange) -> bool {
        let (Some(q), Some(r)) = (&x.request, &x.response) else {
            return false;
        };
        let signature = Signature::of(q, &self.opts);
        let latency = x
            .latency_ms()
            .map(|ms| Duration::from_secs_f64(ms / 1000.0));
        let i = self.recordings.len();
        self.exact.entry(signature.clone()).or_default().0.push(i);
        self.by_endpoint
            .entry((signature.method.clone(), signature.path.clone()))
            .or_default()
            .push(i);
        self.recordings.push(Recording {
            signature,
            response: r.clone(),
            latency,
        });
        true
    }

    pub fn len(&self) -> usize {
        self.recordings.len()
    }

    pub fn is_empty(&self) -> bool {
        self.recordings.is_empty()
    }

    pub fn signature(&self, q: &Request) -> Signature {
        Signature::of(q, &self.opts)
    }

    /// The recording that answers `q`: exact signatures in capture order (the last one
    /// repeating), else with `fuzzy` the closest of its method and path.
    pub fn lookup(&mut self, q: &Request, fuzzy: bool) -> Lookup {
        let s = self.signature(q);
        if let Some((list, next)) = self.exact.get_mut(&s) {
            let i = list[(*next).min(list.len() - 1)];
            *next += 1;
            return Lookup::Exact(i);
        }
        if !fuzzy {
            return Lookup::Miss;
        }
        let Some(candidates) = self.by_endpoint.get(&(s.method.clone(), s.path.clone())) else {
            return Lookup::Miss;
        };
        let best = candidates
            .iter()
            .map(|&i| (i, similarity(&s, &self.recordings[i].signature)))
            .fold(None::<(usize, f64)>, |b, (i, sc)| match b {
                Some((_, bs)) if bs >= sc => b,
                _ => Some((i, sc)),
            });
        match best {
            Some((index, score)) => Lookup::Fuzzy { index, score },
            None => Lookup::Miss,
        }
    }
}

/// How alike two signatures of one method and path are: the share of query pairs they
/// have in common, and of JSON leaves (path and value) in common, averaged over the parts
/// either has.
pub fn similarity(a: &Signature, b: &Signature) -> f64 {
    let mut parts = Vec::new();
    if !a.query.is_empty() || !b.query.is_empty() {
        parts.push(jaccard(&a.query, &b.query));
    }
    if !a.body.is_empty() || !b.body.is_empty() {
        let leaves = |s: &str| -> Vec<(String, String)> {
            match serde_json::from_str::<Value>(s) {
                Ok(v) => {
                    let mut out = Vec::new();
                    leaves_of(&v, "$", &mut out);
                    out.sort();
                    out
                }
                Err(_) => vec![(String::new(), s.to_string())],
            }
        };
        parts.push(jaccard(&leaves(&a.body), &leaves(&b.body)));
    }
    if parts.is_empty() {
        1.0
    } else {
        parts.iter().sum::<f64>() / parts.len() as f64
    }
}

fn leaves_of(v: &Value, at: &str, out: &mut Vec<(String, String)>) {
    match v {
        Value::Object(o) => {
            for (k, x) in o {
                leaves_of(x, &format!("{at}.{k}"), out);
            }
        }
        Value::Array(a) => {
            for (i, x) in a.iter().enumerate() {
                leaves_of(x, &format!("{at}[{i}]"), out);
            }
        }
        _ => out.push((at.to_string(), v.to_string())),
    }
}

/// |a ∩ b| / |a ∪ b| of two sorted lists.
fn jaccard<T: Ord>(a: &[T], b: &[T]) -> f64 {
    let (mut i, mut j, mut both) = (0, 0, 0usize);
    while i < a.len() && j < b.len() {
        match a[i].cmp(&b[j]) {
            std::cmp::Ordering::Equal => {
                both += 1;
                i += 1;
                j += 1;
            }
            std::cmp::Ordering::Less => i += 1,
            std::cmp::Ordering::Greater => j += 1,
        }
    }
    let union = a.len() + b.len() - both;
    if union == 0 {
        1.0
    } else {
        both as f64 / union as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::{body::Body, message::Response};

    fn req(method: &str, target: &str, body: &str) -> Request {
        Request {
            method: method.into(),
            target: target.into(),
            body: Body {
                data: body.as_bytes().to_vec(),
                len: body.len() as u64,
                ..Default::default()
            },
            ..Default::default()
        }
    }

    fn exchange(q: Request, status: u16) -> Exchange {
        Exchange {
            id: 0,
            conn: 0,
            client: "10.0.0.1:40000".parse().unwrap(),
            server: "10.0.0.2:8081".parse().unwrap(),
            request: Some(q),
            response: Some(Response {
                status,
                ..Default::default()
            }),
            flags: Default::default(),
            anomalies: Vec::new(),
            client_by: None,
            traffic: None,
        }
    }

    fn status(ix: &MockIndex, l: &Lookup) -> u16 {
        match l {
            Lookup::Exact(i) | Lookup::Fuzzy { index: i, .. } => ix.recordings[*i].response.status,
            Lookup::Miss => 0,
        }
    }

    #[test]
    fn json_key_order_and_spacing_and_query_order_do_not_matter() {
        let mut ix = MockIndex::new(MockOptions::default());
        ix.add(&exchange(
            req(
                "POST",
                "/pay?b=2&a=1",
                r#"{"amount": 5, "card": {"last4": "4242"}}"#,
            ),
            201,
        ));
        let l = ix.lookup(
            &req(
                "post",
                "/pay?a=1&b=2",
                r#"{"card":{"last4":"4242"},"amount":5}"#,
            ),
            false,
        );
        assert_eq!(status(&ix, &l), 201);
        assert!(matches!(l, Lookup::Exact(_)));
        // Another amount is another request.
        assert_eq!(
            ix.lookup(
                &req(
                    "POST",
                    "/pay?a=1&b=2",
                    r#"{"amount":6,"card":{"last4":"4242"}}"#
                ),
                false
            ),
            Lookup::Miss
        );
    }

    #[test]
    fn generated_values_and_ignored_paths_are_left_out() {
        let mut ix = MockIndex::new(MockOptions {
            ignore: vec!["$.nonce".parse().unwrap()],
            by_host: false,
        });
        ix.add(&exchange(
            req(
                "POST",
                "/charge?ts=1764000000&request_id=0b8f2a4e-1c2d-4e5f-8a9b-0c1d2e3f4a5b",
                r#"{"at":"2026-11-30T10:00:00Z","nonce":"abc","user":"alice"}"#,
            ),
            200,
        ));
        let l = ix.lookup(
            &req(
                "POST",
                "/charge?request_id=7c9e6679-7425-40de-944b-e07fc1f90ae7&ts=1764900000",
                r#"{"user":"alice","nonce":"xyz","at":"2026-12-02T04:00:00Z"}"#,
            ),
            false,
        );
        assert!(matches!(l, Lookup::Exact(_)), "{l:?}");
        let l = ix.lookup(&req("POST", "/charge", r#"{"user":"bob"}"#), false);
        assert_eq!(l, Lookup::Miss);
    }

    #[test]
    fn repeated_requests_are_served_in_capture_order_then_the_last_repeats() {
        let mut ix = MockIndex::new(MockOptions::default());
        for s in [200, 202, 204] {
            ix.add(&exchange(req("GET", "/job/7", ""), s));
        }
        let got: Vec<u16> = (0..5)
            .map(|_| {
                let l = ix.lookup(&req("GET", "/job/7", ""), false);
                status(&ix, &l)
            })
            .collect();
        assert_eq!(got, [200, 202, 204, 204, 204]);
    }

    #[test]
    fn fuzzy_takes_the_closest_of_the_method_and_path_with_its_score() {
        let mut ix = MockIndex::new(MockOptions::default());
        ix.add(&exchange(
            req("GET", "/search?q=shoes&page=1&size=20", ""),
            200,
        ));
        ix.add(&exchange(
            req("GET", "/search?q=hats&page=2&size=20", ""),
            201,
        ));
        ix.add(&exchange(req("POST", "/search", r#"{"q":"x"}"#), 500));
        let q = req("GET", "/search?q=shoes&page=3&size=20", "");
        assert_eq!(ix.lookup(&q, false), Lookup::Miss);
        match ix.lookup(&q, true) {
            Lookup::Fuzzy { index, score } => {
                assert_eq!(ix.recordings[index].response.status, 200);
                // 2 of the 4 distinct pairs in common.
                assert!((score - 0.5).abs() < 1e-9, "{score}");
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(ix.lookup(&req("GET", "/other", ""), true), Lookup::Miss);
    }

    #[test]
    fn the_host_counts_only_when_asked() {
        let with_host = |h: &str| {
            let mut q = req("GET", "/v1/rates", "");
            q.headers = vec![("Host".into(), h.as_bytes().to_vec())].into();
            q
        };
        let mut ix = MockIndex::new(MockOptions::default());
        ix.add(&exchange(with_host("fx.internal"), 200));
        assert!(matches!(
            ix.lookup(&with_host("127.0.0.1:8081"), false),
            Lookup::Exact(_)
        ));
        let mut ix = MockIndex::new(MockOptions {
            by_host: true,
            ..Default::default()
        });
        ix.add(&exchange(with_host("fx.internal"), 200));
        assert_eq!(ix.lookup(&with_host("rates.internal"), false), Lookup::Miss);
        assert!(matches!(
            ix.lookup(&with_host("FX.internal"), false),
            Lookup::Exact(_)
        ));
    }
}
