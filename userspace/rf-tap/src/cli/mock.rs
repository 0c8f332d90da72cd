//! `rf-tap mock FILE... --listen ADDR`: an HTTP/1.1 server answering from recorded
//! exchanges (a service's outbound calls to a dependency), matched by signature
//! (engine `mock`).

use std::{
    collections::{BTreeMap, VecDeque},
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex,
    },
    time::{Duration, SystemTime},
};

use anyhow::{bail, Context as _};
use clap::Args;
use rf_tap_engine::{
    compare::JsonPath,
    http::{
        exchange::Exchange,
        message::{Limits, MessageParser, Parsed, Request, Response, Side},
    },
    mock::{Dependency, Lookup, MockIndex, MockOptions},
    reassembly::Origin,
    redact::Redaction,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::cli::requests::Source;

#[derive(Debug, Args)]
#[command(after_help = "\
Each request is answered with the recorded response whose signature matches: method, path,
query (in any order) and body (JSON in any key order and spacing). Values that look
generated (UUIDs, ISO-8601 and epoch timestamps, long hex tokens) and --ignore paths are left
out of the signature; the Host counts only with --by-host. Several recordings of one
signature are served in capture order, then the last repeats. Recorded headers are served as
captured, with Date refreshed and the framing rebuilt for the body as decoded (Content-Length;
no Content-Encoding). A miss is answered --miss-status with a JSON body naming the signature,
and saved with --save-misses DIR as a stub file (an exchange in JSON) that `rf-tap mock` loads
like a capture once its response is filled in.
SIGINT or SIGTERM stops it with exit 0 and a summary (--json: one JSON object on stdout).

Example:
  rf-tap requests prod.rfcap --outbound
  rf-tap mock prod.rfcap --dependency payment-api --listen 127.0.0.1:8081")]
pub struct MockArgs {
    /// .rfcap archives, pcap/pcapng captures, or stub files (.json) saved by --save-misses
    #[arg(required = true)]
    pub files: Vec<PathBuf>,

    /// Address to serve on
    #[arg(long, value_name = "ADDR:PORT")]
    pub listen: SocketAddr,

    /// Only the exchanges of this dependency (its Host, with or without port, or its
    /// address:port); `rf-tap requests FILE --outbound` lists them
    #[arg(long, value_name = "NAME")]
    pub dependency: Option<String>,

    /// A request with no exact match gets the closest recording of its method and path
    #[arg(long)]
    pub fuzzy: bool,

    /// Status of the answer to a request nothing matches
    #[arg(long, value_name = "CODE", default_value_t = 404)]
    pub miss_status: u16,

    /// Send a request nothing matches to this real service instead (http://HOST:PORT[/PATH];
    /// counted as missed and passed through)
    #[arg(long, value_name = "URL", conflicts_with = "miss_status")]
    pub passthrough: Option<String>,

    /// Save each missed request as a stub file in DIR
    #[arg(long, value_name = "DIR")]
    pub save_misses: Option<PathBuf>,

    /// Answer after the latency each response had when captured
    #[arg(long, value_name = "MODE", value_parser = ["recorded"])]
    pub latency: Option<String>,

    /// Leave this JSON path of request bodies out of signatures ('$.nonce'); repeatable
    #[arg(long, value_name = "JSONPATH")]
    pub ignore: Vec<JsonPath>,

    /// The Host is part of the signature (one mock serving several dependencies)
    #[arg(long)]
    pub by_host: bool,

    /// The summary as one JSON object on standard output
    #[arg(long)]
    pub json: bool,

    /// For saved misses (credentials in headers, query and bodies)
    #[command(flatten)]
    pub redact: crate::cli::redaction::RedactArgs,
}

/// What the mock served, per endpoint.
#[derive(Debug, Default)]
struct Counts {
    requests: u64,
    exact: u64,
    fuzzy: u64,
    missed: u64,
    /// Responses whose body was not captured whole (served as far as it was).
    partial: u64,
    fuzzy_scores: Vec<f64>,
    misses: BTreeMap<String, u64>,
    saved: u64,
    passed_through: u64,
}

struct Shared {
    index: Mutex<MockIndex>,
    counts: Mutex<Counts>,
    fuzzy: bool,
    miss_status: u16,
    save_misses: Option<PathBuf>,
    recorded_latency: bool,
    redaction: Redaction,
    /// `--passthrough`: (host:port, path prefix).
    passthrough: Option<(String, String)>,
}

/// `http://host:port[/path]` → (host:port, path without its final slash).
fn passthrough_of(url: &str) -> anyhow::Result<(String, String)> {
    let rest = url
        .strip_prefix("http://")
        .with_context(|| format!("--passthrough {url}: only http:// services"))?;
    let (host, path) = match rest.find('/') {
        Some(i) => (&rest[..i], rest[i..].trim_end_matches('/')),
        None => (rest, ""),
    };
    if host.is_empty() {
        bail!("--passthrough {url}: no host");
    }
    let host = if host.contains(':') {
        host.to_string()
    } else {
        format!("{host}:80")
    };
    Ok((host, path.to_string()))
}

/// Sends `q` to the passthrough service and returns its answer, framed as a recording is.
async fn forward(to: &(String, String), q: &Request) -> Vec<u8> {
    let (host, prefix) = to;
    let work = async {
        let mut c = tokio::net::TcpStream::connect(host.as_str()).await?;
        let mut out = format!(
            "{} {prefix}{} HTTP/1.1\r\nHost: {host}\r\n",
            q.method, q.target
        )
        .into_bytes();
        let skip = [
            "host",
            "connection",
            "keep-alive",
            "content-length",
            "transfer-encoding",
            "content-encoding",
            "expect",
        ];
        for (n, v) in q.headers.iter() {
            if !skip.iter().any(|s| n.eq_ignore_ascii_case(s)) {
                out.extend_from_slice(n.as_bytes());
                out.extend_from_slice(b": ");
                out.extend_from_slice(v);
                out.extend_from_slice(b"\r\n");
            }
        }
        out.extend_from_slice(
            format!(
                "Content-Length: {}\r\nConnection: close\r\n\r\n",
                q.body.data.len()
            )
            .as_bytes(),
        );
        out.extend_from_slice(&q.body.data);
        c.write_all(&out).await?;
        let mut parser = MessageParser::new(Side::Server, Limits::default());
        let methods: VecDeque<String> = [q.method.clone()].into();
        let mut parsed = Vec::new();
        let mut buf = vec![0u8; 64 << 10];
        loop {
            let n = c.read(&mut buf).await?;
            if n == 0 {
                parser.close(&mut parsed);
            } else {
                parser.data(&buf[..n], Origin::default(), &methods, &mut parsed);
            }
            if let Some(r) = parsed.iter().find_map(|p| match p {
                Parsed::Response(r) => Some(r.clone()),
                _ => None,
            }) {
                return Ok::<_, std::io::Error>(response_bytes(
                    &r,
                    q.method.eq_ignore_ascii_case("HEAD"),
                ));
            }
            if n == 0 {
                return Err(std::io::Error::other("closed before a whole response"));
            }
        }
    };
    match tokio::time::timeout(Duration::from_secs(10), work).await {
        Ok(Ok(bytes)) => bytes,
        Ok(Err(e)) => miss_bytes(502, &format!("passthrough to {host} failed: {e}")),
        Err(_) => miss_bytes(504, &format!("passthrough to {host} timed out")),
    }
}

/// The index of every exchange with a request and a response (of `dependency` when given),
/// and how many each dependency gave; having none is an error.
fn load(
    files: &[PathBuf],
    dependency: Option<&str>,
    opts: MockOptions,
) -> anyhow::Result<(MockIndex, BTreeMap<String, u64>)> {
    let mut index = MockIndex::new(opts);
    let mut deps: BTreeMap<String, u64> = BTreeMap::new();
    let mut take = |x: &Exchange, index: &mut MockIndex| {
        let d = Dependency::of(x);
        if dependency.is_some_and(|want| !d.is(want)) {
            return;
        }
        if index.add(x) {
            *deps.entry(d.name()).or_default() += 1;
        }
    };
    for f in files {
        if f.extension().is_some_and(|e| e == "json") {
            let text = std::fs::read_to_string(f)
                .with_context(|| format!("cannot read {}", f.display()))?;
            let x: Exchange = serde_json::from_str(&text)
                .with_context(|| format!("{} is not a stub (an exchange in JSON)", f.display()))?;
            take(&x, &mut index);
            continue;
        }
        let src = Source::open(f)?;
        let damaged = src.each(&|_| true, &mut |_, x| {
            if let Some(x) = x {
                take(&x, &mut index);
            }
            true
        })?;
        if damaged {
            bail!(
                "{} is damaged (see above): refusing to serve from it",
                f.display()
            );
        }
    }
    if index.is_empty() {
        bail!(
            "no exchange with a request and a response{} in {}",
            dependency
                .map(|d| format!(" of dependency {d}"))
                .unwrap_or_default(),
            files
                .iter()
                .map(|f| f.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    Ok((index, deps))
}

/// A mock serving on its own thread (for `replay --plan`), until stopped.
pub struct Running {
    pub dependency: String,
    stop: Arc<AtomicBool>,
    shared: Arc<Shared>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// What a mock served, for a report.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Served {
    pub requests: u64,
    pub exact: u64,
    pub fuzzy: u64,
    pub missed: u64,
    pub misses: BTreeMap<String, u64>,
    /// Where the misses were saved as stubs.
    pub saved_in: Option<PathBuf>,
}

impl Running {
    /// Loads the recordings, binds, and serves on a thread; errors are one line.
    pub fn start(
        files: &[PathBuf],
        dependency: Option<&str>,
        listen: SocketAddr,
        opts: MockOptions,
        save_misses: Option<PathBuf>,
    ) -> anyhow::Result<Self> {
        let (index, _) = load(files, dependency, opts)?;
        if let Some(dir) = &save_misses {
            crate::output::create_dir(dir)?;
        }
        let listener = std::net::TcpListener::bind(listen)
            .with_context(|| format!("cannot listen on {listen}"))?;
        listener.set_nonblocking(true)?;
        let shared = Arc::new(Shared {
            index: Mutex::new(index),
            counts: Mutex::new(Counts::default()),
            fuzzy: false,
            miss_status: 404,
            save_misses,
            recorded_latency: false,
            redaction: Redaction::default(),
            passthrough: None,
        });
        let stop = Arc::new(AtomicBool::new(false));
        let (s2, st2) = (Arc::clone(&shared), Arc::clone(&stop));
        let thread = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            rt.block_on(async move {
                if let Ok(l) = tokio::net::TcpListener::from_std(listener) {
                    serve(l, s2, st2).await;
                }
            });
        });
        Ok(Self {
            dependency: dependency.unwrap_or("(all)").to_string(),
            stop,
            shared,
            thread: Some(thread),
        })
    }

    /// Stops serving and says what was served.
    pub fn stop(mut self) -> Served {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        self.served()
    }

    fn served(&self) -> Served {
        self.shared
            .counts
            .lock()
            .map(|c| Served {
                requests: c.requests,
                exact: c.exact,
                fuzzy: c.fuzzy,
                missed: c.missed,
                misses: c.misses.clone(),
                saved_in: self.shared.save_misses.clone(),
            })
            .unwrap_or_default()
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

pub fn run(args: MockArgs) -> anyhow::Result<std::process::ExitCode> {
    let opts = MockOptions {
        ignore: args.ignore.clone(),
        by_host: args.by_host,
    };
    let (index, deps) = load(&args.files, args.dependency.as_deref(), opts)?;
    if let Some(dir) = &args.save_misses {
        crate::output::create_dir(dir)?;
    }
    let passthrough = args
        .passthrough
        .as_deref()
        .map(passthrough_of)
        .transpose()?;
    let stop = crate::cli::stop_on_signals()?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let listener = runtime
        .block_on(tokio::net::TcpListener::bind(args.listen))
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    let recordings = index.len();
    let shared = Arc::new(Shared {
        index: Mutex::new(index),
        counts: Mutex::new(Counts::default()),
        fuzzy: args.fuzzy,
        miss_status: args.miss_status,
        save_misses: args.save_misses.clone(),
        recorded_latency: args.latency.is_some(),
        redaction: args.redact.policy(),
        passthrough,
    });
    eprintln!(
        "rf-tap: mock of {recordings} recordings ({}) listening on {}; Ctrl-C to stop",
        deps.iter()
            .map(|(d, n)| format!("{d}: {n}"))
            .collect::<Vec<_>>()
            .join(", "),
        args.listen
    );
    runtime.block_on(serve(listener, Arc::clone(&shared), stop));
    let c = shared
        .counts
        .lock()
        .map_err(|_| anyhow::anyhow!("a connection task panicked"))?;
    summary(&c, args.json);
    Ok(std::process::ExitCode::SUCCESS)
}

fn summary(c: &Counts, json: bool) {
    let matched = c.exact + c.fuzzy;
    let rate = if c.requests == 0 {
        1.0
    } else {
        matched as f64 / c.requests as f64
    };
    if json {
        let v = serde_json::json!({
            "requests": c.requests,
            "matched": matched,
            "exact": c.exact,
            "fuzzy": c.fuzzy,
            "missed": c.missed,
            "match_rate": rate,
            "partial_bodies": c.partial,
            "fuzzy_scores": c.fuzzy_scores,
            "misses": c.misses,
            "saved_misses": c.saved,
            "passed_through": c.passed_through,
        });
        println!("{v}");
        return;
    }
    eprintln!(
        "rf-tap: mock served {} requests: {} exact, {} fuzzy, {} missed{} (match rate {:.1}%)",
        c.requests,
        c.exact,
        c.fuzzy,
        c.missed,
        if c.passed_through > 0 {
            format!(", {} of them passed through", c.passed_through)
        } else {
            String::new()
        },
        rate * 100.0
    );
    for (endpoint, n) in &c.misses {
        eprintln!("  missed {n:>6}  {endpoint}");
    }
}

async fn serve(listener: tokio::net::TcpListener, shared: Arc<Shared>, stop: Arc<AtomicBool>) {
    let mut tasks = tokio::task::JoinSet::new();
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                if let Ok((conn, _)) = accepted {
                    let _ = conn.set_nodelay(true);
                    tasks.spawn(connection(conn, Arc::clone(&shared), Arc::clone(&stop)));
                }
            }
            _ = tick.tick() => {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                while tasks.try_join_next().is_some() {}
            }
        }
    }
    // Connections in the middle of an answer finish it; idle ones close.
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        while tasks.join_next().await.is_some() {}
    })
    .await;
    tasks.abort_all();
}

