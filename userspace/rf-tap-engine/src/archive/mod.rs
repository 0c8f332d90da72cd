//! rfcap: rf-tap's exchange archive (format in docs/rfcap.md).
//!
//! ```text
//! file   := header frame* end          (version 3; version 1 files have no end frame)
//! header := "RFCAP\0\r\n" version:u16 flags:u16 reserved:u32 created_ns:u64 reserved:u64   (32 bytes)
//! frame  := "RFB1" kind:u8 codec:u8 reserved:u16 count:u32 summary_len:u32
//!           payload_len:u32 raw_len:u32 data_crc:u32 header_crc:u32                       (32 bytes)
//!           summaries[summary_len] payload[payload_len]
//! ```
//! All integers little-endian. `summaries` is the uncompressed bincode of one
//! [`Summary`] per exchange (what `requests` filters on); `payload` is the zstd-compressed
//! bincode of the exchanges themselves. `header_crc` covers the 28 header bytes before it,
//! `data_crc` the summaries and payload. Frames are appended whole (one write each), so a
//! crash can only tear the last one, which readers detect and skip. The end frame (kind 2,
//! no data, `count` = every exchange in the file) is written when the archive is closed, so a
//! file without one was cut (or is still being written). A damaged frame is reported with
//! its offset, and reading goes on at the next frame whose header checks out.

use std::io::{self, Write};

use serde::{Deserialize, Serialize};

use crate::http::{
    anomaly::Anomaly,
    exchange::{Exchange, ExchangeFlags},
    message::{Request, Response},
};

/// An exchange as versions 1 and 2 stored it: without `client_by` and `traffic` (version 3
/// added them). Anomalies were free text then, which [`Anomaly`]'s reader maps to kinds.
#[derive(Serialize, Deserialize)]
struct ExchangeV2 {
    id: u64,
    conn: u64,
    client: std::net::SocketAddr,
    server: std::net::SocketAddr,
    request: Option<Request>,
    response: Option<Response>,
    flags: ExchangeFlags,
    anomalies: Vec<Anomaly>,
}

impl From<ExchangeV2> for Exchange {
    fn from(x: ExchangeV2) -> Self {
        Exchange {
            id: x.id,
            conn: x.conn,
            client: x.client,
            server: x.server,
            request: x.request,
            response: x.response,
            flags: x.flags,
            anomalies: x.anomalies,
            client_by: None,
            traffic: None,
        }
    }
}

pub const MAGIC: &[u8; 8] = b"RFCAP\0\r\n";
pub const VERSION: u16 = 3;
const KIND_BLOCK: u8 = 1;
const KIND_END: u8 = 2;
/// Damage reports a reader keeps (the count goes on past it).
const MAX_DAMAGE_KEPT: usize = 64;
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
    /// The format written: always [`VERSION`] but in tests of old files.
    version: u16,
}

impl<W: Write> ArchiveWriter<W> {
    /// Starts a new archive (writes the file header).
    pub fn new(out: W, created_ns: u64) -> Result<Self, ArchiveError> {
        Self::of_version(out, created_ns, VERSION)
    }

