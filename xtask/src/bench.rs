//! `cargo xtask bench capture`: rf-tap against tcpdump and netsniff-ng on the same traffic.
//!
//! wrk drives nginx at its maximum through a veth pair; each capture tool in turn records the
//! server's interface. Per run: wrk's requests/s, the packets the interface carried (offered,
//! from its kernel counters), the packets in the file (captured), the drops the tool admits,
//! and the CPU time of the capture process. Configurations are interleaved round by round, in
//! an order that rotates each round; a run's production cost is measured against the
//! no-capture run of its own round (paired, so that the machine's drift cancels), and medians
//! are printed, with ratios against tcpdump. One extra rf-tap run with the kernel's BPF
//! statistics on gives its in-kernel time per packet.

use std::{
    path::Path,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _};
use rf_tap_tests::{nginx, NetPair, Proc, TempDir};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Tool {
    None,
    RfTap,
    /// rf-tap with its reader at the others' niceness (`--reader-nice 0`).
    RfTapNice0,
    Tcpdump,
    TcpdumpBig,
    Netsniff,
}

impl Tool {
    fn name(self) -> &'static str {
        match self {
            Self::None => "no capture",
            Self::RfTap => "rf-tap (tc)",
            Self::RfTapNice0 => "rf-tap nice 0",
            Self::Tcpdump => "tcpdump -w",
            Self::TcpdumpBig => "tcpdump -B 65536",
            Self::Netsniff => "netsniff-ng",
        }
    }
}

#[derive(Clone, Copy, Debug, Default)]
struct Run {
    rps: f64,
    /// 1 - rps / rps of the same round's no-capture run, in percent.
    cost: f64,
    offered: u64,
    captured: u64,
    dropped: u64,
    cpu_s: f64,
}

pub fn iface_packets(ns: &str, iface: &str) -> anyhow::Result<u64> {
    let mut total = 0;
    for f in ["rx_packets", "tx_packets"] {
        let out = Command::new("ip")
            .args(["netns", "exec", ns, "cat"])
            .arg(format!("/sys/class/net/{iface}/statistics/{f}"))
            .output()?;
        total += String::from_utf8_lossy(&out.stdout).trim().parse::<u64>()?;
    }
    Ok(total)
}

/// utime + stime of a process, in seconds.
pub fn cpu_seconds(pid: u32) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0.0;
    };
    // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
    let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) else {
        return 0.0;
    };
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = f.get(11).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0)
        + f.get(12).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // SAFETY: sysconf is always safe to call.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    ticks / hz.max(1.0)
}

pub fn capinfos_count(path: &Path) -> anyhow::Result<u64> {
    let out = Command::new("capinfos")
        .args(["-c", "-M", "-T"])
        .arg(path)
        .output()
        .context("capinfos (from tshark) is needed: cargo xtask setup")?;
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .nth(1)
        .and_then(|l| l.split('\t').nth(1))
        .and_then(|n| n.trim().parse().ok())
        .with_context(|| format!("cannot read the packet count of {}: {text}", path.display()))
}

pub fn parse_after(text: &str, key: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.trim().strip_prefix(key))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

/// Run time and count of rf-tap's capture programs (`bpftool prog show`; the kernel counts
/// them only while `kernel.bpf_stats_enabled` is 1): those named like them and loaded at
/// most 20 s before `since` (Debian's bpftool does not list owning processes).
fn bpf_prog_stats(since: std::time::SystemTime) -> anyhow::Result<(u64, u64)> {
    let since = since
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let out = Command::new("bpftool")
        .args(["-j", "prog", "show"])
        .output()
        .context("bpftool is needed: cargo xtask setup")?;
    let progs: serde_json::Value =
        serde_json::from_slice(&out.stdout).context("bpftool -j prog show")?;
    let (mut ns, mut runs) = (0, 0);
    for p in progs.as_array().into_iter().flatten() {
        let ours = matches!(p["name"].as_str(), Some("tc_ingress" | "tc_egress"))
            && p["loaded_at"].as_u64().is_some_and(|t| t + 20 >= since);
        if ours {
            ns += p["run_time_ns"].as_u64().unwrap_or(0);
            runs += p["run_cnt"].as_u64().unwrap_or(0);
        }
    }
    Ok((ns, runs))
}

