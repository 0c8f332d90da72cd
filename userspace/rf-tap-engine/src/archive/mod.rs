//! rfcap: rf-tap's exchange archive (format in docs/rfcap.md).
//!
//! ```text
//! file   := header frame*
//! header := "RFCAP\0\r\n" version:u16 flags:u16 reserved:u32 created_ns:u64 reserved:u64   (32 bytes)
//! frame  := "RFB1" kind:u8 codec:u8 reserved:u16 count:u32 summary_len:u32
//!           payload_len:u32 raw_len:u32 data_crc:u32 header_crc:u32                       (32 bytes)
//!           summaries[summary_len] payload[payload_len]
//! ```
//! All integers little-endian. `summaries` is the uncompressed bincode of one
//! [`Summary`] per exchange (what `requests` filters on); `payload` is the zstd-compressed
//! bincode of the exchanges themselves. `header_crc` covers the 28 header bytes before it,
//! `data_crc` the summaries and payload. Frames are appended whole (one write each), so a
//! crash can only tear the last one, which readers detect and skip.

use std::io::{self, Write};

use serde::{Deserialize, Serialize};

use crate::http::exchange::Exchange;

pub const MAGIC: &[u8; 8] = b"RFCAP\0\r\n";
pub const VERSION: u16 = 1;
const FRAME_MAGIC: &[u8; 4] = b"RFB1";
const HEADER_LEN: usize = 32;
const FRAME_HEADER_LEN: usize = 32;
const CODEC_ZSTD: u8 = 1;
/// Bounds a reader accepts (hostile files must not make it allocate more).
const MAX_FRAME_PART: usize = 256 << 20;
const MAX_RECORDS: u32 = 1 << 20;

/// What `requests` filters on, kept uncompressed beside each block.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    pub id: u64,
    pub ts_ns: u64,
    pub method: String,
    /// The request target's path (before `?`), at most 512 bytes.
    pub path: String,
    /// 0 when there was no response.
    pub status: u16,
    pub duration_us: u64,
    pub response_body_len: u64,
    pub flags: u16,
}