async fn connection(mut conn: tokio::net::TcpStream, shared: Arc<Shared>, stop: Arc<AtomicBool>) {
    let mut parser = MessageParser::new(Side::Client, Limits::default());
    let none = VecDeque::new();
    let mut parsed = Vec::new();
    let mut buf = vec![0u8; 64 << 10];
    // The bytes of the request being received, to answer `Expect: 100-continue`.
    let mut head: Vec<u8> = Vec::new();
    let mut continued = false;
    loop {
        let n = tokio::select! {
            r = conn.read(&mut buf) => match r {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            },
            _ = tokio::time::sleep(Duration::from_millis(200)) => {
                if stop.load(Ordering::Relaxed) {
                    return;
                }
                continue;
            }
        };
        if head.len() < 64 << 10 {
            head.extend_from_slice(&buf[..n]);
        }
        parser.data(&buf[..n], Origin::default(), &none, &mut parsed);
        let mut out = Vec::new();
        for p in parsed.drain(..) {
            match p {
                Parsed::Request(q) => {
                    head.clear();
                    continued = false;
                    let (mut bytes, delay, pass) = answer(&shared, &q);
                    if pass {
                        if let Some(to) = &shared.passthrough {
                            bytes = forward(to, &q).await;
                        }
                    }
                    if let Some(d) = delay {
                        // Earlier answers of a pipelined batch go first.
                        if !out.is_empty() && conn.write_all(&out).await.is_err() {
                            return;
                        }
                        out.clear();
                        tokio::time::sleep(d).await;
                    }
                    out.extend_from_slice(&bytes);
                }
                Parsed::Anomaly(_) => {
                    let _ = conn
                        .write_all(
                            b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                        )
                        .await;
                    return;
                }
                _ => {}
            }
        }
        if !continued && expects_continue(&head) {
            continued = true;
            out.extend_from_slice(b"HTTP/1.1 100 Continue\r\n\r\n");
        }
        if !out.is_empty() && conn.write_all(&out).await.is_err() {
            return;
        }
    }
}

