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
        anomaly::Anomaly,
        body::{Body, BodyState},
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
    /// Bytes of this half were lost in a gap: what it has is kept, but it never ends.
    cut: bool,
    /// The body, finished when the request was announced before its response.
    finished: Option<Body>,
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
            cut: false,
            finished: None,
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
    /// Stream 1 of an upgraded connection: its request came as HTTP/1.1.
    upgraded: Option<Request>,
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
    /// The client preface is expected first (a connection seen from its start).
    preface: bool,
    /// Frame boundaries are known. Off after a gap or on a mid-stream pickup, until
    /// [`find_frames`] finds a run of frame headers again.
    synced: bool,
    /// Offsets of `buf` before this one start no frame run (so each byte is tried once).
    scan_from: usize,
    hpack: hpack::Decoder,
    pending: Option<Pending>,
    dead: bool,
}

impl Direction {
    fn new(preface: bool, synced: bool) -> Self {
        let mut hpack = hpack::Decoder::default();
        if !synced {
            hpack.mark_lost();
        }
        Self {
            buf: Vec::new(),
            preface,
            synced,
            scan_from: 0,
            hpack,
            pending: None,
            dead: false,
        }
    }
}

/// Most bytes an unsynced direction holds while looking for frames (the bytes before are
/// dropped: no frame run started there).
const MAX_UNSYNCED: usize = 256 << 10;

pub struct H2Connection {
    dirs: [Direction; 2],
    /// Boxed: a stream is large, and the map moves its values as it changes.
    streams: BTreeMap<u32, Box<Stream>>,
    limits: Limits,
    /// Header blocks that could not be decoded, or that referred to entries never seen.
    pub hpack_errors: u64,
    /// Times a direction found its frames again by their header shape (a mid-stream pickup
    /// or after a gap).
    pub resyncs: u64,
}

/// What the bytes at one offset say about a run of frames starting there.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Frames {
    /// A run of frame headers starts at this offset.
    At(usize),
    /// Nothing found before this offset; the bytes from it need more to decide.
    NeedMore(usize),
}

/// The longest frame a run found by shape may hold: SETTINGS_MAX_FRAME_SIZE's initial
/// value (RFC 9113 6.5.2). Peers that raised it are followed once in sync (up to
/// [`MAX_FRAME`]), but a run is not looked for in frames longer than this.
const SYNC_MAX_FRAME: usize = 16_384;

/// Whether a 9-byte frame header is one a peer would send: a known type with its defined
/// flags, the stream-zero rule of its type, the fixed lengths RFC 9113 gives, the reserved
/// bit clear, a length within the initial maximum frame size.
fn plausible_header(b: &[u8]) -> Option<usize> {
    let h = &b[..9];
    let len = usize::from(h[0]) << 16 | usize::from(h[1]) << 8 | usize::from(h[2]);
    let (kind, flags) = (h[3], h[4]);
    if h[5] & 0x80 != 0 || len > SYNC_MAX_FRAME {
        return None;
    }
    let stream = u32::from_be_bytes([h[5], h[6], h[7], h[8]]);
    // The payload, where these bytes hold it: fixed fields that must make sense.
    let payload = b.get(9..9 + len);
    let u32_at = |i: usize| {
        payload
            .and_then(|p| p.get(i..i + 4))
            .map(|x| u32::from_be_bytes([x[0], x[1], x[2], x[3]]))
    };
    let (allowed, on_zero, len_ok) = match kind {
        // An empty DATA frame is only sent to end a stream.
        DATA => (END_STREAM | PADDED, false, len > 0 || flags == END_STREAM),
        HEADERS => (END_STREAM | END_HEADERS | PADDED | PRIORITY, false, len > 0),
        2 => (0, false, len == 5),
        RST_STREAM => (0, false, len == 4 && u32_at(0).is_none_or(|e| e <= 0xd)),
        4 => (
            0x1,
            true,
            len % 6 == 0
                && (flags & 1 == 0 || len == 0)
                && payload
                    .is_none_or(|p| p.chunks(6).all(|s| s[0] == 0 && (1..=9).contains(&s[1]))),
        ),
        PUSH_PROMISE => (END_HEADERS | PADDED, false, len >= 4),
        6 => (0x1, true, len == 8),
        7 => (0, true, len >= 8 && u32_at(4).is_none_or(|e| e <= 0xd)),
        8 => (
            0,
            stream == 0,
            len == 4 && u32_at(0).is_none_or(|i| i != 0 && i & 0x8000_0000 == 0),
        ),
        CONTINUATION => (END_HEADERS, false, len > 0),
        _ => return None,
    };
    (flags & !allowed == 0 && (stream == 0) == on_zero && len_ok).then_some(len)
}

