//! `cargo xtask bench http-replay`: rf-tap's HTTP replay beside wrk, against one nginx on a
//! veth pair (server and client in their own namespaces).
//!
//! 1. Top speed: a 50,000-request capture (100 keep-alive connections) replayed with
//!    `--topspeed --concurrency 100`, beside `wrk -t2 -c100` on the same nginx (the
//!    practical limit of that server). Rounds interleaved; medians; ratio rf-tap / wrk.
//! 2. Schedule accuracy at `--speed 10x`: a capture with heavy-tailed gaps; tcpdump on the
//!    server's interface records when each request arrived; lateness = arrival minus its due
//!    instant (capture offset / 10, anchored at the first arrival). rf-tap's own figure
//!    (send instant minus due instant) is printed beside it.
//! 3. Memory: peak RSS of the top-speed replay of the 50,000-request capture and of one ten
//!    times larger.

use std::{
    collections::HashMap,
    net::SocketAddrV4,
    path::Path,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _};
use rf_tap_engine::pcap::synth::SynthWriter;
use rf_tap_tests::{nginx, read_pcap, tcp_of, NetPair, Proc, TempDir};

use crate::bench::median;

/// Writes a capture of `conns` keep-alive connections of `per_conn` `GET /small?i=N`
/// requests; request k starts at `at(k)` (from the capture start). Production's answer is
/// `answer` (nginx's own response to the same request).
fn write_capture(
    path: &Path,
    conns: u32,
    per_conn: u32,
    answer: &[u8],
    at: &dyn Fn(u64) -> Duration,
) -> anyhow::Result<u64> {
    let file = std::io::BufWriter::with_capacity(1 << 20, std::fs::File::create(path)?);
    let mut w = SynthWriter::new(file)?;
    let t0 = Duration::from_secs(1_763_719_200);
    let server: SocketAddrV4 = "10.0.0.2:80".parse()?;
    let total = u64::from(conns) * u64::from(per_conn);
    // Requests are numbered in time order and dealt round robin to the connections.
    let mut open: Vec<_> = (0..conns)
        .map(|c| {
            let client = SocketAddrV4::new([10, 0, (c >> 8) as u8, c as u8].into(), 40_000);
            w.open(
                t0 + at(u64::from(c)).saturating_sub(Duration::from_micros(200)),
                client,
                server,
            )
        })
        .collect::<Result<_, _>>()?;
    let mut last = Duration::ZERO;
    for k in 0..total {
        let c = (k % u64::from(conns)) as usize;
        let req =
            format!("GET /small?i={k} HTTP/1.1\r\nHost: prod.example\r\nUser-Agent: bench\r\n\r\n");
        last = at(k);
        w.exchange(
            &mut open[c],
            t0 + last,
            req.as_bytes(),
            Duration::from_micros(300),
            answer,
        )?;
    }
    for c in &mut open {
        w.close(c, t0 + last + Duration::from_millis(5))?;
    }
    w.finish()?;
    Ok(total)
}

struct Replayed {
    rps: f64,
    max_rss_mb: f64,
    behind_p99_ms: f64,
    requests: u64,
    diffs: u64,
}

/// Runs rf-tap in the client namespace and reads its JSON and its peak RSS (wait4).
fn rf_tap_replay(
    bin: &Path,
    ns: &str,
    capture: &Path,
    url: &str,
    timing: &[&str],
) -> anyhow::Result<Replayed> {
    let out_path = capture.with_extension("json");
    let child = Command::new("ip")
        .args(["netns", "exec", ns])
        .arg(bin)
        .args([
            "replay",
            "-q",
            "--json",
            "--no-save",
            "--concurrency",
            "100",
        ])
        .arg(capture)
        .args(["--target", url])
        .args(timing)
        .stdout(std::fs::File::create(&out_path)?)
        .stderr(Stdio::inherit())
        .spawn()
        .context("cannot run rf-tap")?;
    let started = Instant::now();
    let mut status = 0;
    // SAFETY: an all-zero rusage is valid; wait4 on our own child's pid.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    let pid = child.id() as i32;
    // SAFETY: see above.
    let rc = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    if rc != pid {
        bail!("wait4 failed");
    }
    let wall = started.elapsed().as_secs_f64();
    let text = std::fs::read_to_string(&out_path)?;
    let v: serde_json::Value = serde_json::from_str(text.trim())
        .with_context(|| format!("rf-tap printed no JSON: {text}"))?;
    let requests = v["requests"].as_u64().unwrap_or(0);
    Ok(Replayed {
        rps: requests as f64 / v["elapsed_s"].as_f64().unwrap_or(wall).max(1e-9),
        max_rss_mb: usage.ru_maxrss as f64 / 1024.0,
        behind_p99_ms: v["behind_schedule_ms"]["p99"].as_f64().unwrap_or(f64::NAN),
        requests,
        diffs: v["diffs"].as_u64().unwrap_or(0),
    })
}

