//! `cargo xtask bench mirror-live`: live shadow mirroring at wrk's maximum rate.
//!
//! wrk drives production nginx through a veth pair. Per configuration, in rounds (the order
//! rotates, so slow drift hits every row alike): no mirror; `rf-tap mirror` to a fast shadow
//! (nginx) and to a slow one (answers after 100 ms); and nginx's own `mirror` directive in
//! front of production (a proxy that mirrors each request to the shadow), with the proxy
//! alone as its baseline. Printed: production's requests/s and p99 (wrk), the cost against
//! the row's baseline, and for rf-tap the production requests it saw, what it mirrored, what
//! the fast shadow's own access log counted, the drops, and the shadow lag (last captured
//! packet of a request to its send).

use std::{
    path::Path,
    process::{Command, Stdio},
    time::Duration,
};

use anyhow::{bail, Context as _};
use rf_tap_tests::{
    http_server::{Reply, TestServer},
    in_netns, NetPair, Proc, TempDir,
};

use crate::bench::{median, parse_after};

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Config {
    NoMirror,
    RfTapFast,
    RfTapSlow,
    NginxProxy,
    NginxMirrorFast,
    NginxMirrorSlow,
}

impl Config {
    const ALL: [Config; 6] = [
        Config::NoMirror,
        Config::RfTapFast,
        Config::RfTapSlow,
        Config::NginxProxy,
        Config::NginxMirrorFast,
        Config::NginxMirrorSlow,
    ];

    fn name(self) -> &'static str {
        match self {
            Config::NoMirror => "no mirror",
            Config::RfTapFast => "rf-tap mirror, fast shadow",
            Config::RfTapSlow => "rf-tap mirror, shadow +100ms",
            Config::NginxProxy => "nginx proxy, no mirror",
            Config::NginxMirrorFast => "nginx mirror, fast shadow",
            Config::NginxMirrorSlow => "nginx mirror, shadow +100ms",
        }
    }

    /// The row whose req/s and p99 this one's cost is taken against.
    fn baseline(self) -> Config {
        match self {
            Config::NginxMirrorFast | Config::NginxMirrorSlow => Config::NginxProxy,
            _ => Config::NoMirror,
        }
    }
}

/// nginx in `ns` with a config body of our own (one process, killed by PID on drop).
fn nginx_with(ns: &str, dir: &TempDir, tag: &str, server: &str) -> anyhow::Result<Proc> {
    let d = dir.0.display();
    let conf = format!(
        "master_process off;\ndaemon off;\nuser root;\npid {d}/{tag}.pid;\nerror_log {d}/{tag}.err;\n\
         events {{ worker_connections 4096; }}\n\
         http {{ keepalive_requests 1000000;\n\
         client_body_temp_path {d}/{tag}-body; proxy_temp_path {d}/{tag}-proxy;\n\
         fastcgi_temp_path {d}/{tag}-fcgi; uwsgi_temp_path {d}/{tag}-uwsgi; scgi_temp_path {d}/{tag}-scgi;\n\
         {server} }}\n"
    );
    let path = dir.path(&format!("{tag}.conf"));
    std::fs::write(&path, conf)?;
    let child = Command::new("ip")
        .args(["netns", "exec", ns, "nginx", "-c"])
        .arg(&path)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("nginx not installed: run `cargo xtask setup`")?;
    std::thread::sleep(Duration::from_millis(300));
    Ok(Proc {
        child: Some(child),
        name: tag.into(),
    })
}

struct Run {
    rps: f64,
    p99_ms: f64,
    production: f64,
    mirrored: f64,
    shadow_got: f64,
    dropped: f64,
    lag_p99_ms: f64,
}

fn wrk(ns: &str, url: &str, seconds: u64, connections: u32) -> anyhow::Result<(f64, f64, u64)> {
    let out = Command::new("ip")
        .args(["netns", "exec", ns, "wrk", "-t1"])
        .arg(format!("-c{connections}"))
        .arg(format!("-d{seconds}s"))
        .args(["--latency", url])
        .output()
        .context("cannot run wrk")?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let rps = parse_after(&text, "Requests/sec:").unwrap_or(0.0);
    let p99 = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("99%"))
        .map(|v| v.trim().to_string())
        .and_then(|v| {
            let (num, unit) =
                v.split_at(v.find(|c: char| c.is_ascii_alphabetic()).unwrap_or(v.len()));
            let n: f64 = num.parse().ok()?;
            Some(match unit {
                "us" => n / 1000.0,
                "ms" => n,
                "s" => n * 1000.0,
                _ => n,
            })
        })
        .unwrap_or(f64::NAN);
    let total = text
        .lines()
        .find(|l| l.contains("requests in"))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    Ok((rps, p99, total))
}

fn lines_of(path: &Path) -> u64 {
    std::fs::read(path)
        .map(|b| b.iter().filter(|c| **c == b'\n').count() as u64)
        .unwrap_or(0)
}

