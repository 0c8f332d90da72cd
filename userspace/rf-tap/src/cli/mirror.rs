//! `rf-tap mirror start|list|stop|stats|diff`: live shadow mirroring.

use std::{
    io::IsTerminal,
    path::PathBuf,
    sync::{atomic::AtomicBool, Arc, Mutex},
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _};
use clap::{Args, Parser, Subcommand};
use rf_tap_engine::{
    compare::{CompareOptions, JsonPath},
    replay::http::{
        plan::{RequestPattern, Selection},
        transform::parse_header,
    },
};

use crate::{
    capture::kernel::KernelCounters,
    cli::{
        attach::{AttachArgs, Extra},
        rules::FilterArgs,
        units::{parse_duration, parse_size},
    },
    replay::http::client::{Connector, Target},
    shadow::{
        judge::{self, JudgeConfig, Totals},
        metrics,
        sender::{self, SenderConfig},
        store::{self, BucketFile, MirrorState},
        SampleBy, ShadowSink, ShadowSinkConfig,
    },
};

/// Text for standard output, written at once; a closed pipe (`| head`) is not an error.
macro_rules! outln {
    ($o:expr) => {{ $o.push('\n'); }};
    ($o:expr, $($t:tt)*) => {{ use std::fmt::Write as _; let _ = writeln!($o, $($t)*); }};
}
macro_rules! out {
    ($o:expr, $($t:tt)*) => {{ use std::fmt::Write as _; let _ = write!($o, $($t)*); }};
}

fn emit(o: &str) -> anyhow::Result<()> {
    use std::io::Write as _;
    let mut stdout = std::io::stdout().lock();
    match stdout.write_all(o.as_bytes()).and_then(|()| stdout.flush()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(e.into()),
        _ => Ok(()),
    }
}

#[derive(Debug, Args)]
pub struct MirrorArgs {
    #[command(subcommand)]
    pub command: MirrorCommand,
}

#[derive(Debug, Subcommand)]
pub enum MirrorCommand {
    /// Start mirroring live requests of an interface to one or more shadow services
    Start(Box<StartArgs>),
    /// The mirrors on this host, with their live counters
    List {
        #[arg(long)]
        json: bool,
    },
    /// Stop a mirror (nothing stays attached)
    Stop { name: String },
    /// Production against each shadow: requests, success, latency, diffs, drops
    Stats {
        name: String,
        /// Only the last DURATION (e.g. 15m, 1h, 7d; default: everything kept)
        #[arg(long, value_parser = parse_duration)]
        last: Option<Duration>,
        #[arg(long)]
        json: bool,
    },
    /// The differences found, as `replay diff` prints them
    Diff {
        name: String,
        /// How many to print
        #[arg(long, default_value_t = 5)]
        show: usize,
        /// Only this endpoint ('GET /api/users/{id}')
        #[arg(long)]
        endpoint: Option<String>,
    },
}

#[derive(Debug, Args)]
#[command(after_help = "\
The kernel copies the interface's packets (the same rules as `attach`); each request is sent
to every shadow as soon as it is complete, on a keep-alive connection per captured
connection, and each shadow's answer is compared with production's own captured response.
Shadow responses go nowhere else: production never waits for them.

Examples:
  sudo rf-tap mirror start api --iface eth0 --port 8080 --to http://staging:8080
  sudo rf-tap mirror start api --iface eth0 --port 8080 --to http://v2:8080 --to http://v3:8080 \\
      --sample-rate 10 --metrics 127.0.0.1:9464 -H 'X-Mirrored-From: production'
  rf-tap mirror stats api --last 1h
  sudo rf-tap mirror stop api

--config FILE takes YAML:
  traffic:
    mirror:
      name: api
      source: eth0            # the interface
      port: 8080              # or rules: [...] as in attach --filter
      target: http://staging:8080     # or a list
      sample_rate: 10         # percent of connections
      timeout: 5s
      compare_responses: true
Command-line flags override the file.")]
pub struct StartArgs {
    /// The mirror's name (letters, digits, - and _)
    pub name: Option<String>,

    /// The interface production traffic passes
    #[arg(long)]
    pub iface: Option<String>,

    /// A shadow's base URL (http://, https://, or h2c:// for HTTP/2 in the clear, as gRPC
    /// services speak it); repeatable, each gets its own queue and stats
    #[arg(long = "to", value_name = "URL")]
    pub to: Vec<String>,

