//! The figures of an HTTP replay: what happened to each request, tallied in fixed memory,
//! and rendered as the summary (`--json`) and a JUnit file (one test case per endpoint).

use std::{collections::BTreeMap, fmt::Write as _, time::Duration};

use serde::Serialize;

use super::plan::SkipReason;
use crate::{compare::Verdict, replay::player::Histogram};

/// Why a request got no usable response.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum FailKind {
    /// The target refused the connection (nothing listens).
    Refused,
    /// Connecting failed otherwise (no route, DNS, ...).
    Connect,
    /// No whole response within `--timeout`.
    Timeout,
    /// The connection was reset or closed before the response was whole.
    Reset,
    /// What came back is not HTTP/1.x.
    Garbage,
    /// The TLS handshake failed (certificate, protocol).
    Tls,
    /// A 5xx response.
    ServerError,
}

impl FailKind {
    pub fn all() -> [FailKind; 7] {
        [
            Self::Refused,
            Self::Connect,
            Self::Timeout,
            Self::Reset,
            Self::Garbage,
            Self::Tls,
            Self::ServerError,
        ]
    }

    pub fn key(self) -> &'static str {
        match self {
            Self::Refused => "connection_refused",
            Self::Connect => "connect_failed",
            Self::Timeout => "timeout",
            Self::Reset => "connection_reset",
            Self::Garbage => "invalid_response",
            Self::Tls => "tls_failed",
            Self::ServerError => "server_error_5xx",
        }
    }
    pub fn words(self) -> &'static str {
        match self {
            Self::Refused => "connection refused",
            Self::Connect => "could not connect",
            Self::Timeout => "timed out",
            Self::Reset => "connection reset or closed before the response",
            Self::Garbage => "not an HTTP response",
            Self::Tls => "TLS handshake failed",
            Self::ServerError => "5xx response",
        }
    }
}

/// The end of one replayed request.
#[derive(Clone, Debug)]
pub enum Outcome {
    /// The target answered, and how its answer compared with production's
    /// ([`Verdict::Unjudged`] when the capture has no production response).
    Answered {
        status: u16,
        latency: Duration,
        verdict: Verdict,
    },
    /// No usable response.
    Failed { kind: FailKind },
}

/// Most endpoint groups kept; requests of further endpoints are tallied under `(other)`.
pub const MAX_ENDPOINTS: usize = 2000;

#[derive(Clone, Debug, Default, Serialize)]
pub struct EndpointTally {
    pub requests: u64,
    pub failed: u64,
    pub diffs: u64,
    /// The first difference or failure seen, in words.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub first_problem: Option<String>,
    #[serde(skip)]
    latency_sum_us: u128,
}

/// Every figure of a run, in memory that does not grow with the capture.
#[derive(Clone, Debug, Default)]
pub struct Tally {
    pub sent: u64,
    pub succeeded: u64,
    pub failed: u64,
    /// Responses compared with production's.
    pub compared: u64,
    pub diffs: u64,
    /// Compared on what was captured only (production's body has gaps or was cut).
    pub partial: u64,
    /// Production answered with a 5xx (for the production success rate).
    pub prod_failed: u64,
    pub prod_answered: u64,
    pub skipped: BTreeMap<SkipReason, u64>,
    pub errors: BTreeMap<FailKind, u64>,
    pub target_latency: Histogram,
    pub prod_latency: Histogram,
    /// How late each request was sent against its schedule.
    pub lateness: Histogram,
    pub endpoints: BTreeMap<String, EndpointTally>,
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

impl Tally {
    pub fn skip(&mut self, why: SkipReason) {
        *self.skipped.entry(why).or_default() += 1;
    }

    pub fn skipped_total(&self) -> u64 {
        self.skipped.values().sum()
    }

