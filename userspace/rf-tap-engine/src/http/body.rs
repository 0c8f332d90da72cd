//! Message bodies: framing, and Content-Encoding decoding into a bounded sink.

use std::io::Write;

/// How a message body ends (pingora's shape).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Framing {
    /// No body (requests without length, HEAD responses, 1xx/204/304).
    Empty,
    Length(u64),
    Chunked,
    /// Until the connection closes (responses without length).
    UntilClose,
    /// The connection became a tunnel (CONNECT 2xx, 101 Switching Protocols).
    Tunnel,
}

/// Counts and keeps (up to a cap) the bytes written to it.
#[derive(Debug, Default)]
pub struct BoundedSink {
    pub len: u64,
    pub kept: Vec<u8>,
    pub cap: usize,
}

impl BoundedSink {
    pub fn new(cap: usize) -> Self {
        Self {
            len: 0,
            kept: Vec::new(),
            cap,
        }
    }
    pub fn push(&mut self, b: &[u8]) {
        self.len += b.len() as u64;
        let room = self.cap.saturating_sub(self.kept.len());
        self.kept.extend_from_slice(&b[..b.len().min(room)]);
    }
}

impl Write for BoundedSink {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.push(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// What an [`Inflater`] takes apart.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Wrap {
    /// gzip members, one after another (RFC 1952 allows several).
    Gzip,
    Zlib,
    Raw,
}

/// Where a gzip stream is (RFC 1952): the member header, the deflate data, or the
/// 8-byte trailer (CRC-32 and length of the member's data).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Member {
    Header,
    Data,
    Trailer,
}

/// Longest gzip member header held while it arrives (FEXTRA, FNAME and FCOMMENT included).
const MAX_GZIP_HEADER: usize = 64 << 10;

thread_local! {
    /// Output scratch shared by every inflater of the thread.
    static SCRATCH: std::cell::RefCell<Vec<u8>> = std::cell::RefCell::new(vec![0; 32 << 10]);
    /// Raw inflate states given back by finished bodies, reset for the next one (a state
    /// and its 32 KiB window are not allocated and cleared again per body).
    static RAW_POOL: std::cell::RefCell<Vec<flate2::Decompress>> =
        const { std::cell::RefCell::new(Vec::new()) };
}

/// Most raw inflate states a thread keeps for reuse.
const POOL_MAX: usize = 64;

fn raw_state() -> flate2::Decompress {
    RAW_POOL
        .with(|p| p.borrow_mut().pop())
        .unwrap_or_else(|| flate2::Decompress::new(false))
}

/// A streaming inflater on zlib's own state machine (flate2's `Decompress`), writing through
/// one scratch buffer per thread into the body's sink: no per-body output buffer to allocate
/// and clear, as flate2's `write::` decoders have. gzip is framed here (header, CRC-32 and
/// length checked) around raw deflate, whose states are pooled per thread.
struct Inflater {
    z: Option<flate2::Decompress>,
    wrap: Wrap,
    /// The stream (or the current gzip member's deflate data) ended.
    ended: bool,
    member: Member,
    /// gzip header or trailer bytes gathered so far.
    held: Vec<u8>,
    crc: crc32fast::Hasher,
    member_len: u64,
    out: BoundedSink,
}

impl Drop for Inflater {
    fn drop(&mut self) {
        if let Some(mut z) = self.z.take() {
            if matches!(self.wrap, Wrap::Gzip | Wrap::Raw) {
                z.reset(false);
                RAW_POOL.with(|p| {
                    let mut p = p.borrow_mut();
                    if p.len() < POOL_MAX {
                        p.push(z);
                    }
                });
            }
        }
    }
}

/// The length of a whole gzip member header at the start of `h`, if it is one; `Ok(None)`
/// when more bytes are needed.
fn gzip_header_len(h: &[u8]) -> Result<Option<usize>, ()> {
    if h.len() < 10 {
        return if h.iter().zip([0x1f, 0x8b, 8]).all(|(a, b)| *a == b) {
            Ok(None)
        } else {
            Err(())
        };
    }
    if h[..3] != [0x1f, 0x8b, 8] {
        return Err(());
    }
    let flags = h[3];
    let mut at = 10;
    if flags & 4 != 0 {
        let Some(x) = h.get(at..at + 2) else {
            return Ok(None);
        };
        at += 2 + usize::from(u16::from_le_bytes([x[0], x[1]]));
    }
    for bit in [8u8, 16] {
        if flags & bit != 0 {
            match h.get(at..).and_then(|r| r.iter().position(|c| *c == 0)) {
                Some(z) => at += z + 1,
                None => return Ok(None),
            }
        }
    }
    if flags & 2 != 0 {
        at += 2;
    }
    Ok((h.len() >= at).then_some(at))
}

