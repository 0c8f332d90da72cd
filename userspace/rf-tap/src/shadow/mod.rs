//! Live shadow mirroring: production requests, captured in the kernel, sent to one or more
//! shadow services as soon as each is complete, and each shadow's answer judged against
//! production's own captured response.
//!
//! ```text
//! live pipeline ──request event──► ShadowSink ──try_send──► sender (tokio, per destination,
//!      │                              │ sample, select,       a task per captured connection)
//!      │                              │ transform                    │ answers
//!      └──production exchange─────────┴──────────► judge thread ◄────┘
//!                                                  pair, judge, learn noise,
//!                                                  per-minute stats on disk, /metrics
//! ```
//!
//! The shadow sink runs on the live pipeline's writer thread and never blocks: a request
//! that does not fit its destination's queue is dropped and counted.

pub mod judge;
pub mod metrics;
pub mod sender;
pub mod store;

use std::{
    hash::{BuildHasher, Hash},
    sync::Arc,
    time::{Duration, Instant},
};

use crossbeam::channel::Sender as JudgeTx;
use rf_tap_engine::{
    compare::{endpoint_key, ResponseView},
    flow::RequestEvent,
    http::exchange::{Exchange, ExchangeFlags},
    replay::http::{
        plan::{body_incomplete, Selection, SkipReason},
        transform::Transform,
    },
};

use crate::pipeline::sinks::{Sink, SinkError};
use judge::{Msg, ReqKey};
use sender::{Destination, Job, NotQueued};

/// How requests are chosen for the shadows.
#[derive(Clone, Debug)]
pub enum SampleBy {
    /// Whole captured connections.
    Connection,
    /// A header's value (`header:X-User-Id`): one value always in or always out.
    Header(String),
    /// A query parameter's value (`query:user`).
    Query(String),
}

impl std::str::FromStr for SampleBy {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.split_once(':') {
            Some(("header", h)) if !h.is_empty() => Ok(SampleBy::Header(h.to_string())),
            Some(("query", q)) if !q.is_empty() => Ok(SampleBy::Query(q.to_string())),
            _ if s == "connection" => Ok(SampleBy::Connection),
            _ => Err(format!("`{s}`: use connection, header:NAME or query:NAME")),
        }
    }
}

/// A token bucket for `--max-rate`.
struct RateLimit {
    per_sec: f64,
    tokens: f64,
    last: Instant,
}

impl RateLimit {
    fn take(&mut self) -> bool {
        let now = Instant::now();
        self.tokens = (self.tokens + now.duration_since(self.last).as_secs_f64() * self.per_sec)
            .min(self.per_sec.max(1.0));
        self.last = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

pub struct ShadowSink {
    destinations: Vec<Destination>,
    judge: JudgeTx<Msg>,
    selection: Selection,
    /// One per destination (each its own Host header and path prefix).
    transforms: Vec<Transform>,
    /// Kept share, in 1/10000.
    sample: u64,
    sample_by: SampleBy,
    hasher: foldhash::fast::FixedState,
    rate: Option<RateLimit>,
    compare: bool,
    buf: Vec<u8>,
}

pub struct ShadowSinkConfig {
    pub selection: Selection,
    /// One per destination, in the destinations' order.
    pub transforms: Vec<Transform>,
    pub sample_rate: f64,
    pub sample_by: SampleBy,
    pub max_rate: Option<f64>,
    pub compare: bool,
}

impl ShadowSink {
    pub fn new(cfg: ShadowSinkConfig, destinations: Vec<Destination>, judge: JudgeTx<Msg>) -> Self {
        Self {
            destinations,
            judge,
            selection: cfg.selection,
            transforms: cfg.transforms,
            sample: (cfg.sample_rate * 100.0).round().clamp(0.0, 10_000.0) as u64,
            sample_by: cfg.sample_by,
            // Fixed: the same user or connection is in or out whatever the process.
            hasher: foldhash::fast::FixedState::with_seed(0x005e_ed5a_4d1e),
            rate: cfg.max_rate.map(|per_sec| RateLimit {
                per_sec,
                tokens: per_sec.max(1.0),
                last: Instant::now(),
            }),
            compare: cfg.compare,
            buf: Vec::new(),
        }
    }

    fn kept<T: Hash>(&self, v: T) -> bool {
        self.sample >= 10_000 || self.hasher.hash_one(v) % 10_000 < self.sample
    }

    fn sampled_in(&self, r: &RequestEvent) -> bool {
        match &self.sample_by {
            SampleBy::Connection => self.kept((r.client, r.server)),
            SampleBy::Header(h) => match r.request.headers.get(h) {
                Some(v) => self.kept(v),
                None => self.kept((r.client, r.server)),
            },
            SampleBy::Query(q) => {
                let query = r
                    .request
                    .target
                    .split_once('?')
                    .map(|(_, q)| q)
                    .unwrap_or("");
                let value = query
                    .split('&')
                    .filter_map(|kv| kv.split_once('='))
                    .find(|(k, _)| k == q)
                    .map(|(_, v)| v);
                match value {
                    Some(v) => self.kept(v),
                    None => self.kept((r.client, r.server)),
                }
            }
        }
    }
}

fn key_of(conn: u64, frame: u64) -> ReqKey {
    ReqKey { conn, frame }
}

fn skip_key(r: SkipReason) -> &'static str {
    match r {
        SkipReason::RequestIncomplete => "incomplete",
        other => other.key(),
    }
}

impl Sink for ShadowSink {
    fn wants_requests(&self) -> bool {
        true
    }