    /// Records one replayed request. `problem` is the first difference or failure in words.
    pub fn record(
        &mut self,
        endpoint: &str,
        prod_status: Option<u16>,
        prod_latency_ms: Option<f64>,
        lateness: Duration,
        outcome: &Outcome,
        problem: Option<String>,
    ) {
        self.sent += 1;
        self.lateness.record(micros(lateness));
        if let Some(s) = prod_status {
            self.prod_answered += 1;
            if s >= 500 {
                self.prod_failed += 1;
            }
        }
        if let Some(ms) = prod_latency_ms {
            self.prod_latency.record((ms * 1000.0).max(0.0) as u64);
        }
        let key = if self.endpoints.len() >= MAX_ENDPOINTS && !self.endpoints.contains_key(endpoint)
        {
            "(other)"
        } else {
            endpoint
        };
        let e = self.endpoints.entry(key.to_string()).or_default();
        e.requests += 1;
        match outcome {
            Outcome::Answered {
                status,
                latency,
                verdict,
            } => {
                self.target_latency.record(micros(*latency));
                e.latency_sum_us += u128::from(micros(*latency));
                if *status >= 500 {
                    self.failed += 1;
                    e.failed += 1;
                    *self.errors.entry(FailKind::ServerError).or_default() += 1;
                } else {
                    self.succeeded += 1;
                }
                if !matches!(verdict, Verdict::Unjudged) {
                    self.compared += 1;
                    if verdict.body_skipped() {
                        self.partial += 1;
                    }
                    if verdict.differs() {
                        self.diffs += 1;
                        e.diffs += 1;
                    }
                }
            }
            Outcome::Failed { kind } => {
                self.failed += 1;
                e.failed += 1;
                *self.errors.entry(*kind).or_default() += 1;
            }
        }
        if e.first_problem.is_none() {
            e.first_problem = problem;
        }
    }
}

/// Latency figures in milliseconds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct Latency {
    pub avg: f64,
    pub p50: f64,
    pub p95: f64,
    pub p99: f64,
    pub max: f64,
}