/// Whether `bytes` hold a whole request head that asks for `100 Continue`.
fn expects_continue(bytes: &[u8]) -> bool {
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut q = httparse::Request::new(&mut headers);
    matches!(q.parse(bytes), Ok(httparse::Status::Complete(_)))
        && q.headers.iter().any(|h| {
            h.name.eq_ignore_ascii_case("expect") && h.value.eq_ignore_ascii_case(b"100-continue")
        })
}

/// The bytes answering `q`, how long to wait before sending them, and whether it goes to
/// the passthrough service instead.
fn answer(shared: &Shared, q: &Request) -> (Vec<u8>, Option<Duration>, bool) {
    let found = shared
        .index
        .lock()
        .map(|mut ix| {
            let l = ix.lookup(q, shared.fuzzy);
            let rec = match &l {
                Lookup::Exact(i) | Lookup::Fuzzy { index: i, .. } => {
                    Some(ix.recordings[*i].clone())
                }
                Lookup::Miss => None,
            };
            (l, rec, ix.signature(q))
        })
        .ok();
    let Some((lookup, rec, signature)) = found else {
        return (miss_bytes(500, "the mock's index is unusable"), None, false);
    };
    let endpoint = format!("{} {}", signature.method, signature.path);
    let mut c = match shared.counts.lock() {
        Ok(c) => c,
        Err(_) => {
            return (
                miss_bytes(500, "the mock's counters are unusable"),
                None,
                false,
            )
        }
    };
    c.requests += 1;
    match (&lookup, rec) {
        (Lookup::Exact(_), Some(r)) | (Lookup::Fuzzy { .. }, Some(r)) => {
            if let Lookup::Fuzzy { score, .. } = lookup {
                c.fuzzy += 1;
                c.fuzzy_scores.push((score * 1000.0).round() / 1000.0);
            } else {
                c.exact += 1;
            }
            if r.response.body.data.len() < r.response.body.len as usize || r.response.body.gap {
                c.partial += 1;
            }
            let head = q.method.eq_ignore_ascii_case("HEAD");
            let delay = if shared.recorded_latency {
                r.latency
            } else {
                None
            };
            (response_bytes(&r.response, head), delay, false)
        }
        _ => {
            c.missed += 1;
            *c.misses.entry(endpoint).or_default() += 1;
            if let Some(dir) = &shared.save_misses {
                if save_miss(dir, c.saved + 1, q, shared.miss_status, &shared.redaction).is_ok() {
                    c.saved += 1;
                }
            }
            if shared.passthrough.is_some() {
                c.passed_through += 1;
                return (Vec::new(), None, true);
            }
            let body = serde_json::json!({
                "error": "no recording matches this request",
                "method": signature.method,
                "path": signature.path,
                "query": signature.query,
            });
            (json_bytes(shared.miss_status, &body), None, false)
        }
    }
}

