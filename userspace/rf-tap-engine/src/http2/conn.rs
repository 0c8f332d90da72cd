//! One HTTP/2 connection seen passively (RFC 9113): both directions' frames, header blocks
//! decoded with each direction's HPACK state, and each stream made an exchange once both
//! sides ended it (END_STREAM or RST_STREAM), or when the connection ends.
//!
//! Bounds: frames longer than 1 MiB end the direction's parsing (the default maximum frame
//! size is 16 KiB); at most 1,024 streams are open at once (the oldest is handed over as it
//! stands beyond that); bodies keep what the HTTP/1 limits keep. Flow control is not
//! enforced. After a gap a direction stops being parsed (its frame boundaries are lost) and
//! its open streams come out flagged incomplete.

use std::collections::BTreeMap;

use super::hpack;
use crate::{
    analyzer::AppOut,
    http::{
        body::BodyState,
        exchange::Paired,
        message::{Headers, Limits, Request, Response},
    },
    reassembly::Origin,
};

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const MAX_FRAME: usize = 1 << 20;
const MAX_STREAMS: usize = 1024;

const DATA: u8 = 0;
const HEADERS: u8 = 1;
const RST_STREAM: u8 = 3;
const PUSH_PROMISE: u8 = 5;
const CONTINUATION: u8 = 9;

const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const PADDED: u8 = 0x8;
const PRIORITY: u8 = 0x20;

/// One side of a stream: its header fields, body and times.
struct Half {
    fields: Vec<(String, Vec<u8>)>,
    trailers: Vec<(String, Vec<u8>)>,
    body: Option<BodyState>,
    start: Origin,
    end: Origin,
    done: bool,
    unknown: usize,
    /// 1xx statuses before the final one (responses).
    interim: Vec<u16>,
}

impl Half {
    fn new(origin: Origin) -> Self {
        Self {
            fields: Vec::new(),
            trailers: Vec::new(),
            body: None,
            start: origin,
            end: origin,
            done: false,
            unknown: 0,
            interim: Vec::new(),
        }
    }

    fn pseudo(&self, name: &str) -> Option<String> {
        self.fields
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
    }

    fn headers(&self) -> Headers {
        let mut h: Vec<(String, Vec<u8>)> = Vec::new();
        if let Some(a) = self.pseudo(":authority") {
            if !self.fields.iter().any(|(n, _)| n == "host") {
                h.push(("host".into(), a.into_bytes()));
            }
        }
        h.extend(
            self.fields
                .iter()
                .chain(&self.trailers)
                .filter(|(n, _)| !n.starts_with(':'))
                .cloned(),
        );
        h.into()
    }
}

struct Stream {
    request: Option<Half>,
    response: Option<Half>,
    reset: bool,
}

/// Header block being gathered (HEADERS or PUSH_PROMISE, then CONTINUATIONs).
struct Pending {
    stream: u32,
    end_stream: bool,
    promise: bool,
    block: Vec<u8>,
}

struct Direction {
    buf: Vec<u8>,
    preface: bool,
    hpack: hpack::Decoder,
    pending: Option<Pending>,
    dead: bool,
}

pub struct H2Connection {
    dirs: [Direction; 2],
    streams: BTreeMap<u32, Stream>,
    limits: Limits,
    /// Header blocks that could not be decoded, and references to entries never seen.
    pub hpack_errors: u64,
}

impl H2Connection {
    pub fn new(limits: Limits) -> Self {
        let dir = |preface| Direction {
            buf: Vec::new(),
            preface,
            hpack: hpack::Decoder::default(),
            pending: None,
            dead: false,
        };
        Self {
            dirs: [dir(true), dir(false)],
            streams: BTreeMap::new(),
            limits,
            hpack_errors: 0,
        }
    }

