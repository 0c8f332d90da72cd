//! `rf-tap requests FILE` (a table of exchanges, filtered) and `rf-tap requests show ID FILE`.
//! FILE is an .rfcap archive or a pcap/pcapng read on the fly.

use std::{
    io::Write,
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{bail, Context as _};
use clap::{Args, Subcommand};
use rf_tap_engine::{
    archive::{ArchiveReader, Summary},
    flow::ExtractConfig,
    http::exchange::Exchange,
    mock::{is_outbound, Dependency},
    pcap::reader::CaptureReader,
    query::{format_utc, parse_time, Filter, StatusFilter},
    redact::Redaction,
};

use crate::{
    cli::units::parse_duration,
    pipeline::{
        file,
        sinks::{Sink, SinkError},
    },
};

#[derive(Debug, Args)]
#[command(
    args_conflicts_with_subcommands = true,
    after_help = "\
Damaged input (a torn or corrupt capture or archive): everything readable is used, a warning
names where the damage is, and the exit status is 1; --strict refuses it before anything is
done.

Examples:
  rf-tap requests capture.rfcap --status 5xx
  rf-tap requests capture.pcap --method POST --path '/api/*' --last 1h
  rf-tap requests show 42 capture.rfcap
--last counts back from the newest exchange in the file (captures are often read long after
they were made). Times are UTC."
)]
pub struct RequestsArgs {
    #[command(subcommand)]
    pub show: Option<RequestsCommand>,

    /// An .rfcap archive, or a pcap/pcapng capture (extracted on the fly)
    pub file: Option<PathBuf>,

    /// Only this status (500) or class (5xx)
    #[arg(long)]
    pub status: Option<StatusFilter>,

    /// Only this method
    #[arg(long)]
    pub method: Option<String>,

    /// Only paths matching this glob (`*` any characters, `?` one)
    #[arg(long)]
    pub path: Option<String>,

    /// Only the last DURATION of the file (e.g. 15m, 1h)
    #[arg(long, value_parser = parse_duration)]
    pub last: Option<Duration>,

    /// Only from this time (2026-11-21T10:00:00Z, or epoch seconds)
    #[arg(long, value_parser = parse_time)]
    pub since: Option<Duration>,

    /// Only until this time
    #[arg(long, value_parser = parse_time)]
    pub until: Option<Duration>,

    /// Only exchanges where the captured host was the client (its calls to dependencies;
    /// needs a capture that recorded directions: `attach --rfcap`, `--pcapng`), with the
    /// dependency each called
    #[arg(long)]
    pub outbound: bool,

    /// Only the exchanges of this dependency: its Host (with or without port) or its
    /// address:port
    #[arg(long, value_name = "NAME")]
    pub dependency: Option<String>,

    /// One JSON object per line instead of the table: the exchange records `extract` writes
    /// (docs/jsonl.md)
    #[arg(long)]
    pub json: bool,

    /// Refuse damaged input (a torn or corrupt file) before showing anything
    #[arg(long)]
    pub strict: bool,

    /// For --json (secret query parameters in `uri`)
    #[command(flatten)]
    pub redact: crate::cli::redaction::RedactArgs,
}

#[derive(Debug, Subcommand)]
pub enum RequestsCommand {
    /// The full request and response of one exchange, headers and bodies
    Show {
        /// Exchange id (first column of `rf-tap requests FILE`)
        id: u64,
        /// The .rfcap or pcap file
        file: PathBuf,
        #[command(flatten)]
        redact: crate::cli::redaction::RedactArgs,
    },
}

/// A file of exchanges, memory-mapped.
pub(crate) struct Source {
    pub(crate) map: memmap2::Mmap,
    path: PathBuf,
    archive: bool,
}

impl Source {
    pub(crate) fn open(path: &Path) -> anyhow::Result<Self> {
        let map = crate::cli::mapped::open(path)?;
        let archive = ArchiveReader::sniff(&map);
        if !archive {
            CaptureReader::new(&map).with_context(|| {
                format!(
                    "{} is neither an rfcap archive nor a capture",
                    path.display()
                )
            })?;
        }
        Ok(Self {
            map,
            path: path.to_path_buf(),
            archive,
        })
    }

