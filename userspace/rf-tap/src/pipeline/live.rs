//! The live exchange pipeline: captured packets → per-flow shards (worker threads, each with
//! its own engine) → one writer handing events to the sinks (rfcap, JSONL, HAR).
//!
//! A packet goes to the shard of its connection ([`Sharder`]), so each TCP connection is
//! reassembled by one worker. Channels are bounded: a slow sink slows the ring reader, and
//! the kernel's ring absorbs it or counts the drops, rather than memory growing. Workers move
//! their engine's clock on when no packet comes (`advance`), so idle flows time out and their
//! unanswered requests come out without new traffic. The writer numbers exchanges in the
//! order they complete, flushes the sinks whenever it is idle (so an archive can be read while
//! the capture runs), and stops at the first sink error, which the capture loop sees at once
//! ([`LivePipeline::failed`]).

use std::{
    hash::BuildHasher,
    path::Path,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    thread::JoinHandle,
    time::Duration,
};

use anyhow::Context as _;
use crossbeam::channel::{bounded, Receiver, RecvTimeoutError, Sender};
use rf_tap_engine::{
    archive::ArchiveWriter,
    flow::{EventSink, ExtractConfig, ExtractStats, Extractor, RequestEvent},
    http::exchange::Exchange,
    packet::CapturedPacket,
    packet::PacketDirection,
    pcap::reader::RawFrame,
    wire,
};

use super::sinks::{Sink, SinkError};

struct OwnedFrame {
    number: u64,
    ts: Duration,
    orig_len: u32,
    data: Vec<u8>,
    direction: Option<PacketDirection>,
}

/// What workers hand the writer.
enum Event {
    Request(Box<RequestEvent>),
    Exchange(Box<Exchange>),
}

/// A worker's engine output, batched per frame or tick.
struct Forward {
    batch: Vec<Event>,
    wants_requests: bool,
}

impl EventSink for Forward {
    fn exchange(&mut self, x: Exchange) {
        self.batch.push(Event::Exchange(Box::new(x)));
    }
    fn request(&mut self, r: RequestEvent) {
        self.batch.push(Event::Request(Box::new(r)));
    }
    fn wants_requests(&self) -> bool {
        self.wants_requests
    }
}

pub struct LivePipeline {
    shards: Vec<Sender<OwnedFrame>>,
    workers: Vec<JoinHandle<ExtractStats>>,
    writer: JoinHandle<WriterReport>,
    linktype: u32,
    frames: u64,
    sharder: Sharder,
    /// Set at the first sink failure, seen by the capture loop without locking.
    failure: Arc<AtomicBool>,
    /// Frames no worker took (it had stopped after a sink failure).
    dropped: u64,
}

#[derive(Default)]
struct WriterReport {
    exchanges: u64,
    requests: u64,
    error: Option<SinkError>,
}

/// What the live pipeline did, for the capture summary.
#[derive(Debug, Default, serde::Serialize)]
pub struct LiveReport {
    pub exchanges: u64,
    pub requests: u64,
    pub flows: u64,
    pub gaps: u64,
    pub flows_timed_out: u64,
    /// Packets not reassembled because the pipeline had stopped.
    pub dropped: u64,
}

/// How the live pipeline is built.
pub struct LiveConfig {
    pub workers: usize,
    pub linktype: u32,
    /// A flow with no packet for this long is closed (its unanswered requests come out).
    pub idle_timeout: Duration,
    /// Most of each body kept (None: the engine's default).
    pub keep_body: Option<usize>,
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
        crate::output::create(path).with_context(|| format!("cannot write {}", path.display()))?;
    archive_on(file, path)
}

