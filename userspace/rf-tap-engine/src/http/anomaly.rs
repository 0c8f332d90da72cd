//! What the HTTP/1 parser found wrong or unusual, as a closed set of kinds with stable
//! names (as Zeek names its weirds). The name is what JSONL, HAR comments, `--stats` and the
//! archive carry; the description is for people.

use std::fmt;

use serde::{de, Deserialize, Deserializer, Serialize, Serializer};

macro_rules! anomalies {
    ($($variant:ident = $name:literal, $describe:literal, [$($legacy:literal),*];)*) => {
        /// One kind of anomaly.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum Anomaly {
            $(#[doc = $describe] $variant,)*
        }

        impl Anomaly {
            pub const ALL: &'static [Anomaly] = &[$(Anomaly::$variant,)*];

            /// The stable name (snake case; never changes once released).
            pub fn name(self) -> &'static str {
                match self { $(Anomaly::$variant => $name,)* }
            }

            /// What it means, in a few words.
            pub fn describe(self) -> &'static str {
                match self { $(Anomaly::$variant => $describe,)* }
            }

            /// From a stable name, or from the free text rf-tap wrote before anomalies had
            /// names (archives of version 1 and 2).
            pub fn from_name(s: &str) -> Option<Anomaly> {
                match s {
                    $($name => Some(Anomaly::$variant),)*
                    $($($legacy => Some(Anomaly::$variant),)*)*
                    _ => None,
                }
            }
        }
    };
}

anomalies! {
    HeaderSectionTooLong = "header_section_too_long",
        "header section longer than the limit (64 KiB)", ["header section too long"];
    BadRequestLine = "bad_request_line",
        "request line that is not METHOD TARGET HTTP/x.y",
        ["bad request head: invalid token", "bad request head: invalid HTTP version",
         "bad request head: invalid new line", "bad request head: invalid response status"];
    BadStatusLine = "bad_status_line",
        "status line that is not HTTP/x.y CODE REASON",
        ["bad response head: invalid token", "bad response head: invalid HTTP version",
         "bad response head: invalid new line", "bad response head: invalid response status"];
    BadHeader = "bad_header",
        "header line with a bad name or value",
        ["bad request head: invalid header name", "bad request head: invalid header value",
         "bad response head: invalid header name", "bad response head: invalid header value"];
    TooManyHeaders = "too_many_headers",
        "more header fields than the limit (256)",
        ["bad request head: too many headers", "bad response head: too many headers"];
    ChunkSizeLineTooLong = "chunk_size_line_too_long",
        "chunk size line longer than 1 KiB", ["chunk size line too long"];
    BadChunkSize = "bad_chunk_size", "chunk size that is not hexadecimal", ["bad chunk size"];
    ChunkWithoutCrlf = "chunk_without_crlf", "chunk data not followed by CRLF",
        ["chunk without CRLF"];
    BadContentLength = "bad_content_length", "Content-Length that is not digits",
        ["bad Content-Length"];
    ContentLengthOverflow = "content_length_overflow", "Content-Length past 2^64",
        ["Content-Length overflow"];
    ConflictingContentLength = "conflicting_content_length",
        "several different Content-Length values", ["conflicting Content-Length values"];
    LowerCaseHttpKeyword = "lower_case_http_keyword", "`http/1.x` in lower case",
        ["lower-case HTTP keyword"];
    LenientRequestLine = "lenient_request_line",
        "request line accepted leniently (spaces or non-ASCII bytes in the target)",
        ["request line accepted leniently"];
    IncompleteMessageAtEnd = "incomplete_message_at_end",
        "stream ended inside a message head", ["incomplete message at end of stream"];
    BadStatusCode = "bad_status_code",
        "status code that is not three digits (kept as status_text)", [];
    HeadCut = "head_cut",
        "message head cut by a gap or the capture's packet length (what was whole is kept)", [];
    Cruft = "cruft",
        "bytes after a whole message that start no message (skipped; an anomaly of the flow, not an exchange)", [];
    CruftAnswered = "cruft_answered",
        "the server's error response to cruft (an anomaly of the flow, not an exchange)", [];
    FrameResync = "frame_resync",
        "HTTP/2 frames found again by their header shape (a connection joined mid-stream, or after a gap; an anomaly of the flow)", [];
    HpackUnknown = "hpack_unknown",
        "HTTP/2 header block referring to HPACK table entries never seen (a mid-stream pickup or a gap): the fields it could not name or value are left out", [];
}