    /// The first and last timestamps in the file (frames of a capture, exchanges of an
    /// archive), for progress; None when it holds nothing readable.
    pub(crate) fn span(&self) -> Option<(Duration, Duration)> {
        let mut span: Option<(Duration, Duration)> = None;
        let mut see = |t: Duration| {
            span = Some(span.map_or((t, t), |(a, b)| (a.min(t), b.max(t))));
        };
        if self.archive {
            let r = ArchiveReader::new(&self.map).ok()?;
            for block in r {
                for s in &block.summaries {
                    see(Duration::from_nanos(s.ts_ns));
                }
            }
        } else {
            let mut releaser = crate::cli::mapped::Releaser::new(&self.map);
            let mut frames = CaptureReader::new(&self.map).ok()?;
            while let Some(Ok(f)) = frames.next() {
                see(f.ts);
                releaser.parsed_up_to(&self.map, frames.offset());
            }
        }
        span
    }

    /// Visits every exchange's summary; `want(summary)` returning true asks for the full
    /// exchange too (decoded only then). Stops early when `visit` returns false. Damaged
    /// input is reported on stderr (each damaged frame with its offset) and read past where
    /// the format allows; returns whether there was any.
    pub(crate) fn each(
        &self,
        want: &dyn Fn(&Summary) -> bool,
        visit: &mut dyn FnMut(&Summary, Option<Exchange>) -> bool,
    ) -> anyhow::Result<bool> {
        if self.archive {
            let mut r = ArchiveReader::new(&self.map)?;
            let mut undecodable = Vec::new();
            for block in r.by_ref() {
                let needed = block.summaries.iter().any(want);
                let full = if needed {
                    match block.exchanges() {
                        Ok(x) => Some(x),
                        Err(e) => {
                            undecodable.push(e);
                            None
                        }
                    }
                } else {
                    None
                };
                for (i, s) in block.summaries.iter().enumerate() {
                    let x = if want(s) {
                        full.as_ref().and_then(|f| f.get(i).cloned())
                    } else {
                        None
                    };
                    if !visit(s, x) {
                        return Ok(false);
                    }
                }
            }
            let shown = r.damage().len() as u64;
            for e in r.damage().iter().chain(&undecodable) {
                eprintln!("rf-tap: {}: {e}; read on past it", self.path.display());
            }
            if r.damaged_frames() > shown {
                eprintln!(
                    "rf-tap: {}: {} more damaged frames",
                    self.path.display(),
                    r.damaged_frames() - shown
                );
            }
            if r.incomplete() {
                eprintln!(
                    "rf-tap: {}: no end frame: the archive is still being written, or its \
                     writer was stopped before closing it",
                    self.path.display()
                );
            }
            return Ok(r.damaged_frames() > 0 || !undecodable.is_empty());
        }
        let frames = CaptureReader::new(&self.map)?;
        let mut sink = Visit {
            want,
            visit,
            stopped: false,
        };
        let run = file::run(
            &self.map,
            frames,
            1,
            ExtractConfig::default(),
            &mut sink,
            &mut |_, _| {},
        );
        match run {
            Ok((_, Some(e))) => {
                eprintln!(
                    "rf-tap: {}: {e}; showing what came before",
                    self.path.display()
                );
                Ok(true)
            }
            Ok((_, None)) => Ok(false),
            // The visitor had what it wanted.
            Err(SinkError::Closed) if sink.stopped => Ok(false),
            Err(e) => Err(e.into()),
        }
    }
}

/// The file pipeline's sink for [`Source::each`]: each exchange's summary to the visitor,
/// with the exchange itself when it is wanted.
struct Visit<'a> {
    want: &'a dyn Fn(&Summary) -> bool,
    visit: &'a mut dyn FnMut(&Summary, Option<Exchange>) -> bool,
    stopped: bool,
}

impl Sink for Visit<'_> {
    fn exchange(&mut self, x: &Exchange) -> Result<(), SinkError> {
        let s = Summary::of(x);
        let full = (self.want)(&s).then(|| x.clone());
        if (self.visit)(&s, full) {
            Ok(())
        } else {
            self.stopped = true;
            Err(SinkError::Closed)
        }
    }

    fn flush(&mut self) -> Result<(), SinkError> {
        Ok(())
    }

    fn finish(self: Box<Self>) -> Result<u64, SinkError> {
        Ok(0)
    }
}

