//! Protocol detection from the first bytes of a connection (or of a tunnel).
//!
//! Rules, in order, on the client's first bytes:
//! - the HTTP/2 client preface (`PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n`) is HTTP/2;
//! - a TLS handshake record (`16 03 0x`) is TLS;
//! - a request line is HTTP/1: a registered method followed by a space at once, any other
//!   upper-case token only once its line ends in ` HTTP/1.x` (so `EHLO`, `MAIL FROM:` and
//!   `RCPT TO:` of SMTP are not requests);
//!
//! and on the server's first bytes: `HTTP/` is HTTP/1 (a capture that starts between a
//! request and its response, or a server answering a request line detection does not know),
//! a TLS record is TLS. A client that matches nothing waits for the server's first bytes
//! (or the end of its stream), and a server that speaks first waits for the client's first
//! bytes (an HTTP/2 server may send its SETTINGS before the preface arrives). Anything else
//! is opaque on a connection
//! seen from its SYN, or inside a tunnel. On a connection picked up mid-stream, the first
//! bytes may be the middle of an HTTP body, so undecided bytes go to HTTP/2 when either
//! direction starts with a run of HTTP/2 frames (two whole frames chained by their
//! lengths, or one filling each direction's bytes exactly; a run that more bytes may
//! confirm waits for them), and otherwise to HTTP/1, which finds the next message start
//! again. At most [`MAX_SNIFF`] bytes per direction are held while
//! deciding.

use super::Protocol;

pub const H2_PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Most bytes per direction held before a decision is forced.
pub const MAX_SNIFF: usize = 4096;

/// Methods a request line can start with (RFC 9110, WebDAV, and the common extensions).
const METHODS: &[&[u8]] = &[
    b"GET",
    b"HEAD",
    b"POST",
    b"PUT",
    b"DELETE",
    b"CONNECT",
    b"OPTIONS",
    b"TRACE",
    b"PATCH",
    b"PROPFIND",
    b"PROPPATCH",
    b"MKCOL",
    b"COPY",
    b"MOVE",
    b"LOCK",
    b"UNLOCK",
    b"SEARCH",
    b"REPORT",
    b"MKACTIVITY",
    b"CHECKOUT",
    b"MERGE",
    b"MSEARCH",
    b"M-SEARCH",
    b"NOTIFY",
    b"SUBSCRIBE",
    b"UNSUBSCRIBE",
    b"PURGE",
    b"LINK",
    b"UNLINK",
    b"BIND",
    b"REBIND",
    b"UNBIND",
    b"ACL",
    b"MKCALENDAR",
    b"VERSION-CONTROL",
    b"BASELINE-CONTROL",
    b"UPDATE",
    b"LABEL",
    b"MKWORKSPACE",
    b"ORDERPATCH",
    b"SOURCE",
];

/// What the bytes so far say.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    Is(Protocol),
    /// Not enough bytes yet.
    NeedMore,
    /// Nothing known matches.
    Unknown,
}

fn is_tls_record(b: &[u8]) -> Verdict {
    match b {
        [] => Verdict::NeedMore,
        [0x16] | [0x16, 0x03] => Verdict::NeedMore,
        [0x16, 0x03, minor, ..] if *minor <= 0x04 => Verdict::Is(Protocol::Tls),
        _ => Verdict::Unknown,
    }
}

/// The client's first bytes.
pub fn client(b: &[u8]) -> Verdict {
    if b.is_empty() {
        return Verdict::NeedMore;
    }
    let n = b.len().min(H2_PREFACE.len());
    if b[..n] == H2_PREFACE[..n] {
        return if n == H2_PREFACE.len() {
            Verdict::Is(Protocol::Http2)
        } else {
            Verdict::NeedMore
        };
    }
    if b[0] == 0x16 {
        return is_tls_record(b);
    }
    request_line(b)
}

/// The server's first bytes.
pub fn server(b: &[u8]) -> Verdict {
    if b.is_empty() {
        return Verdict::NeedMore;
    }
    let n = b.len().min(5);
    if b[..n].eq_ignore_ascii_case(&b"HTTP/"[..n]) {
        return if n == 5 {
            Verdict::Is(Protocol::Http1)
        } else {
            Verdict::NeedMore
        };
    }
    if b[0] == 0x16 {
        return is_tls_record(b);
    }
    Verdict::Unknown
}

