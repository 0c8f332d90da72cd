//! Pairing requests with responses on one connection, and the exchange record.

use std::{borrow::Cow, collections::VecDeque, net::SocketAddr};

use serde::Serialize;

use super::anomaly::Anomaly;
use super::message::{Limits, MessageParser, Parsed, Request, Response, Side};
use crate::{
    analyzer::{AppOut, Switch},
    packet::PacketDirection,
    reassembly::Origin,
    redact::Redaction,
};

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
        self.iter_names().collect()
    }

    fn iter_names(&self) -> impl Iterator<Item = &'static str> {
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
    }
}

/// How the client end of a connection was told from the server end.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ClientBy {
    /// The connection's SYN (sent by the client) was captured.
    Syn,
    /// Only the SYN-ACK was captured (sent by the server).
    SynAck,
    /// No handshake: the first bytes seen were a request.
    Request,
    /// No handshake: the first bytes seen were a response (`HTTP/`).
    Response,
    /// No handshake and nothing recognisable: the higher port was taken for the client.
    Port,
}

/// Which way an exchange's requests crossed the capture point.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Traffic {
    /// Into the captured host (captured on ingress): the host served them.
    Inbound,
    /// Out of the captured host (captured on egress): the host made the call, as to a
    /// downstream dependency.
    Outbound,
}

impl Traffic {
    /// From the capture direction of the client's packets.
    pub fn of_requests(d: PacketDirection) -> Self {
        match d {
            PacketDirection::Ingress => Traffic::Inbound,
            PacketDirection::Egress => Traffic::Outbound,
        }
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
    pub anomalies: Vec<Anomaly>,
    /// How `client` was told from `server` (None in archives older than version 3).
    pub client_by: Option<ClientBy>,
    /// Inbound or outbound, when the capture recorded packet directions (live captures
    /// and pcapng with `epb_flags`; a classic pcap, or packets decapsulated from a tunnel
    /// such as a VXLAN mirror session, do not say).
    pub traffic: Option<Traffic>,
}

fn secs(o: &Origin) -> f64 {
    o.ts.as_secs_f64()
}

/// The JSONL record (the contract other tools and tests read). It borrows from the
/// exchange, so writing one allocates nothing beyond a non-UTF-8 Host.
#[derive(Serialize)]
pub struct ExchangeJson<'a> {
    pub id: u64,
    pub conn: u64,
    /// Written as `"ip:port"` (`[ip]:port` for IPv6).
    pub client: SocketAddr,
    pub server: SocketAddr,
    pub ts: f64,
    pub method: Option<&'a str>,
    /// The request target, secret query parameters masked by the redaction policy.
    pub uri: Option<Cow<'a, str>>,
    /// The target before its query (`?`).
    pub path: Option<&'a str>,
    pub version: Option<&'a str>,
    pub host: Option<Cow<'a, str>>,
    /// Null without a response, and when its code was not three digits (see `status_text`).
    pub status: Option<u16>,
    /// The status code as sent when it was not three digits (`2XX`).
    pub status_text: Option<&'a str>,
    pub reason: Option<&'a str>,
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
    pub flags: FlagNames,
    pub anomalies: &'a [Anomaly],
    pub client_by: Option<ClientBy>,
    /// `"inbound"` or `"outbound"` (null when the capture did not record directions).
    pub direction: Option<Traffic>,
    /// A gRPC call's service, method, status and message counts (only on gRPC exchanges).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub grpc: Option<crate::grpc::Call>,
}

/// The names of the flags that are set, serialized as a JSON list without allocating.
pub struct FlagNames(ExchangeFlags);

impl Serialize for FlagNames {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(self.0.iter_names())
    }
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

    /// The JSONL record (docs/jsonl.md), `uri` masked by `redaction`.
    pub fn to_json(&self, redaction: &Redaction) -> ExchangeJson<'_> {
        let q = self.request.as_ref();
        let r = self.response.as_ref();
        let frames = [
            q.map(|q| q.start.frame),
            q.map(|q| q.end.frame),
            r.map(|r| r.start.frame),
            r.map(|r| r.end.frame),
        ]
        .into_iter()
        .flatten()
        .filter(|f| *f > 0);
        ExchangeJson {
            id: self.id,
            conn: self.conn,
            client: self.client,
            server: self.server,
            ts: secs(&self.start()),
            method: q.map(|q| q.method.as_str()),
            uri: q.map(|q| redaction.target(&q.target)),
            path: q.map(|q| q.target.split('?').next().unwrap_or("")),
            version: q
                .map(|q| q.version.as_str())
                .or(r.map(|r| r.version.as_str())),
            host: q.and_then(|q| q.headers.get_str("host")),
            status: r.filter(|r| r.status_text.is_none()).map(|r| r.status),
            status_text: r.and_then(|r| r.status_text.as_deref()),
            reason: r.map(|r| r.reason.as_str()),
            info_code: r.and_then(|r| r.interim.last().copied()),
            request_body_len: q.map(|q| q.body.len).unwrap_or(0),
            response_body_len: r.map(|r| r.body.len).unwrap_or(0),
            latency_ms: self.latency_ms(),
            request_start: q.map(|q| secs(&q.start)),
            request_end: q.map(|q| secs(&q.end)),
            response_start: r.map(|r| secs(&r.start)),
            response_end: r.map(|r| secs(&r.end)),
            first_frame: frames.clone().min().unwrap_or(0),
            last_frame: frames.max().unwrap_or(0),
            flags: FlagNames(self.flags),
            anomalies: &self.anomalies,
            client_by: self.client_by,
            direction: self.traffic,
            grpc: crate::grpc::call(q, r),
        }
    }
}