pub fn run(args: RequestsArgs) -> anyhow::Result<std::process::ExitCode> {
    if let Some(RequestsCommand::Show { id, file, redact }) = args.show {
        return show(id, &file, &redact.policy());
    }
    let Some(file) = args.file.as_deref() else {
        bail!("which file? `rf-tap requests FILE` (an .rfcap or a pcap)");
    };
    let src = Source::open(file)?;
    if args.strict {
        crate::cli::mapped::refuse_damaged(file, &src.map)?;
    }
    let mut filter = Filter {
        status: args.status,
        method: args.method.clone(),
        path: args.path.clone(),
        since_ns: args.since.map(|t| t.as_nanos() as u64),
        until_ns: args.until.map(|t| t.as_nanos() as u64),
    };
    if let Some(last) = args.last {
        let mut newest = 0u64;
        src.each(&|_| false, &mut |s, _| {
            newest = newest.max(s.ts_ns);
            true
        })?;
        let from = newest.saturating_sub(last.as_nanos() as u64);
        filter.since_ns = Some(filter.since_ns.map_or(from, |s| s.max(from)));
    }
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    let mut rows = 0u64;
    let mut write_err = None;
    let by_dependency = args.outbound || args.dependency.is_some();
    if !args.json {
        if by_dependency {
            write!(out, "{:<28}  ", "DEPENDENCY")?;
        }
        writeln!(
            out,
            "{:>6}  {:<23}  {:<7} {:<48} {:>6} {:>10} {:>10}",
            "ID", "TIME", "METHOD", "PATH", "STATUS", "DURATION", "SIZE"
        )?;
    }
    let policy = args.redact.policy();
    let mut undirected = 0u64;
    // gRPC rows show the call's status from its trailers: their exchanges are decoded.
    let grpc_like = |s: &rf_tap_engine::archive::Summary| {
        s.method == "POST"
            && rf_tap_engine::grpc::service_method(&s.path)
                .is_some_and(|(svc, _)| svc.contains('.'))
    };
    let damaged = src.each(
        &|s| (args.json || by_dependency || grpc_like(s)) && filter.matches(s),
        &mut |s, x| {
            if !filter.matches(s) {
                return true;
            }
            let mut dependency = String::new();
            if by_dependency {
                let Some(x) = &x else { return true };
                if x.traffic.is_none() {
                    undirected += 1;
                }
                let d = Dependency::of(x);
                if (args.outbound && !is_outbound(x))
                    || args.dependency.as_deref().is_some_and(|want| !d.is(want))
                {
                    return true;
                }
                dependency = d.name();
            }
            let res = if args.json {
                // The one exchange record (the archive's summary is what the table shows).
                let Some(x) = x else {
                    // Its block did not decode: reported as damage by the reader.
                    return true;
                };
                rows += 1;
                let record = x.to_json(&policy);
                serde_json::to_string(&record)
                    .map_err(std::io::Error::other)
                    .and_then(|j| writeln!(out, "{j}"))
            } else {
                rows += 1;
                if by_dependency {
                    let _ = write!(out, "{dependency:<28}  ");
                }
                let mut status = if s.status == 0 {
                    "-".to_string()
                } else {
                    s.status.to_string()
                };
                let mut method = if s.method.is_empty() {
                    "-"
                } else {
                    s.method.as_str()
                };
                // A gRPC call: its method column says so, its status is grpc-status.
                if let Some(call) = x.as_ref().and_then(|x| {
                    rf_tap_engine::grpc::call(x.request.as_ref(), x.response.as_ref())
                }) {
                    method = "gRPC";
                    if let Some(name) = call.status_name {
                        status = name.to_string();
                    }
                }
                let path = if s.path.chars().count() > 48 {
                    format!("{}…", s.path.chars().take(47).collect::<String>())
                } else {
                    s.path.clone()
                };
                writeln!(
                    out,
                    "{:>6}  {:<23}  {:<7} {:<48} {:>6} {:>8.1}ms {:>10}",
                    s.id,
                    format_utc(Duration::from_nanos(s.ts_ns), ' ', 3),
                    method,
                    path,
                    status,
                    s.duration_us as f64 / 1000.0,
                    human_size(s.response_body_len)
                )
            };
            if let Err(e) = res {
                write_err = Some(e);
                return false;
            }
            true
        },
    )?;
    if let Some(e) = write_err {
        if e.kind() != std::io::ErrorKind::BrokenPipe {
            return Err(e.into());
        }
        return Ok(std::process::ExitCode::SUCCESS);
    }
    let _ = out.flush();
    if !args.json {
        eprintln!("{rows} exchange{}", if rows == 1 { "" } else { "s" });
    }
    if args.outbound && undirected > 0 {
        eprintln!(
            "rf-tap: warning: {undirected} exchanges have no recorded direction (a classic pcap \
             or a VXLAN-decapsulated copy) and are left out of --outbound; capture with \
             `attach --rfcap` or `--pcapng` to keep directions"
        );
    }
    if damaged {
        // Everything readable was shown; the status says the input was damaged.
        return Ok(std::process::ExitCode::FAILURE);
    }
    Ok(std::process::ExitCode::SUCCESS)
}

fn human_size(n: u64) -> String {
    match n {
        0..1024 => format!("{n} B"),
        1024..1_048_576 => format!("{:.1} KiB", n as f64 / 1024.0),
        _ => format!("{:.1} MiB", n as f64 / 1_048_576.0),
    }
}

