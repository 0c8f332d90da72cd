//! `cargo xtask bench extract`: extraction speed and memory, rf-tap beside tshark, tcpflow
//! and httpry on the same file; `--h2`: cleartext HTTP/2 (nginx's `http2` port loaded by
//! h2load, many streams per connection) beside `tshark -Y http2`.
//!
//! The capture is made from real traffic (nginx serving JSON and larger files, wrk sending a
//! mix of GETs and POSTs, rf-tap recording the server's interface) until it reaches the
//! asked size; it is generated, never committed. A second capture holds 100k half-open
//! connections, for the memory bound.

use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _};
use rf_tap_tests::{nginx, NetPair, RfTap, TempDir};

/// Runs a command to completion; returns (seconds, peak RSS in MiB, stdout line count).
fn measure(cmd: &mut Command) -> anyhow::Result<(f64, f64, usize)> {
    measure_counting(cmd, b'\n').map(|(s, r, l, _)| (s, r, l))
}

/// [`measure`], also counting one more byte of the output (`,` between tshark's values).
fn measure_counting(cmd: &mut Command, also: u8) -> anyhow::Result<(f64, f64, usize, usize)> {
    let started = Instant::now();
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .with_context(|| format!("cannot run {cmd:?}"))?;
    let mut out = child.stdout.take().context("stdout")?;
    // A 1 MiB pipe, so that a tool writing much (rf-tap's JSONL) is not paced by the
    // counter's wake-ups on a small machine.
    // SAFETY: fcntl on a pipe descriptor we own.
    unsafe {
        libc::fcntl(
            std::os::fd::AsRawFd::as_raw_fd(&out),
            libc::F_SETPIPE_SZ,
            1 << 20,
        );
    }
    let counter = std::thread::spawn(move || {
        use std::io::Read;
        let mut buf = vec![0u8; 1 << 16];
        let (mut lines, mut others) = (0usize, 0usize);
        while let Ok(n) = out.read(&mut buf) {
            if n == 0 {
                break;
            }
            lines += buf[..n].iter().filter(|b| **b == b'\n').count();
            others += buf[..n].iter().filter(|b| **b == also).count();
        }
        (lines, others)
    });
    let mut status = 0;
    // SAFETY: plain wait4 on our own child, with valid out-pointers.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    let rc = unsafe { libc::wait4(child.id() as i32, &mut status, 0, &mut usage) };
    if rc < 0 {
        bail!("wait4 failed for {cmd:?}");
    }
    let secs = started.elapsed().as_secs_f64();
    let (lines, others) = counter.join().unwrap_or((0, 0));
    Ok((secs, usage.ru_maxrss as f64 / 1024.0, lines, others))
}

/// One measured run: seconds, peak RSS in MiB, output lines, and the commas among them.
type Run = (f64, f64, usize, usize);

/// Runs every tool `rounds` times, rounds going over the tools in turn (a noisy moment hits
/// all of them alike), `before` called ahead of each run with the tool's name; returns each
/// tool's median run.
fn median_runs(
    tools: &mut [(&str, &str, Command)],
    rounds: usize,
    mut before: impl FnMut(&str) -> anyhow::Result<()>,
) -> anyhow::Result<Vec<Run>> {
    let mut runs: Vec<Vec<Run>> = vec![Vec::new(); tools.len()];
    for round in 0..rounds {
        for ((name, _, cmd), runs) in tools.iter_mut().zip(&mut runs) {
            eprint!("  round {}/{rounds}  {name:<28}", round + 1);
            before(name)?;
            // tshark prints a frame's several values on one line, comma-separated.
            let r = measure_counting(cmd, b',')?;
            eprintln!(" {:>7.2} s  {:>7.0} MiB peak", r.0, r.1);
            runs.push(r);
        }
    }
    Ok(runs
        .into_iter()
        .map(|mut r| {
            r.sort_by(|a, b| a.0.total_cmp(&b.0));
            r[r.len() / 2]
        })
        .collect())
}