impl Inflater {
    fn new(wrap: Wrap, out: BoundedSink) -> Self {
        Self {
            z: Some(match wrap {
                Wrap::Zlib => flate2::Decompress::new(true),
                Wrap::Gzip | Wrap::Raw => raw_state(),
            }),
            wrap,
            ended: false,
            member: if wrap == Wrap::Gzip {
                Member::Header
            } else {
                Member::Data
            },
            held: Vec::new(),
            crc: crc32fast::Hasher::new(),
            member_len: 0,
            out,
        }
    }

    fn push(&mut self, mut input: &[u8]) -> Result<(), ()> {
        while !input.is_empty() {
            match self.member {
                Member::Header => {
                    let before = self.held.len();
                    let take = input.len().min(MAX_GZIP_HEADER - before);
                    self.held.extend_from_slice(&input[..take]);
                    match gzip_header_len(&self.held)? {
                        Some(n) => {
                            input = &input[n - before..];
                            self.held.clear();
                            self.member = Member::Data;
                            self.ended = false;
                            self.crc = crc32fast::Hasher::new();
                            self.member_len = 0;
                        }
                        None if self.held.len() >= MAX_GZIP_HEADER => return Err(()),
                        None => return Ok(()),
                    }
                }
                Member::Trailer => {
                    let take = input.len().min(8 - self.held.len());
                    self.held.extend_from_slice(&input[..take]);
                    input = &input[take..];
                    if self.held.len() == 8 {
                        let crc = u32::from_le_bytes([
                            self.held[0],
                            self.held[1],
                            self.held[2],
                            self.held[3],
                        ]);
                        let len = u32::from_le_bytes([
                            self.held[4],
                            self.held[5],
                            self.held[6],
                            self.held[7],
                        ]);
                        let got = std::mem::take(&mut self.crc).finalize();
                        if crc != got || len != self.member_len as u32 {
                            return Err(());
                        }
                        self.held.clear();
                        // Another member may follow.
                        self.member = Member::Header;
                        if let Some(z) = self.z.as_mut() {
                            z.reset(false);
                        }
                    }
                }
                Member::Data => {
                    if self.ended {
                        // Bytes after the end of a zlib or raw stream are ignored, as
                        // zlib does.
                        return Ok(());
                    }
                    let used = self.inflate(input)?;
                    input = &input[used..];
                    if self.ended && self.wrap == Wrap::Gzip {
                        self.member = Member::Trailer;
                    }
                }
            }
        }
        Ok(())
    }

    /// Inflates from `input` until it is used or the deflate data ends; returns the bytes
    /// taken.
    fn inflate(&mut self, input: &[u8]) -> Result<usize, ()> {
        let Some(z) = self.z.as_mut() else {
            return Err(());
        };
        let gzip = self.wrap == Wrap::Gzip;
        SCRATCH.with(|scratch| {
            let mut scratch = scratch.borrow_mut();
            let mut taken = 0;
            while taken < input.len() {
                let (in0, out0) = (z.total_in(), z.total_out());
                let status = z
                    .decompress(&input[taken..], &mut scratch, flate2::FlushDecompress::None)
                    .map_err(|_| ())?;
                let used = (z.total_in() - in0) as usize;
                let made = (z.total_out() - out0) as usize;
                if gzip {
                    self.crc.update(&scratch[..made]);
                    self.member_len += made as u64;
                }
                self.out.push(&scratch[..made]);
                taken += used;
                match status {
                    flate2::Status::StreamEnd => {
                        self.ended = true;
                        break;
                    }
                    _ if used == 0 && made == 0 => return Err(()),
                    _ => {}
                }
            }
            Ok(taken)
        })
    }

    /// The decoded bytes, or an error when the stream stopped before its end.
    fn finish(mut self) -> Result<BoundedSink, ()> {
        let whole = match self.wrap {
            // Nothing at all, or whole members only.
            Wrap::Gzip => self.member == Member::Header && self.held.is_empty(),
            _ => self.ended || self.z.as_ref().is_some_and(|z| z.total_in() == 0),
        };
        if whole {
            Ok(std::mem::take(&mut self.out))
        } else {
            Err(())
        }
    }
}

enum Decoder {
    Identity,
    Gzip(Box<Inflater>),
    Zlib(Box<Inflater>),
    Deflate(Box<Inflater>),
    Brotli(Box<brotli_decompressor::DecompressorWriter<BoundedSink>>),
    /// `deflate` whose first bytes decide between zlib and raw deflate.
    DeflateUndecided(Vec<u8>),
    Failed,
}

