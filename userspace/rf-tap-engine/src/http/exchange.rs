//! Pairing requests with responses on one connection, and the exchange record.

use std::{collections::VecDeque, net::SocketAddr};

use serde::Serialize;

use super::message::{Limits, MessageParser, Parsed, Request, Response, Side};
use crate::reassembly::Origin;

/// Flags of an exchange (JSONL `flags`, as a list of names).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct ExchangeFlags {
    pub gap_request: bool,
    pub gap_response: bool,
    pub truncated: bool,
    pub no_response: bool,
    pub no_request: bool,
    pub tunnel: bool,
    pub anomaly: bool,
    pub incomplete: bool,
}

impl ExchangeFlags {
    pub fn names(&self) -> Vec<&'static str> {
        [
            (self.gap_request, "gap_request"),
            (self.gap_response, "gap_response"),
            (self.truncated, "truncated"),
            (self.no_response, "no_response"),
            (self.no_request, "no_request"),
            (self.tunnel, "tunnel"),
            (self.anomaly, "anomaly"),
            (self.incomplete, "incomplete"),
        ]
        .into_iter()
        .filter(|(on, _)| *on)
        .map(|(_, n)| n)
        .collect()
    }
}

/// One HTTP request/response exchange.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct Exchange {
    pub id: u64,
    pub conn: u64,
    pub client: SocketAddr,
    pub server: SocketAddr,
    pub request: Option<Request>,
    pub response: Option<Response>,
    pub flags: ExchangeFlags,
    pub anomalies: Vec<String>,
}

fn header_text(h: &[(String, Vec<u8>)], name: &str) -> Option<String> {
    h.iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| String::from_utf8_lossy(v).trim().to_string())
}

fn secs(o: &Origin) -> f64 {
    o.ts.as_secs_f64()
}

/// The JSONL record (the contract other tools and tests read).
#[derive(Serialize)]
pub struct ExchangeJson {
    pub id: u64,
    pub conn: u64,
    pub client: String,
    pub server: String,
    pub ts: f64,
    pub method: Option<String>,
    pub uri: Option<String>,
    pub version: Option<String>,
    pub host: Option<String>,
    pub status: Option<u16>,
    pub reason: Option<String>,
    pub info_code: Option<u16>,
    pub request_body_len: u64,
    pub response_body_len: u64,
    pub latency_ms: Option<f64>,
    pub request_start: Option<f64>,
    pub request_end: Option<f64>,
    pub response_start: Option<f64>,
    pub response_end: Option<f64>,
    pub first_frame: u64,
    pub last_frame: u64,
    pub flags: Vec<&'static str>,
    pub anomalies: Vec<String>,
}

impl Exchange {
    /// Request start, or response start for an exchange without request.
    pub fn start(&self) -> Origin {
        self.request
            .as_ref()
            .map(|r| r.start)
            .or(self.response.as_ref().map(|r| r.start))
            .unwrap_or_default()
    }

    /// Request end → response start, in milliseconds.
    pub fn latency_ms(&self) -> Option<f64> {
        let (q, r) = (self.request.as_ref()?, self.response.as_ref()?);
        Some(((secs(&r.start) - secs(&q.end)) * 1000.0).max(0.0))
    }

    pub fn to_json(&self) -> ExchangeJson {
        let q = self.request.as_ref();
        let r = self.response.as_ref();
        let frames: Vec<u64> = [
            q.map(|q| q.start.frame),
            q.map(|q| q.end.frame),
            r.map(|r| r.start.frame),
            r.map(|r| r.end.frame),
        ]
        .into_iter()
        .flatten()
        .filter(|f| *f > 0)
        .collect();
        ExchangeJson {
            id: self.id,
            conn: self.conn,
            client: self.client.to_string(),
            server: self.server.to_string(),
            ts: secs(&self.start()),
            method: q.map(|q| q.method.clone()),
            uri: q.map(|q| q.target.clone()),
            version: q
                .map(|q| q.version.clone())
                .or(r.map(|r| r.version.clone())),
            host: q.and_then(|q| header_text(&q.headers, "host")),
            status: r.map(|r| r.status),
            reason: r.map(|r| r.reason.clone()),
            info_code: r.and_then(|r| r.interim.last().copied()),
            request_body_len: q.map(|q| q.body.len).unwrap_or(0),
            response_body_len: r.map(|r| r.body.len).unwrap_or(0),
            latency_ms: self.latency_ms(),
            request_start: q.map(|q| secs(&q.start)),
            request_end: q.map(|q| secs(&q.end)),
            response_start: r.map(|r| secs(&r.start)),
            response_end: r.map(|r| secs(&r.end)),
            first_frame: frames.iter().copied().min().unwrap_or(0),
            last_frame: frames.iter().copied().max().unwrap_or(0),
            flags: self.flags.names(),
            anomalies: self.anomalies.clone(),
        }
    }
}