fn wrk(ns: &str, url: &str, seconds: u64) -> anyhow::Result<f64> {
    let out = Command::new("ip")
        .args(["netns", "exec", ns, "wrk", "-t2", "-c100"])
        .arg(format!("-d{seconds}s"))
        .arg(url)
        .output()
        .context("cannot run wrk")?;
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .find_map(|l| l.strip_prefix("Requests/sec:"))
        .and_then(|v| v.trim().parse().ok())
        .with_context(|| format!("no rate in wrk's output: {text}"))
}

/// nginx's own answer to `GET /small` (production's response in the captures).
fn nginx_answer(ns: &str, ip: &str) -> anyhow::Result<Vec<u8>> {
    let out = Command::new("ip")
        .args([
            "netns",
            "exec",
            ns,
            "curl",
            "-s",
            "-i",
            "--http1.1",
            "-H",
            "Host: prod.example",
        ])
        .arg(format!("http://{ip}/small"))
        .output()?;
    if !out.status.success() || !out.stdout.starts_with(b"HTTP/1.1 200") {
        bail!("nginx did not answer /small");
    }
    Ok(out.stdout)
}

pub fn http_replay(bin: &Path, rounds: usize, requests: u32) -> anyhow::Result<()> {
    let dir = TempDir::new("bench-http-replay");
    let pair = NetPair::new();
    std::fs::create_dir_all(dir.path("www"))?;
    std::fs::write(dir.path("www/small"), "x".repeat(128))?;
    let _nginx: Proc = nginx(&pair.server_ns, &dir, &[format!("{}:80", pair.server_ip)]);
    let url = format!("http://{}", pair.server_ip);
    let answer = nginx_answer(&pair.client_ns, &pair.server_ip)?;

    let per_conn = (requests / 100).max(1);
    let small = dir.path("50k.pcap");
    let n = write_capture(&small, 100, per_conn, &answer, &|k| {
        Duration::from_micros(k * 200)
    })?;
    let large = dir.path("500k.pcap");
    let n_large = write_capture(&large, 100, per_conn * 10, &answer, &|k| {
        Duration::from_micros(k * 200)
    })?;
    // Heavy-tailed gaps (a deterministic Pareto-like mix), mean ~5 ms: ~2,000 req/s at 10x.
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    let mut offsets = Vec::with_capacity(5000);
    let mut t = 0u64;
    for _ in 0..5000 {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let u = (seed % 10_000) as f64 / 10_000.0 + 1e-4;
        t += (1500.0 / u.powf(0.6)).min(200_000.0) as u64;
        offsets.push(t);
    }
    let timed = dir.path("timed.pcap");
    write_capture(&timed, 50, 100, &answer, &|k| {
        Duration::from_micros(offsets.get(k as usize).copied().unwrap_or(t))
    })?;
    println!(
        "captures: {n} requests ({} MB), {n_large} requests ({} MB), 5,000 timed requests over {:.1} s",
        std::fs::metadata(&small)?.len() >> 20,
        std::fs::metadata(&large)?.len() >> 20,
        t as f64 / 1e6
    );

    // 1. Top speed, interleaved rounds.
    let mut ours = Vec::new();
    let mut theirs = Vec::new();
    let mut rss_small = Vec::new();
    for r in 0..rounds {
        let w = wrk(&pair.client_ns, &format!("{url}/small"), 5)?;
        let x = rf_tap_replay(bin, &pair.client_ns, &small, &url, &["--topspeed"])?;
        if x.requests != n || x.diffs != 0 {
            bail!(
                "rf-tap replayed {} of {n} requests with {} diffs",
                x.requests,
                x.diffs
            );
        }
        println!(
            "round {}: wrk {w:.0} req/s, rf-tap {:.0} req/s",
            r + 1,
            x.rps
        );
        theirs.push(w);
        ours.push(x.rps);
        rss_small.push(x.max_rss_mb);
    }
    let big = rf_tap_replay(bin, &pair.client_ns, &large, &url, &["--topspeed"])?;
    if big.requests != n_large {
        bail!("rf-tap replayed {} of {n_large} requests", big.requests);
    }

    // 2. Schedule accuracy at 10x, measured on the wire.
    let cap = dir.path("arrivals.pcap");
    let mut tcpdump = Proc {
        child: Some(
            Command::new("ip")
                .args([
                    "netns",
                    "exec",
                    &pair.server_ns,
                    "tcpdump",
                    "-i",
                    &pair.server_if,
                    "-w",
                ])
                .arg(&cap)
                .args([
                    "-U",
                    "-s",
                    "200",
                    "--time-stamp-precision=nano",
                    "tcp",
                    "dst",
                    "port",
                    "80",
                ])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()?,
        ),
        name: "tcpdump".into(),
    };
    std::thread::sleep(Duration::from_millis(800));
    let timed_run = rf_tap_replay(bin, &pair.client_ns, &timed, &url, &["--speed", "10x"])?;
    std::thread::sleep(Duration::from_millis(500));
    if let Some(c) = tcpdump.child.as_ref() {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(c.id() as i32, libc::SIGINT) };
    }
    if let Some(mut c) = tcpdump.child.take() {
        let _ = c.wait();
    }
    let (records, _) = read_pcap(&cap);
    let mut arrival: HashMap<u64, u64> = HashMap::new();
    for r in &records {
        let Some((_, 80, payload, _)) = tcp_of(&r.data) else {
            continue;
        };
        let text = String::from_utf8_lossy(&payload);
        if let Some(i) = text
            .strip_prefix("GET /small?i=")
            .and_then(|t| t.split(' ').next())
            .and_then(|i| i.parse().ok())
        {
            arrival.entry(i).or_insert(r.ts_ns);
        }
    }
    if arrival.len() < 4900 {
        bail!("tcpdump saw {} of 5,000 timed requests", arrival.len());
    }
    let first = arrival
        .get(&0)
        .copied()
        .context("the first request was not seen")?;
    let base = offsets[0];
    let mut late: Vec<f64> = arrival
        .iter()
        .map(|(i, ts)| {
            let due = first as f64 + (offsets[*i as usize] - base) as f64 * 1000.0 / 10.0;
            (*ts as f64 - due) / 1e6
        })
        .collect();
    // Anchor at the earliest arrival relative to its due instant (the first request's own
    // connection setup delays it).
    let min = late.iter().cloned().fold(f64::INFINITY, f64::min);
    for l in &mut late {
        *l -= min;
    }
    late.sort_by(|a, b| a.total_cmp(b));
    let q = |p: f64| late[((late.len() as f64 * p) as usize).min(late.len() - 1)];

    let (o, t) = (median(ours), median(theirs));
    println!();
    println!("HTTP replay against nginx on a veth pair ({rounds} rounds, medians)");
    println!(
        "{:<44} {:>12} {:>12} {:>8}",
        "", "rf-tap", "wrk -c100", "ratio"
    );
    println!(
        "{:<44} {:>12.0} {:>12.0} {:>7.2}x",
        "requests/s (--topspeed, concurrency 100)",
        o,
        t,
        o / t
    );
    println!();
    println!("Schedule at --speed 10x (5,000 requests, heavy-tailed gaps)");
    println!(
        "  lateness on the wire (tcpdump)   p50 {:.3} ms  p99 {:.3} ms  max {:.3} ms",
        q(0.5),
        q(0.99),
        q(1.0)
    );
    println!(
        "  lateness rf-tap reports (send)   p99 {:.3} ms",
        timed_run.behind_p99_ms
    );
    println!();
    println!("Memory (peak RSS, --topspeed)");
    println!("  {n:>7} requests: {:.1} MB", median(rss_small));
    println!(
        "  {n_large:>7} requests: {:.1} MB  (10x the capture)",
        big.max_rss_mb
    );
    Ok(())
}
