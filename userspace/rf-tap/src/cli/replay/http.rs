//! `rf-tap replay FILE --target URL`: the captured HTTP requests sent to a new version of
//! the service, its responses compared with production's, a RESULTS block, saved diffs,
//! `--json`, `--junit` and `--fail-if` gates for CI.

use std::{
    fs::File,
    io::{BufWriter, IsTerminal, Write as _},
    path::{Path, PathBuf},
    process::ExitCode,
    sync::{atomic::Ordering, Arc},
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _};
use clap::Args;
use rf_tap_engine::{
    compare::{CompareOptions, JsonPath},
    replay::http::{
        gate::{Gate, GateResult},
        plan::{RequestPattern, Selection, SkipReason},
        record::{ResultRecord, RunRecord},
        report::{FailKind, Latency, Summary, Tally},
        transform::{parse_header, UrlRewrite},
    },
};
use serde_json::{json, Value};

use super::{
    results::{open_results, stamp},
    ReplayArgs,
};
use crate::{
    cli::{requests::Source, units::parse_duration},
    replay::http::{
        client::{Connector, Target},
        runner::{self, Collect, Progress, RunConfig, Shared},
    },
    report::summary::StatusLine,
};

#[derive(Debug, Args)]
#[command(next_help_heading = "HTTP replay (--target)")]
pub struct HttpArgs {
    /// Send the captured HTTP requests to this URL (http://, https://, or h2c:// for HTTP/2 in
    /// the clear with prior knowledge, as gRPC services speak it; a path is prepended to every
    /// request) and compare the responses with production's
    #[arg(long, value_name = "URL")]
    pub target: Option<String>,

    /// Most replay connections open at once (requests of one captured connection go in
    /// order on one connection)
    #[arg(long, value_name = "N", default_value_t = 100, requires = "target",
          value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub concurrency: u32,

