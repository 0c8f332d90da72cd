//! `rf-tap extract IN.pcap`: HTTP exchanges out of a capture, as JSON lines.

use std::{
    io::IsTerminal,
    path::PathBuf,
    time::{Duration, Instant},
};

use anyhow::Context as _;
use clap::{Args, ValueEnum};
use rf_tap_engine::{
    flow::{ExtractConfig, ExtractStats},
    pcap::reader::CaptureReader,
};

use crate::pipeline::{
    file,
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
Linux SLL/SLL2, BSD loopback, NFLOG, PPP, Cisco HDLC, 802.11 (bare, radiotap, PPI); VLAN,
MPLS, PPPoE, VXLAN and Teredo decapsulated; IP fragments reassembled), reassembles TCP in
both directions and pairs HTTP/1.x requests with their responses, and each stream of a
cleartext HTTP/2 connection (prior knowledge) with its response. Each connection's protocol
is detected from its first bytes; TLS and other protocols are counted (--stats), not
decoded. With -o, the archive is written beside OUT and renamed over it once complete. Bad
checksums are accepted. Body lengths are those of the decoded body (after chunked and
gzip/deflate/br), as Zeek's http.log counts them.
Credentials are masked in JSONL and HAR (see Redaction below); an .rfcap keeps the original
bytes. Output files are created 0600 (--file-mode), never through a symbolic link.

Damaged input (a torn or corrupt capture or archive): everything readable is used, a warning
names where the damage is, and the exit status is 1; --strict refuses it before anything is
done.

Example:
  rf-tap extract capture.pcap | jq -r 'select(.status >= 500) | .uri'
  rf-tap extract capture.pcap -o capture.rfcap && rf-tap requests capture.rfcap --status 5xx
  rf-tap extract capture.pcap --format har > capture.har")]
pub struct ExtractArgs {
    /// The capture to read
    pub input: PathBuf,

    /// Refuse damaged input (a torn or corrupt capture) before doing anything, instead of
    /// extracting what is readable and exiting 1
    #[arg(long)]
    pub strict: bool,

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

    /// Only exchanges where the captured host was the client (its calls to dependencies;
    /// needs recorded directions: a pcapng from `attach --pcapng`)
    #[arg(long)]
    pub outbound: bool,

    /// Only the exchanges of this dependency: its Host (with or without port) or its
    /// address:port
    #[arg(long, value_name = "NAME")]
    pub dependency: Option<String>,

    /// Print the extraction counters as JSON on standard error at the end
    #[arg(long)]
    pub stats: bool,

    /// No progress or summary on standard error
    #[arg(short, long)]
    pub quiet: bool,

    /// For JSONL and HAR (an .rfcap archive with -o keeps the original bytes)
    #[command(flatten)]
    pub redact: crate::cli::redaction::RedactArgs,
}

/// Passes on the exchanges `--outbound` and `--dependency` select.
struct Selected {
    inner: Box<dyn Sink>,
    outbound: bool,
    dependency: Option<String>,
}

impl Sink for Selected {
    fn exchange(&mut self, x: &rf_tap_engine::http::exchange::Exchange) -> Result<(), SinkError> {
        let wanted = (!self.outbound || rf_tap_engine::mock::is_outbound(x))
            && self
                .dependency
                .as_deref()
                .is_none_or(|d| rf_tap_engine::mock::Dependency::of(x).is(d));
        if wanted {
            self.inner.exchange(x)
        } else {
            Ok(())
        }
    }

    fn flush(&mut self) -> Result<(), SinkError> {
        self.inner.flush()
    }

    fn finish(self: Box<Self>) -> Result<u64, SinkError> {
        self.inner.finish()
    }
}

pub fn run(args: ExtractArgs) -> anyhow::Result<std::process::ExitCode> {
    let map = crate::cli::mapped::open(&args.input)?;
    if args.strict {
        crate::cli::mapped::refuse_damaged(&args.input, &map)?;
    }
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
                ExtractFormat::Jsonl => {
                    Box::new(sinks::Jsonl::new(text, false, args.redact.policy()))
                }
                ExtractFormat::Har => Box::new(sinks::Har::new(text, args.redact.policy())?),
            }
        }
    };
    if args.outbound || args.dependency.is_some() {
        out = Box::new(Selected {
            inner: out,
            outbound: args.outbound,
            dependency: args.dependency.clone(),
        });
    }
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
    let run = file::run(&map, reader, threads, config, &mut *out, &mut show);
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
        let of_flows: Vec<String> = s
            .flow_anomalies
            .seen()
            .map(|(a, n)| format!("{a} {n}"))
            .collect();
        if !of_flows.is_empty() {
            eprintln!(
                "rf-tap: anomalies of connections, not exchanges: {}",
                of_flows.join(", ")
            );
        }
        let links: Vec<String> = s
            .unsupported_links
            .seen()
            .map(|(l, n)| format!("{l} ({n} frames)"))
            .collect();
        if s.unsupported_link > 0 {
            eprintln!(
                "rf-tap: warning: {} frames of link types rf-tap does not decode, left out: {}",
                s.unsupported_link,
                if links.is_empty() {
                    "?".to_string()
                } else {
                    links.join(", ")
                }
            );
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
/// `connections not decoded (counted only): 2 tls (encrypted: HTTPS and HTTP/2 over TLS
/// cannot be read from packets); inside tunnels: 1 opaque`.
fn not_http_line(s: &ExtractStats) -> Option<String> {
    use rf_tap_engine::analyzer::Protocol;
    let list = |c: &rf_tap_engine::analyzer::ProtocolCounts, outer: bool| {
        Protocol::ALL
            .into_iter()
            .filter(|p| !outer || !matches!(p, Protocol::Http1 | Protocol::Http2))
            .filter(|p| c.get(*p).connections > 0)
            .map(|p| match p {
                Protocol::Tls => format!(
                    "{} tls (encrypted: HTTPS and HTTP/2 over TLS cannot be read from packets)",
                    c.get(p).connections
                ),
                p => format!("{} {}", c.get(p).connections, p.name()),
            })
            .collect::<Vec<_>>()
            .join(", ")
    };
    let (outer, inner) = (list(&s.protocols, true), list(&s.tunneled, false));
    match (outer.is_empty(), inner.is_empty()) {
        (true, true) => None,
        (false, true) => Some(format!("connections not decoded (counted only): {outer}")),
        (true, false) => Some(format!("inside tunnels (counted, not decoded): {inner}")),
        (false, false) => Some(format!(
            "connections not decoded (counted only): {outer}; inside tunnels: {inner}"
        )),
    }
}
