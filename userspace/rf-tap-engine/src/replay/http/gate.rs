//! Quality gates: `--fail-if 'success_rate<99.5%'`, `--fail-if 'p95_latency_delta>10%'`,
//! `--fail-if 'diff_rate>1%'`. A gate fails the run when its condition holds.
//!
//! Metrics: `requests`, `succeeded`, `failed`, `skipped`, `diffs` (counts);
//! `success_rate`, `error_rate`, `diff_rate` (percent); `avg_latency`, `p50_latency`,
//! `p95_latency`, `p99_latency` (target, milliseconds; `s` and `ms` suffixes accepted);
//! `avg_latency_delta`, `p50_latency_delta`, `p95_latency_delta`, `p99_latency_delta`
//! (percent change from production's latency in the capture); `behind_schedule` (p99,
//! milliseconds). A gate whose metric has no value (no requests, no production latency)
//! fails: a CI job must not pass on a run that measured nothing.

use std::{fmt, str::FromStr};

use super::report::{Latency, Summary};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Op {
    Lt,
    Le,
    Gt,
    Ge,
    Eq,
    Ne,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Unit {
    Count,
    Percent,
    Millis,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Metric {
    Requests,
    Succeeded,
    Failed,
    Skipped,
    Diffs,
    SuccessRate,
    ErrorRate,
    DiffRate,
    Latency(Quantile),
    LatencyDelta(Quantile),
    BehindSchedule,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Quantile {
    Avg,
    P50,
    P95,
    P99,
}

impl Quantile {
    fn of(self, l: &Latency) -> f64 {
        match self {
            Self::Avg => l.avg,
            Self::P50 => l.p50,
            Self::P95 => l.p95,
            Self::P99 => l.p99,
        }
    }
}

impl Metric {
    fn parse(s: &str) -> Option<Self> {
        let q = |p: &str| match p {
            "avg" => Some(Quantile::Avg),
            "p50" => Some(Quantile::P50),
            "p95" => Some(Quantile::P95),
            "p99" => Some(Quantile::P99),
            _ => None,
        };
        Some(match s {
            "requests" => Self::Requests,
            "succeeded" => Self::Succeeded,
            "failed" => Self::Failed,
            "skipped" => Self::Skipped,
            "diffs" => Self::Diffs,
            "success_rate" => Self::SuccessRate,
            "error_rate" | "failure_rate" => Self::ErrorRate,
            "diff_rate" => Self::DiffRate,
            "behind_schedule" => Self::BehindSchedule,
            _ => {
                if let Some(p) = s.strip_suffix("_latency_delta") {
                    Self::LatencyDelta(q(p)?)
                } else {
                    Self::Latency(q(s.strip_suffix("_latency")?)?)
                }
            }
        })
    }

    fn unit(self) -> Unit {
        match self {
            Self::Requests | Self::Succeeded | Self::Failed | Self::Skipped | Self::Diffs => {
                Unit::Count
            }
            Self::SuccessRate | Self::ErrorRate | Self::DiffRate | Self::LatencyDelta(_) => {
                Unit::Percent
            }
            Self::Latency(_) | Self::BehindSchedule => Unit::Millis,
        }
    }

    fn value(self, s: &Summary) -> Result<f64, &'static str> {
        let target = s.latency_ms.target.as_ref();
        match self {
            Self::Requests => Ok(s.requests as f64),
            Self::Succeeded => Ok(s.succeeded as f64),
            Self::Failed => Ok(s.failed as f64),
            Self::Skipped => Ok(s.skipped as f64),
            Self::Diffs => Ok(s.diffs as f64),
            Self::SuccessRate => s.success_rate.ok_or("no request was sent"),
            Self::ErrorRate => s
                .success_rate
                .map(|r| 100.0 - r)
                .ok_or("no request was sent"),
            Self::DiffRate => s
                .diff_rate
                .ok_or("no response was compared with production"),
            Self::Latency(q) => target.map(|l| q.of(l)).ok_or("no response from the target"),
            Self::LatencyDelta(q) => {
                let t = target.ok_or("no response from the target")?;
                let p = s
                    .latency_ms
                    .production
                    .as_ref()
                    .ok_or("the capture has no production latency")?;
                let base = q.of(p);
                if base <= 0.0 {
                    return Err("production latency is zero");
                }
                Ok((q.of(t) - base) * 100.0 / base)
            }
            Self::BehindSchedule => s
                .behind_schedule_ms
                .map(|l| l.p99)
                .ok_or("no request was sent"),
        }
    }
}

/// One `--fail-if` condition.
#[derive(Clone, Debug, PartialEq)]
pub struct Gate {
    text: String,
    metric: Metric,
    op: Op,
    threshold: f64,
}

impl fmt::Display for Gate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

const HELP: &str = "use METRIC<VALUE, e.g. 'success_rate<99.5%', 'p95_latency_delta>10%', \
'diff_rate>1%', 'p99_latency>250ms', 'failed>0'";

impl FromStr for Gate {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let t: String = s.chars().filter(|c| !c.is_whitespace()).collect();
        let pos = t
            .find(['<', '>', '=', '!'])
            .ok_or_else(|| format!("`{s}`: no comparison; {HELP}"))?;
        let (name, rest) = t.split_at(pos);
        let (op, value) = [
            ("<=", Op::Le),
            (">=", Op::Ge),
            ("==", Op::Eq),
            ("!=", Op::Ne),
            ("<", Op::Lt),
            (">", Op::Gt),
            ("=", Op::Eq),
        ]
        .iter()
        .find_map(|(p, op)| rest.strip_prefix(p).map(|v| (*op, v)))
        .ok_or_else(|| format!("`{s}`: bad comparison; {HELP}"))?;
        let metric = Metric::parse(&name.to_ascii_lowercase())
            .ok_or_else(|| format!("`{s}`: unknown metric `{name}`; {HELP}"))?;
        let bad = || format!("`{s}`: `{value}` is not a number; {HELP}");
        let (number, scale) = match metric.unit() {
            Unit::Percent => (value.strip_suffix('%').unwrap_or(value), 1.0),
            Unit::Millis => {
                if let Some(v) = value.strip_suffix("ms") {
                    (v, 1.0)
                } else if let Some(v) = value.strip_suffix('s') {
                    (v, 1000.0)
                } else {
                    (value, 1.0)
                }
            }
            Unit::Count => (value, 1.0),
        };
        let threshold: f64 = number.parse().map_err(|_| bad())?;
        if !threshold.is_finite() {
            return Err(bad());
        }
        Ok(Self {
            text: s.trim().to_string(),
            metric,
            op,
            threshold: threshold * scale,
        })
    }
}

/// What a gate found.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct GateResult {
    pub gate: String,
    /// The measured value (percent, milliseconds or count), if there is one.
    pub value: Option<f64>,
    pub failed: bool,
    /// Why the gate could not be evaluated (it then fails).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub why: Option<String>,
}

