//! `cargo xtask bench mirror`: an rf-tap mirror session against the standard Linux way
//! (`tc filter ... u32 match u32 0 0 action mirred egress mirror dev vxlan0`; u32 because
//! this kernel has no matchall classifier) on the same traffic.
//!
//! wrk drives nginx at its maximum through a veth pair (client ↔ source); the source's
//! interface is mirrored over a second veth pair to a target namespace whose plain Linux
//! VXLAN device counts what arrives. Per run: wrk's requests/s (the production cost), the
//! packets the mirrored interface carried (offered) and the copies the target received
//! (mirrored). Configurations are interleaved round by round; medians are printed.

use std::{path::Path, process::Command, time::Duration};

use anyhow::{bail, Context as _};
use rf_tap_tests::{nginx, TempDir};

use crate::bench::{iface_packets, median, parse_after};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Config {
    None,
    Mirred,
    Session,
    SessionTruncated,
}

impl Config {
    fn name(self) -> &'static str {
        match self {
            Self::None => "no mirroring",
            Self::Mirred => "tc mirred -> vxlan0",
            Self::Session => "rf-tap session",
            Self::SessionTruncated => "rf-tap session -l 128",
        }
    }
}

const VNI: &str = "77";

struct Lab {
    cli: String,
    src: String,
    tgt: String,
    server_ip: String,
    target_ip: String,
}