/// Sets `kernel.bpf_stats_enabled` for as long as it lives, then puts the old value back.
struct BpfStats(String);

impl BpfStats {
    const KNOB: &str = "/proc/sys/kernel/bpf_stats_enabled";
    fn on() -> anyhow::Result<Self> {
        let old = std::fs::read_to_string(Self::KNOB).context(Self::KNOB)?;
        std::fs::write(Self::KNOB, "1").context(Self::KNOB)?;
        Ok(Self(old.trim().to_string()))
    }
}

impl Drop for BpfStats {
    fn drop(&mut self) {
        let _ = std::fs::write(Self::KNOB, &self.0);
    }
}

fn one_run(
    tool: Tool,
    pair: &NetPair,
    dir: &TempDir,
    rf_tap: &Path,
    seconds: u64,
    connections: u32,
    prog_stats: Option<&mut (u64, u64)>,
) -> anyhow::Result<Run> {
    let file = dir.path(&format!("{:?}.pcap", tool).to_lowercase());
    let _ = std::fs::remove_file(&file);
    let ns = pair.server_ns.as_str();
    let ifc = pair.server_if.as_str();
    let file_s = file.to_str().context("path")?;
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", ns]);
    match tool {
        Tool::None => {}
        Tool::RfTap => {
            cmd.arg(rf_tap)
                .args(["attach", ifc, "--port", "80", "-q", "--json", "-w", file_s]);
        }
        Tool::RfTapNice0 => {
            cmd.arg(rf_tap)
                .args(["attach", ifc, "--port", "80", "-q", "--json", "-w", file_s])
                .args(["--reader-nice", "0"]);
        }
        Tool::Tcpdump => {
            cmd.args([
                "tcpdump", "-i", ifc, "-s", "0", "-w", file_s, "tcp", "port", "80",
            ]);
        }
        Tool::TcpdumpBig => {
            cmd.args(["tcpdump", "-i", ifc, "-s", "0", "-B", "65536", "-w", file_s]);
            cmd.args(["tcp", "port", "80"]);
        }
        Tool::Netsniff => {
            cmd.args(["netsniff-ng", "--in", ifc, "--out", file_s, "--silent"]);
            cmd.args(["--filter", "tcp port 80"]);
        }
    }
    let mut capture = if tool == Tool::None {
        None
    } else {
        let child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("cannot start {}", tool.name()))?;
        // Give it time to attach / open its socket.
        std::thread::sleep(Duration::from_millis(1500));
        Some(Proc {
            child: Some(child),
            name: tool.name().into(),
        })
    };

    let before = iface_packets(ns, ifc)?;
    // CPU from here on: the steady state, not loading programs or opening sockets.
    let cpu_before = capture
        .as_ref()
        .map_or(0.0, |p| cpu_seconds(p.pid() as u32));
    let started = std::time::SystemTime::now();
    let wrk = Command::new("ip")
        .args(["netns", "exec", &pair.client_ns, "wrk", "-t1"])
        .arg(format!("-c{connections}"))
        .arg(format!("-d{seconds}s"))
        .args(["--timeout", "2s"])
        .arg(format!("http://{}/small", pair.server_ip))
        .output()
        .context("cannot run wrk")?;
    let wrk_text = String::from_utf8_lossy(&wrk.stdout).into_owned();
    let rps = parse_after(&wrk_text, "Requests/sec:").unwrap_or(0.0);
    // Let the last packets drain into the capture.
    std::thread::sleep(Duration::from_millis(500));
    let after = iface_packets(ns, ifc)?;

    let mut run = Run {
        rps,
        offered: after - before,
        ..Run::default()
    };
    if let Some(p) = capture.as_mut() {
        run.cpu_s = cpu_seconds(p.pid() as u32) - cpu_before;
        if let Some(st) = prog_stats {
            *st = bpf_prog_stats(started)?;
        }
        let out = interrupt_and_collect(p)?;
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        run.captured = capinfos_count(&file)?;
        run.dropped = match tool {
            Tool::RfTap | Tool::RfTapNice0 => {
                let v: serde_json::Value = serde_json::from_str(stdout.trim())
                    .with_context(|| format!("rf-tap summary: {stdout} {stderr}"))?;
                v["dropped_kernel"].as_u64().unwrap_or(0) + v["dropped_user"].as_u64().unwrap_or(0)
            }
            Tool::Tcpdump | Tool::TcpdumpBig => stderr
                .lines()
                .find(|l| l.contains("dropped by kernel"))
                .and_then(|l| l.split_whitespace().next())
                .and_then(|n| n.parse().ok())
                .unwrap_or(0),
            _ => 0,
        };
    }
    let _ = std::fs::remove_file(&file);
    Ok(run)
}