    fn of_version(mut out: W, created_ns: u64, version: u16) -> Result<Self, ArchiveError> {
        let mut h = Vec::with_capacity(HEADER_LEN);
        h.extend_from_slice(MAGIC);
        h.extend_from_slice(&version.to_le_bytes());
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
            version,
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
        let raw = if self.version >= 3 {
            bincode::serialize(&self.pending)
        } else {
            bincode::serialize(&self.legacy_pending())
        }
        .map_err(|e| ArchiveError::Encode(e.to_string()))?;
        let payload = zstd::bulk::compress(&raw, 3)?;
        let mut crc = crc32fast::Hasher::new();
        crc.update(&summary_bytes);
        crc.update(&payload);
        let mut frame = Vec::with_capacity(FRAME_HEADER_LEN + summary_bytes.len() + payload.len());
        frame_header(
            &mut frame,
            KIND_BLOCK,
            self.pending.len() as u32,
            [summary_bytes.len(), payload.len(), raw.len()],
            crc.finalize(),
        );
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

    /// What is pending in the shape of versions 1 and 2 (tests of old files only).
    fn legacy_pending(&self) -> Vec<ExchangeV2> {
        self.pending
            .iter()
            .map(|x| ExchangeV2 {
                id: x.id,
                conn: x.conn,
                client: x.client,
                server: x.server,
                request: x.request.clone(),
                response: x.response.clone(),
                flags: x.flags,
                anomalies: x.anomalies.clone(),
            })
            .collect()
    }

    /// Writes what is pending and the end frame.
    pub fn finish(mut self) -> Result<W, ArchiveError> {
        self.flush_block()?;
        let mut end = Vec::with_capacity(FRAME_HEADER_LEN);
        let count = u32::try_from(self.exchanges_written).unwrap_or(u32::MAX);
        frame_header(&mut end, KIND_END, count, [0, 0, 0], crc32fast::hash(&[]));
        self.out.write_all(&end)?;
        self.out.flush()?;
        self.bytes_written += end.len() as u64;
        Ok(self.out)
    }
}

fn frame_header(frame: &mut Vec<u8>, kind: u8, count: u32, lens: [usize; 3], data_crc: u32) {
    let start = frame.len();
    frame.extend_from_slice(FRAME_MAGIC);
    frame.push(kind);
    frame.push(CODEC_ZSTD);
    frame.extend_from_slice(&0u16.to_le_bytes());
    frame.extend_from_slice(&count.to_le_bytes());
    for n in lens {
        frame.extend_from_slice(&(n as u32).to_le_bytes());
    }
    frame.extend_from_slice(&data_crc.to_le_bytes());
    let header_crc = crc32fast::hash(&frame[start..start + 28]);
    frame.extend_from_slice(&header_crc.to_le_bytes());
}

/// One block of an archive: its summaries, and where its exchanges are.
#[derive(Debug)]
pub struct Block<'a> {
    /// The file's format version (how the payload is encoded).
    version: u16,
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
        let decoded = if self.version >= 3 {
            opts.deserialize(&raw)
        } else {
            opts.deserialize::<Vec<ExchangeV2>>(&raw)
                .map(|v| v.into_iter().map(Exchange::from).collect())
        };
        decoded.map_err(|_| corrupt("payload does not decode"))
    }
}

/// Reads an archive held in memory. A damaged frame is skipped and reported (its offset and
/// why), and reading goes on at the next frame whose header checks out; a frame the file
/// ends inside (a torn tail) ends the read.
pub struct ArchiveReader<'a> {
    bytes: &'a [u8],
    pos: usize,
    version: u16,
    /// The first damage or tear met, if any (see [`Self::damage`] for all of them).
    pub stopped: Option<ArchiveError>,
    damage: Vec<ArchiveError>,
    damaged_frames: u64,
    /// The end frame was read, with the number of exchanges it says the file holds.
    end_count: Option<u64>,
    torn: bool,
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
            version,
            stopped: None,
            damage: Vec::new(),
            damaged_frames: 0,
            end_count: None,
            torn: false,
        })
    }

    /// Whether these bytes start like an rfcap file.
    pub fn sniff(bytes: &[u8]) -> bool {
        bytes.len() >= 8 && &bytes[..8] == MAGIC
    }

    pub fn version(&self) -> u16 {
        self.version
    }

    /// Where reading is: the end of the last frame read, or of the damage skipped.
    pub fn valid_len(&self) -> usize {
        self.pos
    }

    /// Damaged frames met so far (the first [`MAX_DAMAGE_KEPT`] of them), each with its offset.
    pub fn damage(&self) -> &[ArchiveError] {
        &self.damage
    }

    /// Damaged or torn frames met so far.
    pub fn damaged_frames(&self) -> u64 {
        self.damaged_frames
    }

    /// A version 2 file read to its end without an end frame: the writer did not close it
    /// (a crash, or a capture still running).
    pub fn incomplete(&self) -> bool {
        self.version >= 2 && self.end_count.is_none()
    }

    /// The number of exchanges the end frame says the file holds.
    pub fn end_count(&self) -> Option<u64> {
        self.end_count
    }

    fn report(&mut self, offset: usize, why: &'static str) {
        let e = ArchiveError::Corrupt { offset, why };
        self.damaged_frames += 1;
        if self.damage.len() < MAX_DAMAGE_KEPT {
            self.damage.push(ArchiveError::Corrupt { offset, why });
        }
        if self.stopped.is_none() {
            self.stopped = Some(e);
        }
    }

    /// The file ends inside a frame: nothing after it can be read.
    fn tear(&mut self, why: &'static str) -> Option<Block<'a>> {
        self.report(self.pos, why);
        self.torn = true;
        None
    }

    /// Damage at `self.pos`: report it, and go on at the next frame magic after `from`.
    fn resync(&mut self, from: usize, why: &'static str) {
        self.report(self.pos, why);
        let b = self.bytes;
        let next = b
            .get(from..)
            .and_then(|rest| rest.windows(4).position(|w| w == FRAME_MAGIC))
            .map(|i| from + i);
        self.pos = next.unwrap_or(b.len());
    }
}