/// A missed request as a stub: an exchange in JSON whose response is the miss status, to
/// be filled in and loaded.
fn save_miss(
    dir: &Path,
    n: u64,
    q: &Request,
    status: u16,
    redaction: &Redaction,
) -> anyhow::Result<()> {
    let x = Exchange {
        id: n,
        conn: 0,
        client: SocketAddr::from(([0, 0, 0, 0], 0)),
        server: SocketAddr::from(([0, 0, 0, 0], 0)),
        request: Some(q.clone()),
        response: Some(Response {
            version: "1.1".into(),
            status,
            ..Default::default()
        }),
        flags: Default::default(),
        anomalies: Vec::new(),
        client_by: None,
        traffic: None,
    };
    let x = redaction.exchange(&x);
    let path = dir.join(format!("miss-{n:05}.json"));
    let text = serde_json::to_string_pretty(&*x)?;
    let mut f = crate::output::create(&path)?;
    std::io::Write::write_all(&mut f, text.as_bytes())?;
    Ok(())
}

fn json_bytes(status: u16, body: &serde_json::Value) -> Vec<u8> {
    let body = body.to_string();
    format!(
        "HTTP/1.1 {status} {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nDate: {}\r\n\r\n{body}",
        reason(status),
        body.len(),
        http_date(SystemTime::now())
    )
    .into_bytes()
}