impl Summary {
    pub fn of(x: &Exchange) -> Self {
        let q = x.request.as_ref();
        let target = q.map(|q| q.target.as_str()).unwrap_or("");
        let mut path = target.split('?').next().unwrap_or("").to_string();
        if path.len() > 512 {
            let mut cut = 512;
            while !path.is_char_boundary(cut) {
                cut -= 1;
            }
            path.truncate(cut);
        }
        let f = &x.flags;
        let flags = [
            f.gap_request,
            f.gap_response,
            f.truncated,
            f.no_response,
            f.no_request,
            f.tunnel,
            f.anomaly,
            f.incomplete,
        ]
        .iter()
        .enumerate()
        .fold(0u16, |acc, (i, on)| acc | ((*on as u16) << i));
        let end = x
            .response
            .as_ref()
            .map(|r| r.end.ts)
            .or(q.map(|q| q.end.ts));
        Self {
            id: x.id,
            ts_ns: x.start().ts.as_nanos() as u64,
            method: q.map(|q| q.method.clone()).unwrap_or_default(),
            path,
            status: x.response.as_ref().map(|r| r.status).unwrap_or(0),
            duration_us: end
                .map(|e| e.saturating_sub(x.start().ts).as_micros() as u64)
                .unwrap_or(0),
            response_body_len: x.response.as_ref().map(|r| r.body.len).unwrap_or(0),
            flags,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    #[error("not an rfcap file (bad magic)")]
    NotRfcap,
    #[error("rfcap version {0} is newer than this rf-tap reads ({VERSION})")]
    Version(u16),
    #[error("corrupt frame at byte {offset}: {why}")]
    Corrupt { offset: usize, why: &'static str },
    #[error("cannot encode: {0}")]
    Encode(String),
    #[error(transparent)]
    Io(#[from] io::Error),
}

fn le32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// Appends exchanges to an archive: buffered into blocks, each written whole.
pub struct ArchiveWriter<W: Write> {
    out: W,
    pending: Vec<Exchange>,
    pending_bytes: usize,
    block_bytes: usize,
    pub bytes_written: u64,
    pub exchanges_written: u64,
}

impl<W: Write> ArchiveWriter<W> {
    /// Starts a new archive (writes the file header).
    pub fn new(mut out: W, created_ns: u64) -> Result<Self, ArchiveError> {
        let mut h = Vec::with_capacity(HEADER_LEN);
        h.extend_from_slice(MAGIC);
        h.extend_from_slice(&VERSION.to_le_bytes());
        h.extend_from_slice(&0u16.to_le_bytes());
        h.extend_from_slice(&0u32.to_le_bytes());
        h.extend_from_slice(&created_ns.to_le_bytes());
        h.extend_from_slice(&0u64.to_le_bytes());
        out.write_all(&h)?;
        Ok(Self {
            out,
            pending: Vec::new(),
            pending_bytes: 0,
            block_bytes: 1 << 20,
            bytes_written: h.len() as u64,
            exchanges_written: 0,
        })
    }

    /// Target uncompressed size of a block.
    pub fn with_block_bytes(mut self, n: usize) -> Self {
        self.block_bytes = n.max(1);
        self
    }

    pub fn append(&mut self, x: Exchange) -> Result<(), ArchiveError> {
        let size = 256
            + x.request
                .as_ref()
                .map(|q| q.body.data.len() + q.headers.len() * 32)
                .unwrap_or(0)
            + x.response
                .as_ref()
                .map(|r| r.body.data.len() + r.headers.len() * 32)
                .unwrap_or(0);
        self.pending_bytes += size;
        self.pending.push(x);
        if self.pending_bytes >= self.block_bytes {
            self.flush_block()?;
        }
        Ok(())
    }

    /// Writes what is pending as one frame.
    pub fn flush_block(&mut self) -> Result<(), ArchiveError> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let summaries: Vec<Summary> = self.pending.iter().map(Summary::of).collect();
        let summary_bytes =
            bincode::serialize(&summaries).map_err(|e| ArchiveError::Encode(e.to_string()))?;
        let raw =
            bincode::serialize(&self.pending).map_err(|e| ArchiveError::Encode(e.to_string()))?;
        let payload = zstd::bulk::compress(&raw, 3)?;
        let mut crc = crc32fast::Hasher::new();
        crc.update(&summary_bytes);
        crc.update(&payload);
        let mut frame = Vec::with_capacity(FRAME_HEADER_LEN + summary_bytes.len() + payload.len());
        frame.extend_from_slice(FRAME_MAGIC);
        frame.push(1);
        frame.push(CODEC_ZSTD);
        frame.extend_from_slice(&0u16.to_le_bytes());
        frame.extend_from_slice(&(self.pending.len() as u32).to_le_bytes());
        frame.extend_from_slice(&(summary_bytes.len() as u32).to_le_bytes());
        frame.extend_from_slice(&(payload.len() as u32).to_le_bytes());
        frame.extend_from_slice(&(raw.len() as u32).to_le_bytes());
        frame.extend_from_slice(&crc.finalize().to_le_bytes());
        let header_crc = crc32fast::hash(&frame[..28]);
        frame.extend_from_slice(&header_crc.to_le_bytes());
        frame.extend_from_slice(&summary_bytes);
        frame.extend_from_slice(&payload);
        self.out.write_all(&frame)?;
        self.out.flush()?;
        self.bytes_written += frame.len() as u64;
        self.exchanges_written += self.pending.len() as u64;
        self.pending.clear();
        self.pending_bytes = 0;
        Ok(())
    }

    pub fn finish(mut self) -> Result<W, ArchiveError> {
        self.flush_block()?;
        Ok(self.out)
    }
}

/// One block of an archive: its summaries, and where its exchanges are.
#[derive(Debug)]
pub struct Block<'a> {
    pub offset: usize,
    pub summaries: Vec<Summary>,
    payload: &'a [u8],
    raw_len: usize,
}

impl Block<'_> {
    /// Decompresses and decodes the block's exchanges.
    pub fn exchanges(&self) -> Result<Vec<Exchange>, ArchiveError> {
        let corrupt = |why| ArchiveError::Corrupt {
            offset: self.offset,
            why,
        };
        let raw = zstd::bulk::decompress(self.payload, self.raw_len)
            .map_err(|_| corrupt("payload does not decompress"))?;
        let opts = bincode::DefaultOptions::new()
            .with_fixint_encoding()
            .allow_trailing_bytes()
            .with_limit(MAX_FRAME_PART as u64);
        use bincode::Options;
        opts.deserialize(&raw)
            .map_err(|_| corrupt("payload does not decode"))
    }
}

/// Reads an archive held in memory.
pub struct ArchiveReader<'a> {
    bytes: &'a [u8],
    pos: usize,
    /// Where reading stopped at a torn or corrupt frame, if it did.
    pub stopped: Option<ArchiveError>,
}

