//! From captured exchanges to the requests a replay sends: which exchanges are replayable,
//! which the user left out (include/exclude patterns, the write guard), and what production
//! answered, for the comparison afterwards.

use std::{fmt, str::FromStr, time::Duration};

use crate::{
    compare::ResponseView,
    http::{exchange::Exchange, message::Headers},
    query::glob_match,
};

/// A captured request ready to be sent again, with production's answer to it.
#[derive(Clone, Debug)]
pub struct ReplayRequest {
    /// Exchange id in the capture.
    pub id: u64,
    /// Captured connection: requests of one connection are replayed in order on one
    /// connection.
    pub conn: u64,
    /// When the request started, in capture time.
    pub at: Duration,
    pub method: String,
    pub target: String,
    pub headers: Headers,
    pub body: Vec<u8>,
    /// Production's response, if the capture has one.
    pub prod: Option<ResponseView>,
    /// Production's latency (request end to response start), milliseconds.
    pub prod_latency_ms: Option<f64>,
    /// The capture of this exchange has gaps or was cut: compared only on what was captured.
    pub partial: bool,
}

/// Why a captured exchange is not replayed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum SkipReason {
    /// Only a response was captured.
    NoRequest,
    /// The request's body was not captured whole (gap, cut, or larger than the capture kept).
    RequestIncomplete,
    /// CONNECT, or an Upgrade (WebSocket, h2c): not a request/response exchange.
    Tunnel,
    /// POST, PUT, PATCH or DELETE without `--allow-writes`.
    Write,
    /// Left out by `--exclude`, or not matched by any `--include`.
    Excluded,
}

impl SkipReason {
    pub const ALL: [SkipReason; 5] = [
        Self::NoRequest,
        Self::RequestIncomplete,
        Self::Tunnel,
        Self::Write,
        Self::Excluded,
    ];

    /// Stable key (JSON, saved results).
    pub fn key(self) -> &'static str {
        match self {
            Self::NoRequest => "no_request",
            Self::RequestIncomplete => "request_incomplete",
            Self::Tunnel => "tunnel",
            Self::Write => "write_method",
            Self::Excluded => "excluded",
        }
    }

    /// In words, for the RESULTS block.
    pub fn words(self) -> &'static str {
        match self {
            Self::NoRequest => "no request captured (response only)",
            Self::RequestIncomplete => "request body not captured whole",
            Self::Tunnel => "CONNECT or protocol upgrade",
            Self::Write => "write method (POST/PUT/PATCH/DELETE; --allow-writes replays them)",
            Self::Excluded => "left out by --include/--exclude",
        }
    }
}

/// `[METHOD ]PATH-GLOB`: `GET /health*`, `/metrics`, `POST *`. The glob is matched against
/// the path, query string included only when the pattern has a `?`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RequestPattern {
    method: Option<String>,
    path: String,
}

impl FromStr for RequestPattern {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let t = s.trim();
        let (method, path) = match t.split_once(char::is_whitespace) {
            Some((m, p)) => (Some(m.to_ascii_uppercase()), p.trim()),
            None if t.starts_with('/') || t.starts_with('*') => (None, t),
            None if !t.is_empty() => (Some(t.to_ascii_uppercase()), "*"),
            None => {
                return Err("an empty pattern (use `GET /health*`, `/metrics` or `POST`)".into())
            }
        };
        if let Some(m) = &method {
            if !m.bytes().all(|b| b.is_ascii_alphabetic() || b == b'*') {
                return Err(format!(
                    "`{s}`: `{m}` is not a method (use `GET /health*`, `/metrics` or `POST`)"
                ));
            }
        }
        Ok(Self {
            method: method.filter(|m| m != "*"),
            path: path.to_string(),
        })
    }
}

impl fmt::Display for RequestPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.method {
            Some(m) => write!(f, "{m} {}", self.path),
            None => f.write_str(&self.path),
        }
    }
}

impl RequestPattern {
    pub fn matches(&self, method: &str, target: &str) -> bool {
        if self
            .method
            .as_ref()
            .is_some_and(|m| !m.eq_ignore_ascii_case(method))
        {
            return false;
        }
        let path = if self.path.contains('?') {
            target
        } else {
            target.split('?').next().unwrap_or(target)
        };
        glob_match(&self.path, path)
    }
}

/// Which exchanges a replay sends.
#[derive(Clone, Debug, Default)]
pub struct Selection {
    /// When not empty, only requests matching one of these.
    pub include: Vec<RequestPattern>,
    /// Requests matching one of these are left out (checked after `include`).
    pub exclude: Vec<RequestPattern>,
    /// Replay POST, PUT, PATCH and DELETE too.
    pub allow_writes: bool,
}

/// Whether a captured response's body is not whole: cut, with a gap, undecodable, longer
/// than what was kept, or on an exchange whose capture was cut or had a gap (`cut`).
pub fn body_incomplete(r: &crate::http::message::Response, cut: bool) -> bool {
    r.incomplete
        || r.body.gap
        || r.body.decode_error
        || (r.body.data.len() as u64) < r.body.len
        || cut
}

/// Methods that change state on the server.
pub fn is_write(method: &str) -> bool {
    ["POST", "PUT", "PATCH", "DELETE"]
        .iter()
        .any(|m| m.eq_ignore_ascii_case(method))
}