/// A body being received: the wire (transfer-decoded) bytes and the content-decoded ones.
pub struct BodyState {
    pub wire: BoundedSink,
    decoded: BoundedSink,
    decoder: Decoder,
    pub decode_error: bool,
    pub gap: bool,
}

impl std::fmt::Debug for BodyState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BodyState")
            .field("wire_len", &self.wire.len)
            .field("decoded_len", &self.decoded.len)
            .finish()
    }
}

/// The finished body of a message.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Body {
    /// Bytes after transfer decoding (chunked removed), before content decoding.
    pub wire_len: u64,
    /// Bytes after content decoding (gzip/deflate/br); Zeek's `*_body_len`.
    pub len: u64,
    /// The first bytes of the decoded body (up to the keep limit).
    pub data: Vec<u8>,
    pub encoding: Option<String>,
    pub decode_error: bool,
    pub gap: bool,
}

impl BodyState {
    pub fn new(content_encoding: Option<&str>, keep: usize) -> Self {
        let sink = || BoundedSink::new(keep);
        let decoder = match content_encoding.map(|e| e.trim().to_ascii_lowercase()) {
            Some(e) if e == "gzip" || e == "x-gzip" => {
                Decoder::Gzip(Box::new(Inflater::new(Wrap::Gzip, sink())))
            }
            Some(e) if e == "deflate" => Decoder::DeflateUndecided(Vec::new()),
            Some(e) if e == "br" => Decoder::Brotli(Box::new(
                brotli_decompressor::DecompressorWriter::new(sink(), 4096),
            )),
            _ => Decoder::Identity,
        };
        Self {
            wire: BoundedSink::new(if matches!(decoder, Decoder::Identity) {
                0
            } else {
                keep
            }),
            decoded: sink(),
            decoder,
            decode_error: false,
            gap: false,
        }
    }

    pub fn push(&mut self, b: &[u8]) {
        self.wire.push(b);
        let keep = self.decoded.cap;
        let res = match &mut self.decoder {
            Decoder::Identity => {
                self.decoded.push(b);
                Ok(())
            }
            Decoder::Gzip(d) | Decoder::Zlib(d) | Decoder::Deflate(d) => {
                d.push(b).map_err(|()| std::io::Error::other("inflate"))
            }
            Decoder::Brotli(d) => d.write_all(b),
            Decoder::DeflateUndecided(pending) => {
                pending.extend_from_slice(b);
                if pending.len() >= 2 {
                    let head = [pending[0], pending[1]];
                    let is_zlib = head[0] & 0x0f == 8 && u16::from_be_bytes(head) % 31 == 0;
                    let bytes = std::mem::take(pending);
                    let mut next = if is_zlib {
                        Decoder::Zlib(Box::new(Inflater::new(Wrap::Zlib, BoundedSink::new(keep))))
                    } else {
                        // Servers that send raw deflate without the zlib header.
                        Decoder::Deflate(Box::new(Inflater::new(Wrap::Raw, BoundedSink::new(keep))))
                    };
                    let r = match &mut next {
                        Decoder::Zlib(d) | Decoder::Deflate(d) => d
                            .push(&bytes)
                            .map_err(|()| std::io::Error::other("inflate")),
                        _ => Ok(()),
                    };
                    self.decoder = next;
                    r
                } else {
                    Ok(())
                }
            }
            Decoder::Failed => Ok(()),
        };
        if res.is_err() {
            self.decode_error = true;
            self.decoder = Decoder::Failed;
        }
    }

