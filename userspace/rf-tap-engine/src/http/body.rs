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

/// A streaming inflater on zlib's own state machine (flate2's `Decompress`), writing through
/// one scratch buffer per thread into the body's sink: no per-body output buffer to allocate
/// and clear, as flate2's `write::` decoders have.
struct Inflater {
    z: flate2::Decompress,
    wrap: Wrap,
    /// The stream (or the last gzip member) ended.
    ended: bool,
    out: BoundedSink,
}

impl Inflater {
    fn new(wrap: Wrap, out: BoundedSink) -> Self {
        Self {
            z: Self::state(wrap),
            wrap,
            ended: false,
            out,
        }
    }

    fn state(wrap: Wrap) -> flate2::Decompress {
        match wrap {
            Wrap::Gzip => flate2::Decompress::new_gzip(15),
            Wrap::Zlib => flate2::Decompress::new(true),
            Wrap::Raw => flate2::Decompress::new(false),
        }
    }

    fn push(&mut self, mut input: &[u8]) -> Result<(), ()> {
        thread_local! {
            static SCRATCH: std::cell::RefCell<Vec<u8>> = std::cell::RefCell::new(vec![0; 32 << 10]);
        }
        SCRATCH.with(|scratch| {
            let mut scratch = scratch.borrow_mut();
            while !input.is_empty() {
                if self.ended {
                    if self.wrap != Wrap::Gzip {
                        // Bytes after the end of the stream are ignored, as zlib does.
                        return Ok(());
                    }
                    // Another gzip member.
                    self.z = Self::state(Wrap::Gzip);
                    self.ended = false;
                }
                let (in0, out0) = (self.z.total_in(), self.z.total_out());
                let status = self
                    .z
                    .decompress(input, &mut scratch, flate2::FlushDecompress::None)
                    .map_err(|_| ())?;
                let used = (self.z.total_in() - in0) as usize;
                let made = (self.z.total_out() - out0) as usize;
                self.out.push(&scratch[..made]);
                input = &input[used..];
                match status {
                    flate2::Status::StreamEnd => self.ended = true,
                    _ if used == 0 && made == 0 => return Err(()),
                    _ => {}
                }
            }
            Ok(())
        })
    }

    /// The decoded bytes, or an error when the stream stopped before its end.
    fn finish(self) -> Result<BoundedSink, ()> {
        if self.ended || self.z.total_in() == 0 {
            Ok(self.out)
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