/// Looks for the start of a run of frames in `b` from offset `from`: two or more whole
/// frames with plausible headers chained by their lengths, or one that ends exactly where
/// the bytes do (segments usually end on frame ends). `strict` (protocol detection on
/// bytes that might be anything) asks for two whole frames from the first byte on. The
/// first offset
/// with such a run wins; failing that, the first whose run holds so far but is too short
/// to tell waits for more bytes.
pub fn find_frames(b: &[u8], from: usize, strict: bool) -> Frames {
    let mut undecided = None;
    let mut off = from;
    while off + 9 <= b.len() {
        let (mut pos, mut whole) = (off, 0usize);
        let mut holds = true;
        while pos + 9 <= b.len() {
            let Some(len) = plausible_header(&b[pos..]) else {
                holds = false;
                break;
            };
            if pos + 9 + len > b.len() {
                break;
            }
            whole += 1;
            pos += 9 + len;
        }
        let exact = pos == b.len();
        let enough = if strict {
            whole >= 2
        } else {
            whole >= 2 || (whole >= 1 && exact)
        };
        if enough {
            return Frames::At(off);
        }
        if strict {
            // Detection: a run from the first byte or nothing.
            return if holds {
                Frames::NeedMore(off)
            } else {
                Frames::NeedMore(b.len())
            };
        }
        if holds && undecided.is_none() {
            undecided = Some(off);
        }
        off += 1;
    }
    Frames::NeedMore(undecided.unwrap_or(off))
}

impl H2Connection {
    /// A connection seen from its start: the client preface comes first.
    pub fn new(limits: Limits) -> Self {
        Self::with_dirs(
            limits,
            Direction::new(true, true),
            Direction::new(false, true),
        )
    }

    /// A connection joined mid-stream: frames are found by their header shape and the
    /// HPACK tables start lost (entries never seen are reported unknown).
    pub fn mid_stream(limits: Limits) -> Self {
        Self::with_dirs(
            limits,
            Direction::new(false, false),
            Direction::new(false, false),
        )
    }

    /// A connection switched from HTTP/1.1 by `Upgrade: h2c` (RFC 7540 3.2): `request`
    /// was sent as HTTP/1.1 and is stream 1, whose response comes as HTTP/2 after the
    /// 101; the client's preface follows its request.
    pub fn upgraded(limits: Limits, request: Request) -> Self {
        let mut c = Self::new(limits);
        c.streams.insert(
            1,
            Box::new(Stream {
                request: None,
                upgraded: Some(request),
                response: None,
                reset: false,
            }),
        );
        c
    }

    fn with_dirs(limits: Limits, client: Direction, server: Direction) -> Self {
        Self {
            dirs: [client, server],
            streams: BTreeMap::new(),
            limits,
            hpack_errors: 0,
            resyncs: 0,
        }
    }