/// Stops a capture process the way a user would (SIGINT to its own PID), waits at most 30 s
/// for it to finish its file, and returns its output.
pub fn interrupt_and_collect(p: &mut Proc) -> anyhow::Result<std::process::Output> {
    // SAFETY: signalling our own child.
    unsafe { libc::kill(p.pid(), libc::SIGINT) };
    let mut child = p.child.take().context("capture process")?;
    let deadline = Instant::now() + Duration::from_secs(30);
    while child.try_wait()?.is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            bail!("{} did not stop", p.name);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(child.wait_with_output()?)
}

pub fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    if v.is_empty() {
        0.0
    } else {
        v[v.len() / 2]
    }
}

/// What `bench capture` drives.
pub struct CaptureLoad {
    pub seconds: u64,
    pub rounds: usize,
    pub connections: u32,
    /// Both cores kept busy by `stress-ng --cpu 2` during every run.
    pub contended: bool,
    /// Response body size; None is a 24-byte JSON object.
    pub body: Option<usize>,
}

pub fn capture(rf_tap: &Path, load: CaptureLoad, json: bool) -> anyhow::Result<()> {
    let CaptureLoad {
        seconds,
        rounds,
        connections,
        contended,
        body,
    } = load;
    std::env::set_var("RF_TAP_BIN", rf_tap);
    let pair = NetPair::new();
    let dir = TempDir::new("bench-capture");
    let www = dir.path("www");
    std::fs::create_dir_all(&www)?;
    match body {
        Some(n) => std::fs::write(www.join("small"), vec![b'x'; n])?,
        None => std::fs::write(www.join("small"), "{\"id\":\"u_1\",\"ok\":true}\n")?,
    }
    let _srv = nginx(&pair.server_ns, &dir, &[format!("{}:80", pair.server_ip)]);
    let _hogs = if contended {
        eprintln!("bench capture: both cores kept busy by stress-ng --cpu 2");
        Some(rf_tap_tests::CpuHogs::start(2, Duration::from_secs(3600)))
    } else {
        None
    };
    let load_text = format!(
        "{}{}",
        match body {
            Some(n) => format!("{n}-byte bodies"),
            None => "24-byte bodies".into(),
        },
        if contended {
            ", both cores also kept busy by stress-ng --cpu 2"
        } else {
            ""
        }
    );
    let tools = [
        Tool::None,
        Tool::RfTap,
        Tool::RfTapNice0,
        Tool::Tcpdump,
        Tool::TcpdumpBig,
        Tool::Netsniff,
    ];
    let mut results: Vec<Vec<Run>> = vec![Vec::new(); tools.len()];
    eprintln!(
        "bench capture: wrk -t1 -c{connections} -d{seconds}s against nginx through a veth pair; {rounds} rounds of {} configurations",
        tools.len()
    );
    for round in 0..rounds {
        // Rotate the order so that no tool always runs furthest from the baseline.
        let mut base_rps = 0.0;
        for k in 0..tools.len() {
            let i = (k + round) % tools.len();
            let tool = tools[i];
            eprint!("  round {}/{rounds}: {:<18}", round + 1, tool.name());
            let r = one_run(tool, &pair, &dir, rf_tap, seconds, connections, None)?;
            if tool == Tool::None {
                base_rps = r.rps;
            }
            eprintln!(
                " {:>9.0} req/s  offered {:>9}  captured {:>9}  dropped {:>7}  cpu {:.2}s",
                r.rps, r.offered, r.captured, r.dropped, r.cpu_s
            );
            results[i].push(r);
        }
        // Each run's cost against this round's no-capture run.
        for (i, tool) in tools.iter().enumerate() {
            if let Some(last) = results[i].last_mut() {
                last.cost = if *tool == Tool::None || base_rps <= 0.0 {
                    0.0
                } else {
                    (1.0 - last.rps / base_rps) * 100.0
                };
            }
        }
    }
    eprint!("  extra run: rf-tap with kernel.bpf_stats_enabled=1");
    let mut prog = (0u64, 0u64);
    {
        let _stats = BpfStats::on()?;
        one_run(
            Tool::RfTap,
            &pair,
            &dir,
            rf_tap,
            seconds,
            connections,
            Some(&mut prog),
        )?;
    }
    let kernel_ns = if prog.1 > 0 {
        prog.0 as f64 / prog.1 as f64
    } else {
        f64::NAN
    };
    eprintln!(" {kernel_ns:.0} ns per program run over {} runs", prog.1);

    struct Row {
        name: &'static str,
        rps: f64,
        cost: f64,
        offered: f64,
        captured: f64,
        loss: f64,
        dropped: f64,
        cpu_us_per_pkt: f64,
    }
    let rows: Vec<Row> = tools
        .iter()
        .zip(&results)
        .map(|(t, runs)| {
            let rps = median(runs.iter().map(|r| r.rps).collect());
            let offered = median(runs.iter().map(|r| r.offered as f64).collect());
            let captured = median(runs.iter().map(|r| r.captured as f64).collect());
            let loss = median(
                runs.iter()
                    .map(|r| {
                        if r.offered == 0 || *t == Tool::None {
                            0.0
                        } else {
                            (r.offered.saturating_sub(r.captured)) as f64 / r.offered as f64 * 100.0
                        }
                    })
                    .collect(),
            );
            Row {
                name: t.name(),
                rps,
                cost: median(runs.iter().map(|r| r.cost).collect()),
                offered,
                captured,
                loss,
                dropped: median(runs.iter().map(|r| r.dropped as f64).collect()),
                cpu_us_per_pkt: median(
                    runs.iter()
                        .map(|r| {
                            if r.captured > 0 {
                                r.cpu_s * 1e6 / r.captured as f64
                            } else {
                                0.0
                            }
                        })
                        .collect(),
                ),
            }
        })
        .collect();

    if json {
        let v: Vec<serde_json::Value> = rows
            .iter()
            .map(|r| {
                serde_json::json!({
                    "tool": r.name, "requests_per_s": r.rps, "cost_pct": r.cost,
                    "offered_packets": r.offered, "captured_packets": r.captured,
                    "loss_pct": r.loss, "dropped_reported": r.dropped,
                    "cpu_us_per_packet": r.cpu_us_per_pkt,
                })
            })
            .collect();
        let v = serde_json::json!({
            "tools": v,
            "rf_tap_kernel_ns_per_program_run": kernel_ns,
            "rounds": rounds,
            "seconds": seconds,
            "contended": contended,
            "body_bytes": body,
        });
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    println!(
        "\ncapture benchmark: medians of {rounds} rounds, {seconds}s each, wrk -t1 -c{connections} on one veth pair (2 cores shared by wrk, nginx and the capture), {load_text}; cost = 1 - req/s over the same round's no-capture req/s"
    );
    println!(
        "{:<18} {:>10} {:>9} {:>12} {:>12} {:>8} {:>9} {:>12}",
        "tool", "req/s", "cost", "offered", "captured", "loss", "dropped", "proc us/pkt"
    );
    for r in &rows {
        println!(
            "{:<18} {:>10.0} {:>8.1}% {:>12.0} {:>12.0} {:>7.2}% {:>9.0} {:>12.3}",
            r.name, r.rps, r.cost, r.offered, r.captured, r.loss, r.dropped, r.cpu_us_per_pkt
        );
    }
    let rf = &rows[1];
    let td = &rows[3];
    println!(
        "\nrf-tap vs tcpdump: loss {:.2}% vs {:.2}% (rf-tap with --reader-nice 0: {:.2}%); production cost {:.1}% vs {:.1}%; process CPU per captured packet {:.2}x tcpdump's",
        rf.loss,
        td.loss,
        rows[2].loss,
        rf.cost,
        td.cost,
        if td.cpu_us_per_pkt > 0.0 { rf.cpu_us_per_pkt / td.cpu_us_per_pkt } else { f64::NAN }
    );
    println!(
        "rf-tap in the kernel (extra run, BPF statistics on): {kernel_ns:.0} ns per program run, on the packet's own path; the 'proc' column is the capture process alone (for tcpdump and netsniff-ng, their kernel copy into the packet socket is not in it either)"
    );
    Ok(())
}