impl Selection {
    /// The request to send for this exchange (taken apart, nothing copied), or why there
    /// is none.
    pub fn plan(&self, x: Exchange) -> Result<ReplayRequest, SkipReason> {
        let latency = x.latency_ms();
        let Some(q) = x.request else {
            return Err(SkipReason::NoRequest);
        };
        if q.method.eq_ignore_ascii_case("CONNECT")
            || x.flags.tunnel
            || q.headers.contains("upgrade")
        {
            return Err(SkipReason::Tunnel);
        }
        let matched = |p: &RequestPattern| p.matches(&q.method, &q.target);
        if (!self.include.is_empty() && !self.include.iter().any(matched))
            || self.exclude.iter().any(matched)
        {
            return Err(SkipReason::Excluded);
        }
        if !self.allow_writes && is_write(&q.method) {
            return Err(SkipReason::Write);
        }
        let body_whole = !q.incomplete
            && !q.body.gap
            && !q.body.decode_error
            && q.body.data.len() as u64 == q.body.len
            && !x.flags.gap_request;
        if !body_whole {
            return Err(SkipReason::RequestIncomplete);
        }
        let cut = x.flags.gap_response || x.flags.truncated;
        let prod = x.response.map(|r| ResponseView {
            status: r.status,
            body_incomplete: body_incomplete(&r, cut),
            headers: r.headers,
            body: r.body.data,
        });
        Ok(ReplayRequest {
            id: x.id,
            conn: x.conn,
            at: q.start.ts,
            method: q.method,
            target: q.target,
            headers: q.headers,
            body: q.body.data,
            partial: prod.as_ref().is_some_and(|p| p.body_incomplete) || cut,
            prod,
            prod_latency_ms: latency,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::{
        body::Body,
        exchange::ExchangeFlags,
        message::{Request, Response},
    };

    fn exchange(method: &str, target: &str, body: &[u8]) -> Exchange {
        Exchange {
            id: 7,
            conn: 3,
            client: "10.0.0.1:40000".parse().unwrap(),
            server: "10.0.0.2:80".parse().unwrap(),
            request: Some(Request {
                method: method.into(),
                target: target.into(),
                version: "1.1".into(),
                headers: vec![("Host".into(), b"prod.example".to_vec())].into(),
                body: Body {
                    wire_len: body.len() as u64,
                    len: body.len() as u64,
                    data: body.to_vec(),
                    ..Body::default()
                },
                ..Request::default()
            }),
            response: Some(Response {
                version: "1.1".into(),
                status: 200,
                body: Body {
                    len: 2,
                    data: b"{}".to_vec(),
                    ..Body::default()
                },
                ..Response::default()
            }),
            flags: ExchangeFlags::default(),
            anomalies: vec![],
            client_by: None,
            traffic: None,
        }
    }

    #[test]
    fn reads_are_replayed_writes_need_allow_writes() {
        let s = Selection::default();
        let r = s.plan(exchange("GET", "/api/users/1", b"")).unwrap();
        assert_eq!((r.id, r.conn, r.method.as_str()), (7, 3, "GET"));
        assert_eq!(r.prod.unwrap().status, 200);
        for m in ["POST", "put", "PATCH", "DELETE"] {
            assert_eq!(
                s.plan(exchange(m, "/x", b"{}")).unwrap_err(),
                SkipReason::Write
            );
        }
        let w = Selection {
            allow_writes: true,
            ..Selection::default()
        };
        assert_eq!(w.plan(exchange("POST", "/x", b"{}")).unwrap().body, b"{}");
    }

    #[test]
    fn include_and_exclude_patterns() {
        let s = Selection {
            include: vec!["/api/*".parse().unwrap()],
            exclude: vec!["GET /api/health*".parse().unwrap()],
            allow_writes: false,
        };
        assert!(s.plan(exchange("GET", "/api/users?x=1", b"")).is_ok());
        assert_eq!(
            s.plan(exchange("GET", "/api/healthz", b"")).unwrap_err(),
            SkipReason::Excluded
        );
        assert_eq!(
            s.plan(exchange("GET", "/static/a.css", b"")).unwrap_err(),
            SkipReason::Excluded
        );
        let only_post: RequestPattern = "post".parse().unwrap();
        assert!(only_post.matches("POST", "/anything"));
        assert!(!only_post.matches("GET", "/anything"));
        assert!("GE7 /x".parse::<RequestPattern>().is_err());
        assert!("".parse::<RequestPattern>().is_err());
    }

    #[test]
    fn incomplete_requests_tunnels_and_orphans_are_skipped() {
        let s = Selection {
            allow_writes: true,
            ..Selection::default()
        };
        let mut cut = exchange("POST", "/upload", b"abc");
        if let Some(q) = cut.request.as_mut() {
            q.body.len = 100_000;
        }
        assert_eq!(s.plan(cut).unwrap_err(), SkipReason::RequestIncomplete);
        let mut ws = exchange("GET", "/ws", b"");
        if let Some(q) = ws.request.as_mut() {
            q.headers.push(("Upgrade".into(), b"websocket".to_vec()));
        }
        assert_eq!(s.plan(ws).unwrap_err(), SkipReason::Tunnel);
        let mut orphan = exchange("GET", "/", b"");
        orphan.request = None;
        assert_eq!(s.plan(orphan).unwrap_err(), SkipReason::NoRequest);
    }

    #[test]
    fn a_gap_in_the_response_marks_the_exchange_partial() {
        let mut x = exchange("GET", "/big", b"");
        x.flags.gap_response = true;
        let r = Selection::default().plan(x).unwrap();
        assert!(r.partial);
        assert!(r.prod.unwrap().body_incomplete);
        assert!(
            !Selection::default()
                .plan(exchange("GET", "/", b""))
                .unwrap()
                .partial
        );
    }
}