    #[command(flatten)]
    pub filter: FilterArgs,

    /// Share of captured connections mirrored (whole connections), in percent
    #[arg(long, value_name = "PCT")]
    pub sample_rate: Option<f64>,

    /// Sample consistently by a value instead of by connection: header:NAME or query:NAME
    #[arg(long, value_name = "KEY")]
    pub sample_by: Option<SampleBy>,

    /// At most N requests per second to the shadows (the rest are dropped, `rate_limited`)
    #[arg(long, value_name = "N")]
    pub max_rate: Option<f64>,

    /// Longest wait for a shadow's whole response (connecting included); past it, an error
    #[arg(long, value_parser = parse_duration)]
    pub timeout: Option<Duration>,

    /// Do not compare shadow responses with production's
    #[arg(long)]
    pub no_compare: bool,

    /// For the recorded differences (`mirror diff`); what is sent to the shadows is not
    /// changed
    #[command(flatten)]
    pub redact: crate::cli::redaction::RedactArgs,

    /// Also mirror POST, PUT, PATCH and DELETE (they change state on the shadow)
    #[arg(long)]
    pub allow_writes: bool,

    /// Mirror only requests matching '[METHOD] PATH-GLOB'; repeatable
    #[arg(long, value_name = "PATTERN")]
    pub include: Vec<RequestPattern>,

    /// Leave out requests matching '[METHOD] PATH-GLOB'; repeatable
    #[arg(long, value_name = "PATTERN")]
    pub exclude: Vec<RequestPattern>,

    /// Set a header on every mirrored request, 'Name: value'; repeatable
    #[arg(short = 'H', long = "header", value_name = "'NAME: VALUE'", value_parser = parse_header)]
    pub headers: Vec<(String, String)>,

    /// Remove a header from every mirrored request (also --strip-header: tokens and
    /// personal data a shadow must not get); repeatable
    #[arg(long, value_name = "NAME", visible_alias = "strip-header")]
    pub remove_header: Vec<String>,

    /// Replace this JSON body field's value with **** in what is sent to the shadows
    /// ('$.user.ssn', '$..email'); repeatable
    #[arg(long, value_name = "JSONPATH")]
    pub scrub_field: Vec<rf_tap_engine::compare::JsonPath>,

    /// Send this Host header (default: the shadow's host[:port])
    #[arg(long, conflicts_with = "keep_host")]
    pub host: Option<String>,

    /// Keep the captured Host header
    #[arg(long)]
    pub keep_host: bool,

    /// Leave this JSON path out of the comparison; repeatable
    #[arg(long, value_name = "JSONPATH")]
    pub ignore: Vec<JsonPath>,

    /// Leave this header out of the comparison; repeatable
    #[arg(long, value_name = "NAME")]
    pub ignore_header: Vec<String>,

    /// Serve Prometheus metrics on ADDR (`/metrics`), e.g. 127.0.0.1:9464
    #[arg(long, value_name = "ADDR")]
    pub metrics: Option<std::net::SocketAddr>,

    /// Requests queued or in flight per shadow before new ones are dropped (`queue_full`)
    #[arg(long, value_name = "N", default_value_t = 10_000)]
    pub queue: usize,

    /// Largest request body mirrored whole (bigger ones are skipped as `incomplete`)
    #[arg(long, value_name = "SIZE", value_parser = parse_size, default_value = "64M")]
    pub max_body: u64,

    /// Stay in the foreground (systemd, containers) instead of running in the background
    #[arg(long)]
    pub foreground: bool,

    /// (its stats directory is handed to the user first)
    #[command(flatten)]
    pub run_as: crate::cli::attach::RunAs,

    /// Read the mirror's settings from this YAML file (see below)
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
}

#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct ConfigFile {
    traffic: ConfigTraffic,
}

#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct ConfigTraffic {
    mirror: ConfigMirror,
}

#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct ConfigMirror {
    name: Option<String>,
    source: Option<String>,
    port: Option<serde_yaml::Value>,
    target: Option<serde_yaml::Value>,
    sample_rate: Option<f64>,
    timeout: Option<String>,
    compare_responses: Option<bool>,
    allow_writes: Option<bool>,
    metrics: Option<String>,
}