    /// Longest wait for a whole response, connecting included
    #[arg(long, value_name = "DURATION", default_value = "5s", value_parser = parse_duration,
          requires = "target")]
    pub timeout: Duration,

    /// Send this Host header (default: the target's host[:port])
    #[arg(
        long,
        value_name = "HOST",
        requires = "target",
        conflicts_with = "keep_host"
    )]
    pub host: Option<String>,

    /// Keep the captured Host header
    #[arg(long, requires = "target")]
    pub keep_host: bool,

    /// Set a header on every request, 'Name: value' ({{now}}, {{now_epoch}}, {{now_epoch_ms}},
    /// {{uuid}} are expanded); repeatable
    #[arg(short = 'H', long = "header", value_name = "'NAME: VALUE'", value_parser = parse_header,
          requires = "target")]
    pub headers: Vec<(String, String)>,

    /// Remove a header from every request sent (repeatable; also --strip-header: tokens
    /// and personal data a staging target must not get)
    #[arg(
        long,
        value_name = "NAME",
        requires = "target",
        visible_alias = "strip-header"
    )]
    pub remove_header: Vec<String>,

    /// Replace this JSON body field's value with **** in what is sent ('$.user.ssn',
    /// '$..email'); repeatable
    #[arg(long, value_name = "JSONPATH", requires = "target")]
    pub scrub_field: Vec<JsonPath>,

    /// Rewrite request targets, REGEX:REPLACEMENT ('^/v1/(.*):/v2/$1'); repeatable
    #[arg(long, value_name = "REGEX:REPLACEMENT", requires = "target")]
    pub rewrite_url: Vec<UrlRewrite>,

    /// Replay only requests matching '[METHOD] PATH-GLOB' ('/api/*', 'GET /users/*'); repeatable
    #[arg(long, value_name = "PATTERN", requires = "target")]
    pub include: Vec<RequestPattern>,

    /// Leave out requests matching '[METHOD] PATH-GLOB' ('GET /health*'); repeatable
    #[arg(long, value_name = "PATTERN", requires = "target")]
    pub exclude: Vec<RequestPattern>,

    /// Also replay POST, PUT, PATCH and DELETE (they change state on the target)
    #[arg(long, requires = "target")]
    pub allow_writes: bool,

    /// Leave this JSON path out of the comparison ('$.created_at', '$.items[*].id',
    /// '$..updated_at'); repeatable
    #[arg(long, value_name = "JSONPATH", requires = "target")]
    pub ignore: Vec<JsonPath>,

    /// Mask text matching this regex on both sides before comparing; repeatable
    #[arg(long, value_name = "REGEX", requires = "target")]
    pub mask: Vec<regex::Regex>,

    /// Leave this header out of the comparison (volatile ones such as Date are already out)
    #[arg(long, value_name = "NAME", requires = "target")]
    pub ignore_header: Vec<String>,

    /// Send each request N times and ignore the fields whose values differ between the
    /// target's own answers (ids, timestamps)
    #[arg(long, value_name = "N", default_value_t = 1, requires = "target",
          value_parser = clap::value_parser!(u32).range(1..=10))]
    pub noise_runs: u32,

    /// Write a JUnit XML report (one test case per endpoint)
    #[arg(long, value_name = "FILE", requires = "http_mode")]
    pub junit: Option<PathBuf>,

    /// Exit 1 when this holds: 'success_rate<99.5%', 'p95_latency_delta>10%', 'diff_rate>1%'
    /// (see `Gates` below); repeatable
    #[arg(long, value_name = "CONDITION", requires = "http_mode")]
    pub fail_if: Vec<Gate>,

    /// Move the timestamps in each request (ISO-8601 and epoch values in headers, query and
    /// JSON bodies) by the capture's age, so that a captured `from=yesterday` still means
    /// yesterday; JWTs in Authorization are re-signed with --jwt-key, counted as expired
    /// otherwise
    #[arg(long, requires = "http_mode")]
    pub shift_time: bool,

    /// Key to sign JWTs again under --shift-time: a PEM PKCS#8 RSA key (RS256) or a
    /// secret (HS256)
    #[arg(long, value_name = "FILE", requires = "shift_time")]
    pub jwt_key: Option<PathBuf>,

    /// Serve a dependency from captured traffic during the replay:
    /// DEPENDENCY=FILE@ADDR:PORT (its outbound exchanges to that Host or address); the
    /// replay then sends only inbound exchanges; repeatable
    #[arg(long, value_name = "DEP=FILE@ADDR", requires = "target")]
    pub mock: Vec<super::plan::MockSpec>,

    /// Trust the certificates in this PEM file too (HTTPS targets)
    #[arg(long, value_name = "FILE", requires = "target")]
    pub ca_file: Option<PathBuf>,

    /// Accept any TLS certificate (a staging host with a self-signed one)
    #[arg(long, requires = "target")]
    pub insecure: bool,

    /// Do not save the results next to the capture
    #[arg(long, requires = "http_mode")]
    pub no_save: bool,

    /// For the saved results and `replay diff` (what is sent to the target is not changed)
    #[command(flatten)]
    pub redact: crate::cli::redaction::RedactArgs,
}

struct Saver {
    out: Option<BufWriter<File>>,
    path: Option<PathBuf>,
    error: Option<String>,
    diffs: u64,
    progress: Option<ProgressBar>,
}

impl Saver {
    fn write(&mut self, v: &ResultRecord) {
        if let Some(out) = &mut self.out {
            let r = serde_json::to_writer(&mut *out, v)
                .map_err(std::io::Error::from)
                .and_then(|_| out.write_all(b"\n"));
            if let Err(e) = r {
                self.error = Some(e.to_string());
                self.out = None;
            }
        }
    }
}

impl Collect for Saver {
    fn done(&mut self, tally: &Tally, record: Option<ResultRecord>) {
        if let Some(mut r) = record {
            if let ResultRecord::Diff(d) = &mut r {
                self.diffs += 1;
                d.n = self.diffs;
            }
            self.write(&r);
        }
        if let Some(p) = &mut self.progress {
            p.tick(tally);
        }
    }
}