impl<'a> ArchiveReader<'a> {
    pub fn new(bytes: &'a [u8]) -> Result<Self, ArchiveError> {
        if bytes.len() < HEADER_LEN || &bytes[..8] != MAGIC {
            return Err(ArchiveError::NotRfcap);
        }
        let version = u16::from_le_bytes([bytes[8], bytes[9]]);
        if version > VERSION {
            return Err(ArchiveError::Version(version));
        }
        Ok(Self {
            bytes,
            pos: HEADER_LEN,
            stopped: None,
        })
    }

    /// Whether these bytes start like an rfcap file.
    pub fn sniff(bytes: &[u8]) -> bool {
        bytes.len() >= 8 && &bytes[..8] == MAGIC
    }

    /// Length of the valid prefix read so far (to append after a torn tail).
    pub fn valid_len(&self) -> usize {
        self.pos
    }

    fn fail(&mut self, why: &'static str) -> Option<Block<'a>> {
        self.stopped = Some(ArchiveError::Corrupt {
            offset: self.pos,
            why,
        });
        None
    }
}

impl<'a> Iterator for ArchiveReader<'a> {
    type Item = Block<'a>;

    fn next(&mut self) -> Option<Block<'a>> {
        if self.stopped.is_some() || self.pos >= self.bytes.len() {
            return None;
        }
        let b = self.bytes;
        let p = self.pos;
        if b.len() - p < FRAME_HEADER_LEN {
            return self.fail("torn frame header");
        }
        let h = &b[p..p + FRAME_HEADER_LEN];
        if &h[..4] != FRAME_MAGIC || crc32fast::hash(&h[..28]) != le32(h, 28) {
            return self.fail("bad frame header");
        }
        if h[5] != CODEC_ZSTD {
            return self.fail("unknown codec");
        }
        let count = le32(h, 8);
        let summary_len = le32(h, 12) as usize;
        let payload_len = le32(h, 16) as usize;
        let raw_len = le32(h, 20) as usize;
        if count > MAX_RECORDS
            || summary_len > MAX_FRAME_PART
            || payload_len > MAX_FRAME_PART
            || raw_len > MAX_FRAME_PART
        {
            return self.fail("frame sizes out of bounds");
        }
        let start = p + FRAME_HEADER_LEN;
        let end = start + summary_len + payload_len;
        if end > b.len() {
            return self.fail("torn frame (the file ends inside it)");
        }
        let mut crc = crc32fast::Hasher::new();
        crc.update(&b[start..end]);
        if crc.finalize() != le32(h, 24) {
            return self.fail("frame checksum mismatch");
        }
        use bincode::Options;
        let opts = bincode::DefaultOptions::new()
            .with_fixint_encoding()
            .allow_trailing_bytes()
            .with_limit(summary_len as u64 + 64);
        let Ok(summaries) = opts.deserialize::<Vec<Summary>>(&b[start..start + summary_len]) else {
            return self.fail("summaries do not decode");
        };
        if summaries.len() != count as usize {
            return self.fail("summary count mismatch");
        }
        self.pos = end;
        Some(Block {
            offset: p,
            summaries,
            payload: &b[start + summary_len..end],
            raw_len,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::flow::{extract_all, ExtractConfig};

    /// Exchanges of the project's own committed capture.
    fn sample() -> Vec<Exchange> {
        let bytes = std::fs::read(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../pcaps/http-keepalive-get-post.pcap"
        ))
        .unwrap();
        let (out, stopped) = extract_all(&bytes, ExtractConfig::default()).unwrap();
        assert!(stopped.is_none());
        assert_eq!(out.len(), 4);
        out
    }

    fn archive(xs: &[Exchange], block: usize) -> Vec<u8> {
        let mut w = ArchiveWriter::new(Vec::new(), 7)
            .unwrap()
            .with_block_bytes(block);
        for x in xs {
            w.append(x.clone()).unwrap();
        }
        w.finish().unwrap()
    }

    #[test]
    fn round_trip_keeps_every_exchange_and_summary() {
        let xs = sample();
        let bytes = archive(&xs, 1);
        let mut r = ArchiveReader::new(&bytes).unwrap();
        let blocks: Vec<Block<'_>> = r.by_ref().collect();
        assert!(r.stopped.is_none());
        assert_eq!(
            blocks.len(),
            4,
            "one block per exchange with a 1-byte block target"
        );
        let back: Vec<Exchange> = blocks.iter().flat_map(|b| b.exchanges().unwrap()).collect();
        assert_eq!(back, xs);
        assert_eq!(blocks[3].summaries[0].method, "POST");
        assert_eq!(blocks[3].summaries[0].status, 405);
        assert_eq!(blocks[0].summaries[0].path, "/api/users/u_1");
    }

    #[test]
    fn torn_tail_is_detected_and_everything_before_reads() {
        let xs = sample();
        let bytes = archive(&xs, 1);
        let mut full = ArchiveReader::new(&bytes).unwrap();
        let ends: Vec<usize> =
            std::iter::from_fn(|| full.next().map(|_| full.valid_len())).collect();
        for cut in HEADER_LEN..bytes.len() {
            let mut r = ArchiveReader::new(&bytes[..cut]).unwrap();
            let n = r.by_ref().count();
            let whole = ends.iter().filter(|e| **e <= cut).count();
            assert_eq!(n, whole, "cut at {cut}");
            if cut != HEADER_LEN && !ends.contains(&cut) {
                assert!(r.stopped.is_some(), "a torn frame at {cut} is reported");
            }
        }
    }

    #[test]
    fn flipped_bits_are_caught_by_the_checksums() {
        let bytes = archive(&sample(), 1 << 20);
        for i in (HEADER_LEN..bytes.len()).step_by(7) {
            let mut b = bytes.clone();
            b[i] ^= 0x10;
            let mut r = ArchiveReader::new(&b).unwrap();
            let got: Vec<_> = r.by_ref().collect();
            assert!(
                got.is_empty() && r.stopped.is_some(),
                "flip at {i} went unnoticed"
            );
        }
        assert!(matches!(
            ArchiveReader::new(b"RFCAPX"),
            Err(ArchiveError::NotRfcap)
        ));
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(tail in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..400)) {
            let mut b = archive(&sample(), 1);
            let keep = b.len() / 3;
            b.truncate(keep);
            b.extend_from_slice(&tail);
            if let Ok(r) = ArchiveReader::new(&b) {
                for block in r {
                    let _ = block.exchanges();
                }
            }
        }
    }
}