    pub fn finish(mut self) -> Body {
        let encoding = match &self.decoder {
            Decoder::Identity => None,
            Decoder::Gzip(_) => Some("gzip"),
            Decoder::Zlib(_) | Decoder::Deflate(_) | Decoder::DeflateUndecided(_) => {
                Some("deflate")
            }
            Decoder::Brotli(_) => Some("br"),
            Decoder::Failed => Some("failed"),
        }
        .map(str::to_string);
        let decoder = std::mem::replace(&mut self.decoder, Decoder::Failed);
        let decoded = match decoder {
            Decoder::Identity => Some(self.decoded),
            Decoder::Gzip(d) | Decoder::Zlib(d) | Decoder::Deflate(d) => d.finish().ok(),
            Decoder::Brotli(d) => d.into_inner().ok(),
            Decoder::DeflateUndecided(_) | Decoder::Failed => None,
        };
        let (len, data, error) = match decoded {
            Some(s) => (s.len, s.kept, self.decode_error),
            // Could not decode: report the wire bytes.
            None => (self.wire.len, self.wire.kept, self.wire.len > 0),
        };
        Body {
            wire_len: self.wire.len,
            len,
            data,
            encoding,
            decode_error: error,
            gap: self.gap,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gzip_deflate_and_raw_deflate_decode_in_pieces() {
        let text = b"hello hello hello hello, rf-tap".repeat(20);
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        gz.write_all(&text).unwrap();
        let gz = gz.finish().unwrap();
        let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
        z.write_all(&text).unwrap();
        let z = z.finish().unwrap();
        let mut raw =
            flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::default());
        raw.write_all(&text).unwrap();
        let raw = raw.finish().unwrap();
        for (enc, bytes) in [("gzip", &gz), ("deflate", &z), ("deflate", &raw)] {
            let mut b = BodyState::new(Some(enc), 1 << 20);
            for c in bytes.chunks(7) {
                b.push(c);
            }
            let body = b.finish();
            assert_eq!(body.len, text.len() as u64, "{enc}");
            assert_eq!(body.data, text);
            assert_eq!(body.wire_len, bytes.len() as u64);
            assert!(!body.decode_error);
        }
    }

    #[test]
    fn gzip_members_headers_and_trailers_are_checked_at_every_split() {
        let text = b"member text, member text, member text".repeat(30);
        // A header with FEXTRA, FNAME, FCOMMENT and FHCRC, then a plain second member.
        let mut named = flate2::GzBuilder::new()
            .extra(b"xx".to_vec())
            .filename("a.txt")
            .comment("c")
            .write(Vec::new(), flate2::Compression::fast());
        named.write_all(&text).unwrap();
        let mut two = named.finish().unwrap();
        let mut plain = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        plain.write_all(b"second").unwrap();
        let mut plain = plain.finish().unwrap();
        // FHCRC on the second: the flag and two header-CRC bytes (skipped, not checked).
        plain[3] |= 2;
        plain.splice(10..10, [0x12, 0x34]);
        two.extend(plain);
        for split in 1..40 {
            let mut b = BodyState::new(Some("gzip"), 1 << 20);
            for c in two.chunks(split) {
                b.push(c);
            }
            let body = b.finish();
            assert!(!body.decode_error, "split {split}");
            assert_eq!(body.len, text.len() as u64 + 6, "split {split}");
            assert!(body.data.ends_with(b"second"));
        }
        // A wrong CRC, a wrong length, a cut trailer: decode errors.
        for (at, what) in [(two.len() - 5, "length"), (two.len() - 9, "crc")] {
            let mut bad = two.clone();
            bad[at] ^= 0xff;
            let mut b = BodyState::new(Some("gzip"), 1 << 20);
            b.push(&bad);
            assert!(b.finish().decode_error, "{what}");
        }
        let mut b = BodyState::new(Some("gzip"), 1 << 20);
        b.push(&two[..two.len() - 3]);
        assert!(b.finish().decode_error, "cut trailer");
        // Many bodies in a row reuse pooled states and stay right.
        for _ in 0..200 {
            let mut b = BodyState::new(Some("gzip"), 16);
            b.push(&two);
            assert_eq!(b.finish().len, text.len() as u64 + 6);
        }
    }

    #[test]
    fn brotli_and_bombs_stay_bounded() {
        let text = vec![b'z'; 5 << 20];
        let mut br = Vec::new();
        brotli::BrotliCompress(&mut &b"brotli body"[..], &mut br, &Default::default()).unwrap();
        let mut b = BodyState::new(Some("br"), 100);
        for c in br.chunks(3) {
            b.push(c);
        }
        let body = b.finish();
        assert_eq!((body.len, body.data.as_slice()), (11, &b"brotli body"[..]));
        // A gzip bomb: 5 MiB of zeros decode fully but only `keep` bytes are held.
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        gz.write_all(&text).unwrap();
        let gz = gz.finish().unwrap();
        let mut b = BodyState::new(Some("gzip"), 1024);
        b.push(&gz);
        let body = b.finish();
        assert_eq!(body.len, 5 << 20);
        assert_eq!(body.data.len(), 1024);
    }

    #[test]
    fn corrupt_encoding_is_flagged_not_fatal() {
        let mut b = BodyState::new(Some("gzip"), 100);
        b.push(b"this is not gzip at all");
        let body = b.finish();
        assert!(body.decode_error);
        assert_eq!(body.wire_len, 23);
    }
}
