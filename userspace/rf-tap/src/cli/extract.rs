//! `rf-tap extract IN.pcap`: HTTP exchanges out of a capture, as JSON lines.

use std::{
    io::{IsTerminal, Write},
    path::PathBuf,
    time::{Duration, Instant},
};

use anyhow::Context as _;
use clap::{Args, ValueEnum};
use rf_tap_engine::{
    flow::{ExtractConfig, Extractor},
    pcap::reader::CaptureReader,
};

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum ExtractFormat {
    /// One JSON object per exchange (id, conn, client, server, ts, method, uri, version,
    /// host, status, request_body_len, response_body_len, latency_ms, flags, ...)
    Jsonl,
}

#[derive(Debug, Args)]
#[command(after_help = "\
Reads pcap or pcapng (any byte order, micro- or nanosecond timestamps; Ethernet, raw IP,
Linux SLL/SLL2, BSD loopback, NFLOG; VLAN, MPLS, PPPoE, VXLAN and Teredo decapsulated; IP
fragments reassembled), reassembles TCP in both directions and pairs HTTP/1.x requests with
their responses. Bad checksums are accepted. Body lengths are those of the decoded body
(after chunked and gzip/deflate/br), as Zeek's http.log counts them.

Example:
  rf-tap extract capture.pcap | jq -r 'select(.status >= 500) | .uri'")]
pub struct ExtractArgs {
    /// The capture to read
    pub input: PathBuf,

    /// Output format (to standard output)
    #[arg(long, value_enum, default_value_t = ExtractFormat::Jsonl)]
    pub format: ExtractFormat,

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
    let mut extractor = Extractor::new(ExtractConfig::default());
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::with_capacity(1 << 16, stdout.lock());
    let mut batch = Vec::new();
    let mut stopped_at = None;
    let progress = !args.quiet && std::io::stderr().is_terminal();
    let started = Instant::now();
    let mut last_progress = Instant::now();
    let total = map.len().max(1);
    let mut reader = reader;
    loop {
        let Some(item) = reader.next() else { break };
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
    out.flush().or_else(ignore_broken_pipe)?;
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

fn write_batch(
    out: &mut impl Write,
    batch: &mut Vec<rf_tap_engine::http::exchange::Exchange>,
) -> anyhow::Result<()> {
    for x in batch.drain(..) {
        serde_json::to_writer(&mut *out, &x.to_json())?;
        out.write_all(b"\n").or_else(ignore_broken_pipe)?;
    }
    Ok(())
}
