//! `cargo xtask bench sink`: capturing a dedicated sink interface under a packet flood.
//!
//! A veth pair whose sink end has no addresses (nothing else crosses it). The sender floods
//! 64-byte UDP frames at top speed with `rf-tap replay --backend af-xdp` (the fastest sender
//! here); each capture tool in turn records the sink end to a file on tmpfs:
//! `rf-tap attach --mode afxdp`, `rf-tap attach` through the ring buffer (tc and xdp hooks),
//! and `tcpdump -B 65536`. Per run: packets offered (sent and not dropped by the veth),
//! packets in the file, the capture rate (file packets over the flood's duration) and CPU
//! per captured packet. Configurations are interleaved round by round; medians are printed
//! with ratios against tcpdump and against the ring buffer.

use std::{
    path::Path,
    process::{Command, Stdio},
    time::Duration,
};

use anyhow::{bail, Context as _};
use rf_tap_tests::{write_udp_flood, Proc, TempDir};

use crate::{
    bench::{capinfos_count, cpu_seconds, interrupt_and_collect, median},
    bench_mirror::ip,
};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Tool {
    AfXdp,
    RingTc,
    RingXdp,
    Tcpdump,
}

impl Tool {
    fn name(self) -> &'static str {
        match self {
            Self::AfXdp => "rf-tap afxdp",
            Self::RingTc => "rf-tap tc (ring)",
            Self::RingXdp => "rf-tap xdp (ring)",
            Self::Tcpdump => "tcpdump -B 65536",
        }
    }
}

#[derive(Clone, Copy, Debug, Default)]
struct Run {
    offered: u64,
    captured: u64,
    flood_s: f64,
    cpu_s: f64,
    /// Busy CPU time of the whole machine during the flood (sender, kernel, capture).
    system_cpu_s: f64,
}

/// Busy (non-idle) CPU seconds of the whole machine so far, from /proc/stat.
fn busy_cpu_seconds() -> f64 {
    let Ok(stat) = std::fs::read_to_string("/proc/stat") else {
        return 0.0;
    };
    let Some(line) = stat.lines().find(|l| l.starts_with("cpu ")) else {
        return 0.0;
    };
    let v: Vec<f64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal ...
    let total: f64 = v.iter().take(8).sum();
    let idle = v.get(3).copied().unwrap_or(0.0) + v.get(4).copied().unwrap_or(0.0);
    // SAFETY: sysconf is always safe to call.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    (total - idle) / hz.max(1.0)
}

/// Two namespaces and a veth pair; removed on drop.
struct Sink {
    tx_ns: String,
    rx_ns: String,
}

impl Sink {
    fn new() -> anyhow::Result<Self> {
        let tag = std::process::id() % 0xfffff;
        let s = Self {
            tx_ns: format!("rfbk-tx-{tag:x}"),
            rx_ns: format!("rfbk-rx-{tag:x}"),
        };
        for ns in [&s.tx_ns, &s.rx_ns] {
            ip(&["netns", "add", ns])?;
        }
        ip(&[
            "-n", &s.tx_ns, "link", "add", "bks0", "type", "veth", "peer", "name", "bks1", "netns",
            &s.rx_ns,
        ])?;
        for (ns, dev) in [(&s.tx_ns, "bks0"), (&s.rx_ns, "bks1")] {
            ip(&["-n", ns, "link", "set", dev, "addrgenmode", "none"])?;
            ip(&["-n", ns, "link", "set", dev, "up"])?;
        }
        Ok(s)
    }
}