    pub fn data(&mut self, from_client: bool, bytes: &[u8], origin: Origin, out: &mut AppOut) {
        let d = usize::from(!from_client);
        if self.dirs[d].dead {
            return;
        }
        let dir = &self.dirs[d];
        if dir.buf.is_empty() && dir.synced && !dir.preface {
            // The common case: whole frames are read in place, and only a frame cut at the
            // end of these bytes is kept for the next.
            let used = self.frames(from_client, bytes, origin, out);
            if !self.dirs[d].dead {
                self.dirs[d].buf.extend_from_slice(&bytes[used..]);
            }
            return;
        }
        self.dirs[d].buf.extend_from_slice(bytes);
        if self.dirs[d].preface {
            let have = self.dirs[d].buf.len().min(PREFACE.len());
            if self.dirs[d].buf[..have] != PREFACE[..have] {
                // No preface: look for frames as on a pickup.
                self.dirs[d].preface = false;
                self.dirs[d].synced = false;
                self.dirs[d].hpack.mark_lost();
            } else if have < PREFACE.len() {
                return;
            } else {
                self.dirs[d].buf.drain(..PREFACE.len());
                self.dirs[d].preface = false;
            }
        }
        if !self.dirs[d].synced {
            let dir = &mut self.dirs[d];
            match find_frames(&dir.buf, dir.scan_from, false) {
                Frames::At(off) => {
                    dir.buf.drain(..off);
                    dir.synced = true;
                    dir.scan_from = 0;
                    self.resyncs += 1;
                    out.flow_anomalies.push(Anomaly::FrameResync);
                }
                Frames::NeedMore(off) => {
                    // Bytes before `off` start nothing; keep the rest, bounded.
                    let drop = off.max(dir.buf.len().saturating_sub(MAX_UNSYNCED));
                    dir.buf.drain(..drop);
                    dir.scan_from = off - drop.min(off);
                    return;
                }
            }
        }
        let mut buf = std::mem::take(&mut self.dirs[d].buf);
        let used = self.frames(from_client, &buf, origin, out);
        if self.dirs[d].dead {
            return;
        }
        buf.drain(..used);
        // A gap cannot come in the middle of this call: the buffer is still this one's.
        self.dirs[d].buf = buf;
    }

