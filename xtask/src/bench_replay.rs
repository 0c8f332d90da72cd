//! `cargo xtask bench replay`: rf-tap's packet replay beside tcpreplay, on one veth pair.
//!
//! 1. Top speed: a capture of 64-byte frames and one of 1514-byte frames, replayed with
//!    `--topspeed` onto one end of a veth pair by each tool in turn (rounds interleaved);
//!    the rate is the packets the other end received (its rx counter) over the tool's wall
//!    time, so a tool that claims packets the wire never carried gains nothing.
//! 2. Accuracy: a 10,000-packet capture with bursty, heavy-tailed gaps replayed at 2x; the
//!    receiving end is captured by `rf-tap attach` (kernel timestamps) and each arrival is
//!    compared with its due instant (anchored at the first arrival): total duration error
//!    and p99 per-packet lateness.

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use crate::bench::median;
use anyhow::{bail, Context as _};
use rf_tap_tests::{read_pcap, udp_frame, write_pcap, NetPair, RfTap, TempDir};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Tool {
    Tcpreplay,
    RfTap,
    RfTapBypass,
    RfTapXdp,
}

impl Tool {
    fn name(self) -> &'static str {
        match self {
            Self::Tcpreplay => "tcpreplay 4.4",
            Self::RfTap => "rf-tap af-packet",
            Self::RfTapBypass => "rf-tap af-packet+bypass",
            Self::RfTapXdp => "rf-tap af-xdp",
        }
    }
}

fn rx_packets(ns: &str, iface: &str) -> anyhow::Result<u64> {
    let out = Command::new("ip")
        .args(["netns", "exec", ns, "cat"])
        .arg(format!("/sys/class/net/{iface}/statistics/rx_packets"))
        .output()?;
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .context("rx_packets")
}

fn command(
    tool: Tool,
    rf_tap: &Path,
    ns: &str,
    iface: &str,
    file: &Path,
    timing: &[&str],
) -> Command {
    let mut c = Command::new("ip");
    c.args(["netns", "exec", ns]);
    match tool {
        Tool::Tcpreplay => {
            c.args(["tcpreplay", "-q", "-i", iface]);
            for t in timing {
                c.arg(match *t {
                    "--topspeed" => "--topspeed".to_string(),
                    other => format!("--multiplier={}", other.trim_end_matches('x')),
                });
            }
        }
        Tool::RfTap | Tool::RfTapBypass | Tool::RfTapXdp => {
            c.arg(rf_tap)
                .args(["replay", "-q", "--json", "--iface", iface]);
            for t in timing {
                match *t {
                    "--topspeed" => c.arg("--topspeed"),
                    other => c.args(["--speed", other]),
                };
            }
            if tool == Tool::RfTapBypass {
                c.arg("--qdisc-bypass");
            }
            if tool == Tool::RfTapXdp {
                c.args(["--backend", "af-xdp"]);
            }
        }
    }
    c.arg(file);
    c
}