    pub fn data(&mut self, from_client: bool, bytes: &[u8], origin: Origin, out: &mut AppOut) {
        let d = usize::from(!from_client);
        if self.dirs[d].dead {
            return;
        }
        self.dirs[d].buf.extend_from_slice(bytes);
        if self.dirs[d].preface {
            let have = self.dirs[d].buf.len().min(PREFACE.len());
            if self.dirs[d].buf[..have] != PREFACE[..have] {
                self.dirs[d].dead = true;
                return;
            }
            if have < PREFACE.len() {
                return;
            }
            self.dirs[d].buf.drain(..PREFACE.len());
            self.dirs[d].preface = false;
        }
        let mut at = 0;
        loop {
            let buf = &self.dirs[d].buf;
            if buf.len() < at + 9 {
                break;
            }
            let len = usize::from(buf[at]) << 16
                | usize::from(buf[at + 1]) << 8
                | usize::from(buf[at + 2]);
            if len > MAX_FRAME {
                self.dirs[d].dead = true;
                self.dirs[d].buf.clear();
                return;
            }
            if buf.len() < at + 9 + len {
                break;
            }
            let (kind, flags) = (buf[at + 3], buf[at + 4]);
            let stream = u32::from_be_bytes([buf[at + 5], buf[at + 6], buf[at + 7], buf[at + 8]])
                & 0x7fff_ffff;
            let payload = buf[at + 9..at + 9 + len].to_vec();
            at += 9 + len;
            self.frame(from_client, kind, flags, stream, &payload, origin, out);
        }
        self.dirs[d].buf.drain(..at);
    }

    #[allow(clippy::too_many_arguments)]
    fn frame(
        &mut self,
        from_client: bool,
        kind: u8,
        flags: u8,
        stream: u32,
        p: &[u8],
        origin: Origin,
        out: &mut AppOut,
    ) {
        let d = usize::from(!from_client);
        let unpad = |p: &[u8]| -> Option<Vec<u8>> {
            if flags & PADDED == 0 {
                return Some(p.to_vec());
            }
            let pad = usize::from(*p.first()?);
            (p.len() > pad).then(|| p[1..p.len() - pad].to_vec())
        };
        match kind {
            DATA => {
                let Some(body) = unpad(p) else { return };
                let keep = self.limits.keep_body;
                if let Some(h) = self.half(stream, from_client, origin) {
                    let enc = h
                        .fields
                        .iter()
                        .find(|(n, _)| n == "content-encoding")
                        .map(|(_, v)| String::from_utf8_lossy(v).into_owned());
                    h.body
                        .get_or_insert_with(|| BodyState::new(enc.as_deref(), keep))
                        .push(&body);
                    h.end = origin;
                    if flags & END_STREAM != 0 {
                        h.done = true;
                    }
                }
                self.maybe_done(stream, out);
            }
            HEADERS | PUSH_PROMISE => {
                let Some(mut block) = unpad(p) else { return };
                if kind == HEADERS && flags & PRIORITY != 0 {
                    if block.len() < 5 {
                        return;
                    }
                    block.drain(..5);
                }
                let promise = kind == PUSH_PROMISE;
                if promise {
                    if block.len() < 4 {
                        return;
                    }
                    block.drain(..4);
                }
                let pending = Pending {
                    stream,
                    end_stream: flags & END_STREAM != 0,
                    promise,
                    block,
                };
                if flags & END_HEADERS != 0 {
                    self.header_block(from_client, pending, origin, out);
                } else {
                    self.dirs[d].pending = Some(pending);
                }
            }
            CONTINUATION => {
                let Some(mut pending) = self.dirs[d].pending.take() else {
                    return;
                };
                if pending.block.len() + p.len() > MAX_FRAME {
                    self.dirs[d].dead = true;
                    return;
                }
                pending.block.extend_from_slice(p);
                if flags & END_HEADERS != 0 {
                    self.header_block(from_client, pending, origin, out);
                } else {
                    self.dirs[d].pending = Some(pending);
                }
            }
            RST_STREAM => {
                if let Some(s) = self.streams.get_mut(&stream) {
                    s.reset = true;
                }
                self.maybe_done(stream, out);
            }
            // SETTINGS, PING, GOAWAY, WINDOW_UPDATE, PRIORITY: nothing an exchange shows.
            _ => {}
        }
    }

    fn header_block(&mut self, from_client: bool, p: Pending, origin: Origin, out: &mut AppOut) {
        let d = usize::from(!from_client);
        let block = match self.dirs[d].hpack.decode(&p.block) {
            Ok(b) => b,
            Err(_) => {
                self.hpack_errors += 1;
                return;
            }
        };
        if block.unknown > 0 {
            self.hpack_errors += 1;
        }
        if p.promise {
            // A pushed response: its request is the promise; not an exchange of its own here.
            return;
        }
        let fields: Vec<(String, Vec<u8>)> = block
            .fields
            .into_iter()
            .map(|f| {
                (
                    f.name.map_or("?".to_string(), |n| {
                        String::from_utf8_lossy(&n).into_owned()
                    }),
                    f.value.unwrap_or_default(),
                )
            })
            .collect();
        let Some(h) = self.half(p.stream, from_client, origin) else {
            return;
        };
        h.unknown += block.unknown;
        h.end = origin;
        let status = fields
            .iter()
            .find(|(n, _)| n == ":status")
            .and_then(|(_, v)| std::str::from_utf8(v).ok()?.parse::<u16>().ok());
        if !from_client {
            if let Some(code) = status.filter(|s| (100..200).contains(s) && *s != 101) {
                // An interim (100 Continue, 103 Early Hints): the final one is to come.
                h.interim.push(code);
                return;
            }
        }
        if h.fields.is_empty() {
            h.fields = fields;
        } else {
            h.trailers = fields;
        }
        if p.end_stream {
            h.done = true;
        }
        self.maybe_done(p.stream, out);
    }

