//! `rf-tap extract IN.pcap`: HTTP exchanges out of a capture, as JSON lines.

use std::{
    io::IsTerminal,
    path::PathBuf,
    time::{Duration, Instant},
};

use anyhow::Context as _;
use clap::{Args, ValueEnum};
use crossbeam::channel::bounded;
use rf_tap_engine::{
    flow::{ExtractConfig, ExtractStats, Extractor},
    http::exchange::Exchange,
    pcap::reader::{CaptureReader, RawFrame, ReadError},
};

use crate::pipeline::{
    live::{conn_id, Sharder},
    sinks::{self, Sink, SinkError},
};

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum ExtractFormat {
    /// One JSON object per exchange (id, conn, client, server, ts, method, uri, version,
    /// host, status, request_body_len, response_body_len, latency_ms, flags, ...)
    Jsonl,
    /// HAR 1.2 (loads in browser devtools and HAR viewers)
    Har,
}

#[derive(Debug, Args)]
#[command(after_help = "\
Reads pcap or pcapng (any byte order, micro- or nanosecond timestamps; Ethernet, raw IP,
Linux SLL/SLL2, BSD loopback, NFLOG; VLAN, MPLS, PPPoE, VXLAN and Teredo decapsulated; IP
fragments reassembled), reassembles TCP in both directions and pairs HTTP/1.x requests with
their responses. Each connection's protocol is detected from its first bytes; HTTP/2, TLS and
other protocols are counted (--stats), not decoded. With -o, the archive is written beside
OUT and renamed over it once complete. Bad checksums are accepted. Body lengths are those of
the decoded body (after chunked and gzip/deflate/br), as Zeek's http.log counts them.

Example:
  rf-tap extract capture.pcap | jq -r 'select(.status >= 500) | .uri'
  rf-tap extract capture.pcap -o capture.rfcap && rf-tap requests capture.rfcap --status 5xx
  rf-tap extract capture.pcap --format har > capture.har")]
pub struct ExtractArgs {
    /// The capture to read
    pub input: PathBuf,

    /// Output format (to standard output)
    #[arg(long, value_enum, default_value_t = ExtractFormat::Jsonl)]
    pub format: ExtractFormat,

    /// Write an .rfcap archive instead (see docs/rfcap.md)
    #[arg(
        short = 'o',
        long = "output",
        value_name = "OUT.rfcap",
        conflicts_with = "format"
    )]
    pub output: Option<PathBuf>,

    /// Most TCP flows tracked at once (least recently active ones are closed beyond it)
    #[arg(long, default_value_t = 100_000)]
    pub max_flows: usize,

    /// Worker threads reassembling flows (0: chosen from the cores, one on two cores or
    /// fewer, one per core beyond the first otherwise). With more than one, a reader
    /// thread sends each connection to one worker; exchanges still come out in the order
    /// they complete, ids count in that order, and connection ids are unique but numbered per
    /// worker. More threads take more memory (each worker has its own flows)
    #[arg(long, default_value_t = 1)]
    pub threads: usize,

    /// Print the extraction counters as JSON on standard error at the end
    #[arg(long)]
    pub stats: bool,

    /// No progress or summary on standard error
    #[arg(short, long)]
    pub quiet: bool,
}