    /// The whole frames at the start of `b`, handled in order; returns the bytes they took.
    fn frames(&mut self, from_client: bool, b: &[u8], origin: Origin, out: &mut AppOut) -> usize {
        let d = usize::from(!from_client);
        let mut at = 0;
        while b.len() >= at + 9 {
            let len =
                usize::from(b[at]) << 16 | usize::from(b[at + 1]) << 8 | usize::from(b[at + 2]);
            if len > MAX_FRAME {
                self.dirs[d].dead = true;
                self.dirs[d].buf.clear();
                return b.len();
            }
            if b.len() < at + 9 + len {
                break;
            }
            let (kind, flags) = (b[at + 3], b[at + 4]);
            let stream =
                u32::from_be_bytes([b[at + 5], b[at + 6], b[at + 7], b[at + 8]]) & 0x7fff_ffff;
            self.frame(
                from_client,
                kind,
                flags,
                stream,
                &b[at + 9..at + 9 + len],
                origin,
                out,
            );
            at += 9 + len;
            if self.dirs[d].dead {
                return b.len();
            }
        }
        at
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
        fn unpad(p: &[u8], flags: u8) -> Option<&[u8]> {
            if flags & PADDED == 0 {
                return Some(p);
            }
            let pad = usize::from(*p.first()?);
            (p.len() > pad).then(|| &p[1..p.len() - pad])
        }
        match kind {
            DATA => {
                let Some(body) = unpad(p, flags) else { return };
                let keep = self.limits.keep_body;
                if let Some(h) = self.half(stream, from_client, origin) {
                    let enc = h
                        .fields
                        .iter()
                        .find(|(n, _)| n == "content-encoding")
                        .map(|(_, v)| String::from_utf8_lossy(v).into_owned());
                    h.body
                        .get_or_insert_with(|| BodyState::new(enc.as_deref(), keep))
                        .push(body);
                    h.end = origin;
                    if flags & END_STREAM != 0 {
                        h.done = true;
                    }
                }
                self.maybe_done(stream, out);
            }
            HEADERS | PUSH_PROMISE => {
                let Some(mut block) = unpad(p, flags) else {
                    return;
                };
                if kind == HEADERS && flags & PRIORITY != 0 {
                    let Some(rest) = block.get(5..) else { return };
                    block = rest;
                }
                let promise = kind == PUSH_PROMISE;
                if promise {
                    let Some(rest) = block.get(4..) else { return };
                    block = rest;
                }
                let block = block.to_vec();
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
        // Fields whose name or value refers to an entry never seen are left out (never
        // invented); the half is flagged `hpack_unknown`.
        let fields: Vec<(String, Vec<u8>)> = block
            .fields
            .into_iter()
            .filter_map(|f| Some((String::from_utf8_lossy(&f.name?).into_owned(), f.value?)))
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
        let s = self.streams.entry(stream).or_insert_with(|| {
            Box::new(Stream {
                request: None,
                upgraded: None,
                response: None,
                reset: false,
            })
        });
        let h = if from_client {
            &mut s.request
        } else {
            &mut s.response
        };
        Some(h.get_or_insert_with(|| Half::new(origin)))
    }

    fn maybe_done(&mut self, stream: u32, out: &mut AppOut) {
        // A request that just ended is announced before its response (live mirroring).
        if out.want_requests {
            if let Some(h) = self
                .streams
                .get_mut(&stream)
                .and_then(|s| s.request.as_mut())
                .filter(|h| h.done && h.finished.is_none())
            {
                let body = h.body.take().map(BodyState::finish).unwrap_or_default();
                h.finished = Some(body.clone());
                out.requests.push(request_of(h, body));
            }
        }
        let done = self.streams.get(&stream).is_some_and(|s| {
            s.reset
                || ((s.upgraded.is_some() || s.request.as_ref().is_some_and(|h| h.done))
                    && s.response.as_ref().is_some_and(|h| h.done))
        });
        if done {
            if let Some(s) = self.streams.remove(&stream) {
                out.paired.push(pair(*s));
            }
        }
    }

    /// Bytes of one direction are lost: what its open streams were sending is cut (they
    /// come out incomplete), its frames are looked for again by their header shape, and
    /// its HPACK table is lost until a size update to 0 (entries inserted in the gap are
    /// unknown).
    pub fn gap(&mut self, from_client: bool, _len: u64, _out: &mut AppOut) {
        let d = usize::from(!from_client);
        let dir = &mut self.dirs[d];
        dir.buf.clear();
        dir.preface = false;
        dir.synced = false;
        dir.scan_from = 0;
        dir.pending = None;
        dir.hpack.mark_lost();
        for s in self.streams.values_mut() {
            let h = if from_client {
                &mut s.request
            } else {
                &mut s.response
            };
            if let Some(h) = h.as_mut().filter(|h| !h.done) {
                h.cut = true;
            }
        }
    }

    pub fn end(&mut self, _from_client: bool, _out: &mut AppOut) {}

    /// The connection is over: every stream still open comes out as it stands.
    pub fn finish(&mut self, out: &mut AppOut) {
        for (_, s) in std::mem::take(&mut self.streams) {
            out.paired.push(pair(*s));
        }
    }
}

fn anomalies(h: &Half) -> Vec<Anomaly> {
    if h.unknown > 0 {
        vec![Anomaly::HpackUnknown]
    } else {
        Vec::new()
    }
}

fn request_of(h: &Half, body: Body) -> Request {
    Request {
        method: h.pseudo(":method").unwrap_or_default(),
        target: h.pseudo(":path").unwrap_or_default(),
        version: "2".into(),
        headers: h.headers(),
        incomplete: !h.done || h.cut,
        start: h.start,
        end: h.end,
        anomalies: anomalies(h),
        body,
    }
}

fn pair(s: Stream) -> Paired {
    let upgraded = s.upgraded.is_some();
    let request = s.upgraded.or_else(|| {
        s.request.map(|mut h| {
            let body = match h.finished.take() {
                Some(b) => b,
                None => h.body.take().map(BodyState::finish).unwrap_or_default(),
            };
            request_of(&h, body)
        })
    });
    let response = s.response.map(|h| {
        let status = h
            .pseudo(":status")
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        Response {
            version: "2".into(),
            status,
            reason: String::new(),
            headers: h.headers(),
            start: h.start,
            end: h.end,
            anomalies: anomalies(&h),
            incomplete: !h.done || h.cut,
            status_text: None,
            // The 101 that switched the connection answered this stream's request.
            interim: if upgraded {
                std::iter::once(101).chain(h.interim).collect()
            } else {
                h.interim
            },
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

    /// Stream 1 adds `:authority` to the dynamic table; stream 3 refers to it (index 62).
    fn indexed_conversation() -> (Vec<u8>, Vec<u8>, usize) {
        let mut c = PREFACE.to_vec();
        c.extend(frame(4, 0, 0, &[]));
        let mut b1 = vec![0x82, 0x41, 7];
        b1.extend_from_slice(b"h2.test");
        b1.extend(block(&[(":path", "/a")]));
        c.extend(frame(1, END_HEADERS | END_STREAM, 1, &b1));
        let at = c.len();
        let mut b3 = vec![0x82, 0xbe];
        b3.extend(block(&[(":path", "/b")]));
        c.extend(frame(1, END_HEADERS | END_STREAM, 3, &b3));
        let mut s = frame(4, 0, 0, &[]);
        s.extend(frame(1, END_HEADERS | END_STREAM, 1, &[0x88]));
        s.extend(frame(1, END_HEADERS | END_STREAM, 3, &[0x88]));
        (c, s, at)
    }

    fn described(p: &[Paired]) -> Vec<String> {
        let mut v: Vec<String> = p
            .iter()
            .map(|x| {
                let q = x.request.as_ref();
                format!(
                    "{:?} {:?} {:?} {}",
                    q.map(|q| q.target.as_str()),
                    q.and_then(|q| q.headers.get_str("host")),
                    q.map(|q| q.anomalies.clone()),
                    x.response.as_ref().map_or(0, |r| r.status),
                )
            })
            .collect();
        v.sort();
        v
    }

    #[test]
    fn joined_mid_stream_frames_are_found_by_shape_and_unknown_entries_flagged() {
        let (c, s, at) = indexed_conversation();
        let mut h = H2Connection::new(Limits::default());
        let mut out = AppOut::default();
        let o = Origin::default();
        h.data(true, &c, o, &mut out);
        h.data(false, &s, o, &mut out);
        h.finish(&mut out);
        assert_eq!(
            described(&out.paired),
            [
                "Some(\"/a\") Some(\"h2.test\") Some([]) 200",
                "Some(\"/b\") Some(\"h2.test\") Some([]) 200",
            ]
        );
        // Joined anywhere inside stream 1's frames: stream 3 still comes out, its path from
        // a literal, its authority (a table entry never seen) left out and flagged. The
        // server's frames are found from any offset inside its first frame.
        for cut in (at - 12)..at {
            for scut in 0..9 {
                let mut h = H2Connection::mid_stream(Limits::default());
                let mut out = AppOut::default();
                h.data(true, &c[cut..], o, &mut out);
                h.data(false, &s[scut..], o, &mut out);
                h.finish(&mut out);
                let d = described(&out.paired);
                assert!(
                    d.contains(&"Some(\"/b\") None Some([HpackUnknown]) 200".to_string()),
                    "cut {cut}/{scut}: {d:?}"
                );
                assert!(
                    d.iter().all(|l| !l.contains("h2.test")),
                    "nothing invented: {d:?}"
                );
            }
        }
        // Split into pieces after the pickup: the same.
        let mut h = H2Connection::mid_stream(Limits::default());
        let mut out = AppOut::default();
        for part in c[at - 5..].chunks(3) {
            h.data(true, part, o, &mut out);
        }
        h.data(false, &s, o, &mut out);
        h.finish(&mut out);
        assert!(described(&out.paired)
            .contains(&"Some(\"/b\") None Some([HpackUnknown]) 200".to_string()));
    }

    #[test]
    fn after_a_gap_frames_are_found_again_and_the_table_is_lost() {
        let (c, s, at) = indexed_conversation();
        let mut h = H2Connection::new(Limits::default());
        let mut out = AppOut::default();
        let o = Origin::default();
        // The client's bytes from inside stream 1's frame to stream 3's are lost.
        h.data(true, &c[..at - 10], o, &mut out);
        h.gap(true, 10, &mut out);
        h.data(true, &c[at..], o, &mut out);
        h.data(false, &s, o, &mut out);
        h.finish(&mut out);
        let d = described(&out.paired);
        assert!(
            d.contains(&"Some(\"/b\") None Some([HpackUnknown]) 200".to_string()),
            "{d:?}"
        );
        assert_eq!(h.resyncs, 1);
    }

    #[test]
    fn frame_runs_are_told_from_other_bytes() {
        let (c, s, _) = indexed_conversation();
        assert_eq!(find_frames(&s, 0, true), Frames::At(0));
        assert_eq!(find_frames(&c[PREFACE.len()..], 0, true), Frames::At(0));
        for junk in [
            &b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"[..],
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello",
            b"{\"items\":[1,2,3],\"next\":null}",
            &[0u8; 64],
        ] {
            assert!(
                !matches!(find_frames(junk, 0, true), Frames::At(_)),
                "{:?}",
                String::from_utf8_lossy(junk)
            );
        }
    }

    #[test]
    fn requests_are_announced_when_they_end_before_their_responses() {
        let (c, s) = conversation();
        let mut h = H2Connection::new(Limits::default());
        let mut out = AppOut {
            want_requests: true,
            ..AppOut::default()
        };
        let o = Origin::default();
        h.data(true, &c, o, &mut out);
        let announced: Vec<(String, Vec<u8>)> = out
            .requests
            .iter()
            .map(|q| (q.target.clone(), q.body.data.clone()))
            .collect();
        assert_eq!(
            announced,
            [
                ("/a".to_string(), vec![]),
                ("/b".to_string(), b"{\"x\":1}".to_vec())
            ]
        );
        // Stream 5 was reset, not ended: only its exchange comes out. Nothing is paired yet.
        let paired_before = out.paired.len();
        h.data(false, &s, o, &mut out);
        h.finish(&mut out);
        assert_eq!(out.requests.len(), 2);
        assert_eq!(out.paired.len() - paired_before, 2);
        let post = out
            .paired
            .iter()
            .find(|p| p.request.as_ref().is_some_and(|q| q.target == "/b"))
            .unwrap();
        assert_eq!(post.request.as_ref().unwrap().body.data, b"{\"x\":1}");
    }

    /// One stream of a random conversation: what the reference says it is.
    #[derive(Clone, Debug)]
    struct Spec {
        post: bool,
        path: String,
        req_body: Vec<u8>,
        status: u16,
        resp_body: Vec<u8>,
        trailer: bool,
        continuation: usize,
        pad: u8,
        chunk: usize,
    }

    fn spec() -> impl proptest::strategy::Strategy<Value = Spec> {
        use proptest::prelude::*;
        (
            any::<bool>(),
            "[a-z]{1,12}",
            proptest::collection::vec(any::<u8>(), 0..300),
            200u16..600,
            proptest::collection::vec(any::<u8>(), 0..600),
            any::<bool>(),
            0usize..20,
            0u8..12,
            1usize..200,
        )
            .prop_map(
                |(post, path, req_body, status, resp_body, trailer, continuation, pad, chunk)| {
                    Spec {
                        post,
                        path: format!("/{path}"),
                        req_body: if post { req_body } else { Vec::new() },
                        status,
                        resp_body,
                        trailer,
                        continuation,
                        pad,
                        chunk,
                    }
                },
            )
    }

    /// A stream's frames, each direction: HEADERS (split into CONTINUATION at a point),
    /// DATA in chunks, padded, trailers.
    fn frames_of(id: u32, s: &Spec) -> (Vec<Vec<u8>>, Vec<Vec<u8>>) {
        let headers = |fields: &[(&str, &str)], end: bool, split: usize| -> Vec<Vec<u8>> {
            let b = block(fields);
            let at = split.min(b.len());
            let end = if end { END_STREAM } else { 0 };
            if at == 0 || at == b.len() {
                return vec![frame(HEADERS, END_HEADERS | end, id, &b)];
            }
            vec![
                frame(HEADERS, end, id, &b[..at]),
                frame(CONTINUATION, END_HEADERS, id, &b[at..]),
            ]
        };
        let data = |body: &[u8], end: bool| -> Vec<Vec<u8>> {
            let chunks: Vec<&[u8]> = body.chunks(s.chunk).collect();
            let n = chunks.len();
            chunks
                .into_iter()
                .enumerate()
                .map(|(i, c)| {
                    let last = i + 1 == n && end;
                    let flags = if last { END_STREAM } else { 0 };
                    if s.pad > 0 {
                        let mut p = vec![s.pad];
                        p.extend_from_slice(c);
                        p.extend(std::iter::repeat_n(0, usize::from(s.pad)));
                        frame(DATA, flags | PADDED, id, &p)
                    } else {
                        frame(DATA, flags, id, c)
                    }
                })
                .collect()
        };
        let method = if s.post { "POST" } else { "GET" };
        let mut c = headers(
            &[(":method", method), (":path", &s.path), (":scheme", "http")],
            s.req_body.is_empty(),
            s.continuation,
        );
        c.extend(data(&s.req_body, true));
        let status = s.status.to_string();
        let mut v = headers(
            &[(":status", &status)],
            s.resp_body.is_empty() && !s.trailer,
            s.continuation,
        );
        v.extend(data(&s.resp_body, !s.trailer));
        if s.trailer {
            v.extend(headers(&[("x-done", "1")], true, 0));
        }
        (c, v)
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(200))]
        /// Random interleavings of random streams, cut anywhere, give the exchanges the
        /// generator says they are.
        #[test]
        fn random_frame_sequences_match_the_reference(
            specs in proptest::collection::vec(spec(), 1..8),
            order in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..400),
            cut in 1usize..300,
        ) {
            let mut client: Vec<std::collections::VecDeque<Vec<u8>>> = Vec::new();
            let mut server: Vec<std::collections::VecDeque<Vec<u8>>> = Vec::new();
            for (i, s) in specs.iter().enumerate() {
                let (c, v) = frames_of(1 + 2 * i as u32, s);
                client.push(c.into());
                server.push(v.into());
            }
            // Interleave frames of different streams (a stream's own frames stay in order;
            // a header block and its CONTINUATION stay together, as RFC 9113 requires).
            let mix = |queues: &mut Vec<std::collections::VecDeque<Vec<u8>>>| {
                let mut out = Vec::new();
                let mut k = 0;
                loop {
                    let live: Vec<usize> =
                        (0..queues.len()).filter(|i| !queues[*i].is_empty()).collect();
                    if live.is_empty() {
                        break out;
                    }
                    let pick = live[usize::from(order.get(k).copied().unwrap_or(0)) % live.len()];
                    k += 1;
                    let f = queues[pick].pop_front().unwrap_or_default();
                    let joined = f[3] == HEADERS && f[4] & END_HEADERS == 0;
                    out.extend(f);
                    if joined {
                        out.extend(queues[pick].pop_front().unwrap_or_default());
                    }
                }
            };
            let mut c = PREFACE.to_vec();
            c.extend(mix(&mut client));
            let s = mix(&mut server);
            let got = summary(&run(&c, &s, cut));
            let mut want: Vec<String> = specs
                .iter()
                .map(|s| {
                    format!(
                        "{} {} {} {:?} {} {:?} {:?} {:?}",
                        if s.post { "POST" } else { "GET" },
                        s.path,
                        String::from_utf8_lossy(&s.req_body),
                        None::<String>,
                        s.status,
                        Some(String::from_utf8_lossy(&s.resp_body).into_owned()),
                        Vec::<u16>::new(),
                        None::<String>,
                    )
                })
                .collect();
            want.sort();
            proptest::prop_assert_eq!(got, want);
        }
    }
}