/// The HTTP state of one TCP connection.
pub struct HttpConnection {
    client: MessageParser,
    server: MessageParser,
    /// Methods of requests still waiting for their response.
    methods: VecDeque<String>,
    pending: VecDeque<Request>,
    interim: Vec<u16>,
    tunnel: bool,
    loose_anomalies: Vec<String>,
    parsed: Vec<Parsed>,
}

/// An exchange without ids and addresses yet (the flow adds them).
pub struct Paired {
    pub request: Option<Request>,
    pub response: Option<Response>,
    pub tunnel: bool,
    pub anomalies: Vec<String>,
}

impl HttpConnection {
    pub fn new(limits: Limits) -> Self {
        Self {
            client: MessageParser::new(Side::Client, limits),
            server: MessageParser::new(Side::Server, limits),
            methods: VecDeque::new(),
            pending: VecDeque::new(),
            interim: Vec::new(),
            tunnel: false,
            loose_anomalies: Vec::new(),
            parsed: Vec::new(),
        }
    }

    pub fn data(&mut self, from_client: bool, bytes: &[u8], origin: Origin, out: &mut Vec<Paired>) {
        let mut parsed = std::mem::take(&mut self.parsed);
        if from_client {
            self.client.data(bytes, origin, &self.methods, &mut parsed);
        } else {
            self.server.data(bytes, origin, &self.methods, &mut parsed);
        }
        self.absorb(&mut parsed, out);
        self.parsed = parsed;
    }

    pub fn gap(&mut self, from_client: bool, len: u64, out: &mut Vec<Paired>) {
        let mut parsed = std::mem::take(&mut self.parsed);
        if from_client {
            self.client.gap(len, &mut parsed);
        } else {
            self.server.gap(len, &mut parsed);
        }
        self.absorb(&mut parsed, out);
        self.parsed = parsed;
    }

    /// One direction ended.
    pub fn end(&mut self, from_client: bool, out: &mut Vec<Paired>) {
        let mut parsed = std::mem::take(&mut self.parsed);
        if from_client {
            self.client.close(&mut parsed);
        } else {
            self.server.close(&mut parsed);
        }
        self.absorb(&mut parsed, out);
        self.parsed = parsed;
    }

    /// The connection is over: requests still waiting get no response.
    pub fn finish(&mut self, out: &mut Vec<Paired>) {
        self.end(true, out);
        self.end(false, out);
        while let Some(q) = self.pending.pop_front() {
            out.push(Paired {
                request: Some(q),
                response: None,
                tunnel: self.tunnel,
                anomalies: std::mem::take(&mut self.loose_anomalies),
            });
        }
    }

    fn absorb(&mut self, parsed: &mut Vec<Parsed>, out: &mut Vec<Paired>) {
        for p in parsed.drain(..) {
            match p {
                Parsed::Request(q) => {
                    if q.version == "0.9" {
                        self.server.expect_http09();
                    }
                    self.methods.push_back(q.method.clone());
                    self.pending.push_back(*q);
                }
                Parsed::Interim(code) => self.interim.push(code),
                Parsed::Anomaly(a) => self.loose_anomalies.push(a),
                Parsed::Tunnel => {
                    self.tunnel = true;
                    self.client.tunnel();
                    self.server.tunnel();
                    if let Some(last) = out.last_mut() {
                        last.tunnel = true;
                    }
                }
                Parsed::Response(mut r) => {
                    r.interim = std::mem::take(&mut self.interim);
                    self.methods.pop_front();
                    let request = self.pending.pop_front();
                    out.push(Paired {
                        request,
                        response: Some(*r),
                        tunnel: false,
                        anomalies: std::mem::take(&mut self.loose_anomalies),
                    });
                }
            }
        }
    }
}