const WRK_SCRIPT: &str = r#"
local paths = {"/api/users/u_1", "/api/users/u_2", "/api/orders?page=2", "/health", "/static/big.json", "/missing"}
local i = 0
request = function()
  i = i + 1
  if i % 7 == 0 then
    return wrk.format("POST", "/api/orders", {["Content-Type"] = "application/json"}, '{"item":"u_' .. i .. '","qty":3}')
  end
  return wrk.format("GET", paths[(i % #paths) + 1])
end
"#;

/// Makes a capture of real HTTP traffic of at least `mib` MiB.
fn make_capture(rf_tap: &Path, out: &Path, mib: u64) -> anyhow::Result<()> {
    std::env::set_var("RF_TAP_BIN", rf_tap);
    let pair = NetPair::new();
    let dir = TempDir::new("bench-extract");
    let www = dir.path("www");
    std::fs::create_dir_all(www.join("api/users"))?;
    std::fs::create_dir_all(www.join("static"))?;
    for u in 1..=2 {
        std::fs::write(
            www.join(format!("api/users/u_{u}")),
            format!("{{\"id\":\"u_{u}\",\"name\":\"user {u}\",\"plan\":\"pro\"}}\n"),
        )?;
    }
    std::fs::write(
        www.join("api/orders"),
        "[{\"id\":1,\"qty\":2},{\"id\":2,\"qty\":5}]\n",
    )?;
    std::fs::write(www.join("health"), "ok\n")?;
    let big: String = (0..400)
        .map(|i| format!("{{\"n\":{i},\"name\":\"item {i}\"}},"))
        .collect();
    std::fs::write(www.join("static/big.json"), format!("[{}{{}}]\n", big))?;
    let _srv = nginx(&pair.server_ns, &dir, &[format!("{}:80", pair.server_ip)]);
    let script = dir.path("mix.lua");
    std::fs::write(&script, WRK_SCRIPT)?;
    record_until(&pair, "80", out, mib, || {
        let st = Command::new("ip")
            .args([
                "netns",
                "exec",
                &pair.client_ns,
                "wrk",
                "-t1",
                "-c32",
                "-d5s",
                "--timeout",
                "2s",
                "-s",
            ])
            .arg(&script)
            .arg(format!("http://{}/", pair.server_ip))
            .stdout(Stdio::null())
            .status()?;
        if !st.success() {
            bail!("wrk failed");
        }
        Ok(())
    })
}

/// Records `port` on the server's interface with `rf-tap attach -w out`, running `load` (one
/// bounded burst of client traffic) until the file holds `mib` MiB, for at most 10 minutes.
fn record_until(
    pair: &NetPair,
    port: &str,
    out: &Path,
    mib: u64,
    mut load: impl FnMut() -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    let out_s = out.to_str().context("path")?;
    let mut tap = RfTap::spawn(
        &pair.server_ns,
        &["attach", &pair.server_if, "--port", port, "-q", "-w", out_s],
    );
    tap.wait_attached();
    let deadline = Instant::now() + Duration::from_secs(600);
    while std::fs::metadata(out).map(|m| m.len()).unwrap_or(0) < mib << 20 {
        if Instant::now() > deadline {
            bail!("the capture did not reach {mib} MiB in 10 minutes");
        }
        load()?;
        eprint!(
            "\r  capture: {} MiB of {mib}",
            std::fs::metadata(out).map(|m| m.len() >> 20).unwrap_or(0)
        );
    }
    eprintln!();
    let fin = tap.stop();
    if !fin.status.success() {
        bail!("rf-tap attach failed: {}", fin.stderr);
    }
    Ok(())
}

/// Makes a capture of real cleartext HTTP/2 of at least `mib` MiB: h2load against nginx's
/// `http2` port (16 connections, 10 concurrent streams each, a mix of small JSON, a 14 KB
/// JSON file, a gzip'd text file and a 404), recorded by rf-tap on the server's interface.
fn make_h2_capture(rf_tap: &Path, out: &Path, mib: u64) -> anyhow::Result<()> {
    std::env::set_var("RF_TAP_BIN", rf_tap);
    let pair = NetPair::new();
    let dir = TempDir::new("bench-extract-h2");
    let www = dir.path("www");
    std::fs::create_dir_all(www.join("api/users"))?;
    for u in 1..=2 {
        std::fs::write(
            www.join(format!("api/users/u_{u}")),
            format!("{{\"id\":\"u_{u}\",\"name\":\"user {u}\",\"plan\":\"pro\"}}\n"),
        )?;
    }
    let big: String = (0..600)
        .map(|i| format!("{{\"n\":{i},\"name\":\"item {i}\"}},"))
        .collect();
    std::fs::write(www.join("big.json"), format!("[{big}{{}}]\n"))?;
    std::fs::write(
        www.join("notes.txt"),
        "lorem ipsum dolor sit amet ".repeat(400),
    )?;
    let _srv = rf_tap_tests::nginx_with(
        &pair.server_ns,
        &dir,
        &[
            format!("{}:80", pair.server_ip),
            format!("{}:8080 http2", pair.server_ip),
        ],
        "gzip on; gzip_types text/plain; http2_max_requests 100000;",
    );
    let base = format!("http://{}:8080", pair.server_ip);
    let uris: Vec<String> = [
        "/api/users/u_1",
        "/api/users/u_2",
        "/big.json",
        "/notes.txt",
        "/missing",
    ]
    .iter()
    .map(|p| format!("{base}{p}"))
    .collect();
    record_until(&pair, "8080", out, mib, || {
        let st = Command::new("ip")
            .args(["netns", "exec", &pair.client_ns, "h2load"])
            .args(["-c", "16", "-m", "10", "-D", "5", "-t", "1"])
            .args(["-H", "accept-encoding: gzip"])
            .args(&uris)
            .stdout(Stdio::null())
            .status()?;
        if !st.success() {
            bail!("h2load failed");
        }
        Ok(())
    })
}

/// `cargo xtask bench extract --h2`: rf-tap extract beside `tshark -Y http2` on a capture of
/// real h2c traffic, one core and all cores, with the exchanges each found.
pub fn extract_h2(rf_tap: &Path, root: &Path, mib: u64, rounds: usize) -> anyhow::Result<()> {
    let dir = root.join("target/bench");
    std::fs::create_dir_all(&dir)?;
    let capture: PathBuf = dir.join(format!("h2c-{mib}m.pcap"));
    if std::fs::metadata(&capture)
        .map(|m| m.len() < mib << 20)
        .unwrap_or(true)
    {
        eprintln!(
            "bench extract --h2: generating {} from real traffic (nginx http2 + h2load, recorded by rf-tap)",
            capture.display()
        );
        make_h2_capture(rf_tap, &capture, mib)?;
    }
    let size = std::fs::metadata(&capture)?.len() as f64;
    let c = capture.to_str().context("path")?;
    type Tool<'a> = (&'a str, &'a str, Command);
    let mut tools: Vec<Tool<'_>> = Vec::new();
    let mut rf = Command::new(rf_tap);
    rf.args(["extract", "-q", "--threads", "1", c]);
    tools.push(("rf-tap extract (1 thread)", "exchanges", rf));
    let mut rf_all = Command::new(rf_tap);
    rf_all.args(["extract", "-q", "--threads", "0", c]);
    tools.push(("rf-tap extract (all cores)", "exchanges", rf_all));
    let mut ts = Command::new("tshark");
    ts.args([
        "-r",
        c,
        "-d",
        "tcp.port==8080,http2",
        "-Y",
        "http2.headers.status",
    ])
    .args(["-T", "fields", "-e", "http2.headers.status"]);
    tools.push(("tshark -Y http2", "frames with responses", ts));
    eprintln!(
        "bench extract --h2: {} ({:.0} MiB)",
        capture.display(),
        size / 1048576.0
    );
    std::io::copy(&mut std::fs::File::open(&capture)?, &mut std::io::sink())?;
    let medians = median_runs(&mut tools, rounds, |_| Ok(()))?;
    let tshark_responses = tools
        .iter()
        .zip(&medians)
        .find(|((name, _, _), _)| name.starts_with("tshark"))
        .map_or(0, |(_, r)| r.2 + r.3);
    // What rf-tap found: its exchanges with a status, beside tshark's :status headers.
    let out = Command::new(rf_tap).args(["extract", "-q", c]).output()?;
    let with_status = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| !l.contains("\"status\":null"))
        .count();
    println!(
        "\nHTTP/2 extraction benchmark: {} ({:.0} MiB of real h2c traffic), medians of {rounds} runs",
        capture.display(),
        size / 1048576.0
    );
    println!(
        "{:<28} {:>9} {:>9} {:>10} {:>10}  output",
        "tool", "seconds", "MB/s", "peak MiB", "vs tshark"
    );
    let rows: Vec<(&str, &str, (f64, f64, usize))> = tools
        .into_iter()
        .zip(medians)
        .map(|((name, unit, _), (secs, rss, lines, _))| (name, unit, (secs, rss, lines)))
        .collect();
    let tshark_secs = rows
        .iter()
        .find(|r| r.0.starts_with("tshark"))
        .map_or(f64::NAN, |r| r.2 .0);
    for (name, unit, (secs, rss, lines)) in &rows {
        println!(
            "{:<28} {:>9.2} {:>9.1} {:>10.0} {:>9.1}x  {lines} {unit}",
            name,
            secs,
            size / 1e6 / secs,
            rss,
            tshark_secs / secs
        );
    }
    println!(
        "responses found: rf-tap {with_status} exchanges with a status, tshark {tshark_responses} :status headers"
    );
    println!("goal: rf-tap extract (1 thread) >= 20x tshark -Y http2");
    Ok(())
}

/// A synthetic Ethernet pcap built in memory, one frame every `step`.
struct Synthetic {
    enc: rf_tap_engine::pcap::FrameEncoder,
    buf: Vec<u8>,
    t: Duration,
    step: Duration,
}

impl Synthetic {
    fn new(capacity: usize, step: Duration) -> anyhow::Result<Self> {
        use rf_tap_engine::pcap::{CaptureFormat, FrameEncoder, InterfaceInfo};
        let enc = FrameEncoder::new(
            CaptureFormat::Pcap,
            InterfaceInfo {
                name: "synthetic".into(),
                linktype: pcap_file::DataLink::ETHERNET,
                snaplen: 65535,
            },
        );
        let mut buf = Vec::with_capacity(capacity);
        enc.file_header(&mut buf)?;
        Ok(Self {
            enc,
            buf,
            t: Duration::from_secs(1_763_700_000),
            step,
        })
    }

    fn push(&mut self, frame: &[u8]) -> anyhow::Result<()> {
        self.t += self.step;
        self.enc.encode(
            &rf_tap_engine::packet::CapturedPacket {
                ts: self.t,
                ifindex: 1,
                direction: None,
                orig_len: frame.len() as u32,
                data: frame,
            },
            &mut self.buf,
        )?;
        Ok(())
    }

    fn write(self, out: &Path) -> anyhow::Result<()> {
        std::fs::write(out, self.buf)?;
        Ok(())
    }
}

/// 100k connections that open (handshake) and send half a request, never answered.
fn make_half_open(out: &Path, n: u32) -> anyhow::Result<()> {
    let mut pcap = Synthetic::new(n as usize * 300, Duration::from_micros(3))?;
    let server = [10, 200, 0, 1];
    for i in 0..n {
        let client = [10, 100 + (i >> 16) as u8, (i >> 8) as u8, i as u8];
        let sport = 10_000 + (i % 50_000) as u16;
        let mut frames = Vec::new();
        let mut w = |b: etherparse::PacketBuilderStep<etherparse::TcpHeader>, p: &[u8]| {
            let mut v = Vec::new();
            let _ = b.write(&mut v, p);
            frames.push(v);
        };
        w(
            etherparse::PacketBuilder::ethernet2([1; 6], [2; 6])
                .ipv4(client, server, 64)
                .tcp(sport, 80, 100, 64000)
                .syn(),
            b"",
        );
        w(
            etherparse::PacketBuilder::ethernet2([2; 6], [1; 6])
                .ipv4(server, client, 64)
                .tcp(80, sport, 900, 64000)
                .syn()
                .ack(101),
            b"",
        );
        w(
            etherparse::PacketBuilder::ethernet2([1; 6], [2; 6])
                .ipv4(client, server, 64)
                .tcp(sport, 80, 101, 64000)
                .ack(901),
            b"GET /slow/upload HTTP/1.1\r\nHost: example\r\nUser-Agent: bench\r\nX-Pad: ",
        );
        for f in frames {
            pcap.push(&f)?;
        }
    }
    pcap.write(out)
}

/// `n` flows of one SYN each (a scan, or a capture of connection attempts): the flow table
/// fills, and past `--max-flows` (100,000) each new flow evicts the least recently active.
fn make_one_syn(out: &Path, n: u32) -> anyhow::Result<()> {
    let mut pcap = Synthetic::new(n as usize * 80, Duration::from_micros(2))?;
    let mut f = Vec::new();
    for i in 0..n {
        let client = [10, 100 + (i >> 16) as u8, (i >> 8) as u8, i as u8];
        f.clear();
        let _ = etherparse::PacketBuilder::ethernet2([1; 6], [2; 6])
            .ipv4(client, [10, 200, 0, 1], 64)
            .tcp(10_000 + (i % 50_000) as u16, 80, i, 64000)
            .syn()
            .write(&mut f, b"");
        pcap.push(&f)?;
    }
    pcap.write(out)
}

pub fn extract(
    rf_tap: &Path,
    root: &Path,
    mib: u64,
    rounds: usize,
    keep: bool,
) -> anyhow::Result<()> {
    let dir = root.join("target/bench");
    std::fs::create_dir_all(&dir)?;
    let capture: PathBuf = dir.join(format!("http-{mib}m.pcap"));
    if std::fs::metadata(&capture)
        .map(|m| m.len() < mib << 20)
        .unwrap_or(true)
    {
        eprintln!(
            "bench extract: generating {} from real traffic (nginx + wrk, recorded by rf-tap)",
            capture.display()
        );
        make_capture(rf_tap, &capture, mib)?;
    }
    let size = std::fs::metadata(&capture)?.len() as f64;
    let frames = {
        let out = Command::new("capinfos")
            .args(["-c", "-M", "-T"])
            .arg(&capture)
            .output()?;
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .nth(1)
            .and_then(|l| l.split('\t').nth(1))
            .and_then(|n| n.trim().parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    let c = capture.to_str().context("path")?;
    let flowdir = dir.join("tcpflow-out");
    type Tool<'a> = (&'a str, &'a str, Command);
    let mut tools: Vec<Tool<'_>> = Vec::new();
    let mut rf = Command::new(rf_tap);
    rf.args(["extract", "-q", "--threads", "1", c]);
    tools.push(("rf-tap extract (1 thread)", "exchanges", rf));
    let mut rf_all = Command::new(rf_tap);
    rf_all.args(["extract", "-q", "--threads", "0", c]);
    tools.push(("rf-tap extract (all cores)", "exchanges", rf_all));
    let mut ts = Command::new("tshark");
    ts.args([
        "-r",
        c,
        "-Y",
        "http",
        "-T",
        "fields",
        "-e",
        "http.request.method",
        "-e",
        "http.response.code",
    ]);
    tools.push(("tshark -Y http", "HTTP messages", ts));
    let mut tf = Command::new("tcpflow");
    tf.args(["-r", c, "-o"]).arg(&flowdir);
    tools.push(("tcpflow (reassembly only)", "-", tf));
    let mut hr = Command::new("httpry");
    hr.args(["-r", c, "-q"]);
    tools.push(("httpry (lines only)", "request/status lines", hr));
    eprintln!(
        "bench extract: {} ({:.0} MiB, {:.0} frames)",
        capture.display(),
        size / 1048576.0,
        frames
    );
    // Warm the page cache, so that no tool pays for reading the disk.
    std::io::copy(&mut std::fs::File::open(&capture)?, &mut std::io::sink())?;
    // Rounds go over every tool in turn, so a noisy moment hits all of them alike.
    let medians = median_runs(&mut tools, rounds, |name| {
        if name.starts_with("tcpflow") {
            // Each tcpflow run starts from an empty directory.
            let _ = std::fs::remove_dir_all(&flowdir);
            std::fs::create_dir_all(&flowdir)?;
        }
        Ok(())
    })?;
    let rows: Vec<_> = tools
        .into_iter()
        .zip(medians)
        .map(|((name, unit, _), (secs, rss, lines, _))| (name, unit, secs, rss, lines))
        .collect();
    let _ = std::fs::remove_dir_all(&flowdir);
    let half = dir.join("half-open-100k.pcap");
    make_half_open(&half, 100_000)?;
    let (hsecs, hrss, _) = measure(Command::new(rf_tap).args(["extract", "-q"]).arg(&half))?;
    // Linear cost past the flow table's size: 100k, 200k and 400k one-SYN flows (the first
    // fills the table; the others evict, 100k and 300k flows).
    let mut syn_rows = Vec::new();
    for n in [100_000u32, 200_000, 400_000] {
        let p = dir.join(format!("one-syn-{}k.pcap", n / 1000));
        make_one_syn(&p, n)?;
        let mut best = Vec::new();
        for _ in 0..rounds {
            best.push(measure(
                Command::new(rf_tap).args(["extract", "-q"]).arg(&p),
            )?);
        }
        best.sort_by(|a, b| a.0.total_cmp(&b.0));
        let (secs, rss, _) = best[best.len() / 2];
        syn_rows.push((n, secs, rss));
        if !keep {
            let _ = std::fs::remove_file(&p);
        }
    }
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());

    println!(
        "\nextraction benchmark: {} ({:.0} MiB, {:.0} frames of real HTTP traffic), medians of {rounds} runs",
        capture.display(),
        size / 1048576.0,
        frames
    );
    println!(
        "{:<28} {:>9} {:>9} {:>11} {:>10} {:>10} {:>11}  output",
        "tool", "seconds", "MB/s", "packets/s", "peak MiB", "vs tshark", "vs tcpflow"
    );
    let secs_of = |prefix: &str| {
        rows.iter()
            .find(|r| r.0.starts_with(prefix))
            .map(|r| r.2)
            .unwrap_or(f64::NAN)
    };
    let (tshark_secs, tcpflow_secs) = (secs_of("tshark"), secs_of("tcpflow"));
    for (name, unit, secs, rss, lines) in &rows {
        println!(
            "{:<28} {:>9.2} {:>9.1} {:>11.0} {:>10.0} {:>9.1}x {:>10.2}x  {}",
            name,
            secs,
            size / 1e6 / secs,
            frames / secs,
            rss,
            tshark_secs / secs,
            tcpflow_secs / secs,
            if *unit == "-" {
                "files on disk".to_string()
            } else {
                format!("{lines} {unit}")
            }
        );
    }
    println!(
        "({cores} cores: \"all cores\" is --threads 0, which runs one worker on 2 cores or \
         fewer and one per core beyond the first otherwise, beside the reader and the writer)"
    );
    let ratio = |a: f64, b: f64| if b > 0.0 { a / b } else { f64::NAN };
    println!(
        "rf-tap all cores vs 1 thread: {:.2}x",
        ratio(secs_of("rf-tap extract (1"), secs_of("rf-tap extract (all"))
    );
    println!("\nmemory: rf-tap extract on 100,000 half-open connections ({}): {hrss:.0} MiB peak, {hsecs:.2} s (bound: 512 MiB)", half.display());
    println!("\none-SYN flows through a 100,000-flow table (medians of {rounds} runs):");
    for (n, secs, rss) in &syn_rows {
        println!("  {n:>7} flows  {secs:>6.2} s  {rss:>5.0} MiB peak");
    }
    if let [(_, a, _), (_, b, _), (_, c, _)] = syn_rows[..] {
        println!(
            "  200k/100k time ratio: {:.2} (linear: 2.0, goal <= 2.5; 200k also evicts 100k flows)",
            ratio(b, a)
        );
        println!(
            "  400k/200k time ratio: {:.2} (both past the table: linear is 2.0)",
            ratio(c, b)
        );
    }
    if !keep {
        let _ = std::fs::remove_file(&half);
    }
    Ok(())
}