pub fn run(args: ExtractArgs) -> anyhow::Result<std::process::ExitCode> {
    let file = std::fs::File::open(&args.input)
        .with_context(|| format!("cannot open {}", args.input.display()))?;
    // SAFETY: the map is read-only; a file changed underneath could only yield odd bytes,
    // which the reader treats like any other untrusted input.
    let map = unsafe { memmap2::Mmap::map(&file) }
        .with_context(|| format!("cannot map {}", args.input.display()))?;
    let reader = CaptureReader::new(&map).with_context(|| format!("{}", args.input.display()))?;
    let mut config = ExtractConfig {
        max_flows: args.max_flows.max(1),
        ..ExtractConfig::default()
    };
    if args.output.is_none() && matches!(args.format, ExtractFormat::Jsonl) {
        // JSONL carries body lengths, not bodies: count and decode them, keep nothing.
        config.http.keep_body = 0;
    }
    let threads = match args.threads {
        0 => auto_threads(),
        n => n,
    }
    .min(64);
    let mut out: Box<dyn Sink> = match &args.output {
        Some(path) => Box::new(sinks::Rfcap::whole(path)?),
        None => {
            let text = sinks::Text::open("-")?;
            match args.format {
                ExtractFormat::Jsonl => Box::new(sinks::Jsonl::new(text, false)),
                ExtractFormat::Har => Box::new(sinks::Har::new(text)?),
            }
        }
    };
    let progress = !args.quiet && std::io::stderr().is_terminal();
    let started = Instant::now();
    let mut last_progress = Instant::now();
    let total = map.len().max(1);
    let mut show = |offset: usize, exchanges: u64| {
        if progress && last_progress.elapsed() >= Duration::from_millis(500) {
            last_progress = Instant::now();
            eprint!(
                "\r\x1b[Krf-tap: {:.0}% of {} ({} exchanges)",
                offset as f64 * 100.0 / total as f64,
                args.input.display(),
                exchanges
            );
        }
    };
    let run = if threads > 1 {
        sharded(&map, reader, threads, config, &mut *out, &mut show)
    } else {
        single(&map, reader, config, &mut *out, &mut show)
    };
    let (stats, stopped_at) = match run {
        Ok(r) => r,
        // `| head`: the reader has what it wanted; stop as quietly as a filter does.
        Err(SinkError::Closed) => return Ok(std::process::ExitCode::SUCCESS),
        Err(e) => return Err(e.into()),
    };
    let archive_bytes = match out.finish() {
        Ok(n) => args.output.as_ref().map(|_| n),
        Err(SinkError::Closed) => return Ok(std::process::ExitCode::SUCCESS),
        Err(e) => return Err(e.into()),
    };
    if progress {
        eprint!("\r\x1b[K");
    }
    let s = &stats;
    if !args.quiet {
        eprintln!(
            "rf-tap: {} exchanges from {} frames ({} TCP flows, {} gaps of {} bytes) in {:.2} s",
            s.exchanges,
            s.frames,
            s.flows,
            s.reassembly.gaps,
            s.reassembly.gap_bytes,
            started.elapsed().as_secs_f64()
        );
        if let Some(line) = not_http_line(s) {
            eprintln!("rf-tap: {line}");
        }
        let seen: Vec<String> = s
            .anomalies
            .seen()
            .map(|(a, n)| format!("{a} {n}"))
            .collect();
        if !seen.is_empty() {
            eprintln!("rf-tap: anomalies: {}", seen.join(", "));
        }
    }
    if let (Some(bytes), Some(path)) = (archive_bytes, &args.output) {
        if !args.quiet {
            eprintln!(
                "rf-tap: wrote {} ({} bytes, {:.1}% of the capture's {} bytes)",
                path.display(),
                bytes,
                bytes as f64 * 100.0 / map.len().max(1) as f64,
                map.len()
            );
        }
    }
    if args.stats {
        eprintln!("{}", serde_json::to_string(s)?);
    }
    if let Some(e) = stopped_at {
        eprintln!(
            "rf-tap: {}: {e}; everything before it was extracted",
            args.input.display()
        );
        return Ok(std::process::ExitCode::FAILURE);
    }
    Ok(std::process::ExitCode::SUCCESS)
}

type Extracted = (ExtractStats, Option<ReadError>);

/// Workers for `--threads 0`. The reader and the writer are serial and each takes most of a
/// core at full speed, so on two cores or fewer extra workers only compete with them (2
/// workers ran at 0.55x one thread on 2 cores): one then, one per core beyond the first
/// otherwise.
fn auto_threads() -> usize {
    match std::thread::available_parallelism().map_or(1, |n| n.get()) {
        0..=2 => 1,
        n => n - 1,
    }
}