/// The progress bar (standard error, on a terminal only; wiped when dropped).
struct ProgressBar {
    started: Instant,
    line: StatusLine,
    span: Option<(Duration, Duration)>,
    live: Arc<Progress>,
    /// `--limit N` and `--duration D`: the run ends at whichever comes first.
    limit: Option<u64>,
    duration: Option<Duration>,
}

impl ProgressBar {
    fn tick(&mut self, t: &Tally) {
        if !self.line.due() {
            return;
        }
        let el = self.started.elapsed().as_secs_f64();
        let through_capture = self.span.and_then(|(a, b)| {
            let at = Duration::from_nanos(self.live.capture_ns.load(Ordering::Relaxed));
            (b > a).then(|| {
                ((at.saturating_sub(a)).as_secs_f64() / (b - a).as_secs_f64()).clamp(0.0, 1.0)
            })
        });
        let fraction = progress(through_capture, t.sent, self.limit, el, self.duration);
        let width = 24;
        let (bar, eta) = match fraction {
            Some(f) if f > 0.0 => {
                let full = (f * width as f64) as usize;
                let left = el * (1.0 - f) / f;
                (
                    format!(
                        "[{}{}] {:>3.0}%",
                        "#".repeat(full),
                        "-".repeat(width - full),
                        f * 100.0
                    ),
                    format!(" ETA {}", clock_text(left)),
                )
            }
            _ => (format!("[{}]", "-".repeat(width)), String::new()),
        };
        self.line.draw(&format!(
            "{bar} {} sent, {} ok, {} failed, {} diffs, {:.0} req/s{eta}",
            t.sent,
            t.succeeded,
            t.failed,
            t.diffs,
            t.sent as f64 / el.max(1e-3)
        ));
    }
}

/// How far a run is: it ends at the first of the capture's end (`through_capture`),
/// `--limit` requests and `--duration`, so the furthest along of the three.
fn progress(
    through_capture: Option<f64>,
    sent: u64,
    limit: Option<u64>,
    elapsed_s: f64,
    duration: Option<Duration>,
) -> Option<f64> {
    let through_limit = limit
        .filter(|n| *n > 0)
        .map(|n| (sent as f64 / n as f64).clamp(0.0, 1.0));
    let through_time = duration
        .filter(|d| !d.is_zero())
        .map(|d| (elapsed_s / d.as_secs_f64()).clamp(0.0, 1.0));
    [through_capture, through_limit, through_time]
        .into_iter()
        .flatten()
        .reduce(f64::max)
}

fn clock_text(secs: f64) -> String {
    let s = secs.max(0.0).round() as u64;
    format!("{}:{:02}:{:02}", s / 3600, s / 60 % 60, s % 60)
}

fn rate(v: Option<f64>) -> String {
    v.map_or("-".into(), |v| format!("{v:.2}%"))
}

fn ms(v: f64) -> String {
    if v >= 100.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.1}")
    }
}

