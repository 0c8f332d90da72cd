//! `rf-tap extract IN.pcap`: HTTP exchanges out of a capture, as JSON lines.

use std::{
    io::{IsTerminal, Write},
    path::PathBuf,
    time::{Duration, Instant},
};

use anyhow::Context as _;
use clap::{Args, ValueEnum};
use rf_tap_engine::{
    archive::ArchiveWriter,
    flow::{ExtractConfig, Extractor},
    har::{self, HAR_PREFIX, HAR_SUFFIX},
    pcap::reader::CaptureReader,
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
their responses. Bad checksums are accepted. Body lengths are those of the decoded body
(after chunked and gzip/deflate/br), as Zeek's http.log counts them.

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
    let mut extractor = Extractor::new(ExtractConfig {
        max_flows: args.max_flows.max(1),
        ..ExtractConfig::default()
    });
    let stdout = std::io::stdout();
    let mut out = match &args.output {
        Some(path) => Sink::Archive(Box::new(crate::capture::live_archive::create_archive(
            path,
        )?)),
        None => Sink::Text {
            out: std::io::BufWriter::with_capacity(1 << 16, stdout.lock()),
            format: args.format,
            first: true,
        },
    };
    out.begin()?;
    let mut batch = Vec::new();
    let mut stopped_at = None;
    let progress = !args.quiet && std::io::stderr().is_terminal();
    let started = Instant::now();
    let mut last_progress = Instant::now();
    let total = map.len().max(1);
    let mut reader = reader;
    let mut releaser = crate::cli::mapped::Releaser::new(&map);
    while let Some(item) = reader.next() {
        match item {
            Ok(frame) => extractor.frame(&frame, &mut batch),
            Err(e) => {
                stopped_at = Some(e);
                break;
            }
        }
        if !batch.is_empty() {
            write_batch(&mut out, &mut batch)?;
        }
        releaser.parsed_up_to(&map, reader.offset());
        if progress && last_progress.elapsed() >= Duration::from_millis(500) {
            last_progress = Instant::now();
            eprint!(
                "\r\x1b[Krf-tap: {:.0}% of {} ({} exchanges)",
                reader.offset() as f64 * 100.0 / total as f64,
                args.input.display(),
                extractor.stats.exchanges
            );
        }
    }
    extractor.finish(&mut batch);
    write_batch(&mut out, &mut batch)?;
    let archive_bytes = out.end()?;
    if progress {
        eprint!("\r\x1b[K");
    }
    let s = &extractor.stats;
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

fn ignore_broken_pipe(e: std::io::Error) -> std::io::Result<()> {
    if e.kind() == std::io::ErrorKind::BrokenPipe {
        Ok(())
    } else {
        Err(e)
    }
}

/// Where extracted exchanges go.
enum Sink<'a> {
    Text {
        out: std::io::BufWriter<std::io::StdoutLock<'a>>,
        format: ExtractFormat,
        first: bool,
    },
    Archive(Box<ArchiveWriter<std::fs::File>>),
}

impl Sink<'_> {
    fn begin(&mut self) -> anyhow::Result<()> {
        if let Sink::Text {
            out,
            format: ExtractFormat::Har,
            ..
        } = self
        {
            out.write_all(HAR_PREFIX.as_bytes())
                .or_else(ignore_broken_pipe)?;
        }
        Ok(())
    }

    /// Finishes the output; returns the archive size when writing one.
    fn end(self) -> anyhow::Result<Option<u64>> {
        match self {
            Sink::Text {
                mut out, format, ..
            } => {
                if format == ExtractFormat::Har {
                    out.write_all(HAR_SUFFIX.as_bytes())
                        .or_else(ignore_broken_pipe)?;
                }
                out.flush().or_else(ignore_broken_pipe)?;
                Ok(None)
            }
            Sink::Archive(w) => {
                let mut w = *w;
                w.flush_block()?;
                let total = w.bytes_written;
                let file = w.finish()?;
                file.sync_all()?;
                Ok(Some(total))
            }
        }
    }
}

fn write_batch(
    out: &mut Sink<'_>,
    batch: &mut Vec<rf_tap_engine::http::exchange::Exchange>,
) -> anyhow::Result<()> {
    for x in batch.drain(..) {
        match out {
            Sink::Text {
                out,
                format: ExtractFormat::Jsonl,
                ..
            } => {
                serde_json::to_writer(&mut *out, &x.to_json())?;
                out.write_all(b"\n").or_else(ignore_broken_pipe)?;
            }
            Sink::Text {
                out,
                format: ExtractFormat::Har,
                first,
            } => {
                if !*first {
                    out.write_all(b",").or_else(ignore_broken_pipe)?;
                }
                *first = false;
                serde_json::to_writer(&mut *out, &har::entry(&x))?;
            }
            Sink::Archive(w) => w.append(x)?,
        }
    }
    Ok(())
}