pub fn mirror_live(
    rf_tap: &Path,
    rounds: usize,
    seconds: u64,
    connections: u32,
) -> anyhow::Result<()> {
    let pair = NetPair::new();
    let dir = TempDir::new("bench-mirror-live");
    std::fs::create_dir_all(dir.path("www"))?;
    std::fs::write(
        dir.path("www/api"),
        "{\"id\":\"u_1\",\"name\":\"user 1\",\"plan\":\"pro\",\"active\":true}\n",
    )?;
    let www = dir.path("www");
    let root = www.display();
    let sip = pair.server_ip.clone();
    let shadow_log = dir.path("shadow-access.log");
    let _prod = nginx_with(
        &pair.server_ns,
        &dir,
        "prod",
        &format!("access_log off; server {{ listen {sip}:80; root {root}; location / {{ }} }}"),
    )?;
    let _shadow = nginx_with(
        &pair.server_ns,
        &dir,
        "shadow",
        &format!(
            "access_log {}; server {{ listen 127.0.0.1:8081; root {root}; location / {{ }} }}",
            shadow_log.display()
        ),
    )?;
    let slow = in_netns(&pair.server_ns, || {
        TestServer::start_on("127.0.0.1:8082", |_| Reply::Respond {
            status: 200,
            headers: vec![("Content-Type".into(), "application/json".into())],
            body: b"{\"id\":\"u_1\"}".to_vec(),
            delay: Duration::from_millis(100),
        })
    });
    let mirror_block = |to: &str| {
        format!(
            "location / {{ mirror /mirror; proxy_http_version 1.1; proxy_set_header Connection \"\"; \
             proxy_pass http://prod; }} \
             location = /mirror {{ internal; proxy_http_version 1.1; proxy_set_header Connection \"\"; \
             proxy_pass http://{to}$request_uri; }}"
        )
    };
    let _proxies = nginx_with(
        &pair.server_ns,
        &dir,
        "proxy",
        &format!(
            "access_log off; upstream prod {{ server {sip}:80; keepalive 64; }}\n\
             server {{ listen {sip}:8088; location / {{ proxy_http_version 1.1; proxy_set_header Connection \"\"; proxy_pass http://prod; }} }}\n\
             server {{ listen {sip}:8089; {} }}\n\
             server {{ listen {sip}:8090; {} }}",
            mirror_block("127.0.0.1:8081"),
            mirror_block("127.0.0.1:8082"),
        ),
    )?;
    let state = dir.path("mirror-state");
    let mirror = |args: &[&str]| -> anyhow::Result<std::process::Output> {
        Ok(Command::new("ip")
            .args(["netns", "exec", &pair.server_ns])
            .arg(rf_tap)
            .args(args)
            .env("RF_TAP_STATE_DIR", &state)
            .stdin(Stdio::null())
            .output()?)
    };
    eprintln!(
        "bench mirror-live: wrk -t1 -c{connections} -d{seconds}s against nginx on a veth pair, \
         {rounds} rounds of {} configurations",
        Config::ALL.len()
    );
    let mut runs: Vec<(Config, Run)> = Vec::new();
    for round in 0..rounds {
        let mut order = Config::ALL.to_vec();
        order.rotate_left(round % Config::ALL.len());
        for c in order {
            let url = match c {
                Config::NoMirror | Config::RfTapFast | Config::RfTapSlow => {
                    format!("http://{sip}/api")
                }
                Config::NginxProxy => format!("http://{sip}:8088/api"),
                Config::NginxMirrorFast => format!("http://{sip}:8089/api"),
                Config::NginxMirrorSlow => format!("http://{sip}:8090/api"),
            };
            let shadow_url = match c {
                Config::RfTapSlow => "http://127.0.0.1:8082",
                _ => "http://127.0.0.1:8081",
            };
            let rf = matches!(c, Config::RfTapFast | Config::RfTapSlow);
            let _ = std::fs::remove_dir_all(&state);
            if rf {
                let st = mirror(&[
                    "mirror",
                    "start",
                    "bench",
                    "--iface",
                    &pair.server_if,
                    "--port",
                    "80",
                    "--to",
                    shadow_url,
                ])?;
                if !st.status.success() {
                    bail!(
                        "rf-tap mirror start: {}",
                        String::from_utf8_lossy(&st.stderr)
                    );
                }
            }
            let log_before = lines_of(&shadow_log);
            let slow_before = slow.requests().len() as f64;
            eprint!("  round {}/{rounds}  {:<32}", round + 1, c.name());
            let (rps, p99, total) = wrk(&pair.client_ns, &url, seconds, connections)?;
            let mut run = Run {
                rps,
                p99_ms: p99,
                production: total as f64,
                mirrored: f64::NAN,
                shadow_got: f64::NAN,
                dropped: f64::NAN,
                lag_p99_ms: f64::NAN,
            };
            if rf {
                // Let the last answers come in, then read the mirror's own figures.
                std::thread::sleep(Duration::from_millis(1500));
                let out = mirror(&["mirror", "stats", "bench", "--json"])?;
                let v: serde_json::Value =
                    serde_json::from_slice(&out.stdout).with_context(|| {
                        format!("mirror stats: {}", String::from_utf8_lossy(&out.stderr))
                    })?;
                run.production = v["production"]["requests"].as_f64().unwrap_or(f64::NAN);
                run.mirrored = v["mirrored"].as_f64().unwrap_or(f64::NAN);
                run.dropped = v["dropped"]["queue_full"].as_f64().unwrap_or(f64::NAN);
                run.lag_p99_ms = v["lag_ms"]["p99"].as_f64().unwrap_or(f64::NAN);
                let stop = mirror(&["mirror", "stop", "bench"])?;
                if !stop.status.success() {
                    bail!(
                        "rf-tap mirror stop: {}",
                        String::from_utf8_lossy(&stop.stderr)
                    );
                }
            } else {
                std::thread::sleep(Duration::from_millis(500));
            }
            run.shadow_got = match c {
                Config::RfTapFast | Config::NginxMirrorFast => {
                    (lines_of(&shadow_log) - log_before) as f64
                }
                Config::RfTapSlow | Config::NginxMirrorSlow => {
                    slow.requests().len() as f64 - slow_before
                }
                _ => f64::NAN,
            };
            eprintln!(" {:>9.0} req/s  p99 {:>7.2} ms", run.rps, run.p99_ms);
            runs.push((c, run));
        }
    }
    let med = |c: Config, f: &dyn Fn(&Run) -> f64| {
        median(
            runs.iter()
                .filter(|(k, _)| *k == c)
                .map(|(_, r)| f(r))
                .collect(),
        )
    };
    println!(
        "\nlive mirror benchmark: medians of {rounds} rounds, {seconds}s each, wrk -t1 -c{connections} \
         (2 cores shared by wrk, nginx, the shadows and the mirror)"
    );
    println!(
        "{:<30} {:>9} {:>7} {:>9} {:>9} {:>11} {:>9} {:>11} {:>9} {:>10}",
        "configuration",
        "req/s",
        "cost",
        "p99 ms",
        "p99 +",
        "production",
        "mirrored",
        "shadow got",
        "dropped",
        "lag p99 ms"
    );
    for c in Config::ALL {
        let rps = med(c, &|r| r.rps);
        let base = med(c.baseline(), &|r| r.rps);
        let p99 = med(c, &|r| r.p99_ms);
        let base_p99 = med(c.baseline(), &|r| r.p99_ms);
        let cost = if c.baseline() == c {
            0.0
        } else {
            (1.0 - rps / base) * 100.0
        };
        let dp99 = if c.baseline() == c {
            0.0
        } else {
            p99 - base_p99
        };
        let show = |v: f64| {
            if v.is_nan() {
                "-".to_string()
            } else {
                format!("{v:.0}")
            }
        };
        let show2 = |v: f64| {
            if v.is_nan() {
                "-".to_string()
            } else {
                format!("{v:.2}")
            }
        };
        println!(
            "{:<30} {:>9.0} {:>6.1}% {:>9.2} {:>+9.2} {:>11} {:>9} {:>11} {:>9} {:>10}",
            c.name(),
            rps,
            cost,
            p99,
            dp99,
            show(med(c, &|r| r.production)),
            show(med(c, &|r| r.mirrored)),
            show(med(c, &|r| r.shadow_got)),
            show(med(c, &|r| r.dropped)),
            show2(med(c, &|r| r.lag_p99_ms)),
        );
    }
    let complete = med(Config::RfTapFast, &|r| r.shadow_got / r.production) * 100.0;
    println!(
        "\nrf-tap, fast shadow: shadow received {complete:.2}% of production's requests (its own access log); \
         production cost {:.1}% (nginx mirror: {:.1}% against its proxy); shadow lag p99 {:.2} ms",
        (1.0 - med(Config::RfTapFast, &|r| r.rps) / med(Config::NoMirror, &|r| r.rps)) * 100.0,
        (1.0 - med(Config::NginxMirrorFast, &|r| r.rps) / med(Config::NginxProxy, &|r| r.rps)) * 100.0,
        med(Config::RfTapFast, &|r| r.lag_p99_ms),
    );
    println!(
        "slow shadow (+100 ms): production p99 changes by {:+.2} ms with rf-tap, {:+.2} ms with nginx's mirror",
        med(Config::RfTapSlow, &|r| r.p99_ms) - med(Config::NoMirror, &|r| r.p99_ms),
        med(Config::NginxMirrorSlow, &|r| r.p99_ms) - med(Config::NginxProxy, &|r| r.p99_ms),
    );
    Ok(())
}