    fn request(&mut self, r: &RequestEvent) -> Result<(), SinkError> {
        if !self.sampled_in(r) {
            let _ = self.judge.send(Msg::Skipped("sampled_out"));
            return Ok(());
        }
        let q = &r.request;
        let as_exchange = Exchange {
            id: 0,
            conn: r.conn,
            client: r.client,
            server: r.server,
            request: Some(q.clone()),
            response: None,
            flags: ExchangeFlags::default(),
            anomalies: Vec::new(),
            client_by: None,
            traffic: None,
        };
        let plan = match self.selection.plan(as_exchange) {
            Ok(p) => p,
            Err(why) => {
                let _ = self.judge.send(Msg::Skipped(skip_key(why)));
                return Ok(());
            }
        };
        if let Some(rate) = self.rate.as_mut() {
            if !rate.take() {
                let _ = self.judge.send(Msg::Dropped("rate_limited"));
                return Ok(());
            }
        }
        let key = key_of(r.conn, q.start.frame);
        let mut sent = Vec::new();
        for (i, (d, transform)) in self.destinations.iter().zip(&self.transforms).enumerate() {
            let vars = crate::replay::http::runner::vars(transform.uses_variables());
            transform.build(&plan, &vars, &mut self.buf);
            let job = Job {
                key,
                conn: r.conn,
                method: q.method.clone(),
                bytes: Arc::new(std::mem::take(&mut self.buf)),
                captured: q.end.ts,
            };
            match d.try_send(job) {
                Ok(()) => sent.push(i),
                Err(why) => {
                    let reason = match why {
                        NotQueued::QueueFull => "queue_full",
                        NotQueued::Closed => "sender_stopped",
                    };
                    let _ = self.judge.send(Msg::Dropped(reason));
                }
            }
        }
        if !sent.is_empty() {
            let _ = self.judge.send(Msg::Sent {
                key,
                endpoint: endpoint_key(&q.method, &q.target),
                request: format!("{} {}", q.method, q.target),
                dests: sent,
            });
        }
        Ok(())
    }

    fn exchange(&mut self, x: &Exchange) -> Result<(), SinkError> {
        let Some(q) = &x.request else {
            return Ok(());
        };
        let r = x.response.as_ref();
        let cut = x.flags.gap_response || x.flags.truncated;
        let view = if self.compare {
            r.map(|r| ResponseView {
                status: r.status,
                body_incomplete: body_incomplete(r, cut),
                headers: r.headers.clone(),
                body: r.body.data.clone(),
            })
        } else {
            None
        };
        let _ = self.judge.send(Msg::Production {
            key: Some(key_of(x.conn, q.start.frame)),
            endpoint: endpoint_key(&q.method, &q.target),
            request: format!("{} {}", q.method, q.target),
            status: r.map(|r| r.status),
            latency: x
                .latency_ms()
                .map(|ms| Duration::from_secs_f64(ms / 1000.0)),
            view,
        });
        Ok(())
    }

    fn flush(&mut self) -> Result<(), SinkError> {
        Ok(())
    }

    fn finish(self: Box<Self>) -> Result<u64, SinkError> {
        Ok(0)
    }
}