pub fn ip(args: &[&str]) -> anyhow::Result<()> {
    let out = Command::new("ip").args(args).output()?;
    if !out.status.success() {
        bail!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

fn run(ns: &str, args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new("ip")
        .args(["netns", "exec", ns])
        .args(args)
        .output()
        .with_context(|| format!("cannot run {args:?}"))?;
    if !out.status.success() {
        bail!(
            "{args:?} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

impl Lab {
    fn new() -> anyhow::Result<Self> {
        let tag = format!("{:x}", std::process::id() % 0xfffff);
        let lab = Self {
            cli: format!("rfbc-{tag}"),
            src: format!("rfbs-{tag}"),
            tgt: format!("rfbt-{tag}"),
            server_ip: "10.251.1.2".into(),
            target_ip: "10.251.2.2".into(),
        };
        for ns in [&lab.cli, &lab.src, &lab.tgt] {
            ip(&["netns", "add", ns])?;
            ip(&["-n", ns, "link", "set", "lo", "up"])?;
        }
        ip(&[
            "-n", &lab.cli, "link", "add", "capp", "type", "veth", "peer", "name", "sapp", "netns",
            &lab.src,
        ])?;
        ip(&[
            "-n", &lab.src, "link", "add", "smir", "type", "veth", "peer", "name", "tmir", "netns",
            &lab.tgt,
        ])?;
        for (ns, dev, addr, mtu) in [
            (&lab.cli, "capp", "10.251.1.1/24", "1500"),
            (&lab.src, "sapp", "10.251.1.2/24", "1500"),
            // Room for a whole frame plus VXLAN on the mirror path, so neither way cuts or
            // fragments copies.
            (&lab.src, "smir", "10.251.2.1/24", "9000"),
            (&lab.tgt, "tmir", "10.251.2.2/24", "9000"),
        ] {
            ip(&["-n", ns, "addr", "add", addr, "dev", dev])?;
            ip(&["-n", ns, "link", "set", dev, "mtu", mtu, "up"])?;
        }
        ip(&[
            "-n",
            &lab.tgt,
            "link",
            "add",
            "vx",
            "type",
            "vxlan",
            "id",
            VNI,
            "dstport",
            "4789",
            "local",
            &lab.target_ip,
            "nolearning",
        ])?;
        ip(&["-n", &lab.tgt, "link", "set", "vx", "up"])?;
        Ok(lab)
    }

    fn start(&self, config: Config, rf_tap: &Path) -> anyhow::Result<()> {
        let rf = rf_tap.to_str().context("path")?;
        match config {
            Config::None => {}
            Config::Mirred => {
                // The standard way's device, a VXLAN device with the target as remote. It
                // exists only during its runs: it holds UDP 4789, which an rf-tap session's
                // own device needs too.
                ip(&[
                    "-n",
                    &self.src,
                    "link",
                    "add",
                    "vxlan0",
                    "type",
                    "vxlan",
                    "id",
                    VNI,
                    "remote",
                    &self.target_ip,
                    "dstport",
                    "4789",
                    "dev",
                    "smir",
                ])?;
                ip(&[
                    "-n", &self.src, "link", "set", "vxlan0", "mtu", "8950", "up",
                ])?;
                run(&self.src, &["tc", "qdisc", "add", "dev", "sapp", "clsact"])?;
                for hook in ["ingress", "egress"] {
                    run(
                        &self.src,
                        &[
                            "tc", "filter", "add", "dev", "sapp", hook, "protocol", "all", "u32",
                            "match", "u32", "0", "0", "action", "mirred", "egress", "mirror",
                            "dev", "vxlan0",
                        ],
                    )?;
                }
            }
            Config::Session | Config::SessionTruncated => {
                let mut args = vec![
                    rf,
                    "session",
                    "create",
                    "--iface",
                    "sapp",
                    "--target",
                    &self.target_ip,
                    "--vni",
                    VNI,
                    "--port",
                    "80",
                ];
                if config == Config::SessionTruncated {
                    args.extend(["--packet-length", "128"]);
                }
                run(&self.src, &args)?;
            }
        }
        Ok(())
    }

    fn stop(&self, config: Config, rf_tap: &Path) -> anyhow::Result<()> {
        match config {
            Config::None => Ok(()),
            Config::Mirred => {
                run(&self.src, &["tc", "qdisc", "del", "dev", "sapp", "clsact"])?;
                ip(&["-n", &self.src, "link", "del", "vxlan0"])
            }
            Config::Session | Config::SessionTruncated => run(
                &self.src,
                &[
                    rf_tap.to_str().context("path")?,
                    "session",
                    "delete",
                    "--all",
                ],
            )
            .map(|_| ()),
        }
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for ns in [&self.cli, &self.src, &self.tgt] {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}

fn rx_packets(ns: &str, dev: &str) -> anyhow::Result<u64> {
    Ok(run(
        ns,
        &[
            "cat",
            &format!("/sys/class/net/{dev}/statistics/rx_packets"),
        ],
    )?
    .trim()
    .parse()?)
}

#[derive(Clone, Copy, Default)]
struct Sample {
    rps: f64,
    offered: u64,
    mirrored: u64,
}

pub fn mirror(rf_tap: &Path, rounds: usize, seconds: u64, connections: u32) -> anyhow::Result<()> {
    let lab = Lab::new()?;
    let dir = TempDir::new("bench-mirror");
    let www = dir.path("www");
    std::fs::create_dir_all(&www)?;
    std::fs::write(www.join("small"), "{\"id\":\"u_1\",\"ok\":true}\n")?;
    let _srv = nginx(&lab.src, &dir, &[format!("{}:80", lab.server_ip)]);
    let configs = [
        Config::None,
        Config::Mirred,
        Config::Session,
        Config::SessionTruncated,
    ];
    let mut results: Vec<Vec<Sample>> = vec![Vec::new(); configs.len()];
    eprintln!(
        "bench mirror: wrk -t1 -c{connections} -d{seconds}s against nginx; the server's veth mirrored to a \
         VXLAN target in another namespace; {rounds} rounds of {} configurations",
        configs.len()
    );
    for round in 0..rounds {
        for (i, c) in configs.iter().enumerate() {
            eprint!("  round {}/{rounds}: {:<22}", round + 1, c.name());
            lab.start(*c, rf_tap)?;
            std::thread::sleep(Duration::from_millis(300));
            let rx0 = rx_packets(&lab.tgt, "vx")?;
            let off0 = iface_packets(&lab.src, "sapp")?;
            let wrk = Command::new("ip")
                .args(["netns", "exec", &lab.cli, "wrk", "-t1"])
                .arg(format!("-c{connections}"))
                .arg(format!("-d{seconds}s"))
                .args(["--timeout", "2s"])
                .arg(format!("http://{}/small", lab.server_ip))
                .output()
                .context("cannot run wrk")?;
            std::thread::sleep(Duration::from_millis(500));
            let s = Sample {
                rps: parse_after(&String::from_utf8_lossy(&wrk.stdout), "Requests/sec:")
                    .unwrap_or(0.0),
                offered: iface_packets(&lab.src, "sapp")? - off0,
                mirrored: rx_packets(&lab.tgt, "vx")? - rx0,
            };
            lab.stop(*c, rf_tap)?;
            eprintln!(
                " {:>9.0} req/s  offered {:>9}  mirrored {:>9}",
                s.rps, s.offered, s.mirrored
            );
            results[i].push(s);
        }
    }
    let base = median(results[0].iter().map(|s| s.rps).collect());
    println!(
        "\nmirror benchmark: medians of {rounds} rounds, {seconds}s each, wrk -t1 -c{connections} (2 cores shared by wrk, nginx and the mirroring)"
    );
    println!(
        "{:<24} {:>10} {:>10} {:>11} {:>11} {:>10}",
        "configuration", "req/s", "cost", "offered", "mirrored", "mirrored %"
    );
    let mut by_name = Vec::new();
    for (c, runs) in configs.iter().zip(&results) {
        let rps = median(runs.iter().map(|s| s.rps).collect());
        let offered = median(runs.iter().map(|s| s.offered as f64).collect());
        let mirrored = median(runs.iter().map(|s| s.mirrored as f64).collect());
        let pct = median(
            runs.iter()
                .map(|s| {
                    if s.offered == 0 {
                        0.0
                    } else {
                        s.mirrored as f64 / s.offered as f64 * 100.0
                    }
                })
                .collect(),
        );
        let cost = if base > 0.0 {
            (1.0 - rps / base) * 100.0
        } else {
            0.0
        };
        if *c == Config::None {
            println!(
                "{:<24} {rps:>10.0} {:>10} {offered:>11.0} {:>11} {:>10}",
                c.name(),
                "-",
                "-",
                "-"
            );
        } else {
            println!(
                "{:<24} {rps:>10.0} {cost:>9.1}% {offered:>11.0} {mirrored:>11.0} {pct:>9.2}%",
                c.name()
            );
        }
        by_name.push((*c, rps, pct));
    }
    let get = |c: Config| {
        by_name
            .iter()
            .find(|(x, _, _)| *x == c)
            .map(|(_, r, p)| (*r, *p))
            .unwrap_or((0.0, 0.0))
    };
    let (mirred_rps, mirred_pct) = get(Config::Mirred);
    let (rf_rps, rf_pct) = get(Config::Session);
    println!(
        "\nrf-tap session vs tc mirred: requests/s ratio {:.3} (1.0 = same production cost), mirrored {:.2}% vs {:.2}% of offered packets",
        if mirred_rps > 0.0 { rf_rps / mirred_rps } else { 0.0 },
        rf_pct,
        mirred_pct
    );
    Ok(())
}