fn print_results(
    s: &Summary,
    capture: &Path,
    saved: Option<&Path>,
    gates: &[(GateResult, &'static str)],
    speed: &str,
    concurrency: u32,
) {
    let mut o = String::new();
    let w = &mut o;
    use std::fmt::Write as _;
    let _ = writeln!(
        w,
        "RESULTS  {}  ({}, {speed}, concurrency {concurrency})",
        s.target,
        capture.display()
    );
    let _ = writeln!(
        w,
        "  Requests    {:>9}  sent in {:.1} s ({:.1} req/s){}",
        s.requests,
        s.elapsed_s,
        s.requests_per_s,
        s.stopped
            .as_ref()
            .map_or(String::new(), |x| format!("; stopped: {x}"))
    );
    let _ = writeln!(
        w,
        "  Succeeded   {:>9}  ({}; production {})",
        s.succeeded,
        rate(s.success_rate),
        rate(s.production_success_rate)
    );
    let errors: Vec<String> = FailKind::all()
        .iter()
        .filter_map(|k| s.errors.get(k.key()).map(|n| format!("{} {n}", k.words())))
        .collect();
    let _ = writeln!(
        w,
        "  Failed      {:>9}  ({}){}",
        s.failed,
        rate(s.success_rate.map(|r| 100.0 - r)),
        if errors.is_empty() {
            String::new()
        } else {
            format!(": {}", errors.join(", "))
        }
    );
    let _ = writeln!(w, "  Skipped     {:>9}", s.skipped);
    for why in SkipReason::ALL {
        if let Some(n) = s.skipped_by_reason.get(why.key()) {
            let _ = writeln!(w, "    {n:>9}  {}", why.words());
        }
    }
    let _ = writeln!(w, "  Latency (ms)        avg      p50      p95      p99");
    for (name, l) in [
        ("target", s.latency_ms.target),
        ("production", s.latency_ms.production),
    ] {
        match l {
            Some(Latency {
                avg, p50, p95, p99, ..
            }) => {
                let _ = writeln!(
                    w,
                    "    {name:<12} {:>8} {:>8} {:>8} {:>8}",
                    ms(avg),
                    ms(p50),
                    ms(p95),
                    ms(p99)
                );
            }
            None => {
                let _ = writeln!(w, "    {name:<12} {:>8}", "-");
            }
        }
    }
    if let Some(b) = s.behind_schedule_ms {
        let _ = writeln!(
            w,
            "  Behind schedule     p50 {} ms, p99 {} ms, max {} ms",
            ms(b.p50),
            ms(b.p99),
            ms(b.max)
        );
    }
    let _ = writeln!(
        w,
        "  Compared    {:>9}  with production's response{}",
        s.compared,
        if s.partial > 0 {
            format!(
                " ({} on the captured part only: production's capture has gaps or was cut)",
                s.partial
            )
        } else {
            String::new()
        }
    );
    let worst: Vec<_> = {
        let mut v: Vec<_> = s
            .endpoints
            .iter()
            .filter(|e| e.tally.failed + e.tally.diffs > 0)
            .collect();
        v.sort_by_key(|e| std::cmp::Reverse(e.tally.failed + e.tally.diffs));
        v.into_iter().take(10).collect()
    };
    if !worst.is_empty() {
        let _ = writeln!(
            w,
            "\n  Endpoint                                  requests  failed   diffs"
        );
        for e in worst {
            let _ = writeln!(
                w,
                "  {:<40} {:>9} {:>7} {:>7}",
                e.endpoint.chars().take(40).collect::<String>(),
                e.tally.requests,
                e.tally.failed,
                e.tally.diffs
            );
        }
    }
    let _ = writeln!(w);
    if s.diffs > 0 {
        let _ = writeln!(
            w,
            "Response diff: {} responses differed from production ({})",
            s.diffs,
            rate(s.diff_rate)
        );
        if saved.is_some() {
            let _ = writeln!(w, "View diffs: rf-tap replay diff {}", capture.display());
        }
    } else if s.compared > 0 {
        let _ = writeln!(w, "Response diff: no response differed from production");
    }
    if let Some(p) = saved {
        let _ = writeln!(w, "Results saved: {}", p.display());
    }
    if !gates.is_empty() {
        let _ = writeln!(w, "\nGates:");
        for (g, unit) in gates {
            let value = match (g.value, &g.why) {
                (Some(v), _) => format!("{v:.2}{unit}"),
                (None, Some(why)) => why.clone(),
                _ => "-".into(),
            };
            let _ = writeln!(
                w,
                "  {}  {:<28} ({value})",
                if g.failed { "FAIL" } else { "ok  " },
                g.gate
            );
        }
    }
    print!("{o}");
}

/// This host's name (JUnit `hostname`).
fn hostname() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: gethostname writes at most the given length into the buffer.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if rc != 0 {
        return "localhost".into();
    }
    let end = buf.iter().position(|c| *c == 0).unwrap_or(buf.len());
    String::from_utf8_lossy(&buf[..end]).into_owned()
}

/// `replay --plan FILE`: the plan's settings into an HTTP replay, mocks started, the
/// service waited for.
pub fn run_plan(mut args: ReplayArgs) -> anyhow::Result<ExitCode> {
    let Some(path) = args.plan.clone() else {
        bail!("--plan FILE");
    };
    let file = super::plan::read(&path)?;
    let base = path.parent().map(Path::to_path_buf).unwrap_or_default();
    let at = |p: &Path| {
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            base.join(p)
        }
    };
    let traffic: Vec<PathBuf> = file.replay.traffic.iter().map(|p| at(p)).collect();
    let Some(first) = traffic.first() else {
        bail!("{}: replay.traffic names no file", path.display());
    };
    for t in &traffic {
        if !t.exists() {
            bail!(
                "{}: replay.traffic {}: no such file",
                path.display(),
                t.display()
            );
        }
    }
    args.input = Some(first.clone());
    args.http.target = Some(file.replay.target.clone());
    if let Some(s) = &file.replay.speed {
        args.speed = Some(super::parse_speed(s).map_err(|e| anyhow::anyhow!("replay.speed: {e}"))?);
    }
    if let Some(c) = file.replay.concurrency {
        args.http.concurrency = c.max(1);
    }
    let gates = file
        .quality_gates
        .iter()
        .map(|(k, v)| super::plan::PlanGate::parse(k, v))
        .collect::<anyhow::Result<Vec<_>>>()
        .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    let specs: Vec<super::plan::MockSpec> = file
        .mocks
        .iter()
        .flat_map(|m| {
            m.traffic.iter().map(|t| super::plan::MockSpec {
                dependency: m.dependency.clone(),
                traffic: at(t),
                listen: m.listen,
            })
        })
        .collect();
    // Misses are kept as stubs beside the results (unless nothing is saved).
    let misses = (!args.http.no_save).then(|| super::results::results_dir(first));
    let mocks = super::plan::start_mocks(&specs, misses.as_deref())?;
    if let Some(r) = &file.ready {
        // On failure the mocks are dropped, which stops them.
        super::plan::wait_ready(&r.url, super::plan::ready_timeout(r)?)?;
    }
    run_with(
        args,
        Some(super::plan::Plan {
            traffic,
            mocks,
            gates,
        }),
    )
}