    /// The request or response half of `stream`, opened when needed.
    fn half(&mut self, stream: u32, from_client: bool, origin: Origin) -> Option<&mut Half> {
        if stream == 0 {
            return None;
        }
        if !self.streams.contains_key(&stream) && self.streams.len() >= MAX_STREAMS {
            return None;
        }
        let s = self.streams.entry(stream).or_insert(Stream {
            request: None,
            response: None,
            reset: false,
        });
        let h = if from_client {
            &mut s.request
        } else {
            &mut s.response
        };
        Some(h.get_or_insert_with(|| Half::new(origin)))
    }

    fn maybe_done(&mut self, stream: u32, out: &mut AppOut) {
        let done = self.streams.get(&stream).is_some_and(|s| {
            s.reset
                || (s.request.as_ref().is_some_and(|h| h.done)
                    && s.response.as_ref().is_some_and(|h| h.done))
        });
        if done {
            if let Some(s) = self.streams.remove(&stream) {
                out.paired.push(pair(s));
            }
        }
    }

    pub fn gap(&mut self, from_client: bool, _len: u64, _out: &mut AppOut) {
        let d = usize::from(!from_client);
        self.dirs[d].dead = true;
        self.dirs[d].buf.clear();
        self.dirs[d].hpack.mark_lost();
    }

    pub fn end(&mut self, _from_client: bool, _out: &mut AppOut) {}

    /// The connection is over: every stream still open comes out as it stands.
    pub fn finish(&mut self, out: &mut AppOut) {
        for (_, s) in std::mem::take(&mut self.streams) {
            out.paired.push(pair(s));
        }
    }
}