fn miss_bytes(status: u16, why: &str) -> Vec<u8> {
    json_bytes(status, &serde_json::json!({ "error": why }))
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        _ => "",
    }
}

/// A recorded response as captured: its headers in order, Date refreshed, and the framing
/// rebuilt for the body as rf-tap kept it (decoded, so without Content-Encoding).
fn response_bytes(r: &Response, head_request: bool) -> Vec<u8> {
    let framing = [
        "content-length",
        "transfer-encoding",
        "connection",
        "keep-alive",
        "content-encoding",
        "date",
    ];
    let mut out = format!(
        "HTTP/1.1 {} {}\r\n",
        r.status,
        if r.reason.is_empty() {
            reason(r.status)
        } else {
            &r.reason
        }
    )
    .into_bytes();
    for (name, value) in r.headers.iter() {
        if framing.iter().any(|f| name.eq_ignore_ascii_case(f)) {
            continue;
        }
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(format!("Date: {}\r\n", http_date(SystemTime::now())).as_bytes());
    let no_body = r.status < 200 || r.status == 204 || r.status == 304;
    if !no_body {
        out.extend_from_slice(format!("Content-Length: {}\r\n", r.body.data.len()).as_bytes());
    }
    out.extend_from_slice(b"\r\n");
    if !no_body && !head_request {
        out.extend_from_slice(&r.body.data);
    }
    out
}

/// IMF-fixdate (`Wed, 02 Dec 2026 04:00:00 GMT`).
fn http_date(t: SystemTime) -> String {
    let secs = t
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let (y, m, d) = rf_tap_engine::query::civil_from_days(days);
    const DAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    format!(
        "{}, {d:02} {} {y} {:02}:{:02}:{:02} GMT",
        DAYS[days.rem_euclid(7) as usize],
        MONTHS[(m - 1) as usize],
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_are_imf_fixdate() {
        let t = SystemTime::UNIX_EPOCH + Duration::from_secs(1_764_648_000);
        assert_eq!(http_date(t), "Tue, 02 Dec 2025 04:00:00 GMT");
        assert_eq!(
            http_date(SystemTime::UNIX_EPOCH),
            "Thu, 01 Jan 1970 00:00:00 GMT"
        );
    }

    #[test]
    fn recorded_headers_are_served_with_fresh_date_and_rebuilt_framing() {
        let r = Response {
            version: "1.1".into(),
            status: 201,
            reason: "Created".into(),
            headers: vec![
                ("Content-Type".into(), b"application/json".to_vec()),
                ("Transfer-Encoding".into(), b"chunked".to_vec()),
                ("Content-Encoding".into(), b"gzip".to_vec()),
                ("Date".into(), b"Mon, 01 Jan 2024 00:00:00 GMT".to_vec()),
                ("X-Request-Id".into(), b"abc".to_vec()),
            ]
            .into(),
            body: rf_tap_engine::http::body::Body {
                data: b"{\"ok\":true}".to_vec(),
                len: 11,
                ..Default::default()
            },
            ..Default::default()
        };
        let text = String::from_utf8(response_bytes(&r, false)).unwrap();
        assert!(text.starts_with("HTTP/1.1 201 Created\r\nContent-Type: application/json\r\nX-Request-Id: abc\r\nDate: "), "{text}");
        assert!(!text.contains("2024"), "{text}");
        assert!(
            !text.contains("chunked") && !text.contains("gzip"),
            "{text}"
        );
        assert!(
            text.ends_with("Content-Length: 11\r\n\r\n{\"ok\":true}"),
            "{text}"
        );
        let head = String::from_utf8(response_bytes(&r, true)).unwrap();
        assert!(head.ends_with("Content-Length: 11\r\n\r\n"), "{head}");
    }
}
