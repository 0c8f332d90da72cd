//! `cargo xtask bench mock`: `rf-tap mock` beside nginx serving a static file of the same
//! size, each on one core, under the same wrk load (keep-alive), on a veth pair.
//!
//! The recording is nginx's own answer to `GET /item`, so both servers send the same bytes.
//! The mock and nginx (one process, `master_process off`) are pinned to core 1 and wrk to
//! core 0. Rounds alternate the two servers; medians and the ratio mock / nginx are printed,
//! and the mock's own summary gives its match rate over every request wrk sent.

use std::{
    net::SocketAddrV4,
    path::Path,
    process::{Command, Stdio},
    time::Duration,
};

use anyhow::{bail, Context as _};
use rf_tap_engine::pcap::synth::SynthWriter;
use rf_tap_tests::{nginx, NetPair, Proc, TempDir};

use crate::bench::{interrupt_and_collect, median};

fn wrk(ns: &str, url: &str, seconds: u64, connections: u32) -> anyhow::Result<f64> {
    let out = Command::new("ip")
        .args(["netns", "exec", ns, "taskset", "-c", "0", "wrk", "-t1"])
        .arg(format!("-c{connections}"))
        .arg(format!("-d{seconds}s"))
        .arg(url)
        .output()
        .context("cannot run wrk")?;
    let text = String::from_utf8_lossy(&out.stdout);
    if text.contains("Non-2xx") {
        bail!("{url} answered errors: {text}");
    }
    text.lines()
        .find_map(|l| l.strip_prefix("Requests/sec:"))
        .and_then(|v| v.trim().parse().ok())
        .with_context(|| format!("no rate in wrk's output: {text}"))
}

pub fn mock(bin: &Path, rounds: usize, seconds: u64, body: usize) -> anyhow::Result<()> {
    let dir = TempDir::new("bench-mock");
    let pair = NetPair::new();
    std::fs::create_dir_all(dir.path("www"))?;
    let json = format!(
        "{{\"id\":\"item_1\",\"pad\":\"{}\"}}",
        "x".repeat(body.saturating_sub(24))
    );
    std::fs::write(dir.path("www/item"), &json)?;
    let nginx_proc: Proc = nginx(&pair.server_ns, &dir, &[format!("{}:80", pair.server_ip)]);
    Command::new("taskset")
        .args(["-pc", "1", &nginx_proc.pid().to_string()])
        .stdout(Stdio::null())
        .status()?;
    let answer = Command::new("ip")
        .args([
            "netns",
            "exec",
            &pair.client_ns,
            "curl",
            "-s",
            "-i",
            "--http1.1",
        ])
        .arg(format!("http://{}/item", pair.server_ip))
        .output()?
        .stdout;
    if !answer.starts_with(b"HTTP/1.1 200") {
        bail!("nginx did not answer /item");
    }
    // The recording: one exchange, nginx's own answer.
    let capture = dir.path("item.pcap");
    let mut w = SynthWriter::new(std::fs::File::create(&capture)?)?;
    let t0 = Duration::from_secs(1_764_000_000);
    let mut c = w.open(
        t0,
        "10.0.0.1:40000".parse::<SocketAddrV4>()?,
        "10.0.0.2:80".parse::<SocketAddrV4>()?,
    )?;
    w.exchange(
        &mut c,
        t0 + Duration::from_millis(1),
        format!("GET /item HTTP/1.1\r\nHost: {}\r\n\r\n", pair.server_ip).as_bytes(),
        Duration::from_micros(300),
        &answer,
    )?;
    w.close(&mut c, t0 + Duration::from_millis(5))?;
    w.finish()?;

    let listen = format!("{}:8081", pair.server_ip);
    let mut mock = Proc {
        child: Some(
            Command::new("ip")
                .args(["netns", "exec", &pair.server_ns, "taskset", "-c", "1"])
                .arg(bin)
                .args([
                    "mock",
                    capture.to_str().context("path")?,
                    "--listen",
                    &listen,
                    "--json",
                ])
                .stdout(Stdio::piped())
                .stderr(Stdio::null())
                .spawn()
                .context("cannot start rf-tap mock")?,
        ),
        name: "rf-tap mock".into(),
    };
    std::thread::sleep(Duration::from_millis(500));
    let connections = 32;
    eprintln!(
        "bench mock: wrk -t1 -c{connections} -d{seconds}s (core 0) against nginx and rf-tap mock (core 1), {}-byte JSON bodies; {rounds} rounds",
        json.len()
    );
    let (mut ours, mut theirs) = (Vec::new(), Vec::new());
    for round in 0..rounds {
        let n = wrk(
            &pair.client_ns,
            &format!("http://{}/item", pair.server_ip),
            seconds,
            connections,
        )?;
        let m = wrk(
            &pair.client_ns,
            &format!("http://{listen}/item"),
            seconds,
            connections,
        )?;
        eprintln!(
            "  round {}/{rounds}: nginx {n:>9.0} req/s   rf-tap mock {m:>9.0} req/s",
            round + 1
        );
        theirs.push(n);
        ours.push(m);
    }
    let out = interrupt_and_collect(&mut mock)?;
    let summary: serde_json::Value = serde_json::from_slice(&out.stdout)
        .with_context(|| format!("mock summary: {}", String::from_utf8_lossy(&out.stdout)))?;
    let (m, n) = (median(ours), median(theirs));
    println!("\nmock benchmark: medians of {rounds} rounds, {seconds}s each, one core per server");
    println!("{:<14} {:>10}", "server", "req/s");
    println!("{:<14} {:>10.0}", "nginx (static)", n);
    println!("{:<14} {:>10.0}", "rf-tap mock", m);
    println!(
        "\nrf-tap mock / nginx: {:.2}x (goal >= 0.50); the mock matched {} of {} requests exactly (match rate {})",
        m / n,
        summary["exact"],
        summary["requests"],
        summary["match_rate"]
    );
    Ok(())
}
