//! `--metrics ADDR`: the mirror's running totals in the Prometheus text format (version
//! 0.0.4) on `GET /metrics`, served by a small blocking server on its own thread.

use std::{
    fmt::Write as _,
    io::{Read, Write},
    net::{SocketAddr, TcpListener},
    sync::{
        atomic::{AtomicBool, AtomicI64, Ordering},
        Arc,
    },
    time::Duration,
};

use anyhow::Context as _;
use rf_tap_engine::replay::player::Histogram;

use super::{judge::Totals, store::Side};
use crate::capture::kernel::KernelCounters;

/// Histogram bounds, in seconds.
const BOUNDS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

fn esc(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn histogram(out: &mut String, name: &str, labels: &str, h: &Histogram) {
    for b in BOUNDS {
        let _ = writeln!(
            out,
            "{name}_bucket{{{labels},le=\"{b}\"}} {}",
            h.count_at_most((b * 1e6) as u64)
        );
    }
    let _ = writeln!(out, "{name}_bucket{{{labels},le=\"+Inf\"}} {}", h.count());
    let _ = writeln!(out, "{name}_sum{{{labels}}} {}", h.sum() as f64 / 1e6);
    let _ = writeln!(out, "{name}_count{{{labels}}} {}", h.count());
}

/// The exposition text.
pub fn render(
    mirror: &str,
    destinations: &[String],
    totals: &Totals,
    depths: &[Arc<AtomicI64>],
    capture: &KernelCounters,
) -> String {
    let m = esc(mirror);
    let t = &totals.total;
    let mut o = String::new();
    let side_counts = |o: &mut String, name: &str, labels: &str, s: &Side| {
        let _ = writeln!(o, "{name}{{{labels},result=\"success\"}} {}", s.succeeded);
        let _ = writeln!(o, "{name}{{{labels},result=\"error\"}} {}", s.errors);
    };
    o.push_str("# HELP rf_tap_mirror_production_requests_total Production requests of the mirrored traffic, by result (error: a 5xx or no response).\n");
    o.push_str("# TYPE rf_tap_mirror_production_requests_total counter\n");
    side_counts(
        &mut o,
        "rf_tap_mirror_production_requests_total",
        &format!("mirror=\"{m}\""),
        &t.production,
    );
    o.push_str("# HELP rf_tap_mirror_requests_total Requests answered by each shadow, by result (error: a 5xx, a timeout or no usable response).\n");
    o.push_str("# TYPE rf_tap_mirror_requests_total counter\n");
    let empty = Side::default();
    for d in destinations {
        let s = t.shadows.get(d).unwrap_or(&empty);
        side_counts(
            &mut o,
            "rf_tap_mirror_requests_total",
            &format!("mirror=\"{m}\",destination=\"{}\"", esc(d)),
            s,
        );
    }
    o.push_str("# HELP rf_tap_mirror_latency_seconds Response latency: production's as captured, each shadow's as measured.\n");
    o.push_str("# TYPE rf_tap_mirror_latency_seconds histogram\n");
    histogram(
        &mut o,
        "rf_tap_mirror_latency_seconds",
        &format!("mirror=\"{m}\",side=\"production\",destination=\"\""),
        &t.production.latency,
    );
    for d in destinations {
        let s = t.shadows.get(d).unwrap_or(&empty);
        histogram(
            &mut o,
            "rf_tap_mirror_latency_seconds",
            &format!("mirror=\"{m}\",side=\"shadow\",destination=\"{}\"", esc(d)),
            &s.latency,
        );
    }
    let per_dest =
        |o: &mut String, name: &str, help: &str, map: &std::collections::BTreeMap<String, u64>| {
            let _ = writeln!(o, "# HELP {name} {help}");
            let _ = writeln!(o, "# TYPE {name} counter");
            for d in destinations {
                let _ = writeln!(
                    o,
                    "{name}{{mirror=\"{m}\",destination=\"{}\"}} {}",
                    esc(d),
                    map.get(d).copied().unwrap_or(0)
                );
            }
        };
    per_dest(
        &mut o,
        "rf_tap_mirror_compared_total",
        "Shadow responses compared with production's.",
        &t.compared,
    );
    per_dest(
        &mut o,
        "rf_tap_mirror_diffs_total",
        "Shadow responses that differed from production's (noise fields left out).",
        &t.diffs,
    );
    let by_reason = |o: &mut String,
                     name: &str,
                     help: &str,
                     keys: &[&str],
                     map: &std::collections::BTreeMap<String, u64>| {
        let _ = writeln!(o, "# HELP {name} {help}");
        let _ = writeln!(o, "# TYPE {name} counter");
        let mut all: Vec<String> = keys.iter().map(|k| k.to_string()).collect();
        for k in map.keys() {
            if !all.contains(k) {
                all.push(k.clone());
            }
        }
        for k in all {
            let _ = writeln!(
                o,
                "{name}{{mirror=\"{m}\",reason=\"{}\"}} {}",
                esc(&k),
                map.get(&k).copied().unwrap_or(0)
            );
        }
    };
    by_reason(
        &mut o,
        "rf_tap_mirror_skipped_total",
        "Production requests not sent to the shadows, by reason.",
        &[
            "write_method",
            "incomplete",
            "sampled_out",
            "excluded",
            "tunnel",
        ],
        &t.skipped,
    );
    by_reason(
        &mut o,
        "rf_tap_mirror_dropped_total",
        "Requests dropped on the way to a shadow, by reason.",
        &["queue_full", "rate_limited"],
        &t.dropped,
    );
    o.push_str("# HELP rf_tap_mirror_mirrored_total Requests sent to at least one shadow.\n");
    o.push_str("# TYPE rf_tap_mirror_mirrored_total counter\n");
    let _ = writeln!(
        o,
        "rf_tap_mirror_mirrored_total{{mirror=\"{m}\"}} {}",
        t.mirrored
    );
    o.push_str("# HELP rf_tap_mirror_noise_fields JSON fields learned as noise from production's own variation.\n");
    o.push_str("# TYPE rf_tap_mirror_noise_fields gauge\n");
    let _ = writeln!(
        o,
        "rf_tap_mirror_noise_fields{{mirror=\"{m}\"}} {}",
        t.noise_fields
    );
    o.push_str("# HELP rf_tap_mirror_capture_packets_total Packets at each stage of the in-kernel capture: seen by the hook, accepted or rejected by the rules, matching no rule, sampled out, copied to userspace, lost to a full ring, cut to the packet length, malformed, failed to copy.\n");
    o.push_str("# TYPE rf_tap_mirror_capture_packets_total counter\n");
    let c = capture;
    for (stage, n) in [
        ("seen", c.seen),
        ("accepted", c.accepted),
        ("rejected", c.rejected),
        ("unmatched", c.unmatched),
        ("sampled_out", c.sampled_out),
        ("copied", c.copied),
        ("ring_full", c.ring_full),
        ("truncated", c.truncated),
        ("malformed", c.malformed),
        ("copy_failed", c.copy_failed),
    ] {
        let _ = writeln!(
            o,
            "rf_tap_mirror_capture_packets_total{{mirror=\"{m}\",stage=\"{stage}\"}} {n}"
        );
    }
    o.push_str("# HELP rf_tap_mirror_capture_bytes_total Bytes copied to userspace by the in-kernel capture.\n");
    o.push_str("# TYPE rf_tap_mirror_capture_bytes_total counter\n");
    let _ = writeln!(
        o,
        "rf_tap_mirror_capture_bytes_total{{mirror=\"{m}\"}} {}",
        c.copied_bytes
    );
    o.push_str("# HELP rf_tap_mirror_queue_depth Requests queued or in flight per shadow.\n");
    o.push_str("# TYPE rf_tap_mirror_queue_depth gauge\n");
    for (d, depth) in destinations.iter().zip(depths) {
        let _ = writeln!(
            o,
            "rf_tap_mirror_queue_depth{{mirror=\"{m}\",destination=\"{}\"}} {}",
            esc(d),
            depth.load(Ordering::Relaxed).max(0)
        );
    }
    o
}

/// Serves `/metrics` until `stop` is set.
pub fn serve(
    addr: SocketAddr,
    render: impl Fn() -> String + Send + 'static,
    stop: Arc<AtomicBool>,
) -> anyhow::Result<std::thread::JoinHandle<()>> {
    let l = TcpListener::bind(addr).with_context(|| format!("--metrics {addr}: cannot listen"))?;
    l.set_nonblocking(true)?;
    Ok(std::thread::spawn(move || {
        while !stop.load(Ordering::Relaxed) {
            let Ok((mut s, _)) = l.accept() else {
                std::thread::sleep(Duration::from_millis(50));
                continue;
            };
            let _ = s.set_nonblocking(false);
            let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
            let mut buf = [0u8; 2048];
            let n = s.read(&mut buf).unwrap_or(0);
            let head = String::from_utf8_lossy(&buf[..n]);
            let path = head.split_whitespace().nth(1).unwrap_or("");
            let (status, body) = if path == "/metrics" || path.starts_with("/metrics?") {
                ("200 OK", render())
            } else {
                ("404 Not Found", "try /metrics\n".to_string())
            };
            let _ = write!(
                s,
                "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    }))
}