fn archive_on(file: std::fs::File, path: &Path) -> anyhow::Result<ArchiveWriter<std::fs::File>> {
    let now = wall_clock().as_nanos() as u64;
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
        crate::output::refuse_symlink(dest)
            .with_context(|| format!("cannot write {}", dest.display()))?;
        let tmp = crate::output::temp_beside(dest)?;
        // The error names what the user asked for, not the temporary name beside it.
        let file = crate::output::create_new(&tmp)
            .with_context(|| format!("cannot write {}", dest.display()))?;
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
        crate::output::commit(&self.tmp, &self.dest)
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

impl LivePipeline {
    pub fn start(config: LiveConfig, sinks: Vec<Box<dyn Sink + Send>>) -> Self {
        let shards = config.workers.max(1);
        let linktype = config.linktype;
        let wants_requests = sinks.iter().any(|s| s.wants_requests());
        let failure = Arc::new(AtomicBool::new(false));
        let (done_tx, done_rx): (Sender<Vec<Event>>, Receiver<Vec<Event>>) = bounded(64);
        let mut senders = Vec::new();
        let mut workers = Vec::new();
        let mut engine = ExtractConfig {
            idle_timeout: config.idle_timeout,
            ..ExtractConfig::default()
        };
        if let Some(n) = config.keep_body {
            engine.http.keep_body = n;
        }
        for shard in 0..shards {
            let (tx, rx) = bounded::<OwnedFrame>(4096);
            senders.push(tx);
            let done = done_tx.clone();
            workers.push(std::thread::spawn(move || {
                let mut x = Extractor::new(engine);
                let mut out = Forward {
                    batch: Vec::new(),
                    wants_requests,
                };
                loop {
                    match rx.recv_timeout(Duration::from_millis(100)) {
                        Ok(f) => {
                            let frame = RawFrame {
                                number: f.number,
                                ts: f.ts,
                                linktype,
                                orig_len: f.orig_len,
                                data: &f.data,
                                direction: f.direction,
                            };
                            x.frame(&frame, &mut out);
                        }
                        Err(RecvTimeoutError::Timeout) => x.advance(wall_clock(), &mut out),
                        Err(RecvTimeoutError::Disconnected) => break,
                    }
                    if !out.batch.is_empty() && !forward(&mut out.batch, shard, shards, &done) {
                        // The writer stopped (a sink failed): so does this worker.
                        return x.stats;
                    }
                }
                x.finish(&mut out);
                forward(&mut out.batch, shard, shards, &done);
                x.stats
            }));
        }
        drop(done_tx);
        let fail = Arc::clone(&failure);
        let writer = std::thread::spawn(move || write_events(sinks, done_rx, &fail));
        Self {
            shards: senders,
            workers,
            writer,
            linktype,
            frames: 0,
            sharder: Sharder::new(shards),
            failure,
            dropped: 0,
        }
    }

    pub fn packet(&mut self, p: &CapturedPacket<'_>) {
        self.frames += 1;
        let shard = self.sharder.shard(self.linktype, p.data, p.orig_len);
        let sent = self.shards[shard].send(OwnedFrame {
            number: self.frames,
            ts: p.ts,
            orig_len: p.orig_len,
            data: p.data.to_vec(),
            direction: p.direction,
        });
        if sent.is_err() {
            self.dropped += 1;
        }
    }

    /// Whether a sink has failed (the capture should stop).
    pub fn failed(&self) -> bool {
        self.failure.load(Ordering::Relaxed)
    }

    /// Closes every flow and every sink. An error names the sink that failed first;
    /// a closed standard output is not one.
    pub fn finish(self) -> (LiveReport, Option<SinkError>) {
        drop(self.shards);
        let mut report = LiveReport {
            dropped: self.dropped,
            ..LiveReport::default()
        };
        for w in self.workers {
            if let Ok(s) = w.join() {
                report.flows += s.flows;
                report.gaps += s.reassembly.gaps;
                report.flows_timed_out += s.flows_timed_out;
            }
        }
        let w = self.writer.join().unwrap_or_else(|_| WriterReport {
            error: Some(SinkError::Write {
                file: "the exchange writer".into(),
                error: std::io::Error::other("its thread panicked"),
            }),
            ..WriterReport::default()
        });
        report.exchanges = w.exchanges;
        report.requests = w.requests;
        (report, w.error)
    }
}

/// The capture clock of live packets: wall-clock time since the Unix epoch.
pub fn wall_clock() -> Duration {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
}

/// Sends a worker's batch on, with connection ids unique across shards.
fn forward(batch: &mut Vec<Event>, shard: usize, shards: usize, done: &Sender<Vec<Event>>) -> bool {
    for e in batch.iter_mut() {
        match e {
            Event::Exchange(x) => x.conn = conn_id(x.conn, shard, shards),
            Event::Request(r) => r.conn = conn_id(r.conn, shard, shards),
        }
    }
    done.send(std::mem::take(batch)).is_ok()
}

/// The writer thread: numbers exchanges and hands every event to every sink; flushes when
/// idle; stops at the first failure.
fn write_events(
    mut sinks: Vec<Box<dyn Sink + Send>>,
    events: Receiver<Vec<Event>>,
    failure: &AtomicBool,
) -> WriterReport {
    let mut report = WriterReport::default();
    let mut next_id = 1u64;
    let fail = |e: SinkError, report: &mut WriterReport| {
        failure.store(true, Ordering::Relaxed);
        report.error = Some(e);
    };
    let result = (|| -> Result<(), SinkError> {
        loop {
            let batch = match events.recv_timeout(Duration::from_millis(200)) {
                Ok(b) => b,
                Err(RecvTimeoutError::Timeout) => {
                    for s in sinks.iter_mut() {
                        s.flush()?;
                    }
                    continue;
                }
                Err(RecvTimeoutError::Disconnected) => return Ok(()),
            };
            for e in batch {
                match e {
                    Event::Request(r) => {
                        report.requests += 1;
                        for s in sinks.iter_mut().filter(|s| s.wants_requests()) {
                            s.request(&r)?;
                        }
                    }
                    Event::Exchange(mut x) => {
                        x.id = next_id;
                        next_id += 1;
                        report.exchanges += 1;
                        for s in sinks.iter_mut() {
                            s.exchange(&x)?;
                        }
                    }
                }
            }
            if events.is_empty() {
                for s in sinks.iter_mut() {
                    s.flush()?;
                }
            }
        }
    })();
    if let Err(e) = result {
        fail(e, &mut report);
        return report;
    }
    for s in sinks {
        if let Err(e) = s.finish() {
            if report.error.is_none() {
                fail(e, &mut report);
            }
        }
    }
    report
}