impl Latency {
    pub fn of(h: &Histogram) -> Option<Self> {
        (h.count() > 0).then(|| {
            let ms = |us: u64| us as f64 / 1000.0;
            Self {
                avg: h.mean() / 1000.0,
                p50: ms(h.quantile(0.50)),
                p95: ms(h.quantile(0.95)),
                p99: ms(h.quantile(0.99)),
                max: ms(h.max()),
            }
        })
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct LatencyPair {
    pub target: Option<Latency>,
    pub production: Option<Latency>,
}

#[derive(Clone, Debug, Serialize)]
pub struct EndpointSummary {
    pub endpoint: String,
    #[serde(flatten)]
    pub tally: EndpointTally,
    pub avg_latency_ms: Option<f64>,
}

/// The result of a run: the `--json` object, the last record of the saved results, and what
/// the gates are evaluated on.
#[derive(Clone, Debug, Serialize)]
pub struct Summary {
    pub target: String,
    /// Requests sent to the target.
    pub requests: u64,
    pub succeeded: u64,
    pub failed: u64,
    pub skipped: u64,
    pub skipped_by_reason: BTreeMap<&'static str, u64>,
    /// Responses that differed from production's.
    pub diffs: u64,
    /// Responses compared with production's.
    pub compared: u64,
    /// Compared on the captured part only (production's response has gaps or was cut).
    pub partial: u64,
    /// Percent of requests answered without a 5xx.
    pub success_rate: Option<f64>,
    /// Production's, from the capture, for the same requests.
    pub production_success_rate: Option<f64>,
    /// Percent of compared responses that differed.
    pub diff_rate: Option<f64>,
    pub errors: BTreeMap<&'static str, u64>,
    pub latency_ms: LatencyPair,
    /// How late requests were sent against the scaled schedule (backpressure from a slow
    /// target shows here).
    pub behind_schedule_ms: Option<Latency>,
    pub elapsed_s: f64,
    pub requests_per_s: f64,
    pub endpoints: Vec<EndpointSummary>,
    /// Set when the run was cut short (`--limit`, `--duration`, Ctrl-C).
    pub stopped: Option<String>,
}

fn pct(n: u64, of: u64) -> Option<f64> {
    (of > 0).then(|| n as f64 * 100.0 / of as f64)
}

impl Summary {
    pub fn new(target: &str, t: &Tally, elapsed: Duration, stopped: Option<String>) -> Self {
        let secs = elapsed.as_secs_f64();
        Self {
            target: target.to_string(),
            requests: t.sent,
            succeeded: t.succeeded,
            failed: t.failed,
            skipped: t.skipped_total(),
            skipped_by_reason: t.skipped.iter().map(|(k, v)| (k.key(), *v)).collect(),
            diffs: t.diffs,
            compared: t.compared,
            partial: t.partial,
            success_rate: pct(t.succeeded, t.sent),
            production_success_rate: pct(t.prod_answered - t.prod_failed, t.prod_answered),
            diff_rate: pct(t.diffs, t.compared),
            errors: t.errors.iter().map(|(k, v)| (k.key(), *v)).collect(),
            latency_ms: LatencyPair {
                target: Latency::of(&t.target_latency),
                production: Latency::of(&t.prod_latency),
            },
            behind_schedule_ms: Latency::of(&t.lateness),
            elapsed_s: secs,
            requests_per_s: if secs > 0.0 {
                t.sent as f64 / secs
            } else {
                0.0
            },
            endpoints: t
                .endpoints
                .iter()
                .map(|(k, v)| EndpointSummary {
                    endpoint: k.clone(),
                    avg_latency_ms: (v.requests > v.failed && v.latency_sum_us > 0).then(|| {
                        v.latency_sum_us as f64 / (v.requests - v.failed).max(1) as f64 / 1000.0
                    }),
                    tally: v.clone(),
                })
                .collect(),
            stopped,
        }
    }

    /// A JUnit XML report: one test suite, one test case per endpoint group, failed when a
    /// request of the group failed or differed from production.
    /// The JUnit XML report: one test case per endpoint. `started` (Unix time) and `host` go
    /// into the suite's `timestamp` and `hostname`, which stricter consumers require.
    pub fn junit(&self, started: Duration, host: &str) -> String {
        let problems = self
            .endpoints
            .iter()
            .filter(|e| e.tally.failed + e.tally.diffs > 0)
            .count();
        let mut x = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
        let _ = writeln!(
            x,
            "<testsuites name=\"rf-tap replay\" tests=\"{}\" failures=\"{problems}\" time=\"{:.3}\">",
            self.endpoints.len(),
            self.elapsed_s
        );
        let _ = writeln!(
            x,
            "  <testsuite name=\"{}\" tests=\"{}\" failures=\"{problems}\" errors=\"0\" skipped=\"0\" time=\"{:.3}\" timestamp=\"{}\" hostname=\"{}\">",
            xml_escape(&format!("replay against {}", self.target)),
            self.endpoints.len(),
            self.elapsed_s,
            crate::query::format_utc(started, 'T', 0),
            xml_escape(host)
        );
        for e in &self.endpoints {
            let t = &e.tally;
            let time = e.avg_latency_ms.unwrap_or(0.0) * t.requests as f64 / 1000.0;
            let _ = write!(
                x,
                "    <testcase classname=\"rf-tap.replay\" name=\"{}\" time=\"{time:.3}\"",
                xml_escape(&e.endpoint)
            );
            if t.failed + t.diffs == 0 {
                x.push_str("/>\n");
                continue;
            }
            let plural =
                |n: u64, one: &str, many: &str| format!("{n} {}", if n == 1 { one } else { many });
            let message = format!(
                "{} of {} requests failed, {} from production",
                t.failed,
                t.requests,
                plural(t.diffs, "response differed", "responses differed")
            );
            let _ = writeln!(
                x,
                ">\n      <failure message=\"{}\" type=\"{}\">{}</failure>\n    </testcase>",
                xml_escape(&message),
                if t.failed > 0 { "failed" } else { "diff" },
                xml_escape(t.first_problem.as_deref().unwrap_or(""))
            );
        }
        x.push_str("  </testsuite>\n</testsuites>\n");
        x
    }
}

/// Escapes text for XML content and attributes; drops characters XML 1.0 cannot hold.
pub fn xml_escape(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => o.push_str("&amp;"),
            '<' => o.push_str("&lt;"),
            '>' => o.push_str("&gt;"),
            '"' => o.push_str("&quot;"),
            '\'' => o.push_str("&apos;"),
            '\t' | '\n' | '\r' => o.push(c),
            c if (c as u32) < 0x20 || c == '\u{fffe}' || c == '\u{ffff}' => o.push('\u{fffd}'),
            c => o.push(c),
        }
    }
    o
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compare::{Comparison, Difference};