fn request_line(b: &[u8]) -> Verdict {
    // Blank lines before a request are allowed (RFC 9112 2.2).
    let start = b
        .iter()
        .take_while(|c| **c == b'\r' || **c == b'\n')
        .count();
    let b = &b[start..];
    if b.is_empty() {
        return Verdict::NeedMore;
    }
    let token = b
        .iter()
        .take(24)
        .take_while(|c| c.is_ascii_uppercase() || **c == b'-' || **c == b'_')
        .count();
    if token == b.len() && token < 24 {
        return Verdict::NeedMore;
    }
    if token == 0 || b.get(token) != Some(&b' ') {
        return Verdict::Unknown;
    }
    if METHODS.contains(&&b[..token]) {
        return Verdict::Is(Protocol::Http1);
    }
    // Another token: a request only if its line ends with the HTTP version.
    let Some(eol) = b.iter().position(|c| *c == b'\n') else {
        return if b.len() < MAX_SNIFF {
            Verdict::NeedMore
        } else {
            Verdict::Unknown
        };
    };
    let line = b[..eol].strip_suffix(b"\r").unwrap_or(&b[..eol]);
    match line.rsplit(|c| *c == b' ').next() {
        Some(v) if v.len() == 8 && v.starts_with(b"HTTP/1.") => Verdict::Is(Protocol::Http1),
        _ => Verdict::Unknown,
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum H2Frames {
    Yes,
    Maybe,
    No,
}

/// One connection's detection state: the first bytes of each direction, in arrival order.
#[derive(Debug, Default)]
pub struct Detector {
    /// Chunks held while deciding: (from client, bytes, origin).
    pub held: Vec<(bool, Vec<u8>, crate::reassembly::Origin)>,
    pub held_bytes: [usize; 2],
    /// The connection was seen from its SYN, or this is a tunnel: unknown bytes are opaque.
    pub from_start: bool,
}

impl Detector {
    pub fn new(from_start: bool) -> Self {
        Self {
            from_start,
            ..Self::default()
        }
    }

    fn joined(&self, from_client: bool) -> Vec<u8> {
        let mut v = Vec::new();
        for (c, b, _) in &self.held {
            if *c == from_client {
                v.extend_from_slice(b);
            }
        }
        v
    }

    /// The decision with what is held; `forced` when no more bytes will help (a gap, the
    /// end of a direction, or the sniff limit).
    pub fn decide(&self, forced: bool) -> Option<Protocol> {
        let (c, s) = (self.joined(true), self.joined(false));
        let (vc, vs) = (client(&c), server(&s));
        for v in [vc, vs] {
            if let Verdict::Is(p) = v {
                return Some(p);
            }
        }
        let limit = self.held_bytes.iter().any(|n| *n >= MAX_SNIFF);
        if !self.from_start {
            match self.h2_frames(&c, &s) {
                H2Frames::Yes => return Some(Protocol::Http2),
                // A frame run that more bytes may confirm: wait for them.
                H2Frames::Maybe if !forced && !limit => return None,
                _ => {}
            }
        }
        // An unknown client may still be answered by an HTTP server (a request line
        // httparse takes but detection does not know): wait for the server's first bytes.
        // A server may speak first (an HTTP/2 server's SETTINGS before the preface has
        // arrived, an SMTP greeting): the client's first bytes are waited for too.
        let waiting = (vc == Verdict::NeedMore && !c.is_empty())
            || (vs == Verdict::NeedMore && !s.is_empty())
            || s.is_empty()
            || c.is_empty();
        if waiting && !forced && !limit {
            return None;
        }
        Some(if self.from_start {
            Protocol::Opaque
        } else {
            Protocol::Http1
        })
    }

    /// HTTP/2 frames found by their header shape in the first bytes of a connection joined
    /// mid-stream (no preface): two whole frames chained from the first byte of either
    /// direction, or one whole frame filling each direction's bytes exactly.
    fn h2_frames(&self, c: &[u8], s: &[u8]) -> H2Frames {
        use crate::http2::conn::{find_frames, Frames};
        let verdict = |b: &[u8]| match find_frames(b, 0, true) {
            Frames::At(_) => H2Frames::Yes,
            Frames::NeedMore(0) if !b.is_empty() => H2Frames::Maybe,
            _ => H2Frames::No,
        };
        let (vc, vs) = (verdict(c), verdict(s));
        if vc == H2Frames::Yes || vs == H2Frames::Yes {
            return H2Frames::Yes;
        }
        let one_exact = |b: &[u8]| matches!(find_frames(b, 0, false), Frames::At(0));
        if !c.is_empty() && !s.is_empty() && one_exact(c) && one_exact(s) {
            return H2Frames::Yes;
        }
        if vc == H2Frames::Maybe || vs == H2Frames::Maybe {
            H2Frames::Maybe
        } else {
            H2Frames::No
        }
    }

    /// The client's first bytes are the HTTP/2 preface (not a pickup mid-stream).
    pub fn preface_seen(&self) -> bool {
        self.joined(true).starts_with(H2_PREFACE)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detection_table() {
        let cases: &[(&[u8], Verdict)] = &[
            (b"GET / HTTP/1.1\r\n", Verdict::Is(Protocol::Http1)),
            (b"GET /\r\n", Verdict::Is(Protocol::Http1)),
            (b"\r\nPOST /x HTTP/1.0\r\n", Verdict::Is(Protocol::Http1)),
            (b"BREW /pot HTTP/1.1\r\n", Verdict::Is(Protocol::Http1)),
            (b"BREW /pot", Verdict::NeedMore),
            (b"GE", Verdict::NeedMore),
            (H2_PREFACE, Verdict::Is(Protocol::Http2)),
            (b"PRI * HTTP/2.0\r\n", Verdict::NeedMore),
            (b"PRI * HTTP/1.1\r\n", Verdict::Is(Protocol::Http1)),
            (&[0x16, 0x03, 0x01, 0x02, 0x00], Verdict::Is(Protocol::Tls)),
            (&[0x16, 0x03], Verdict::NeedMore),
            (&[0x16, 0x09, 0x01], Verdict::Unknown),
            (b"EHLO mail.example\r\n", Verdict::Unknown),
            (b"MAIL FROM:<a@b>\r\n", Verdict::Unknown),
            (b"RCPT TO:<a@b>\r\n", Verdict::Unknown),
            (b"SSH-2.0-OpenSSH_9.6\r\n", Verdict::Unknown),
            (&[0x00, 0xff, 0x13, 0x37], Verdict::Unknown),
            (b"get / HTTP/1.1\r\n", Verdict::Unknown),
        ];
        for (bytes, want) in cases {
            assert_eq!(client(bytes), *want, "{:?}", String::from_utf8_lossy(bytes));
        }
        assert_eq!(server(b"HTTP/1.1 200 OK\r\n"), Verdict::Is(Protocol::Http1));
        assert_eq!(server(b"HTT"), Verdict::NeedMore);
        assert_eq!(server(b"220 smtp ESMTP\r\n"), Verdict::Unknown);
        assert_eq!(
            server(&[0x16, 0x03, 0x03, 0, 1]),
            Verdict::Is(Protocol::Tls)
        );
    }

    #[test]
    fn undecided_bytes_are_opaque_from_the_start_and_http_mid_stream() {
        let o = crate::reassembly::Origin::default();
        for (from_start, want) in [(true, Protocol::Opaque), (false, Protocol::Http1)] {
            let mut d = Detector::new(from_start);
            d.held.push((true, b"EHLO me\r\n".to_vec(), o));
            assert_eq!(
                d.decide(false),
                None,
                "an unknown client waits for the server"
            );
            d.held.push((false, b"220 mail ESMTP\r\n".to_vec(), o));
            d.held_bytes[1] = 16;
            assert_eq!(d.decide(false), Some(want));
            let mut d = Detector::new(from_start);
            d.held.push((true, b"gEt / HTTP/1.1\r\n\r\n".to_vec(), o));
            d.held
                .push((false, b"HTTP/1.1 400 Bad Request\r\n".to_vec(), o));
            assert_eq!(d.decide(false), Some(Protocol::Http1), "the server decides");
        }
        // An HTTP/2 server's SETTINGS before the client's preface: the preface decides.
        let mut d = Detector::new(true);
        d.held.push((
            false,
            vec![0, 0, 6, 4, 0, 0, 0, 0, 0, 0, 3, 0, 0, 0, 100],
            o,
        ));
        d.held_bytes[1] = 15;
        assert_eq!(d.decide(false), None, "waits for the client");
        d.held.push((true, H2_PREFACE.to_vec(), o));
        assert_eq!(d.decide(false), Some(Protocol::Http2));
        let mut d = Detector::new(true);
        d.held.push((true, b"BREW /pot".to_vec(), o));
        assert_eq!(d.decide(false), None, "waits for the end of the line");
        assert_eq!(d.decide(true), Some(Protocol::Opaque));
    }
}
