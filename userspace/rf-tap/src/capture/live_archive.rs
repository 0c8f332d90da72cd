//! Live exchanges: captured packets → per-flow shards (worker threads, each with its own
//! engine) → one writer appending to an rfcap archive.
//!
//! A packet goes to the shard of its connection ([`Sharder`]), so each TCP connection is
//! reassembled by one worker. Channels are bounded: a slow disk slows the ring reader, and the kernel's ring
//! absorbs it or counts the drops, rather than memory growing. The writer numbers exchanges
//! in the order they complete and flushes a block at least every second, so the archive
//! can be read while the capture runs and survives a crash up to its last block.

use std::{
    hash::BuildHasher,
    path::Path,
    thread::JoinHandle,
    time::{Duration, Instant},
};

use anyhow::Context as _;
use crossbeam::channel::{bounded, Receiver, RecvTimeoutError, Sender};
use rf_tap_engine::{
    archive::ArchiveWriter,
    flow::{ExtractConfig, ExtractStats, Extractor},
    http::exchange::Exchange,
    packet::CapturedPacket,
    pcap::reader::RawFrame,
    wire,
};

struct OwnedFrame {
    number: u64,
    ts: Duration,
    orig_len: u32,
    data: Vec<u8>,
}

pub struct LiveArchive {
    shards: Vec<Sender<OwnedFrame>>,
    workers: Vec<JoinHandle<ExtractStats>>,
    writer: JoinHandle<anyhow::Result<u64>>,
    linktype: u32,
    frames: u64,
    sharder: Sharder,
}

/// What the live archive did, for the capture summary.
#[derive(Debug, Default, serde::Serialize)]
pub struct LiveArchiveReport {
    pub exchanges: u64,
    pub flows: u64,
    pub gaps: u64,
}

/// A connection id unique across shards, from a shard's own (with one shard, the same).
pub fn conn_id(local: u64, shard: usize, shards: usize) -> u64 {
    local * shards as u64 + shard as u64
}

/// Picks the shard of each packet: a hash of the connection's two endpoints (the same in
/// both directions), so one worker sees all of a TCP connection. Fragments follow: the first
/// fragment of a datagram carries the ports and its shard is remembered for the rest; a
/// later fragment that comes before its first goes by address pair (and will not reassemble
/// if that is another shard: out-of-order fragments of TCP are the rarest of cases). Tunnels
/// go by outer address pair, since the inner flow is not known before decapsulation.
pub struct Sharder {
    shards: usize,
    hasher: foldhash::fast::FixedState,
    first_fragments: std::collections::HashMap<(std::net::IpAddr, std::net::IpAddr, u32), usize>,
}

impl Sharder {
    const MAX_FRAGMENTED: usize = 1 << 16;

    pub fn new(shards: usize) -> Self {
        Self {
            shards: shards.max(1),
            hasher: foldhash::fast::FixedState::default(),
            first_fragments: std::collections::HashMap::new(),
        }
    }

    fn of<K: std::hash::Hash>(&self, key: K) -> usize {
        (self.hasher.hash_one(key) % self.shards as u64) as usize
    }

    fn of_ports(&self, a: (std::net::IpAddr, u16), b: (std::net::IpAddr, u16)) -> usize {
        self.of(if a <= b { (a, b) } else { (b, a) })
    }

    pub fn shard(&mut self, linktype: u32, data: &[u8], orig_len: u32) -> usize {
        if self.shards == 1 {
            return 0;
        }
        let Ok(ip) = wire::ip_packet(linktype, data, orig_len) else {
            return 0;
        };
        let pair = if ip.src <= ip.dst {
            (ip.src, ip.dst)
        } else {
            (ip.dst, ip.src)
        };
        if ip.is_fragment {
            let key = (ip.src, ip.dst, ip.frag_id);
            if ip.frag_offset == 0 && ip.protocol == 6 && ip.payload.len() >= 4 {
                let p = ip.payload;
                let shard = self.of_ports(
                    (ip.src, u16::from_be_bytes([p[0], p[1]])),
                    (ip.dst, u16::from_be_bytes([p[2], p[3]])),
                );
                if self.first_fragments.len() >= Self::MAX_FRAGMENTED {
                    self.first_fragments.clear();
                }
                self.first_fragments.insert(key, shard);
                return shard;
            }
            return match self.first_fragments.get(&key) {
                Some(s) => *s,
                None => self.of(pair),
            };
        }
        match wire::transport(&ip, 0) {
            Ok(wire::Transport::Tcp(t)) => self.of_ports((t.src, t.sport), (t.dst, t.dport)),
            Ok(wire::Transport::Inner(_)) => self.of(pair),
            Err(_) => 0,
        }
    }
}

/// Creates a new .rfcap file, stamped with the current time.
pub fn create_archive(path: &Path) -> anyhow::Result<ArchiveWriter<std::fs::File>> {
    let file =
        std::fs::File::create(path).with_context(|| format!("cannot write {}", path.display()))?;
    archive_on(file, path)
}

fn archive_on(file: std::fs::File, path: &Path) -> anyhow::Result<ArchiveWriter<std::fs::File>> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    ArchiveWriter::new(file, now).with_context(|| format!("cannot write {}", path.display()))
}