/// Runs one tool's replay of `file` onto the client end of the pair, to the end.
fn run_to_end(
    tool: Tool,
    rf_tap: &Path,
    pair: &NetPair,
    file: &Path,
    timing: &[&str],
) -> anyhow::Result<()> {
    let out = command(tool, rf_tap, &pair.client_ns, &pair.client_if, file, timing)
        .output()
        .with_context(|| format!("cannot run {}", tool.name()))?;
    if !out.status.success() {
        bail!(
            "{} failed: {}",
            tool.name(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

/// Runs a replay to the end; returns (wall time, packets received by the peer).
fn topspeed_run(
    tool: Tool,
    rf_tap: &Path,
    pair: &NetPair,
    file: &Path,
) -> anyhow::Result<(f64, u64)> {
    let before = rx_packets(&pair.server_ns, &pair.server_if)?;
    let started = Instant::now();
    run_to_end(tool, rf_tap, pair, file, &["--topspeed"])?;
    let wall = started.elapsed().as_secs_f64();
    std::thread::sleep(Duration::from_millis(200));
    let after = rx_packets(&pair.server_ns, &pair.server_if)?;
    Ok((wall, after - before))
}

fn quantile(mut v: Vec<f64>, q: f64) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    if v.is_empty() {
        return 0.0;
    }
    let i = ((q * v.len() as f64).ceil() as usize).clamp(1, v.len()) - 1;
    v[i]
}

/// A capture of `n` UDP frames of `frame_len` bytes, 1 µs apart.
fn flood(path: &Path, n: u32, frame_len: usize) {
    let payload = frame_len.saturating_sub(42);
    let base = udp_frame([10, 77, 0, 1], [10, 77, 0, 2], 4000, 4001, 0, payload);
    let recs: Vec<_> = (0..n)
        .map(|i| {
            let mut f = base.clone();
            f[42..46].copy_from_slice(&i.to_be_bytes());
            let l = f.len() as u32;
            (1_700_000_000_000_000_000 + u64::from(i) * 1000, f, l)
        })
        .collect();
    write_pcap(path, 1, &recs);
}

/// 10,000 frames whose gaps look like request traffic: bursts of back-to-back segments
/// (tens of µs), think times (ms), and a heavy tail (tens of ms).
fn bursty(path: &Path) -> Vec<u64> {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut rnd = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        (x >> 11) as f64 / (1u64 << 53) as f64
    };
    let mut t = 1_700_000_000_000_000_000u64;
    let mut recs = Vec::new();
    let mut ts = Vec::new();
    for i in 0..10_000u32 {
        let r = rnd();
        let gap_us = if r < 0.6 {
            5.0 + rnd() * 60.0
        } else if r < 0.95 {
            200.0 + rnd() * 1800.0
        } else {
            5_000.0 + rnd() * 20_000.0
        };
        if i > 0 {
            t += (gap_us * 1000.0) as u64;
        }
        let len = if rnd() < 0.5 { 100 } else { 1200 };
        let f = udp_frame([10, 78, 0, 1], [10, 78, 0, 2], 4000, 4001, i, len);
        let l = f.len() as u32;
        recs.push((t, f, l));
        ts.push(t);
    }
    write_pcap(path, 1, &recs);
    ts
}

struct Accuracy {
    duration_err_pct: f64,
    p50_late_us: f64,
    p99_late_us: f64,
    max_late_us: f64,
    received: usize,
}

fn accuracy_run(
    tool: Tool,
    rf_tap: &Path,
    pair: &NetPair,
    dir: &TempDir,
    file: &Path,
    ts: &[u64],
) -> anyhow::Result<Accuracy> {
    let cap = dir.path("accuracy-cap.pcap");
    let _ = std::fs::remove_file(&cap);
    let mut tap = RfTap::spawn(
        &pair.server_ns,
        &[
            "attach",
            &pair.server_if,
            "-q",
            "--json",
            "-w",
            cap.to_str().context("path")?,
            "--rule",
            "num=1,dir=ingress,action=accept,proto=udp,dst-port=4001",
        ],
    );
    tap.wait_attached();
    run_to_end(tool, rf_tap, pair, file, &["2x"])?;
    std::thread::sleep(Duration::from_millis(300));
    let fin = tap.stop();
    if !fin.status.success() {
        bail!("capture failed: {}", fin.stderr);
    }
    let (recs, _) = read_pcap(&cap);
    let arrivals: HashMap<u32, u64> = recs
        .iter()
        .filter_map(|r| {
            let id = u32::from_be_bytes(r.data.get(42..46)?.try_into().ok()?);
            Some((id, r.ts_ns))
        })
        .collect();
    let (Some(&a0), Some(&alast)) = (arrivals.get(&0), arrivals.get(&(ts.len() as u32 - 1))) else {
        bail!(
            "first or last packet not received ({} of {})",
            arrivals.len(),
            ts.len()
        );
    };
    let due = |i: usize| (ts[i] - ts[0]) as f64 / 2.0;
    let mut late = Vec::new();
    for (i, _) in ts.iter().enumerate() {
        if let Some(&a) = arrivals.get(&(i as u32)) {
            late.push((((a - a0) as f64 - due(i)) / 1000.0).max(0.0));
        }
    }
    let want = due(ts.len() - 1);
    Ok(Accuracy {
        duration_err_pct: ((alast - a0) as f64 - want).abs() / want * 100.0,
        p50_late_us: quantile(late.clone(), 0.5),
        p99_late_us: quantile(late.clone(), 0.99),
        max_late_us: quantile(late, 1.0),
        received: arrivals.len(),
    })
}

pub fn replay(rf_tap: &Path, rounds: usize, packets: u32) -> anyhow::Result<()> {
    std::env::set_var("RF_TAP_BIN", rf_tap);
    let pair = NetPair::new();
    let dir = TempDir::new("bench-replay");
    let small: PathBuf = dir.path("64.pcap");
    let large: PathBuf = dir.path("1514.pcap");
    flood(&small, packets, 60);
    flood(&large, packets / 2, 1514);
    let tools = [
        Tool::Tcpreplay,
        Tool::RfTap,
        Tool::RfTapBypass,
        Tool::RfTapXdp,
    ];
    eprintln!(
        "bench replay: --topspeed onto a veth pair, {packets} × 64-byte and {} × 1514-byte frames, {rounds} rounds",
        packets / 2
    );
    let mut rates: HashMap<(usize, &str), Vec<f64>> = HashMap::new();
    for round in 0..rounds {
        for (label, file, n) in [("64B", &small, packets), ("1514B", &large, packets / 2)] {
            for (ti, tool) in tools.iter().enumerate() {
                let (wall, rx) = topspeed_run(*tool, rf_tap, &pair, file)?;
                let pps = rx as f64 / wall;
                eprintln!(
                    "  round {}/{rounds} {label:>5} {:<24} {:>10.0} pps received ({rx}/{n} in {wall:.3}s)",
                    round + 1,
                    tool.name(),
                    pps
                );
                rates.entry((ti, label)).or_default().push(pps);
            }
        }
    }
    let bursty_file = dir.path("bursty.pcap");
    let ts = bursty(&bursty_file);
    let span = (ts[ts.len() - 1] - ts[0]) as f64 / 1e9;
    eprintln!(
        "accuracy: 10,000 packets spanning {span:.2}s replayed at 2x, captured by rf-tap attach"
    );
    let mut acc: Vec<Vec<Accuracy>> = vec![Vec::new(), Vec::new()];
    for round in 0..rounds {
        for (ti, tool) in [Tool::Tcpreplay, Tool::RfTap].iter().enumerate() {
            let a = accuracy_run(*tool, rf_tap, &pair, &dir, &bursty_file, &ts)?;
            eprintln!(
                "  round {}/{rounds} {:<24} duration error {:.4}%  p50 {:.0} µs  p99 {:.0} µs  max {:.0} µs  ({} received)",
                round + 1,
                tool.name(),
                a.duration_err_pct,
                a.p50_late_us,
                a.p99_late_us,
                a.max_late_us,
                a.received
            );
            acc[ti].push(a);
        }
    }

    println!("\nreplay benchmark (medians of {rounds} rounds; one veth pair, 2 shared cores)");
    println!(
        "{:<26} {:>14} {:>14}",
        "top speed, received pps", "64-byte", "1514-byte"
    );
    for (ti, tool) in tools.iter().enumerate() {
        println!(
            "{:<26} {:>14.0} {:>14.0}",
            tool.name(),
            median(rates[&(ti, "64B")].clone()),
            median(rates[&(ti, "1514B")].clone())
        );
    }
    for (ti, tool) in tools.iter().enumerate().skip(1) {
        let r = |l: &str| median(rates[&(ti, l)].clone()) / median(rates[&(0, l)].clone());
        println!(
            "{} / tcpreplay: {:.2}x (64-byte), {:.2}x (1514-byte)",
            tool.name(),
            r("64B"),
            r("1514B")
        );
    }
    println!(
        "\n{:<26} {:>16} {:>12} {:>12} {:>12}",
        "accuracy at 2x", "duration error", "p50 late", "p99 late", "max late"
    );
    for (ti, tool) in [Tool::Tcpreplay, Tool::RfTap].iter().enumerate() {
        let m = |f: fn(&Accuracy) -> f64| median(acc[ti].iter().map(f).collect());
        println!(
            "{:<26} {:>15.4}% {:>9.0} µs {:>9.0} µs {:>9.0} µs",
            tool.name(),
            m(|a| a.duration_err_pct),
            m(|a| a.p50_late_us),
            m(|a| a.p99_late_us),
            m(|a| a.max_late_us)
        );
    }
    Ok(())
}