/// The settings in force: the config file, then the flags over it.
fn resolve(mut a: StartArgs) -> anyhow::Result<StartArgs> {
    if let Some(path) = &a.config {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("--config {}: cannot read", path.display()))?;
        let c: ConfigFile =
            serde_yaml::from_str(&text).with_context(|| format!("--config {}", path.display()))?;
        let m = c.traffic.mirror;
        a.name = a.name.or(m.name);
        a.iface = a.iface.or(m.source);
        if a.filter.port.is_none() {
            a.filter.port = m.port.map(|p| match p {
                serde_yaml::Value::Number(n) => n.to_string(),
                serde_yaml::Value::String(s) => s,
                other => format!("{other:?}"),
            });
        }
        if a.to.is_empty() {
            match m.target {
                Some(serde_yaml::Value::String(s)) => a.to.push(s),
                Some(serde_yaml::Value::Sequence(v)) => {
                    for t in v {
                        if let serde_yaml::Value::String(s) = t {
                            a.to.push(s);
                        }
                    }
                }
                Some(_) => bail!("--config: traffic.mirror.target is a URL or a list of URLs"),
                None => {}
            }
        }
        a.sample_rate = a.sample_rate.or(m.sample_rate);
        if a.timeout.is_none() {
            if let Some(t) = m.timeout {
                a.timeout = Some(
                    parse_duration(&t)
                        .map_err(|e| anyhow::anyhow!("--config: traffic.mirror.timeout: {e}"))?,
                );
            }
        }
        if m.compare_responses == Some(false) {
            a.no_compare = true;
        }
        if m.allow_writes == Some(true) {
            a.allow_writes = true;
        }
        if a.metrics.is_none() {
            if let Some(addr) = m.metrics {
                a.metrics = Some(
                    addr.parse()
                        .with_context(|| format!("--config: traffic.mirror.metrics {addr}"))?,
                );
            }
        }
    }
    let Some(name) = &a.name else {
        bail!("which mirror? `rf-tap mirror start NAME --iface IF --to URL`");
    };
    store::check_name(name)?;
    if a.iface.is_none() {
        bail!("--iface IF is needed: the interface production traffic passes");
    }
    if a.to.is_empty() {
        bail!("--to URL is needed: the shadow service to mirror to");
    }
    let rate = a.sample_rate.unwrap_or(100.0);
    if !(rate > 0.0 && rate <= 100.0) {
        bail!("--sample-rate must be a percentage above 0 and at most 100");
    }
    if a.max_rate.is_some_and(|r| r.is_nan() || r <= 0.0) {
        bail!("--max-rate must be above 0 requests per second");
    }
    if a.queue == 0 {
        bail!("--queue must be at least 1");
    }
    Ok(a)
}

pub fn run(args: MirrorArgs) -> anyhow::Result<std::process::ExitCode> {
    match args.command {
        MirrorCommand::Start(a) => start(resolve(*a)?),
        MirrorCommand::List { json } => list(json),
        MirrorCommand::Stop { name } => stop(&name),
        MirrorCommand::Stats { name, last, json } => stats(&name, last, json),
        MirrorCommand::Diff {
            name,
            show,
            endpoint,
        } => diff(&name, show, endpoint.as_deref()),
    }
}

fn source_text(a: &StartArgs) -> String {
    let iface = a.iface.clone().unwrap_or_default();
    match (&a.filter.port, a.filter.rules.len(), &a.filter.filter) {
        (Some(p), 0, None) => format!("{iface} port {p}"),
        (None, 0, None) => format!("{iface} (all TCP)"),
        _ => format!("{iface} (filter rules)"),
    }
}

/// Fails when a mirror of that name runs; clears the state of one that died.
fn check_not_running(name: &str) -> anyhow::Result<()> {
    if let Some(s) = store::read_state(name) {
        if store::alive(s.pid) && s.pid != std::process::id() {
            bail!(
                "mirror {name} is already running (PID {}); stop it with `rf-tap mirror stop {name}`",
                s.pid
            );
        }
        store::remove_state(name);
    }
    Ok(())
}