/// An archive written to a temporary file beside its destination and renamed over it only
/// once complete ([`PendingArchive::commit`]), so that a killed writer never leaves a cut
/// file under the destination's name. Dropped without a commit, the temporary file goes.
pub struct PendingArchive {
    /// Some until committed.
    writer: Option<ArchiveWriter<std::fs::File>>,
    tmp: std::path::PathBuf,
    dest: std::path::PathBuf,
    committed: bool,
}

impl PendingArchive {
    pub fn create(dest: &Path) -> anyhow::Result<Self> {
        let name = dest
            .file_name()
            .with_context(|| format!("{} is not a file name", dest.display()))?;
        let mut tmp_name = std::ffi::OsString::from(".");
        tmp_name.push(name);
        tmp_name.push(format!(".rf-tap-{}.tmp", std::process::id()));
        let tmp = dest.with_file_name(tmp_name);
        let file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&tmp)
            .with_context(|| format!("cannot write {}", tmp.display()))?;
        Ok(Self {
            writer: Some(archive_on(file, dest)?),
            tmp,
            dest: dest.to_path_buf(),
            committed: false,
        })
    }

    pub fn writer(&mut self) -> anyhow::Result<&mut ArchiveWriter<std::fs::File>> {
        self.writer
            .as_mut()
            .context("the archive is already closed")
    }

    /// Closes the archive (end frame), syncs it, and renames it over the destination.
    /// Returns its size.
    pub fn commit(mut self) -> anyhow::Result<u64> {
        let file = self
            .writer
            .take()
            .context("the archive is already closed")?
            .finish()
            .with_context(|| format!("cannot write {}", self.tmp.display()))?;
        let total = file.metadata()?.len();
        file.sync_all()
            .with_context(|| format!("cannot write {}", self.tmp.display()))?;
        std::fs::rename(&self.tmp, &self.dest)
            .with_context(|| format!("cannot rename onto {}", self.dest.display()))?;
        self.committed = true;
        Ok(total)
    }
}

impl Drop for PendingArchive {
    fn drop(&mut self) {
        if !self.committed {
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}

impl LiveArchive {
    pub fn start(path: &Path, shards: usize, linktype: u32) -> anyhow::Result<Self> {
        let mut archive = create_archive(path)?;
        let shards = shards.max(1);
        let (done_tx, done_rx): (Sender<Vec<Exchange>>, Receiver<Vec<Exchange>>) = bounded(64);
        let mut senders = Vec::new();
        let mut workers = Vec::new();
        for shard in 0..shards {
            let (tx, rx) = bounded::<OwnedFrame>(4096);
            senders.push(tx);
            let done = done_tx.clone();
            workers.push(std::thread::spawn(move || {
                let mut x = Extractor::new(ExtractConfig::default());
                let mut out = Vec::new();
                for f in rx {
                    let frame = RawFrame {
                        number: f.number,
                        ts: f.ts,
                        linktype,
                        orig_len: f.orig_len,
                        data: &f.data,
                    };
                    x.frame(&frame, &mut out);
                    if !out.is_empty() {
                        for e in &mut out {
                            e.conn = conn_id(e.conn, shard, shards);
                        }
                        let _ = done.send(std::mem::take(&mut out));
                    }
                }
                x.finish(&mut out);
                for e in &mut out {
                    e.conn = conn_id(e.conn, shard, shards);
                }
                let _ = done.send(out);
                x.stats
            }));
        }
        drop(done_tx);
        let writer = std::thread::spawn(move || -> anyhow::Result<u64> {
            let mut next_id = 1u64;
            let mut last_flush = Instant::now();
            loop {
                match done_rx.recv_timeout(Duration::from_millis(200)) {
                    Ok(batch) => {
                        for mut e in batch {
                            e.id = next_id;
                            next_id += 1;
                            archive.append(e)?;
                        }
                    }
                    Err(RecvTimeoutError::Timeout) => {}
                    Err(RecvTimeoutError::Disconnected) => break,
                }
                if last_flush.elapsed() >= Duration::from_secs(1) {
                    archive.flush_block()?;
                    last_flush = Instant::now();
                }
            }
            archive.flush_block()?;
            let total = archive.exchanges_written;
            let file = archive.finish()?;
            file.sync_all()?;
            Ok(total)
        });
        Ok(Self {
            shards: senders,
            workers,
            writer,
            linktype,
            frames: 0,
            sharder: Sharder::new(shards),
        })
    }

    pub fn packet(&mut self, p: &CapturedPacket<'_>) {
        self.frames += 1;
        let shard = self.sharder.shard(self.linktype, p.data, p.orig_len);
        let _ = self.shards[shard].send(OwnedFrame {
            number: self.frames,
            ts: p.ts,
            orig_len: p.orig_len,
            data: p.data.to_vec(),
        });
    }

    /// Closes every flow and the archive.
    pub fn finish(self) -> anyhow::Result<LiveArchiveReport> {
        drop(self.shards);
        let mut report = LiveArchiveReport::default();
        for w in self.workers {
            if let Ok(s) = w.join() {
                report.flows += s.flows;
                report.gaps += s.reassembly.gaps;
            }
        }
        report.exchanges = self
            .writer
            .join()
            .map_err(|_| anyhow::anyhow!("the archive writer thread panicked"))??;
        Ok(report)
    }
}
