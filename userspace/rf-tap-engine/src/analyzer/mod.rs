//! Application analyzers: what a TCP connection's reassembled streams are turned into.
//!
//! The flow table hands each connection's stream events (data with its direction, a gap of
//! N bytes, the end of one direction, the end of the connection) to one [`Analyzer`]. Which
//! one is decided by protocol detection ([`detect`]) from the first bytes of the connection,
//! as Zeek's dynamic protocol detection does; an analyzer can give the stream up (an HTTP
//! upgrade, a CONNECT tunnel), and detection then runs again on what follows.
//!
//! HTTP/1 ([`Http1`]) and HTTP/2 ([`Http2`]) turn the streams into exchanges. TLS and
//! everything else are counted per protocol ([`Counted`]), never parsed as HTTP.
//!
//! Adding an analyzer: a [`Protocol`] variant, a detection rule in [`detect`], a type that
//! implements [`Analyzer`], and its construction in [`for_protocol`].

pub mod detect;

use serde::Serialize;

use crate::{
    http::{
        anomaly::Anomaly,
        exchange::{HttpConnection, Paired},
        message::{Limits, Request},
    },
    http2::conn::H2Connection,
    reassembly::Origin,
};

/// A connection's application protocol, as detected from its first bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    Http1,
    Http2,
    Tls,
    /// Anything else (SMTP, SSH, a database protocol, binary junk).
    Opaque,
}

impl Protocol {
    pub const ALL: [Protocol; 4] = [
        Protocol::Http1,
        Protocol::Http2,
        Protocol::Tls,
        Protocol::Opaque,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Protocol::Http1 => "http1",
            Protocol::Http2 => "http2",
            Protocol::Tls => "tls",
            Protocol::Opaque => "opaque",
        }
    }
}

/// Connections and stream bytes of one protocol.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct ProtocolCount {
    pub connections: u64,
    pub bytes: u64,
}

/// Connections and bytes per detected protocol (JSON: `{"http1": {...}, "tls": {...}}`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct ProtocolCounts {
    pub http1: ProtocolCount,
    pub http2: ProtocolCount,
    pub tls: ProtocolCount,
    pub opaque: ProtocolCount,
}

impl ProtocolCounts {
    pub fn get_mut(&mut self, p: Protocol) -> &mut ProtocolCount {
        match p {
            Protocol::Http1 => &mut self.http1,
            Protocol::Http2 => &mut self.http2,
            Protocol::Tls => &mut self.tls,
            Protocol::Opaque => &mut self.opaque,
        }
    }

    pub fn get(&self, p: Protocol) -> ProtocolCount {
        match p {
            Protocol::Http1 => self.http1,
            Protocol::Http2 => self.http2,
            Protocol::Tls => self.tls,
            Protocol::Opaque => self.opaque,
        }
    }

    pub fn add(&mut self, o: &ProtocolCounts) {
        for p in Protocol::ALL {
            let (a, b) = (self.get_mut(p), o.get(p));
            a.connections += b.connections;
            a.bytes += b.bytes;
        }
    }
}

/// What an analyzer hands back from one stream event.
#[derive(Default)]
pub struct AppOut {
    /// Finished exchanges (the flow numbers them and adds addresses).
    pub paired: Vec<Paired>,
    /// Requests that completed during this call, before any response; filled only when
    /// `want_requests` is set.
    pub requests: Vec<Request>,
    pub want_requests: bool,
    /// Anomalies of the connection that belong to no exchange (cruft between messages).
    pub flow_anomalies: Vec<Anomaly>,
    /// The analyzer gave the stream up (upgrade or tunnel); detection runs again on these
    /// bytes, already received past the switch, and on everything after them.
    pub switch: Option<Switch>,
}

/// Bytes past an upgrade or tunnel point, per direction.
#[derive(Debug, Default)]
pub struct Switch {
    pub client: Vec<u8>,
    pub server: Vec<u8>,
    pub origin: Origin,
    /// `Upgrade: h2c` answered 101: the connection goes on as HTTP/2 (not a tunnel), and
    /// this request is its stream 1.
    pub h2c: Option<Request>,
}

/// One connection's application analyzer. Stream events come in order per direction; the
/// two directions interleave as the capture saw them.
pub trait Analyzer: Send {
    fn protocol(&self) -> Protocol;
    fn data(&mut self, from_client: bool, bytes: &[u8], origin: Origin, out: &mut AppOut);
    /// `len` bytes of one direction are missing here.
    fn gap(&mut self, from_client: bool, len: u64, out: &mut AppOut);
    /// One direction ended (FIN or RST).
    fn end(&mut self, from_client: bool, out: &mut AppOut);
    /// The connection is over (closed, timed out, evicted, or the input ended).
    fn finish(&mut self, out: &mut AppOut);
}

/// The analyzer for a detected protocol. Inside a tunnel only counting is done, as the
/// exchanges of a tunnel are its outer CONNECT or upgrade.
/// `mid_stream`: HTTP/2 found by its frames, without the client preface.
pub fn for_protocol(
    p: Protocol,
    limits: Limits,
    tunneled: bool,
    mid_stream: bool,
) -> Box<dyn Analyzer> {
    match p {
        Protocol::Http1 if !tunneled => Box::new(Http1(HttpConnection::new(limits))),
        Protocol::Http2 if !tunneled && mid_stream => {
            Box::new(Http2(H2Connection::mid_stream(limits)))
        }
        Protocol::Http2 if !tunneled => Box::new(Http2(H2Connection::new(limits))),
        p => Box::new(Counted(p)),
    }
}

/// HTTP/1.x: requests paired with responses.
pub struct Http1(pub HttpConnection);

impl Analyzer for Http1 {
    fn protocol(&self) -> Protocol {
        Protocol::Http1
    }

    fn data(&mut self, from_client: bool, bytes: &[u8], origin: Origin, out: &mut AppOut) {
        self.0.data(from_client, bytes, origin, out);
    }

    fn gap(&mut self, from_client: bool, len: u64, out: &mut AppOut) {
        self.0.gap(from_client, len, out);
    }

    fn end(&mut self, from_client: bool, out: &mut AppOut) {
        self.0.end(from_client, out);
    }

    fn finish(&mut self, out: &mut AppOut) {
        self.0.finish(out);
    }
}

/// HTTP/2 (prior knowledge, `Upgrade: h2c`, or frames found mid-stream): each stream an
/// exchange.
pub struct Http2(pub H2Connection);

impl Analyzer for Http2 {
    fn protocol(&self) -> Protocol {
        Protocol::Http2
    }

    fn data(&mut self, from_client: bool, bytes: &[u8], origin: Origin, out: &mut AppOut) {
        self.0.data(from_client, bytes, origin, out);
    }

    fn gap(&mut self, from_client: bool, len: u64, out: &mut AppOut) {
        self.0.gap(from_client, len, out);
    }

    fn end(&mut self, from_client: bool, out: &mut AppOut) {
        self.0.end(from_client, out);
    }

    fn finish(&mut self, out: &mut AppOut) {
        self.0.finish(out);
    }
}

/// A protocol rf-tap does not turn into exchanges: its bytes are only counted (by the flow).
pub struct Counted(pub Protocol);

impl Analyzer for Counted {
    fn protocol(&self) -> Protocol {
        self.0
    }
    fn data(&mut self, _: bool, _: &[u8], _: Origin, _: &mut AppOut) {}
    fn gap(&mut self, _: bool, _: u64, _: &mut AppOut) {}
    fn end(&mut self, _: bool, _: &mut AppOut) {}
    fn finish(&mut self, _: &mut AppOut) {}
}
