//! `rf-tap replay --plan replay.yaml` (and `--mock DEP=FILE@ADDR`): mocks of the
//! dependencies started from captured outbound traffic, the service waited for, the inbound
//! traffic replayed, the mocks stopped, and quality gates that name what must hold.

use std::{
    collections::BTreeMap,
    io::{Read as _, Write as _},
    net::SocketAddr,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _};
use rf_tap_engine::{mock::MockOptions, replay::http::report::Summary};
use serde::Deserialize;

use crate::cli::{
    mock::{Running, Served},
    units::parse_duration,
};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlanFile {
    pub replay: ReplaySection,
    #[serde(default)]
    pub mocks: Vec<MockSection>,
    pub ready: Option<ReadySection>,
    #[serde(default)]
    pub quality_gates: BTreeMap<String, String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReplaySection {
    pub target: String,
    #[serde(deserialize_with = "one_or_many")]
    pub traffic: Vec<PathBuf>,
    pub speed: Option<String>,
    pub concurrency: Option<u32>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MockSection {
    pub dependency: String,
    pub listen: SocketAddr,
    #[serde(deserialize_with = "one_or_many")]
    pub traffic: Vec<PathBuf>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReadySection {
    pub url: String,
    pub timeout: Option<String>,
}

fn one_or_many<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<PathBuf>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(PathBuf),
        Many(Vec<PathBuf>),
    }
    Ok(match OneOrMany::deserialize(d)? {
        OneOrMany::One(p) => vec![p],
        OneOrMany::Many(v) => v,
    })
}

/// `--mock payment-api=prod.rfcap@127.0.0.1:8081`.
#[derive(Clone, Debug)]
pub struct MockSpec {
    pub dependency: String,
    pub traffic: PathBuf,
    pub listen: SocketAddr,
}

impl std::str::FromStr for MockSpec {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || {
            format!("`{s}` is not DEPENDENCY=FILE@ADDR:PORT (e.g. payment-api=prod.rfcap@127.0.0.1:8081)")
        };
        let (dep, rest) = s.split_once('=').ok_or_else(bad)?;
        let (file, addr) = rest.rsplit_once('@').ok_or_else(bad)?;
        if dep.is_empty() || file.is_empty() {
            return Err(bad());
        }
        Ok(Self {
            dependency: dep.to_string(),
            traffic: PathBuf::from(file),
            listen: addr.parse().map_err(|_| bad())?,
        })
    }
}

/// A quality gate of a plan: a metric and what it must satisfy (`">= 0.99"`).
#[derive(Clone, Debug)]
pub struct PlanGate {
    pub name: String,
    pub text: String,
    op: &'static str,
    threshold: f64,
}

const GATE_NAMES: &[&str] = &[
    "status_pass_rate",
    "body_match_rate",
    "mock_match_rate",
    "unmatched_requests",
    "latency_avg_delta",
    "latency_p50_delta",
    "latency_p95_delta",
    "latency_p99_delta",
    "requests",
    "failed",
    "diffs",
];

impl PlanGate {
    pub fn parse(name: &str, expr: &str) -> anyhow::Result<Self> {
        if !GATE_NAMES.contains(&name) {
            bail!(
                "unknown quality gate `{name}` (known: {})",
                GATE_NAMES.join(", ")
            );
        }
        let t = expr.trim();
        let op = [">=", "<=", "==", "!=", ">", "<"]
            .into_iter()
            .find(|o| t.starts_with(o))
            .with_context(|| {
                format!("quality gate {name}: `{expr}` needs a comparison (e.g. \">= 0.99\")")
            })?;
        let num = t[op.len()..].trim();
        let (num, pct) = match num.strip_suffix('%') {
            Some(n) => (n.trim(), true),
            None => (num, false),
        };
        let mut threshold: f64 = num.trim_start_matches('+').parse().map_err(|_| {
            anyhow::anyhow!("quality gate {name}: `{expr}` needs a number after {op}")
        })?;
        // Rates are fractions; `99%` means 0.99. Deltas are percent already.
        if pct && name.ends_with("_rate") {
            threshold /= 100.0;
        }
        Ok(Self {
            name: name.to_string(),
            text: format!("{name} {t}"),
            op,
            threshold,
        })
    }