/// The HTTP state of one TCP connection.
pub struct HttpConnection {
    client: MessageParser,
    server: MessageParser,
    /// Methods of requests still waiting for their response.
    methods: VecDeque<String>,
    /// Requests waiting for their response, in order; `None` is client cruft, which the
    /// server may answer with an error (most servers send a 400 and close).
    pending: VecDeque<Option<Request>>,
    interim: Vec<u16>,
    tunnel: bool,
    loose_anomalies: Vec<Anomaly>,
    parsed: Vec<Parsed>,
}

/// An exchange without ids and addresses yet (the flow adds them).
pub struct Paired {
    pub request: Option<Request>,
    pub response: Option<Response>,
    pub tunnel: bool,
    pub anomalies: Vec<Anomaly>,
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

    pub fn data(&mut self, from_client: bool, bytes: &[u8], origin: Origin, out: &mut AppOut) {
        let mut parsed = std::mem::take(&mut self.parsed);
        if from_client {
            self.client.data(bytes, origin, &self.methods, &mut parsed);
        } else {
            self.server.data(bytes, origin, &self.methods, &mut parsed);
        }
        self.absorb(from_client, &mut parsed, out, origin);
        self.parsed = parsed;
    }

    pub fn gap(&mut self, from_client: bool, len: u64, out: &mut AppOut) {
        let mut parsed = std::mem::take(&mut self.parsed);
        if from_client {
            self.client.gap(len, &mut parsed);
        } else {
            self.server.gap(len, &mut parsed);
        }
        self.absorb(from_client, &mut parsed, out, Origin::default());
        self.parsed = parsed;
    }

    /// One direction ended.
    pub fn end(&mut self, from_client: bool, out: &mut AppOut) {
        let mut parsed = std::mem::take(&mut self.parsed);
        if from_client {
            self.client.close(&mut parsed);
        } else {
            self.server.close(&mut parsed);
        }
        self.absorb(from_client, &mut parsed, out, Origin::default());
        self.parsed = parsed;
    }

    /// The connection is over: requests still waiting get no response.
    pub fn finish(&mut self, out: &mut AppOut) {
        self.end(true, out);
        self.end(false, out);
        while let Some(q) = self.pending.pop_front() {
            // Cruft nobody answered was counted when it came.
            let Some(q) = q else { continue };
            out.paired.push(Paired {
                request: Some(q),
                response: None,
                tunnel: self.tunnel,
                anomalies: std::mem::take(&mut self.loose_anomalies),
            });
        }
    }

    fn absorb(
        &mut self,
        from_client: bool,
        parsed: &mut Vec<Parsed>,
        out: &mut AppOut,
        origin: Origin,
    ) {
        for p in parsed.drain(..) {
            match p {
                Parsed::Request(q) => {
                    if q.version == "0.9" {
                        self.server.expect_http09();
                    }
                    if out.want_requests {
                        out.requests.push((*q).clone());
                    }
                    self.methods.push_back(q.method.clone());
                    self.pending.push_back(Some(*q));
                }
                Parsed::Interim(code) => self.interim.push(code),
                Parsed::Anomaly(Anomaly::Cruft) => {
                    out.flow_anomalies.push(Anomaly::Cruft);
                    if from_client {
                        // It takes a place in the line of requests: an answer may come.
                        self.methods.push_back(String::new());
                        self.pending.push_back(None);
                    }
                }
                Parsed::Anomaly(a) => self.loose_anomalies.push(a),
                Parsed::Tunnel => {
                    // `Upgrade: h2c` answered 101: the request is stream 1 of HTTP/2 that
                    // follows (RFC 7540 3.2), answered there; not a tunnel.
                    let h2c = out.paired.last().is_some_and(|p| {
                        p.response.as_ref().is_some_and(|r| {
                            r.status == 101
                                && r.headers
                                    .get_str("upgrade")
                                    .is_some_and(|u| u.trim().eq_ignore_ascii_case("h2c"))
                        })
                    });
                    if h2c {
                        let request = out.paired.pop().and_then(|p| p.request);
                        out.switch = Some(Switch {
                            client: self.client.tunnel(),
                            server: self.server.tunnel(),
                            origin,
                            h2c: Some(request.unwrap_or_default()),
                        });
                        continue;
                    }
                    self.tunnel = true;
                    if let Some(last) = out.paired.last_mut() {
                        last.tunnel = true;
                    }
                    // The stream is handed over: what each side sent past this point
                    // goes to protocol detection.
                    out.switch = Some(Switch {
                        client: self.client.tunnel(),
                        server: self.server.tunnel(),
                        origin,
                        h2c: None,
                    });
                }
                Parsed::Response(mut r) => {
                    r.interim = std::mem::take(&mut self.interim);
                    // Cruft first in line: an error response is the server's answer to it
                    // (of the flow, not an exchange); any other means the server skipped it.
                    let mut answered_cruft = false;
                    while matches!(self.pending.front(), Some(None)) {
                        self.pending.pop_front();
                        self.methods.pop_front();
                        if r.status >= 400 {
                            answered_cruft = true;
                            break;
                        }
                    }
                    if answered_cruft {
                        out.flow_anomalies.push(Anomaly::CruftAnswered);
                        continue;
                    }
                    self.methods.pop_front();
                    let request = self.pending.pop_front().flatten();
                    out.paired.push(Paired {
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