impl Drop for Sink {
    fn drop(&mut self) {
        for ns in [&self.tx_ns, &self.rx_ns] {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}

fn counter(ns: &str, dev: &str, name: &str) -> anyhow::Result<u64> {
    let out = Command::new("ip")
        .args(["netns", "exec", ns, "cat"])
        .arg(format!("/sys/class/net/{dev}/statistics/{name}"))
        .output()?;
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .with_context(|| format!("{dev} {name}"))
}

fn one_run(
    tool: Tool,
    sink: &Sink,
    dir: &TempDir,
    rf_tap: &Path,
    flood: &Path,
    loops: u32,
) -> anyhow::Result<Run> {
    let file = dir.path("capture.pcap");
    let _ = std::fs::remove_file(&file);
    let file_s = file.to_str().context("path")?;
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", &sink.rx_ns]);
    match tool {
        Tool::AfXdp | Tool::RingTc | Tool::RingXdp => {
            let mode = match tool {
                Tool::AfXdp => "afxdp",
                Tool::RingTc => "tc",
                _ => "xdp",
            };
            cmd.arg(rf_tap).args([
                "attach", "bks1", "--mode", mode, "-q", "--json", "-w", file_s,
            ]);
        }
        Tool::Tcpdump => {
            cmd.args([
                "tcpdump", "-i", "bks1", "-s", "0", "-B", "65536", "-w", file_s,
            ]);
        }
    }
    let child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("cannot start {}", tool.name()))?;
    let mut capture = Proc {
        child: Some(child),
        name: tool.name().into(),
    };
    std::thread::sleep(Duration::from_millis(1500));

    let dropped_before = counter(&sink.tx_ns, "bks0", "tx_dropped")?;
    let busy_before = busy_cpu_seconds();
    let sent = Command::new("ip")
        .args(["netns", "exec", &sink.tx_ns])
        .arg(rf_tap)
        .args([
            "replay",
            "-q",
            "--json",
            "--topspeed",
            "--backend",
            "af-xdp",
        ])
        .args(["--loop", &loops.to_string(), "-i", "bks0"])
        .arg(flood)
        .output()
        .context("cannot run the sender")?;
    if !sent.status.success() {
        bail!("sender: {}", String::from_utf8_lossy(&sent.stderr));
    }
    let system_cpu_s = busy_cpu_seconds() - busy_before;
    let v: serde_json::Value = serde_json::from_slice(&sent.stdout).context("sender summary")?;
    let dropped = counter(&sink.tx_ns, "bks0", "tx_dropped")? - dropped_before;
    let packets = v["packets"].as_u64().unwrap_or(0);
    let mut run = Run {
        offered: packets.saturating_sub(dropped),
        flood_s: v["elapsed_s"].as_f64().unwrap_or(0.0),
        system_cpu_s,
        ..Run::default()
    };
    // Let the capture drain what it holds.
    std::thread::sleep(Duration::from_millis(1000));
    run.cpu_s = cpu_seconds(capture.pid() as u32);
    interrupt_and_collect(&mut capture)?;
    run.captured = capinfos_count(&file)?;
    let _ = std::fs::remove_file(&file);
    Ok(run)
}

pub fn sink(rf_tap: &Path, rounds: usize, packets: u32) -> anyhow::Result<()> {
    let sink = Sink::new()?;
    let dir = TempDir::new("bench-sink");
    // 100,000 distinct frames (1,000 flows), looped to make up the flood.
    let distinct = 100_000u32.min(packets);
    let loops = packets.div_ceil(distinct).max(1);
    let flood = dir.path("flood.pcap");
    write_udp_flood(&flood, distinct, 1000, |_| 7777);

    let tools = [Tool::AfXdp, Tool::RingTc, Tool::RingXdp, Tool::Tcpdump];
    let mut results: Vec<Vec<Run>> = vec![Vec::new(); tools.len()];
    eprintln!(
        "bench sink: {} 64-byte frames per run, sent at top speed through a veth pair by rf-tap replay --backend af-xdp; {rounds} rounds of {} tools",
        distinct * loops,
        tools.len()
    );
    for round in 0..rounds {
        for (i, tool) in tools.iter().enumerate() {
            eprint!("  round {}/{rounds}: {:<18}", round + 1, tool.name());
            let r = one_run(*tool, &sink, &dir, rf_tap, &flood, loops)?;
            eprintln!(
                " offered {:>9} at {:>8.0} pps  captured {:>9}  cpu {:.2}s  machine busy {:.2}s",
                r.offered,
                r.offered as f64 / r.flood_s.max(1e-9),
                r.captured,
                r.cpu_s,
                r.system_cpu_s
            );
            results[i].push(r);
        }
    }

    struct Row {
        name: &'static str,
        offered_pps: f64,
        captured_pps: f64,
        captured_pct: f64,
        cpu_ns: f64,
        system_ns: f64,
    }
    let rows: Vec<Row> = tools
        .iter()
        .zip(&results)
        .map(|(t, runs)| Row {
            name: t.name(),
            offered_pps: median(
                runs.iter()
                    .map(|r| r.offered as f64 / r.flood_s.max(1e-9))
                    .collect(),
            ),
            captured_pps: median(
                runs.iter()
                    .map(|r| r.captured as f64 / r.flood_s.max(1e-9))
                    .collect(),
            ),
            captured_pct: median(
                runs.iter()
                    .map(|r| r.captured as f64 * 100.0 / r.offered.max(1) as f64)
                    .collect(),
            ),
            cpu_ns: median(
                runs.iter()
                    .map(|r| r.cpu_s * 1e9 / r.captured.max(1) as f64)
                    .collect(),
            ),
            system_ns: median(
                runs.iter()
                    .map(|r| r.system_cpu_s * 1e9 / r.offered.max(1) as f64)
                    .collect(),
            ),
        })
        .collect();
    println!(
        "\nsink capture benchmark: medians of {rounds} rounds, {} frames of 64 bytes per run, 2 cores shared by sender and capture",
        distinct * loops
    );
    println!(
        "{:<18} {:>12} {:>13} {:>10} {:>14} {:>14}",
        "tool", "offered pps", "captured pps", "captured", "tool ns/pkt", "machine ns/pkt"
    );
    for r in &rows {
        println!(
            "{:<18} {:>12.0} {:>13.0} {:>9.1}% {:>14.0} {:>14.0}",
            r.name, r.offered_pps, r.captured_pps, r.captured_pct, r.cpu_ns, r.system_ns
        );
    }
    println!(
        "(tool ns/pkt: the capture process's CPU per captured packet; machine ns/pkt: busy CPU of \
         the whole machine during the flood per offered packet: sender, both veth ends' kernel \
         paths and the capture. On veth the receive path runs on the sender's core, so a costlier \
         capture path slows the sender: the offered rate is the highest the pair sustains.)"
    );
    let ratio = |a: f64, b: f64| if b > 0.0 { a / b } else { f64::NAN };
    println!(
        "\nrf-tap afxdp captured pps: {:.2}x tcpdump, {:.2}x rf-tap tc (ring), {:.2}x rf-tap xdp (ring)",
        ratio(rows[0].captured_pps, rows[3].captured_pps),
        ratio(rows[0].captured_pps, rows[1].captured_pps),
        ratio(rows[0].captured_pps, rows[2].captured_pps),
    );
    Ok(())
}