/// The connections that were not turned into exchanges, by detected protocol:
/// `connections not HTTP/1 (counted, not decoded): 1 http2, 2 tls; inside tunnels: 1 opaque`.
fn not_http_line(s: &ExtractStats) -> Option<String> {
    use rf_tap_engine::analyzer::Protocol;
    let list = |c: &rf_tap_engine::analyzer::ProtocolCounts, with_http1: bool| {
        Protocol::ALL
            .into_iter()
            .filter(|p| with_http1 || *p != Protocol::Http1)
            .filter(|p| c.get(*p).connections > 0)
            .map(|p| format!("{} {}", c.get(p).connections, p.name()))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let (outer, inner) = (list(&s.protocols, false), list(&s.tunneled, true));
    match (outer.is_empty(), inner.is_empty()) {
        (true, true) => None,
        (false, true) => Some(format!(
            "connections not HTTP/1 (counted, not decoded): {outer}"
        )),
        (true, false) => Some(format!("inside tunnels (counted, not decoded): {inner}")),
        (false, false) => Some(format!(
            "connections not HTTP/1 (counted, not decoded): {outer}; inside tunnels: {inner}"
        )),
    }
}

/// One thread: frames → extractor → output, in order.
fn single(
    map: &memmap2::Mmap,
    mut reader: CaptureReader<'_>,
    config: ExtractConfig,
    out: &mut dyn Sink,
    show: &mut dyn FnMut(usize, u64),
) -> Result<Extracted, SinkError> {
    let mut extractor = Extractor::new(config);
    let mut batch = Vec::new();
    let mut stopped_at = None;
    let mut releaser = crate::cli::mapped::Releaser::new(map);
    while let Some(item) = reader.next() {
        match item {
            Ok(frame) => extractor.frame(&frame, &mut batch),
            Err(e) => {
                stopped_at = Some(e);
                break;
            }
        }
        if !batch.is_empty() {
            write_batch(out, &mut batch)?;
        }
        releaser.parsed_up_to(map, reader.offset());
        show(reader.offset(), extractor.stats.exchanges);
    }
    extractor.finish(&mut batch);
    write_batch(out, &mut batch)?;
    Ok((extractor.stats, stopped_at))
}

/// Frames a shard worker gets: a batch, or word that every frame up to a number was sent.
enum ToShard<'m> {
    Frames(Vec<RawFrame<'m>>),
    Tick(u64),
}

/// What a worker sends back: exchanges keyed by the frame that completed them (`u64::MAX`
/// for those its end of input closed), and the frame number up to which it has worked.
struct FromShard {
    shard: usize,
    items: Vec<(u64, Exchange)>,
    watermark: u64,
    stats: Option<ExtractStats>,
}

/// Frames per batch to a worker, and how often every worker hears how far the reader got.
const BATCH: usize = 256;
const TICK_EVERY: u64 = 4096;

/// Several threads: a reader thread shards frames by connection ([`Sharder`]) to workers,
/// each with its own extractor, borrowing frames from the map rather than copying them. This
/// thread merges the workers' exchanges in the order the frames completed them (a worker's
/// exchange is written once every worker has got past that frame), numbers them, and writes
/// them. Memory limits are shared out over the workers.
fn sharded<'m>(
    map: &'m memmap2::Mmap,
    reader: CaptureReader<'m>,
    threads: usize,
    config: ExtractConfig,
    out: &mut dyn Sink,
    show: &mut dyn FnMut(usize, u64),
) -> Result<Extracted, SinkError> {
    let per_shard = ExtractConfig {
        max_flows: (config.max_flows / threads).max(1),
        held_budget: (config.held_budget / threads).max(config.flow_buffer),
        ..config
    };
    let offset = std::sync::atomic::AtomicUsize::new(0);
    // (frame number, file offset after it) at each tick: once every worker is past a frame,
    // the pages before its offset can go (the reader runs ahead of the workers, and a page
    // given back too early would only be faulted in again and stay).
    let ticks = std::sync::Mutex::new(std::collections::VecDeque::<(u64, usize)>::new());
    std::thread::scope(|scope| -> Result<Extracted, SinkError> {
        let (result_tx, result_rx) = bounded::<FromShard>(threads * 16);
        let mut to_shards = Vec::new();
        for shard in 0..threads {
            let (tx, rx) = bounded::<ToShard<'m>>(64);
            to_shards.push(tx);
            let results = result_tx.clone();
            scope.spawn(move || {
                let mut x = Extractor::new(per_shard);
                let mut out = Vec::new();
                let mut items = Vec::new();
                for msg in rx {
                    let watermark = match msg {
                        ToShard::Frames(frames) => {
                            for f in &frames {
                                x.frame(f, &mut out);
                                items.extend(out.drain(..).map(|e| (f.number, e)));
                            }
                            frames.last().map(|f| f.number)
                        }
                        ToShard::Tick(n) => Some(n),
                    };
                    if let Some(watermark) = watermark {
                        let sent = results.send(FromShard {
                            shard,
                            items: std::mem::take(&mut items),
                            watermark,
                            stats: None,
                        });
                        if sent.is_err() {
                            return;
                        }
                    }
                }
                x.finish(&mut out);
                let _ = results.send(FromShard {
                    shard,
                    items: out.drain(..).map(|e| (u64::MAX, e)).collect(),
                    watermark: u64::MAX,
                    stats: Some(x.stats),
                });
            });
        }
        drop(result_tx);
        let offset = &offset;
        let ticks = &ticks;
        let reading = scope.spawn(move || -> Option<ReadError> {
            let mut reader = reader;
            let mut sharder = Sharder::new(threads);
            let mut batches: Vec<Vec<RawFrame<'m>>> = vec![Vec::new(); threads];
            let mut stopped = None;
            let mut last = 0u64;
            // A send fails only when the workers are gone (the writer failed): stop reading.
            let flush = |batches: &mut Vec<Vec<RawFrame<'m>>>, tick: Option<u64>| -> bool {
                for (tx, b) in to_shards.iter().zip(batches.iter_mut()) {
                    if !b.is_empty() && tx.send(ToShard::Frames(std::mem::take(b))).is_err() {
                        return false;
                    }
                    if let Some(n) = tick {
                        if tx.send(ToShard::Tick(n)).is_err() {
                            return false;
                        }
                    }
                }
                true
            };
            while let Some(item) = reader.next() {
                let frame = match item {
                    Ok(f) => f,
                    Err(e) => {
                        stopped = Some(e);
                        break;
                    }
                };
                last = frame.number;
                let shard = sharder.shard(frame.linktype, frame.data, frame.orig_len);
                batches[shard].push(frame);
                if batches[shard].len() >= BATCH {
                    let b = std::mem::take(&mut batches[shard]);
                    if to_shards[shard].send(ToShard::Frames(b)).is_err() {
                        return stopped;
                    }
                }
                if last.is_multiple_of(TICK_EVERY) {
                    if !flush(&mut batches, Some(last)) {
                        return stopped;
                    }
                    if let Ok(mut t) = ticks.lock() {
                        t.push_back((last, reader.offset()));
                    }
                    offset.store(reader.offset(), std::sync::atomic::Ordering::Relaxed);
                }
            }
            flush(&mut batches, Some(last));
            stopped
        });

        let mut queues: Vec<std::collections::VecDeque<(u64, Exchange)>> =
            (0..threads).map(|_| Default::default()).collect();
        let mut marks = vec![0u64; threads];
        let mut stats = ExtractStats::default();
        let mut next_id = 1u64;
        let mut batch = Vec::new();
        let mut releaser = crate::cli::mapped::Releaser::new(map);
        for msg in result_rx.iter() {
            queues[msg.shard].extend(msg.items);
            marks[msg.shard] = msg.watermark;
            if let Some(s) = msg.stats {
                stats.add(&s);
            }
            while let Some((key, shard)) = queues
                .iter()
                .enumerate()
                .filter_map(|(i, q)| q.front().map(|(k, _)| (*k, i)))
                .min()
            {
                // No worker whose queue is empty may still produce an earlier exchange.
                if !(0..threads).all(|j| !queues[j].is_empty() || marks[j] >= key) {
                    break;
                }
                let Some((_, mut e)) = queues[shard].pop_front() else {
                    break;
                };
                e.id = next_id;
                next_id += 1;
                e.conn = conn_id(e.conn, shard, threads);
                batch.push(e);
            }
            if !batch.is_empty() {
                // An error here drops the receiver; the workers and the reader then stop.
                write_batch(out, &mut batch)?;
            }
            let passed = marks.iter().copied().min().unwrap_or(0);
            let mut done_up_to = None;
            if let Ok(mut t) = ticks.lock() {
                while t.front().is_some_and(|(n, _)| *n <= passed) {
                    done_up_to = t.pop_front().map(|(_, o)| o);
                }
            }
            if let Some(o) = done_up_to {
                releaser.parsed_up_to(map, o);
            }
            show(
                offset.load(std::sync::atomic::Ordering::Relaxed),
                next_id - 1,
            );
        }
        let stopped = reading.join().map_err(|_| SinkError::Write {
            file: "the exchange pipeline".into(),
            error: std::io::Error::other("the capture reader thread panicked"),
        })?;
        stats.exchanges = next_id - 1;
        Ok((stats, stopped))
    })
}

fn write_batch(out: &mut dyn Sink, batch: &mut Vec<Exchange>) -> Result<(), SinkError> {
    for x in batch.drain(..) {
        out.exchange(&x)?;
    }
    Ok(())
}