fn pair(s: Stream) -> Paired {
    let request = s.request.map(|h| {
        let (method, target, headers) = (
            h.pseudo(":method").unwrap_or_default(),
            h.pseudo(":path").unwrap_or_default(),
            h.headers(),
        );
        Request {
            method,
            target,
            version: "2".into(),
            headers,
            incomplete: !h.done,
            start: h.start,
            end: h.end,
            anomalies: Vec::new(),
            body: h.body.map(BodyState::finish).unwrap_or_default(),
        }
    });
    let response = s.response.map(|h| {
        let status = h
            .pseudo(":status")
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        let headers = h.headers();
        Response {
            version: "2".into(),
            status,
            reason: String::new(),
            headers,
            start: h.start,
            end: h.end,
            interim: h.interim,
            anomalies: Vec::new(),
            incomplete: !h.done,
            status_text: None,
            body: h.body.map(BodyState::finish).unwrap_or_default(),
        }
    });
    Paired {
        request,
        response,
        tunnel: false,
        anomalies: Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let n = payload.len();
        let mut f = vec![(n >> 16) as u8, (n >> 8) as u8, n as u8, kind, flags];
        f.extend_from_slice(&stream.to_be_bytes());
        f.extend_from_slice(payload);
        f
    }

    /// A header block of literals without indexing (and one indexed `:method GET`).
    fn block(fields: &[(&str, &str)]) -> Vec<u8> {
        let mut b = Vec::new();
        for (n, v) in fields {
            if (*n, *v) == (":method", "GET") {
                b.push(0x82);
                continue;
            }
            b.push(0x00);
            b.push(n.len() as u8);
            b.extend_from_slice(n.as_bytes());
            b.push(v.len() as u8);
            b.extend_from_slice(v.as_bytes());
        }
        b
    }

    fn conversation() -> (Vec<u8>, Vec<u8>) {
        let mut c = PREFACE.to_vec();
        c.extend(frame(4, 0, 0, &[]));
        // Stream 1: GET; stream 3: POST whose headers span a CONTINUATION, body padded.
        c.extend(frame(
            1,
            END_HEADERS | END_STREAM,
            1,
            &block(&[
                (":method", "GET"),
                (":path", "/a"),
                (":authority", "h2.test"),
                (":scheme", "http"),
            ]),
        ));
        let post = block(&[
            (":method", "POST"),
            (":path", "/b"),
            (":authority", "h2.test"),
            ("content-type", "application/json"),
        ]);
        c.extend(frame(1, 0, 3, &post[..7]));
        c.extend(frame(9, END_HEADERS, 3, &post[7..]));
        let mut padded = vec![3u8];
        padded.extend_from_slice(b"{\"x\":1}");
        padded.extend_from_slice(&[0, 0, 0]);
        c.extend(frame(0, PADDED | END_STREAM, 3, &padded));
        // Stream 5: cancelled by the client.
        c.extend(frame(
            1,
            END_HEADERS,
            5,
            &block(&[(":method", "GET"), (":path", "/c")]),
        ));
        c.extend(frame(3, 0, 5, &[0, 0, 0, 8]));
        let mut s = frame(4, 0, 0, &[]);
        // Answers interleaved: 3 first, with a 100 interim and trailers; then 1.
        s.extend(frame(1, END_HEADERS, 3, &block(&[(":status", "100")])));
        s.extend(frame(1, END_HEADERS, 3, &block(&[(":status", "201")])));
        s.extend(frame(
            1,
            END_HEADERS,
            1,
            &block(&[(":status", "200"), ("content-type", "text/plain")]),
        ));
        s.extend(frame(0, 0, 1, b"hello "));
        s.extend(frame(0, 0, 3, b"{}"));
        s.extend(frame(
            1,
            END_HEADERS | END_STREAM,
            3,
            &block(&[("grpc-status", "0")]),
        ));
        s.extend(frame(0, END_STREAM, 1, b"world"));
        (c, s)
    }

    fn run(c: &[u8], s: &[u8], cut: usize) -> Vec<Paired> {
        let mut h = H2Connection::new(Limits::default());
        let mut out = AppOut::default();
        let o = Origin::default();
        for part in c.chunks(cut.max(1)) {
            h.data(true, part, o, &mut out);
        }
        for part in s.chunks(cut.max(1)) {
            h.data(false, part, o, &mut out);
        }
        h.finish(&mut out);
        std::mem::take(&mut out.paired)
    }

    fn summary(p: &[Paired]) -> Vec<String> {
        let mut v: Vec<String> = p
            .iter()
            .map(|x| {
                let q = x.request.as_ref().unwrap();
                let r = x.response.as_ref();
                format!(
                    "{} {} {} {:?} {} {:?} {}",
                    q.method,
                    q.target,
                    String::from_utf8_lossy(&q.body.data),
                    q.headers.get_str("host"),
                    r.map_or(0, |r| r.status),
                    r.map(|r| String::from_utf8_lossy(&r.body.data).into_owned()),
                    r.map_or(String::new(), |r| format!(
                        "{:?} {:?}",
                        r.interim,
                        r.headers.get_str("grpc-status")
                    )),
                )
            })
            .collect();
        v.sort();
        v
    }

    #[test]
    fn interleaved_streams_continuation_padding_interims_trailers_and_reset() {
        let (c, s) = conversation();
        let want = summary(&run(&c, &s, usize::MAX));
        assert_eq!(
            want,
            [
                "GET /a  Some(\"h2.test\") 200 Some(\"hello world\") [] None",
                "GET /c  None 0 None ",
                "POST /b {\"x\":1} Some(\"h2.test\") 201 Some(\"{}\") [100] Some(\"0\")",
            ]
        );
        // Frames split at every byte give the same exchanges.
        for cut in 1..40 {
            assert_eq!(summary(&run(&c, &s, cut)), want, "cut {cut}");
        }
    }

    #[test]
    fn a_gap_stops_the_direction_and_open_streams_come_out_incomplete() {
        let (c, s) = conversation();
        let mut h = H2Connection::new(Limits::default());
        let mut out = AppOut::default();
        let o = Origin::default();
        h.data(true, &c, o, &mut out);
        h.data(false, &s[..60], o, &mut out);
        h.gap(false, 100, &mut out);
        h.data(false, &s[60..], o, &mut out);
        h.finish(&mut out);
        assert_eq!(out.paired.len(), 3);
        assert!(out
            .paired
            .iter()
            .filter_map(|p| p.response.as_ref())
            .all(|r| r.incomplete || r.status == 0));
    }
}