impl Anomaly {
    /// The anomaly for a head httparse refused.
    pub(crate) fn of_head_error(request: bool, e: httparse::Error) -> Anomaly {
        match e {
            httparse::Error::HeaderName | httparse::Error::HeaderValue => Anomaly::BadHeader,
            httparse::Error::TooManyHeaders => Anomaly::TooManyHeaders,
            _ if request => Anomaly::BadRequestLine,
            _ => Anomaly::BadStatusLine,
        }
    }
}

impl fmt::Display for Anomaly {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Written as its name (in JSON and in the archive's bincode alike).
impl Serialize for Anomaly {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.name())
    }
}

impl<'de> Deserialize<'de> for Anomaly {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Anomaly::from_name(&s).ok_or_else(|| de::Error::custom(format!("unknown anomaly {s:?}")))
    }
}

/// How many exchanges carried each kind (`--stats`: `anomalies`, only kinds seen).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AnomalyCounts([u64; Anomaly::ALL.len()]);

impl AnomalyCounts {
    pub fn count(&mut self, a: Anomaly) {
        self.0[a as usize] += 1;
    }

    pub fn get(&self, a: Anomaly) -> u64 {
        self.0[a as usize]
    }

    pub fn add(&mut self, o: &AnomalyCounts) {
        for (a, b) in self.0.iter_mut().zip(o.0) {
            *a += b;
        }
    }

    /// Kinds seen, with their counts, in declaration order.
    pub fn seen(&self) -> impl Iterator<Item = (Anomaly, u64)> + '_ {
        Anomaly::ALL
            .iter()
            .map(|a| (*a, self.get(*a)))
            .filter(|(_, n)| *n > 0)
    }
}

impl Serialize for AnomalyCounts {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_map(self.seen().map(|(a, n)| (a.name(), n)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_snake_case_and_read_back() {
        let mut seen = std::collections::HashSet::new();
        for a in Anomaly::ALL {
            assert!(seen.insert(a.name()), "{} twice", a.name());
            assert!(a
                .name()
                .bytes()
                .all(|c| c.is_ascii_lowercase() || c == b'_'));
            assert_eq!(Anomaly::from_name(a.name()), Some(*a));
            let json = serde_json::to_string(a).unwrap();
            assert_eq!(json, format!("\"{}\"", a.name()));
            assert_eq!(serde_json::from_str::<Anomaly>(&json).unwrap(), *a);
        }
        assert!(serde_json::from_str::<Anomaly>("\"no such thing\"").is_err());
    }

    #[test]
    fn old_archive_texts_map_to_kinds() {
        assert_eq!(
            Anomaly::from_name("bad request head: invalid token"),
            Some(Anomaly::BadRequestLine)
        );
        assert_eq!(
            Anomaly::from_name("conflicting Content-Length values"),
            Some(Anomaly::ConflictingContentLength)
        );
        // Every httparse error text the old parser could have written maps to a kind.
        for e in [
            httparse::Error::HeaderName,
            httparse::Error::HeaderValue,
            httparse::Error::NewLine,
            httparse::Error::Status,
            httparse::Error::Token,
            httparse::Error::TooManyHeaders,
            httparse::Error::Version,
        ] {
            for (side, request) in [("request", true), ("response", false)] {
                let old = format!("bad {side} head: {e}");
                assert_eq!(
                    Anomaly::from_name(&old),
                    Some(Anomaly::of_head_error(request, e)),
                    "{old}"
                );
            }
        }
    }

    #[test]
    fn counts_serialize_only_kinds_seen() {
        let mut c = AnomalyCounts::default();
        c.count(Anomaly::BadChunkSize);
        c.count(Anomaly::BadChunkSize);
        let mut d = AnomalyCounts::default();
        d.count(Anomaly::BadHeader);
        c.add(&d);
        assert_eq!(
            serde_json::to_value(c).unwrap(),
            serde_json::json!({"bad_header": 1, "bad_chunk_size": 2})
        );
    }
}