    fn answered(status: u16, ms: u64, diff: bool) -> Outcome {
        let mut c = Comparison::default();
        if diff {
            c.count = 1;
            c.differences.push(Difference::Status {
                prod: 200,
                target: status,
            });
        }
        Outcome::Answered {
            status,
            latency: Duration::from_millis(ms),
            verdict: if c.differs() {
                Verdict::Differs {
                    comparison: c,
                    noise: 0,
                }
            } else {
                Verdict::Same {
                    body_skipped: false,
                    noise: 0,
                }
            },
        }
    }

    #[test]
    fn tallies_rates_latencies_and_endpoints() {
        let mut t = Tally::default();
        let zero = Duration::ZERO;
        for i in 0..8 {
            t.record(
                "GET /a",
                Some(200),
                Some(10.0),
                zero,
                &answered(200, 20 + i, false),
                None,
            );
        }
        t.record(
            "GET /b/{id}",
            Some(200),
            Some(10.0),
            zero,
            &answered(500, 5, true),
            Some("200 → 500".into()),
        );
        t.record(
            "GET /b/{id}",
            Some(200),
            None,
            zero,
            &Outcome::Failed {
                kind: FailKind::Timeout,
            },
            Some("timed out".into()),
        );
        t.skip(SkipReason::Write);
        let s = Summary::new("http://t", &t, Duration::from_secs(2), None);
        assert_eq!(
            (
                s.requests,
                s.succeeded,
                s.failed,
                s.skipped,
                s.diffs,
                s.compared
            ),
            (10, 8, 2, 1, 1, 9)
        );
        assert_eq!(s.success_rate, Some(80.0));
        assert_eq!(s.production_success_rate, Some(100.0));
        assert!((s.diff_rate.unwrap() - 100.0 / 9.0).abs() < 1e-9);
        assert_eq!(s.errors.get("timeout"), Some(&1));
        assert_eq!(s.errors.get("server_error_5xx"), Some(&1));
        assert_eq!(s.skipped_by_reason.get("write_method"), Some(&1));
        let target = s.latency_ms.target.unwrap();
        assert!(target.p50 >= 20.0 && target.p50 <= 25.0, "{target:?}");
        let prod = s.latency_ms.production.unwrap().p50;
        assert!((9.6..=10.0).contains(&prod), "{prod}");
        let b = s
            .endpoints
            .iter()
            .find(|e| e.endpoint == "GET /b/{id}")
            .unwrap();
        assert_eq!((b.tally.requests, b.tally.failed, b.tally.diffs), (2, 2, 1));
        assert_eq!(b.tally.first_problem.as_deref(), Some("200 → 500"));
        assert_eq!(s.requests_per_s, 5.0);
    }

    #[test]
    fn junit_has_one_case_per_endpoint_and_escapes() {
        let mut t = Tally::default();
        t.record(
            "GET /a?<x>&y",
            Some(200),
            None,
            Duration::ZERO,
            &answered(200, 1, false),
            None,
        );
        t.record(
            "POST /b",
            Some(200),
            None,
            Duration::ZERO,
            &answered(201, 1, true),
            Some("\"200\" → 201 \u{1}".into()),
        );
        let x = Summary::new("http://t", &t, Duration::from_secs(1), None)
            .junit(Duration::from_secs(1_795_000_000), "ci-1");
        assert!(x.contains("timestamp=\"2026-11-18T11:06:40\""), "{x}");
        assert!(x.contains("hostname=\"ci-1\""), "{x}");
        assert!(
            x.contains("0 of 1 requests failed, 1 response differed from production"),
            "{x}"
        );
        assert_eq!(x.matches("<testcase ").count(), 2);
        assert_eq!(x.matches("<failure ").count(), 1);
        assert!(x.contains("name=\"GET /a?&lt;x&gt;&amp;y\""));
        assert!(x.contains("&quot;200&quot; → 201 \u{fffd}"));
    }

    #[test]
    fn endpoint_groups_are_capped() {
        let mut t = Tally::default();
        for i in 0..MAX_ENDPOINTS + 10 {
            t.record(
                &format!("GET /p{i}"),
                None,
                None,
                Duration::ZERO,
                &answered(200, 1, false),
                None,
            );
        }
        assert_eq!(t.endpoints.len(), MAX_ENDPOINTS + 1);
        assert_eq!(t.endpoints["(other)"].requests, 10);
    }
}