pub fn run(args: ReplayArgs) -> anyhow::Result<ExitCode> {
    let plan = if args.http.mock.is_empty() {
        None
    } else {
        Some(super::plan::Plan {
            traffic: args.input.iter().cloned().collect(),
            mocks: super::plan::start_mocks(
                &args.http.mock,
                args.input
                    .as_deref()
                    .filter(|_| !args.http.no_save)
                    .map(super::results::results_dir)
                    .as_deref(),
            )?,
            gates: Vec::new(),
        })
    };
    run_with(args, plan)
}

/// Visits the exchanges of several files in time order (one reader thread per file, a
/// merge of their heads), leaving out the outbound ones (the mocks answer those); returns
/// whether any file was damaged.
fn visit_merged(
    files: &[PathBuf],
    visit: &mut dyn FnMut(rf_tap_engine::http::exchange::Exchange) -> bool,
    outbound_left: &mut u64,
) -> anyhow::Result<bool> {
    use std::sync::mpsc::sync_channel;
    let mut heads = Vec::new();
    let mut readers = Vec::new();
    for f in files {
        let (tx, rx) = sync_channel::<rf_tap_engine::http::exchange::Exchange>(256);
        let f = f.clone();
        readers.push(std::thread::spawn(move || -> anyhow::Result<bool> {
            let src = Source::open(&f)?;
            src.each(&|_| true, &mut |_, x| match x {
                Some(x) => tx.send(x).is_ok(),
                None => true,
            })
        }));
        heads.push((rx, None));
    }
    let mut stopped = false;
    loop {
        for (rx, head) in heads.iter_mut() {
            if head.is_none() {
                *head = rx.recv().ok();
            }
        }
        let next = heads
            .iter()
            .enumerate()
            .filter_map(|(i, (_, h))| h.as_ref().map(|x| (i, x.start().ts)))
            .min_by_key(|(_, ts)| *ts)
            .map(|(i, _)| i);
        let Some(i) = next else { break };
        let Some(x) = heads[i].1.take() else { break };
        if rf_tap_engine::mock::is_outbound(&x) {
            *outbound_left += 1;
            continue;
        }
        if !visit(x) {
            stopped = true;
            break;
        }
    }
    // Readers blocked on a full channel end when their receiver goes.
    drop(heads);
    let mut damaged = false;
    for r in readers {
        match r.join() {
            Ok(Ok(d)) => damaged |= d,
            Ok(Err(e)) if !stopped => return Err(e),
            _ => {}
        }
    }
    Ok(damaged)
}