impl Gate {
    pub fn check(&self, s: &Summary) -> GateResult {
        match self.metric.value(s) {
            Ok(v) => {
                let holds = match self.op {
                    Op::Lt => v < self.threshold,
                    Op::Le => v <= self.threshold,
                    Op::Gt => v > self.threshold,
                    Op::Ge => v >= self.threshold,
                    Op::Eq => (v - self.threshold).abs() < 1e-9,
                    Op::Ne => (v - self.threshold).abs() >= 1e-9,
                };
                GateResult {
                    gate: self.text.clone(),
                    value: Some(v),
                    failed: holds,
                    why: None,
                }
            }
            Err(why) => GateResult {
                gate: self.text.clone(),
                value: None,
                failed: true,
                why: Some(why.to_string()),
            },
        }
    }

    /// The unit of the measured value, for printing.
    pub fn unit(&self) -> &'static str {
        match self.metric.unit() {
            Unit::Count => "",
            Unit::Percent => "%",
            Unit::Millis => " ms",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::replay::http::report::{Outcome, Tally};
    use std::time::Duration;

    fn summary(ok: u64, bad: u64, target_ms: u64, prod_ms: f64) -> Summary {
        let mut t = Tally::default();
        for i in 0..ok + bad {
            let o = if i < ok {
                Outcome::Answered {
                    status: 200,
                    latency: Duration::from_millis(target_ms),
                    verdict: crate::compare::Verdict::Unjudged,
                }
            } else {
                Outcome::Failed {
                    kind: super::super::report::FailKind::Reset,
                }
            };
            t.record("GET /", Some(200), Some(prod_ms), Duration::ZERO, &o, None);
        }
        Summary::new("http://t", &t, Duration::from_secs(1), None)
    }

    #[test]
    fn parses_the_documented_forms() {
        for g in [
            "success_rate<99.5%",
            "p95_latency_delta>10%",
            "diff_rate > 1%",
            "p99_latency>0.25s",
            "failed>=1",
            "error_rate!=0",
            "avg_latency_delta>5",
            "behind_schedule>2ms",
        ] {
            assert!(g.parse::<Gate>().is_ok(), "{g}");
        }
        for g in [
            "success_rate",
            "speed>1",
            "diff_rate>x%",
            "p42_latency>1",
            "failed=>1",
            "",
        ] {
            assert!(g.parse::<Gate>().is_err(), "{g}");
        }
        let g: Gate = "p99_latency>0.25s".parse().unwrap();
        assert_eq!(g.threshold, 250.0);
    }

    #[test]
    fn a_gate_fails_when_its_condition_holds() {
        let s = summary(995, 5, 20, 10.0);
        let check = |g: &str| g.parse::<Gate>().unwrap().check(&s);
        assert!(!check("success_rate<99.5%").failed);
        assert!(check("success_rate<99.6%").failed);
        assert_eq!(check("success_rate<99.5%").value, Some(99.5));
        let delta = check("p95_latency_delta>10%");
        assert!(delta.failed);
        assert!((delta.value.unwrap() - 100.0).abs() < 5.0, "{delta:?}");
        assert!(!check("p95_latency_delta>150%").failed);
        assert!(check("failed>0").failed);
        assert!(check("error_rate>=0.5").failed);
    }

    #[test]
    fn a_gate_without_a_value_fails() {
        let s = summary(0, 0, 1, 1.0);
        let r = "diff_rate>1%".parse::<Gate>().unwrap().check(&s);
        assert!(r.failed);
        assert!(r.why.unwrap().contains("compared"));
    }
}