fn banner(a: &StartArgs, name: &str) -> String {
    let mut s = String::new();
    s.push_str("✓ Traffic mirroring active\n");
    s.push_str(&format!("  Source: {} (production)\n", source_text(a)));
    for t in &a.to {
        s.push_str(&format!("  Shadow: {t}\n"));
    }
    let rate = a.sample_rate.unwrap_or(100.0);
    if rate < 100.0 {
        s.push_str(&format!("  Sample: {rate}% of connections\n"));
    }
    if let Some(m) = a.metrics {
        s.push_str(&format!("  Metrics: http://{m}/metrics\n"));
    }
    s.push_str("  Production traffic is being copied to the shadow in real time.\n");
    s.push_str("  Shadow responses are discarded — no impact on users.\n");
    s.push_str(&format!("  Stop with: rf-tap mirror stop {name}\n"));
    s
}

fn start(a: StartArgs) -> anyhow::Result<std::process::ExitCode> {
    let mut o = String::new();
    let name = a.name.clone().unwrap_or_default();
    check_not_running(&name)?;
    // Every check that can fail is made here, before anything runs in the background.
    let targets =
        a.to.iter()
            .map(|t| Target::parse_flag("--to", t))
            .collect::<anyhow::Result<Vec<_>>>()?;
    let iface = a.iface.clone().unwrap_or_default();
    crate::capture::interface_facts(&iface)?;
    crate::capture::check_privileges()?;
    a.filter.rule_set()?;
    if a.foreground {
        return foreground(a, &name, targets);
    }
    use std::os::unix::process::CommandExt;
    let log = store::log_path(&name);
    if let Some(d) = log.parent() {
        std::fs::create_dir_all(d).with_context(|| format!("cannot create {}", d.display()))?;
    }
    let out =
        std::fs::File::create(&log).with_context(|| format!("cannot write {}", log.display()))?;
    let exe = std::env::current_exe().context("cannot find the rf-tap binary")?;
    let mut cmd = std::process::Command::new(exe);
    cmd.args(std::env::args_os().skip(1))
        .arg("--foreground")
        .stdin(std::process::Stdio::null())
        .stdout(out.try_clone()?)
        .stderr(out);
    // SAFETY: setsid is async-signal-safe; it detaches the mirror from the terminal's session.
    unsafe {
        cmd.pre_exec(|| {
            libc::setsid();
            Ok(())
        });
    }
    let mut child = cmd.spawn().context("cannot start the mirror process")?;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(s) = store::read_state(&name) {
            if s.pid == child.id() {
                break;
            }
        }
        if let Some(st) = child.try_wait()? {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            let why = text
                .lines()
                .rev()
                .find(|l| l.starts_with("rf-tap:"))
                .unwrap_or("it exited without a message")
                .trim_start_matches("rf-tap: ")
                .to_string();
            bail!("the mirror did not start ({st}): {why}");
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            bail!(
                "the mirror did not attach within 30 s (see {})",
                log.display()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    out!(o, "{}", banner(&a, &name));
    {
        emit(&o)?;
        Ok(std::process::ExitCode::SUCCESS)
    }
}

#[derive(Parser)]
struct AttachOnly {
    #[command(flatten)]
    attach: AttachArgs,
}

fn foreground(
    a: StartArgs,
    name: &str,
    targets: Vec<Target>,
) -> anyhow::Result<std::process::ExitCode> {
    let timeout = a.timeout.unwrap_or(Duration::from_secs(5));
    let mut connectors = Vec::new();
    let mut transforms = Vec::new();
    for target in targets {
        let target = Arc::new(target);
        transforms.push(
            crate::replay::http::client::Sending {
                host: a.host.as_deref(),
                keep_host: a.keep_host,
                set: &a.headers,
                remove: &a.remove_header,
                scrub_fields: &a.scrub_field,
            }
            .transform(&target),
        );
        connectors.push(Arc::new(Connector::new(target, None, false)?));
    }
    let (judge_tx, judge_rx) = crossbeam::channel::unbounded();
    let totals = Arc::new(Mutex::new(Totals::default()));
    let file = BucketFile::open(name)?;
    let jcfg = JudgeConfig {
        name: name.to_string(),
        destinations: a.to.clone(),
        compare: !a.no_compare,
        options: CompareOptions {
            ignore: a.ignore.clone(),
            ignore_headers: a
                .ignore_header
                .iter()
                .map(|h| h.to_ascii_lowercase())
                .collect(),
            max_reported: 50,
            ..CompareOptions::default()
        },
        pair_timeout: timeout * 2 + Duration::from_secs(30),
        redaction: a.redact.policy(),
    };
    let judge_totals = Arc::clone(&totals);
    let judge_thread = std::thread::spawn(move || judge::run(jcfg, judge_rx, judge_totals, file));
    let (destinations, sender_thread) = sender::start(
        SenderConfig {
            connectors,
            timeout,
            queue: a.queue,
            queue_bytes: (256u64 << 20).max(a.max_body.saturating_mul(2)),
        },
        judge_tx.clone(),
    )?;
    let depths: Vec<_> = destinations.iter().map(|d| Arc::clone(&d.depth)).collect();
    let stop_metrics = Arc::new(AtomicBool::new(false));
    let capture = Arc::new(Mutex::new(KernelCounters::default()));
    let metrics_thread = match a.metrics {
        Some(addr) => {
            let (n, dests, t) = (name.to_string(), a.to.clone(), Arc::clone(&totals));
            let k = Arc::clone(&capture);
            Some(metrics::serve(
                addr,
                move || match (t.lock(), k.lock()) {
                    (Ok(t), Ok(k)) => metrics::render(&n, &dests, &t, &depths, &k),
                    _ => String::new(),
                },
                Arc::clone(&stop_metrics),
            )?)
        }
        None => None,
    };
    let sink = ShadowSink::new(
        ShadowSinkConfig {
            selection: Selection {
                include: a.include.clone(),
                exclude: a.exclude.clone(),
                allow_writes: a.allow_writes,
            },
            transforms,
            sample_rate: a.sample_rate.unwrap_or(100.0),
            sample_by: a.sample_by.clone().unwrap_or(SampleBy::Connection),
            max_rate: a.max_rate,
            compare: !a.no_compare,
        },
        destinations,
        judge_tx,
    );
    let iface = a.iface.clone().unwrap_or_default();
    let mut argv: Vec<String> = vec![
        "attach".into(),
        iface.clone(),
        "-q".into(),
        "--flow-timeout".into(),
        format!("{}s", (timeout.as_secs() + 55).max(60)),
        "-Z".into(),
        a.run_as.user.clone(),
    ];
    for r in &a.filter.rules {
        argv.push("--rule".into());
        argv.push(r.clone());
    }
    if let Some(f) = &a.filter.filter {
        argv.push("--filter".into());
        argv.push(f.display().to_string());
    }
    if let Some(p) = &a.filter.port {
        argv.push("--port".into());
        argv.push(p.clone());
    }
    let attach = AttachOnly::try_parse_from(&argv)
        .map_err(|e| anyhow::anyhow!("{}", e.to_string().lines().next().unwrap_or("")))?
        .attach;
    let state = MirrorState {
        name: name.to_string(),
        pid: std::process::id(),
        started_unix: store::unix_now().as_secs(),
        iface: iface.clone(),
        source: source_text(&a),
        shadows: a.to.clone(),
        sample_rate: a.sample_rate.unwrap_or(100.0),
        metrics: a.metrics.map(|m| m.to_string()),
        log: None,
    };
    let banner_text = banner(&a, name);
    let interactive = std::io::stdout().is_terminal();
    let on_attached = Box::new(move |_: &str| {
        if let Err(e) = store::write_state(&state) {
            eprintln!("rf-tap: {e:#}");
        }
        if interactive {
            let _ = emit(&banner_text);
        }
    });
    // Once attached the mirror runs as `attach.user` (-Z, default nobody): its data
    // directory becomes that user's, so that the stats and diffs go on being written.
    let account = crate::privs::account(&attach.run_as.user)?;
    if account.uid != 0 {
        store::hand_over(name, account.uid, account.gid)?;
    }
    let result = crate::cli::attach::run_with(
        attach,
        Extra {
            sinks: vec![Box::new(sink)],
            keep_body: Some(a.max_body.min(usize::MAX as u64) as usize),
            on_attached: Some(on_attached),
            // A request waits in the ring at most this long before it goes to the shadows.
            max_pause: Some(Duration::from_millis(1)),
            counters: Some(capture),
        },
    );
    // The pipeline is finished and the sink dropped: the sender drains what is in flight,
    // then the judge has every answer.
    let _ = sender_thread.join();
    let _ = judge_thread.join();
    stop_metrics.store(true, std::sync::atomic::Ordering::Relaxed);
    if let Some(t) = metrics_thread {
        let _ = t.join();
    }
    store::mark_stopped(name, std::process::id());
    store::remove_state(name);
    result
}

fn uptime(started: u64) -> String {
    let s = store::unix_now().as_secs().saturating_sub(started);
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m{:02}s", s / 60, s % 60),
        _ => format!("{}h{:02}m", s / 3600, (s % 3600) / 60),
    }
}

fn list(json: bool) -> anyhow::Result<std::process::ExitCode> {
    let mut o = String::new();
    let mut rows = Vec::new();
    for s in store::all_states() {
        let alive = store::alive(s.pid);
        if !alive && store::stopped_cleanly(&s) {
            // It stopped (a signal to a --foreground mirror) but could not remove its
            // state once unprivileged.
            store::remove_state(&s.name);
            continue;
        }
        let b = BucketFile::read_window(&s.name, s.started_unix / 60)?.unwrap_or_default();
        rows.push((s, alive, b));
    }
    if json {
        let v: Vec<serde_json::Value> = rows
            .iter()
            .map(|(s, alive, b)| {
                serde_json::json!({
                    "name": s.name,
                    "status": if *alive { "running" } else { "died" },
                    "pid": s.pid,
                    "iface": s.iface,
                    "source": s.source,
                    "shadows": s.shadows,
                    "sample_rate": s.sample_rate,
                    "uptime_s": store::unix_now().as_secs().saturating_sub(s.started_unix),
                    "metrics": s.metrics,
                    "production_requests": b.production.requests,
                    "mirrored": b.mirrored,
                    "diffs": judge::total(&b.diffs),
                    "skipped": judge::total(&b.skipped),
                    "dropped": judge::total(&b.dropped),
                })
            })
            .collect();
        outln!(o, "{}", serde_json::to_string(&v)?);
        return {
            emit(&o)?;
            Ok(std::process::ExitCode::SUCCESS)
        };
    }
    if rows.is_empty() {
        eprintln!("no mirrors (start one with `rf-tap mirror start NAME --iface IF --to URL`)");
        return {
            emit(&o)?;
            Ok(std::process::ExitCode::SUCCESS)
        };
    }
    outln!(
        o,
        "{:<16} {:<8} {:<24} {:<32} {:>6} {:>8} {:>10} {:>9} {:>7} {:>8}",
        "NAME",
        "STATUS",
        "SOURCE",
        "SHADOW",
        "SAMPLE",
        "UPTIME",
        "REQUESTS",
        "MIRRORED",
        "DIFFS",
        "DROPPED"
    );
    for (s, alive, b) in rows {
        outln!(
            o,
            "{:<16} {:<8} {:<24} {:<32} {:>5}% {:>8} {:>10} {:>9} {:>7} {:>8}",
            s.name,
            if alive { "running" } else { "died" },
            s.source,
            s.shadows.join(", "),
            s.sample_rate,
            if alive {
                uptime(s.started_unix)
            } else {
                "-".into()
            },
            b.production.requests,
            b.mirrored,
            judge::total(&b.diffs),
            judge::total(&b.dropped)
        );
    }
    {
        emit(&o)?;
        Ok(std::process::ExitCode::SUCCESS)
    }
}

fn stop(name: &str) -> anyhow::Result<std::process::ExitCode> {
    store::check_name(name)?;
    let Some(s) = store::read_state(name) else {
        bail!("no mirror {name} is running (see `rf-tap mirror list`)");
    };
    if !store::alive(s.pid) {
        store::remove_state(name);
        eprintln!(
            "rf-tap: mirror {name} had died (PID {}); its state is removed",
            s.pid
        );
        return Ok(std::process::ExitCode::SUCCESS);
    }
    // SAFETY: signalling the PID the mirror recorded for itself, checked to be rf-tap.
    if unsafe { libc::kill(s.pid as i32, libc::SIGTERM) } != 0 {
        bail!(
            "cannot stop mirror {name} (PID {}): {}; run it with sudo",
            s.pid,
            std::io::Error::last_os_error()
        );
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    while store::alive(s.pid) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    if store::alive(s.pid) {
        // SAFETY: as above.
        unsafe { libc::kill(s.pid as i32, libc::SIGKILL) };
    }
    store::remove_state(name);
    eprintln!("rf-tap: mirror {name} stopped");
    Ok(std::process::ExitCode::SUCCESS)
}

fn pct(n: u64, d: u64) -> String {
    if d == 0 {
        "-".into()
    } else {
        format!("{:.2}%", n as f64 * 100.0 / d as f64)
    }
}

fn thousands(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn ms(h: &rf_tap_engine::replay::player::Histogram, q: f64) -> Option<f64> {
    (h.count() > 0).then(|| h.quantile(q) as f64 / 1000.0)
}

fn side_json(s: &store::Side) -> serde_json::Value {
    serde_json::json!({
        "requests": s.requests,
        "succeeded": s.succeeded,
        "errors": s.errors,
        "latency_ms": {
            "p50": ms(&s.latency, 0.50),
            "p95": ms(&s.latency, 0.95),
            "p99": ms(&s.latency, 0.99),
        },
    })
}

fn stats(name: &str, last: Option<Duration>, json: bool) -> anyhow::Result<std::process::ExitCode> {
    let mut o = String::new();
    store::check_name(name)?;
    let now_min = store::unix_now().as_secs() / 60;
    let from = match last {
        Some(d) => now_min.saturating_sub(d.as_secs().div_ceil(60).saturating_sub(1)),
        None => 0,
    };
    let Some(b) = BucketFile::read_window(name, from)? else {
        bail!("no stats for mirror {name}: it never ran on this host (see `rf-tap mirror list`)");
    };
    // Without --last, the window runs from the first minute kept.
    let first = if b.minute == 0 { now_min } else { b.minute };
    let window_s = last.map_or((now_min + 1 - first.min(now_min)) * 60, |d| d.as_secs());
    let shadow_total = b
        .shadows
        .values()
        .fold(store::Side::default(), |mut acc, s| {
            acc.add(s);
            acc
        });
    let diffs = judge::total(&b.diffs);
    let compared = judge::total(&b.compared);
    if json {
        let shadows: serde_json::Map<String, serde_json::Value> = b
            .shadows
            .iter()
            .map(|(k, s)| {
                let mut v = side_json(s);
                v["diffs"] = b.diffs.get(k).copied().unwrap_or(0).into();
                v["compared"] = b.compared.get(k).copied().unwrap_or(0).into();
                (k.clone(), v)
            })
            .collect();
        let v = serde_json::json!({
            "name": name,
            "window_s": window_s,
            "production": side_json(&b.production),
            "shadow": side_json(&shadow_total),
            "shadows": shadows,
            "diffs": diffs,
            "compared": compared,
            "noise_fields": b.noise_fields,
            "noise_diffs": b.noise_diffs,
            "mirrored": b.mirrored,
            "skipped": {
                "write_method": b.skipped.get("write_method").copied().unwrap_or(0),
                "incomplete": b.skipped.get("incomplete").copied().unwrap_or(0),
                "sampled_out": b.skipped.get("sampled_out").copied().unwrap_or(0),
                "excluded": b.skipped.get("excluded").copied().unwrap_or(0),
                "tunnel": b.skipped.get("tunnel").copied().unwrap_or(0),
            },
            "dropped": {
                "queue_full": b.dropped.get("queue_full").copied().unwrap_or(0),
                "rate_limited": b.dropped.get("rate_limited").copied().unwrap_or(0),
                "unpaired": b.dropped.get("unpaired").copied().unwrap_or(0),
            },
            "shadow_failures": b.failures,
            "lag_ms": {
                "p50": ms(&b.lag, 0.50),
                "p99": ms(&b.lag, 0.99),
                "max": (b.lag.count() > 0).then(|| b.lag.max() as f64 / 1000.0),
            },
        });
        outln!(o, "{}", serde_json::to_string(&v)?);
        return {
            emit(&o)?;
            Ok(std::process::ExitCode::SUCCESS)
        };
    }
    let window = match last {
        Some(d) => format!("last {}", human_window(d)),
        None => "everything kept".into(),
    };
    let row = |label: &str, p: String, s: String| format!("{label:<16}{p:<20}{s}\n");
    outln!(o, "TRAFFIC MIRROR STATS {name} ({window})");
    outln!(o, "──────────────────────────────");
    o.push_str(&row("", "Production".into(), "Shadow".into()));
    let (p, s) = (&b.production, &shadow_total);
    o.push_str(&row(
        "Requests:",
        thousands(p.requests),
        thousands(s.requests),
    ));
    o.push_str(&row(
        "Success rate:",
        pct(p.succeeded, p.requests),
        pct(s.succeeded, s.requests),
    ));
    let lat = |h: &rf_tap_engine::replay::player::Histogram, q| {
        ms(h, q).map_or("-".into(), |v| {
            if v < 10.0 {
                format!("{v:.1}ms")
            } else {
                format!("{v:.0}ms")
            }
        })
    };
    o.push_str(&row(
        "P50 latency:",
        lat(&p.latency, 0.5),
        lat(&s.latency, 0.5),
    ));
    o.push_str(&row(
        "P99 latency:",
        lat(&p.latency, 0.99),
        lat(&s.latency, 0.99),
    ));
    o.push_str(&row("Errors:", thousands(p.errors), thousands(s.errors)));
    outln!(
        o,
        "Response diffs: {} ({})    noise fields ignored: {}",
        thousands(diffs),
        pct(diffs, compared),
        b.noise_fields
    );
    let g = |m: &std::collections::BTreeMap<String, u64>, k: &str| m.get(k).copied().unwrap_or(0);
    outln!(
        o,
        "Not mirrored:   {} writes, {} incomplete, {} queue full, {} sampled out",
        g(&b.skipped, "write_method"),
        g(&b.skipped, "incomplete"),
        g(&b.dropped, "queue_full"),
        g(&b.skipped, "sampled_out")
    );
    if b.shadows.len() > 1 {
        for (k, v) in &b.shadows {
            outln!(
                o,
                "  {k}: {} requests, {} errors, {} diffs, p50 {}",
                thousands(v.requests),
                thousands(v.errors),
                thousands(g(&b.diffs, k)),
                lat(&v.latency, 0.5)
            );
        }
    }
    if let (Some(pl), Some(sl)) = (ms(&p.latency, 0.5), ms(&s.latency, 0.5)) {
        let (pe, se) = (
            p.errors as f64 / p.requests.max(1) as f64,
            s.errors as f64 / s.requests.max(1) as f64,
        );
        let speed = if pl > 0.0 {
            (pl - sl) / pl * 100.0
        } else {
            0.0
        };
        let pace = if speed.abs() < 1.0 {
            "as fast as production".to_string()
        } else if speed > 0.0 {
            format!("{speed:.0}% faster")
        } else {
            format!("{:.0}% slower", -speed)
        };
        let errs = if se < pe {
            "with fewer errors"
        } else if se > pe {
            "with more errors"
        } else {
            "with as many errors"
        };
        outln!(o, "\nShadow is performing {pace} {errs}.");
    }
    {
        emit(&o)?;
        Ok(std::process::ExitCode::SUCCESS)
    }
}

fn human_window(d: Duration) -> String {
    let s = d.as_secs();
    if s >= 86_400 && s.is_multiple_of(86_400) {
        format!("{}d", s / 86_400)
    } else if s >= 3600 && s.is_multiple_of(3600) {
        format!("{}h", s / 3600)
    } else if s >= 60 && s.is_multiple_of(60) {
        format!("{}m", s / 60)
    } else {
        format!("{s}s")
    }
}

fn diff(name: &str, show: usize, endpoint: Option<&str>) -> anyhow::Result<std::process::ExitCode> {
    let mut o = String::new();
    store::check_name(name)?;
    let path = store::DiffLog::path_of(name);
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(_) if store::data_dir(name).exists() => String::new(),
        Err(_) => bail!("no stats for mirror {name}: it never ran on this host"),
    };
    let records: Vec<store::MirrorDiff> = text
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .filter(|r: &store::MirrorDiff| endpoint.is_none_or(|e| r.endpoint == e))
        .collect();
    if records.is_empty() {
        outln!(
            o,
            "No differences from production recorded for mirror {name}."
        );
        return {
            emit(&o)?;
            Ok(std::process::ExitCode::SUCCESS)
        };
    }
    let n = records.len();
    let status = |s: Option<u16>| s.map_or("null".to_string(), |s| s.to_string());
    for (i, r) in records.iter().take(show).enumerate() {
        outln!(o, "DIFF {}/{n} — {}  ({})", i + 1, r.request, r.destination);
        outln!(
            o,
            "  status: production {} / shadow {}",
            status(r.production_status),
            r.shadow_status
        );
        for w in &r.summary {
            outln!(o, "  - {w}");
        }
        outln!(
            o,
            "  production: {}",
            r.production_body.as_deref().unwrap_or("")
        );
        outln!(o, "  shadow:     {}", r.shadow_body);
        outln!(o);
    }
    {
        emit(&o)?;
        Ok(std::process::ExitCode::SUCCESS)
    }
}