fn run_with(args: ReplayArgs, mut plan: Option<super::plan::Plan>) -> anyhow::Result<ExitCode> {
    let run_started = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let h = &args.http;
    let Some(url) = &h.target else {
        bail!("--target URL is required for an HTTP replay");
    };
    let Some(capture) = args.input.as_deref() else {
        bail!("give the capture to replay");
    };
    let source = Source::open(capture)?;
    if args.strict {
        crate::cli::mapped::refuse_damaged(capture, &source.map)?;
    }
    let target = Arc::new(Target::parse(url)?);
    let connector = Connector::new(Arc::clone(&target), h.ca_file.as_deref(), h.insecure)?;
    let mut transform = crate::replay::http::client::Sending {
        host: h.host.as_deref(),
        keep_host: h.keep_host,
        set: &h.headers,
        remove: &h.remove_header,
        scrub_fields: &h.scrub_field,
    }
    .transform(&target);
    transform.rewrite_url = h.rewrite_url.clone();
    if h.shift_time {
        let files: Vec<PathBuf> = match &plan {
            Some(p) => p.traffic.clone(),
            None => vec![capture.to_path_buf()],
        };
        let mut start: Option<Duration> = None;
        for f in &files {
            if let Some((a, _)) = Source::open(f)?.span() {
                start = Some(start.map_or(a, |s| s.min(a)));
            }
        }
        let now = run_started.as_secs() as i64;
        let by = start.map_or(0, |s| now - s.as_secs() as i64);
        let key = match &h.jwt_key {
            Some(path) => {
                let bytes = std::fs::read(path)
                    .with_context(|| format!("cannot read --jwt-key {}", path.display()))?;
                Some(
                    rf_tap_engine::replay::http::timeshift::JwtKey::from_file_bytes(&bytes)
                        .map_err(|e| anyhow::anyhow!("--jwt-key {}: {e}", path.display()))?,
                )
            }
            None => None,
        };
        transform.shift = Some(Arc::new(
            rf_tap_engine::replay::http::timeshift::TimeShift::new(by, now, key),
        ));
    }
    let shift = transform.shift.clone();

    let stop = crate::cli::stop_on_signals()?;

    let (out, saved) = if h.no_save {
        (None, None)
    } else {
        match open_results(capture) {
            Ok((o, p)) => (Some(o), Some(p)),
            Err(e) => {
                eprintln!(
                    "rf-tap: warning: {e:#}; results are not saved (--no-save silences this)"
                );
                (None, None)
            }
        }
    };
    let live = Arc::new(Progress::default());
    let progress = (std::io::stderr().is_terminal() && !args.quiet).then(|| ProgressBar {
        started: Instant::now(),
        line: StatusLine::every(true, Duration::from_millis(200)),
        span: source.span(),
        live: Arc::clone(&live),
        limit: args.limit,
        duration: args.duration,
    });
    let mut saver = Saver {
        out,
        path: saved.clone(),
        error: None,
        diffs: 0,
        progress,
    };
    let label = target.label();
    let speed = if args.topspeed {
        None
    } else {
        Some(args.speed.unwrap_or(1.0))
    };
    let speed_text = speed.map_or("topspeed".to_string(), |s| format!("{s}x"));
    saver.write(&ResultRecord::Run(RunRecord {
        capture: capture.display().to_string(),
        target: url.to_string(),
        label: label.to_string(),
        started: stamp(),
        speed: speed_text.clone(),
        concurrency: h.concurrency as usize,
        noise_runs: h.noise_runs as usize,
    }));
    let cfg = RunConfig {
        selection: Selection {
            include: h.include.clone(),
            exclude: h.exclude.clone(),
            allow_writes: h.allow_writes,
        },
        speed,
        concurrency: h.concurrency as usize,
        limit: args.limit,
        duration: args.duration,
        workers: std::thread::available_parallelism()
            .map_or(2, |n| n.get())
            .min(8),
    };
    let shared = Shared {
        connector,
        transform,
        compare: CompareOptions {
            ignore: h.ignore.clone(),
            masks: h.mask.clone(),
            ignore_headers: h
                .ignore_header
                .iter()
                .map(|n| n.to_ascii_lowercase())
                .collect(),
            all_headers: false,
            max_reported: 50,
        },
        timeout: h.timeout,
        noise_runs: h.noise_runs,
        label,
        redaction: h.redact.policy(),
    };
    let mut outbound_left = 0u64;
    let plan_files: Option<Vec<PathBuf>> = plan.as_ref().map(|p| p.traffic.clone());
    let end = runner::run(
        &cfg,
        shared,
        &mut |visit| {
            match &plan_files {
                Some(files) => visit_merged(files, visit, &mut outbound_left),
                None => source.each(&|_| true, &mut |_, x| match x {
                    Some(x) => visit(x),
                    None => true,
                }),
            }
            .and_then(|damaged| {
                if damaged {
                    // Everything readable was visited; the damage was reported above.
                    anyhow::bail!("damaged (the readable exchanges were replayed)")
                }
                Ok(())
            })
        },
        saver,
        Arc::clone(&stop),
        live,
    )?;
    let mut saver = end.collect;
    // Dropping the bar wipes its line before the results are printed.
    saver.progress = None;
    let stopped = end.stopped.clone().or(end
        .read_error
        .clone()
        .map(|e| format!("the capture is unreadable past a point: {e}")));
    let summary = Summary::new(url, &end.tally, end.elapsed, stopped);
    // The mocks stop once the replay is over; what they served goes into the report.
    let mut served: Vec<(String, crate::cli::mock::Served)> = Vec::new();
    let mut plan_gates: Vec<(super::plan::PlanGate, bool, Result<f64, &'static str>)> = Vec::new();
    if let Some(p) = plan.as_mut() {
        for m in p.mocks.drain(..) {
            let name = m.dependency.clone();
            served.push((name, m.stop()));
        }
        for g in &p.gates {
            let (ok, v) = g.check(&summary, &served);
            plan_gates.push((g.clone(), ok, v));
        }
    }
    let gates: Vec<(GateResult, &'static str)> = h
        .fail_if
        .iter()
        .map(|g| (g.check(&summary), g.unit()))
        .collect();
    let mut record = match serde_json::to_value(&summary)? {
        Value::Object(m) => m,
        _ => serde_json::Map::new(),
    };
    record.insert(
        "gates".into(),
        serde_json::to_value(gates.iter().map(|(g, _)| g).collect::<Vec<_>>())?,
    );
    if let Some(s) = &shift {
        let (moved, resigned, expired) = s.totals();
        record.insert(
            "shift_time".into(),
            json!({"by_s": s.by, "timestamps": moved, "jwts_resigned": resigned,
                   "jwts_expired": expired}),
        );
    }
    if plan.is_some() {
        record.insert(
            "mocks".into(),
            Value::Object(served.iter().map(|(n, m)| (n.clone(), json!(m))).collect()),
        );
        record.insert("outbound_left_to_mocks".into(), json!(outbound_left));
        record.insert(
            "quality_gates".into(),
            Value::Array(
                plan_gates
                    .iter()
                    .map(|(g, ok, v)| {
                        json!({"gate": g.text, "passed": ok,
                               "value": v.as_ref().ok(), "why": v.as_ref().err()})
                    })
                    .collect(),
            ),
        );
    }
    saver.write(&ResultRecord::Summary(record.clone()));
    if let Some(mut out) = saver.out.take() {
        if let Err(e) = out.flush() {
            saver.error = Some(e.to_string());
        }
    }
    if let (Some(e), Some(p)) = (&saver.error, &saver.path) {
        eprintln!(
            "rf-tap: warning: writing {} failed: {e}; the saved results are incomplete",
            p.display()
        );
    }
    if let Some(path) = &h.junit {
        std::fs::write(path, summary.junit(run_started, &hostname()))
            .with_context(|| format!("cannot write the JUnit report {}", path.display()))?;
    }
    if let Some(e) = &end.read_error {
        eprintln!("rf-tap: {}: {e}", capture.display());
    }
    if args.json {
        let mut m = record;
        m.insert(
            "results_file".into(),
            json!(saver.path.as_ref().map(|p| p.display().to_string())),
        );
        println!("{}", Value::Object(m));
    } else {
        print_results(
            &summary,
            capture,
            saver.path.as_deref(),
            &gates,
            &speed_text,
            h.concurrency,
        );
        if let Some(s) = &shift {
            let (moved, resigned, expired) = s.totals();
            println!(
                "\nSHIFT TIME\n  timestamps moved by {:.1} days: {moved}; JWTs re-signed: {resigned}; JWTs expired (no --jwt-key): {expired}",
                s.by as f64 / 86_400.0
            );
        }
        if plan.is_some() {
            print!("{}", super::plan::mock_table(&served));
            if outbound_left > 0 {
                println!(
                    "  {outbound_left} outbound exchanges of the traffic were left to the mocks"
                );
            }
            if !plan_gates.is_empty() {
                println!("\nQUALITY GATES");
                for (g, ok, v) in &plan_gates {
                    println!(
                        "  {:<4} {}{}",
                        if *ok { "pass" } else { "FAIL" },
                        g.text,
                        match v {
                            Ok(v) => format!(" (measured {v:.4})"),
                            Err(w) => format!(" ({w})"),
                        }
                    );
                }
            }
        }
    }
    let failed_plan: Vec<String> = plan_gates
        .iter()
        .filter(|(_, ok, _)| !ok)
        .map(|(g, _, v)| match v {
            Ok(v) => format!("{} (measured {v:.4})", g.text),
            Err(w) => format!("{} ({w})", g.text),
        })
        .collect();
    for g in &failed_plan {
        eprintln!("rf-tap: gate failed: {g}");
    }
    if !failed_plan.is_empty() {
        return Ok(ExitCode::from(1));
    }
    let failed_gates: Vec<&GateResult> =
        gates.iter().map(|(g, _)| g).filter(|g| g.failed).collect();
    if !failed_gates.is_empty() {
        for g in &failed_gates {
            eprintln!(
                "rf-tap: gate failed: {}{}",
                g.gate,
                match (g.value, &g.why) {
                    (Some(v), _) => format!(" (measured {v:.2})"),
                    (None, Some(w)) => format!(" ({w})"),
                    _ => String::new(),
                }
            );
        }
        return Ok(ExitCode::from(1));
    }
    if summary.requests == 0 {
        eprintln!(
            "rf-tap: nothing was replayed: {} exchanges skipped{}",
            summary.skipped,
            if summary
                .skipped_by_reason
                .contains_key(SkipReason::Write.key())
            {
                " (writes need --allow-writes)"
            } else {
                ""
            }
        );
        return Ok(ExitCode::from(1));
    }
    if summary.succeeded
        + summary
            .errors
            .get(FailKind::ServerError.key())
            .copied()
            .unwrap_or(0)
        == 0
    {
        eprintln!(
            "rf-tap: the target answered none of {} requests",
            summary.requests
        );
        return Ok(ExitCode::from(1));
    }
    if end.read_error.is_some() {
        // Everything readable was replayed; the status says the capture was damaged.
        return Ok(ExitCode::from(1));
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progress_follows_the_first_limit_to_end_the_run() {
        // 2,000 of a 2,000 limit sent while a third of the capture's time went by.
        assert_eq!(progress(Some(0.32), 2000, Some(2000), 1.0, None), Some(1.0));
        assert_eq!(progress(Some(0.5), 100, Some(1000), 1.0, None), Some(0.5));
        let d = Some(Duration::from_secs(10));
        assert_eq!(progress(Some(0.1), 5, None, 5.0, d), Some(0.5));
        assert_eq!(progress(None, 5, None, 1.0, None), None);
    }
}