    /// The measured value, or why there is none.
    fn value(&self, s: &Summary, mocks: &[(String, Served)]) -> Result<f64, &'static str> {
        let served = |f: fn(&Served) -> u64| mocks.iter().map(|(_, m)| f(m)).sum::<u64>();
        let delta = |q: fn(&rf_tap_engine::replay::http::report::Latency) -> f64| {
            let t = s
                .latency_ms
                .target
                .as_ref()
                .ok_or("no response from the target")?;
            let p = s
                .latency_ms
                .production
                .as_ref()
                .ok_or("the capture has no production latency")?;
            if q(p) <= 0.0 {
                return Err("production latency is zero");
            }
            Ok((q(t) - q(p)) * 100.0 / q(p))
        };
        match self.name.as_str() {
            "status_pass_rate" => s
                .success_rate
                .map(|r| r / 100.0)
                .ok_or("no request was sent"),
            "body_match_rate" => s
                .diff_rate
                .map(|r| 1.0 - r / 100.0)
                .ok_or("no response was compared with production"),
            "mock_match_rate" => {
                if mocks.is_empty() {
                    return Err("the plan has no mocks");
                }
                let asked = served(|m| m.requests);
                Ok(if asked == 0 {
                    1.0
                } else {
                    served(|m| m.exact + m.fuzzy) as f64 / asked as f64
                })
            }
            "unmatched_requests" => Ok(served(|m| m.missed) as f64),
            "latency_avg_delta" => delta(|l| l.avg),
            "latency_p50_delta" => delta(|l| l.p50),
            "latency_p95_delta" => delta(|l| l.p95),
            "latency_p99_delta" => delta(|l| l.p99),
            "requests" => Ok(s.requests as f64),
            "failed" => Ok(s.failed as f64),
            "diffs" => Ok(s.diffs as f64),
            _ => Err("unknown gate"),
        }
    }

    /// Whether the gate holds, with the measured value.
    pub fn check(
        &self,
        s: &Summary,
        mocks: &[(String, Served)],
    ) -> (bool, Result<f64, &'static str>) {
        let v = self.value(s, mocks);
        let ok = v.is_ok_and(|v| match self.op {
            ">=" => v >= self.threshold - 1e-12,
            "<=" => v <= self.threshold + 1e-12,
            ">" => v > self.threshold,
            "<" => v < self.threshold,
            "==" => (v - self.threshold).abs() < 1e-9,
            _ => (v - self.threshold).abs() >= 1e-9,
        });
        (ok, v)
    }
}

/// What a plan adds to an HTTP replay.
pub struct Plan {
    pub traffic: Vec<PathBuf>,
    pub mocks: Vec<Running>,
    pub gates: Vec<PlanGate>,
}

/// Reads a plan file: the replay's settings, and the plan's own parts (mocks not started;
/// its paths, relative to the plan's directory, are resolved by the caller).
pub fn read(path: &Path) -> anyhow::Result<PlanFile> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read the plan {}", path.display()))?;
    let plan: PlanFile = serde_yaml::from_str(&text).map_err(|e| {
        anyhow::anyhow!(
            "{}: {}",
            path.display(),
            e.to_string().lines().next().unwrap_or("not a plan")
        )
    })?;
    Ok(plan)
}

/// Starts each mock, saving its misses as stubs under `misses` (one directory per
/// dependency); on an error, those started are stopped (dropped).
pub fn start_mocks(specs: &[MockSpec], misses: Option<&Path>) -> anyhow::Result<Vec<Running>> {
    let mut running = Vec::new();
    for m in specs {
        let dir = misses.map(|d| {
            let safe: String = m
                .dependency
                .chars()
                .map(|c| {
                    if c.is_ascii_alphanumeric() || c == '-' || c == '.' {
                        c
                    } else {
                        '_'
                    }
                })
                .collect();
            d.join(format!("misses-{safe}"))
        });
        if let Some(d) = &dir {
            if let Some(parent) = d.parent() {
                crate::output::create_dir(parent)?;
            }
        }
        let r = Running::start(
            std::slice::from_ref(&m.traffic),
            Some(&m.dependency),
            m.listen,
            MockOptions::default(),
            dir,
        )
        .with_context(|| format!("mock {}", m.dependency))?;
        eprintln!(
            "rf-tap: mock {} listening on {} (from {})",
            m.dependency,
            m.listen,
            m.traffic.display()
        );
        running.push(r);
    }
    Ok(running)
}