fn body_text(data: &[u8], len: u64) -> String {
    if data.is_empty() {
        return if len > 0 {
            format!("({len} bytes, not kept)")
        } else {
            String::new()
        };
    }
    match std::str::from_utf8(data) {
        Ok(t) if t.chars().all(|c| !c.is_control() || c.is_whitespace()) => {
            let mut s = t.to_string();
            if (data.len() as u64) < len {
                s.push_str(&format!("\n… ({} of {len} bytes kept)", data.len()));
            }
            s
        }
        _ => format!("({len} bytes, binary)"),
    }
}

fn show(id: u64, file: &Path, policy: &Redaction) -> anyhow::Result<std::process::ExitCode> {
    let src = Source::open(file)?;
    let mut found: Option<Exchange> = None;
    src.each(&|s| s.id == id, &mut |s, x| {
        if s.id == id {
            found = x;
            return false;
        }
        true
    })?;
    let Some(x) = found else {
        bail!(
            "no exchange {id} in {} (ids are the first column of `rf-tap requests`)",
            file.display()
        );
    };
    // Credentials masked in headers, the query string and bodies (unless --no-redact).
    let x = policy.exchange(&x).into_owned();
    let header = |name: &str, value: &[u8]| -> String {
        format!("{name}: {}", String::from_utf8_lossy(value))
    };
    let mut o = String::new();
    let flags = x.flags.names();
    o.push_str(&format!(
        "exchange {}  conn {}  {} → {}  {} UTC{}{}\n\n",
        x.id,
        x.conn,
        x.client,
        x.server,
        format_utc(x.start().ts, ' ', 6),
        x.latency_ms()
            .map(|l| format!("  latency {l:.3} ms"))
            .unwrap_or_default(),
        if flags.is_empty() {
            String::new()
        } else {
            format!("  flags: {}", flags.join(","))
        }
    ));
    match &x.request {
        Some(q) => {
            o.push_str(&format!("> {} {} HTTP/{}\n", q.method, q.target, q.version));
            for (n, v) in &q.headers {
                o.push_str(&format!("> {}\n", header(n, v)));
            }
            o.push_str(">\n");
            let b = body_text(&q.body.data, q.body.len);
            if !b.is_empty() {
                o.push_str(&b);
                o.push('\n');
            }
        }
        None => o.push_str("> (no request captured)\n"),
    }
    o.push('\n');
    match &x.response {
        Some(r) => {
            for code in &r.interim {
                o.push_str(&format!("< HTTP/{} {code} (interim)\n", r.version));
            }
            o.push_str(&format!("< HTTP/{} {} {}\n", r.version, r.status, r.reason));
            for (n, v) in &r.headers {
                o.push_str(&format!("< {}\n", header(n, v)));
            }
            o.push_str("<\n");
            let b = body_text(&r.body.data, r.body.len);
            if !b.is_empty() {
                o.push_str(&b);
                o.push('\n');
            }
        }
        None => o.push_str("< (no response)\n"),
    }
    if let Some(call) = rf_tap_engine::grpc::call(x.request.as_ref(), x.response.as_ref()) {
        o.push_str(&format!(
            "\ngRPC {}/{}: {}{}\n",
            call.service,
            call.method,
            match (call.status, call.status_name) {
                (Some(c), Some(n)) => format!("{n} ({c})"),
                _ => "no grpc-status (the call did not end in the capture)".into(),
            },
            call.message.map(|m| format!(": {m}")).unwrap_or_default()
        ));
        // The messages below say what the binary bodies above hold.
        for (side, h, b) in [
            ("request", x.request.as_ref().map(|q| (&q.headers, &q.body))),
            (
                "response",
                x.response.as_ref().map(|r| (&r.headers, &r.body)),
            ),
        ]
        .into_iter()
        .filter_map(|(side, hb)| hb.map(|(h, b)| (side, h, b)))
        {
            for (i, m) in rf_tap_engine::grpc::body_text(h, &b.data)
                .iter()
                .enumerate()
            {
                o.push_str(&format!("  {side} message {}: {m}\n", i + 1));
            }
        }
    }
    if !x.anomalies.is_empty() {
        o.push_str("\nanomalies:\n");
        for a in &x.anomalies {
            o.push_str(&format!("  {a}: {}\n", a.describe()));
        }
    }
    std::io::stdout().write_all(o.as_bytes()).or_else(|e| {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            Ok(())
        } else {
            Err(e)
        }
    })?;
    Ok(std::process::ExitCode::SUCCESS)
}