impl<'a> Iterator for ArchiveReader<'a> {
    type Item = Block<'a>;

    fn next(&mut self) -> Option<Block<'a>> {
        loop {
            if self.torn || self.pos >= self.bytes.len() {
                return None;
            }
            let b = self.bytes;
            let p = self.pos;
            if b.len() - p < FRAME_HEADER_LEN {
                return self.tear("torn frame header");
            }
            let h = &b[p..p + FRAME_HEADER_LEN];
            if &h[..4] != FRAME_MAGIC || crc32fast::hash(&h[..28]) != le32(h, 28) {
                self.resync(p + 1, "bad frame header");
                continue;
            }
            let kind = h[4];
            let count = le32(h, 8);
            let summary_len = le32(h, 12) as usize;
            let payload_len = le32(h, 16) as usize;
            let raw_len = le32(h, 20) as usize;
            if count > MAX_RECORDS && kind == KIND_BLOCK
                || summary_len > MAX_FRAME_PART
                || payload_len > MAX_FRAME_PART
                || raw_len > MAX_FRAME_PART
            {
                self.resync(p + 1, "frame sizes out of bounds");
                continue;
            }
            let start = p + FRAME_HEADER_LEN;
            let end = start + summary_len + payload_len;
            if end > b.len() {
                return self.tear("torn frame (the file ends inside it)");
            }
            let mut crc = crc32fast::Hasher::new();
            crc.update(&b[start..end]);
            if crc.finalize() != le32(h, 24) {
                // The header is sound, so the frame's extent is known: skip it whole.
                self.resync(end, "frame checksum mismatch");
                continue;
            }
            match kind {
                KIND_BLOCK => {}
                KIND_END if self.version >= 2 => {
                    self.end_count = Some(u64::from(count));
                    self.pos = end;
                    continue;
                }
                _ if self.version >= 2 => {
                    // A kind from a later writer that old readers may skip.
                    self.pos = end;
                    continue;
                }
                _ => {
                    self.resync(end, "unknown frame kind");
                    continue;
                }
            }
            if h[5] != CODEC_ZSTD {
                self.resync(end, "unknown codec");
                continue;
            }
            use bincode::Options;
            let opts = bincode::DefaultOptions::new()
                .with_fixint_encoding()
                .allow_trailing_bytes()
                .with_limit(summary_len as u64 + 64);
            let Ok(summaries) = opts.deserialize::<Vec<Summary>>(&b[start..start + summary_len])
            else {
                self.resync(end, "summaries do not decode");
                continue;
            };
            if summaries.len() != count as usize {
                self.resync(end, "summary count mismatch");
                continue;
            }
            self.pos = end;
            return Some(Block {
                version: self.version,
                offset: p,
                summaries,
                payload: &b[start + summary_len..end],
                raw_len,
            });
        }
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
        // The one block (the end frame's own flips are the next test's).
        for i in (HEADER_LEN..bytes.len() - FRAME_HEADER_LEN).step_by(7) {
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

    #[test]
    fn a_damaged_middle_frame_is_reported_and_later_frames_still_read() {
        let xs = sample();
        let bytes = archive(&xs, 1);
        let offsets: Vec<usize> = ArchiveReader::new(&bytes)
            .unwrap()
            .map(|b| b.offset)
            .collect();
        assert_eq!(offsets.len(), 4);
        // A byte flipped in the second block's payload, and, apart, in its header.
        for at in [offsets[2] - 3, offsets[1] + 13] {
            let mut b = bytes.clone();
            b[at] ^= 0x01;
            let mut r = ArchiveReader::new(&b).unwrap();
            let read: Vec<u64> = r
                .by_ref()
                .flat_map(|blk| blk.summaries)
                .map(|s| s.id)
                .collect();
            assert_eq!(read, [xs[0].id, xs[2].id, xs[3].id], "flip at {at}");
            assert_eq!(r.damaged_frames(), 1);
            assert!(
                matches!(r.damage()[0], ArchiveError::Corrupt { offset, .. } if offset == offsets[1]),
                "{:?}",
                r.damage()
            );
            assert!(!r.incomplete(), "the end frame is still there");
            assert_eq!(r.end_count(), Some(4));
        }
    }

    #[test]
    fn a_file_without_its_end_frame_says_it_is_incomplete() {
        let bytes = archive(&sample(), 1);
        let r = ArchiveReader::new(&bytes).unwrap();
        let mut r = r;
        assert_eq!(r.by_ref().count(), 4);
        assert!(!r.incomplete() && r.stopped.is_none());
        let cut = &bytes[..bytes.len() - FRAME_HEADER_LEN];
        let mut r = ArchiveReader::new(cut).unwrap();
        assert_eq!(r.by_ref().count(), 4);
        assert!(
            r.incomplete(),
            "every block is whole, but the writer never closed it"
        );
        assert!(r.stopped.is_none());
        let mut flipped = bytes.clone();
        let last = flipped.len() - 5;
        flipped[last] ^= 0x40;
        let mut r = ArchiveReader::new(&flipped).unwrap();
        assert_eq!(r.by_ref().count(), 4);
        assert!(r.incomplete() && r.stopped.is_some());
    }

    /// An archive as an older rf-tap wrote it.
    fn legacy_archive(xs: &[Exchange], version: u16) -> Vec<u8> {
        let mut w = ArchiveWriter::of_version(Vec::new(), 7, version)
            .unwrap()
            .with_block_bytes(1);
        for x in xs {
            w.append(x.clone()).unwrap();
        }
        w.finish().unwrap()
    }

    #[test]
    fn version_2_files_still_read_without_the_newer_fields() {
        let xs = sample();
        let bytes = legacy_archive(&xs, 2);
        let mut r = ArchiveReader::new(&bytes).unwrap();
        assert_eq!(r.version(), 2);
        let back: Vec<Exchange> = r.by_ref().flat_map(|b| b.exchanges().unwrap()).collect();
        assert!(!r.incomplete() && r.stopped.is_none());
        assert_eq!(back.len(), xs.len());
        for (a, b) in back.iter().zip(&xs) {
            assert_eq!(a.client_by, None);
            assert_eq!(a.traffic, None);
            assert_eq!(
                (&a.request, &a.response, a.flags),
                (&b.request, &b.response, b.flags)
            );
        }
        // Anomalies of version 2 were free text: they come back as kinds.
        let mut old = xs[0].clone();
        old.anomalies = vec![Anomaly::BadChunkSize];
        let bytes = legacy_archive(&[old], 2);
        let text = bincode::serialize(&"bad chunk size").unwrap();
        let name = bincode::serialize(&"bad_chunk_size").unwrap();
        assert_eq!(&text[..8], &(14u64.to_le_bytes()));
        assert_eq!(&name[..8], &(14u64.to_le_bytes()));
        let raw = {
            let mut r = ArchiveReader::new(&bytes).unwrap();
            let b = r.next().unwrap();
            zstd::bulk::decompress(b.payload, b.raw_len).unwrap()
        };
        let at = raw
            .windows(name.len())
            .position(|w| w == name)
            .expect("the name is in the payload");
        let mut patched = raw.clone();
        patched[at..at + text.len()].copy_from_slice(&text);
        let opts = bincode::DefaultOptions::new()
            .with_fixint_encoding()
            .allow_trailing_bytes();
        use bincode::Options;
        let v: Vec<ExchangeV2> = opts.deserialize(&patched).unwrap();
        assert_eq!(v[0].anomalies, vec![Anomaly::BadChunkSize]);
    }

    #[test]
    fn version_1_files_still_read() {
        let mut bytes = legacy_archive(&sample(), 1);
        bytes.truncate(bytes.len() - FRAME_HEADER_LEN);
        let mut r = ArchiveReader::new(&bytes).unwrap();
        assert_eq!(r.version(), 1);
        assert_eq!(r.by_ref().count(), 4);
        assert!(!r.incomplete() && r.stopped.is_none());
    }
}