/// Polls `url` (http only) until it answers 200, for at most `timeout`.
pub fn wait_ready(url: &str, timeout: Duration) -> anyhow::Result<()> {
    let rest = url
        .strip_prefix("http://")
        .with_context(|| format!("ready.url {url}: only http:// can be polled"))?;
    let (hostport, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let started = Instant::now();
    let mut last = String::from("no answer");
    while started.elapsed() < timeout {
        match probe(hostport, path) {
            Ok(200) => {
                eprintln!(
                    "rf-tap: {url} is ready after {:.1} s",
                    started.elapsed().as_secs_f64()
                );
                return Ok(());
            }
            Ok(code) => last = format!("status {code}"),
            Err(e) => last = e.to_string(),
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    bail!(
        "the service never became ready: {url} gave {last} for {:.0} s (ready.timeout)",
        timeout.as_secs_f64()
    )
}

fn probe(hostport: &str, path: &str) -> std::io::Result<u16> {
    use std::net::ToSocketAddrs as _;
    let addr = hostport
        .to_socket_addrs()?
        .next()
        .ok_or_else(|| std::io::Error::other("no address"))?;
    let mut c = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(1))?;
    c.set_read_timeout(Some(Duration::from_secs(2)))?;
    write!(
        c,
        "GET {path} HTTP/1.1\r\nHost: {hostport}\r\nConnection: close\r\n\r\n"
    )?;
    let mut head = [0u8; 64];
    let n = c.read(&mut head)?;
    let text = String::from_utf8_lossy(&head[..n]);
    text.split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::other("not HTTP"))
}

/// The ready timeout of a plan (default 60 s).
pub fn ready_timeout(r: &ReadySection) -> anyhow::Result<Duration> {
    match &r.timeout {
        Some(t) => parse_duration(t).map_err(|e| anyhow::anyhow!("ready.timeout: {e}")),
        None => Ok(Duration::from_secs(60)),
    }
}

/// The mock table of RESULTS.
pub fn mock_table(mocks: &[(String, Served)]) -> String {
    let mut o = format!(
        "\nMOCKS\n  {:<28} {:>9} {:>9} {:>9} {:>9}\n",
        "dependency", "requests", "exact", "fuzzy", "missed"
    );
    for (name, m) in mocks {
        o.push_str(&format!(
            "  {:<28} {:>9} {:>9} {:>9} {:>9}\n",
            name, m.requests, m.exact, m.fuzzy, m.missed
        ));
        for (endpoint, n) in &m.misses {
            o.push_str(&format!("      missed {n} × {endpoint}\n"));
        }
        if let Some(d) = &m.saved_in {
            if m.missed > 0 {
                o.push_str(&format!("      misses saved as stubs in {}\n", d.display()));
            }
        }
    }
    o
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gates_read_as_teams_write_them() {
        let g = PlanGate::parse("status_pass_rate", ">= 0.99").unwrap();
        assert_eq!((g.op, g.threshold), (">=", 0.99));
        let g = PlanGate::parse("body_match_rate", ">= 95%").unwrap();
        assert!((g.threshold - 0.95).abs() < 1e-12);
        let g = PlanGate::parse("latency_p95_delta", "<= +10%").unwrap();
        assert_eq!((g.op, g.threshold), ("<=", 10.0));
        let g = PlanGate::parse("unmatched_requests", "== 0").unwrap();
        assert_eq!((g.op, g.threshold), ("==", 0.0));
        assert!(PlanGate::parse("mock_rate", ">= 1").is_err());
        assert!(PlanGate::parse("requests", "lots").is_err());
        assert!(PlanGate::parse("requests", ">= many").is_err());
    }

    #[test]
    fn mock_specs_and_plans_refuse_what_they_do_not_know() {
        let m: MockSpec = "payment-api=prod.rfcap@127.0.0.1:8081".parse().unwrap();
        assert_eq!(m.dependency, "payment-api");
        assert!("payment-api=prod.rfcap".parse::<MockSpec>().is_err());
        let ok: PlanFile = serde_yaml::from_str(
            "replay: {target: 'http://localhost:8080', traffic: [a.rfcap, b.rfcap], speed: 10x}\n\
             mocks: [{dependency: p, listen: '127.0.0.1:8081', traffic: a.rfcap}]\n\
             quality_gates: {mock_match_rate: '>= 0.98'}\n",
        )
        .unwrap();
        assert_eq!(ok.replay.traffic.len(), 2);
        assert_eq!(ok.mocks[0].traffic.len(), 1);
        let bad = serde_yaml::from_str::<PlanFile>(
            "replay: {target: 'http://x', traffic: a.rfcap, sped: 2x}\n",
        );
        assert!(bad.unwrap_err().to_string().contains("sped"));
    }
}
