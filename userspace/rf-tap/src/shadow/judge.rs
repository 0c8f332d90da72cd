//! The judge thread of a live mirror: pairs each mirrored request's production response
//! (from the capture) with each shadow's answer (from the sender), in whichever order they
//! come, judges them with the engine's [`judge`], learns noise from production, and keeps the
//! stats: per-minute buckets on disk, and running totals for `/metrics`.

use std::{
    collections::{BTreeMap, HashMap},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use crossbeam::channel::{Receiver, RecvTimeoutError};
use rf_tap_engine::{
    compare::{judge, CompareOptions, Noise, NoiseModel, ResponseView, Verdict},
    redact::Redaction,
};

use super::store::{unix_now, Bucket, BucketFile, DiffLog, MirrorDiff};

/// A mirrored request: its connection and the frame its first byte came in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ReqKey {
    pub conn: u64,
    pub frame: u64,
}

/// What a shadow answered.
pub enum ShadowResult {
    Answer {
        view: ResponseView,
        latency: Duration,
    },
    /// No usable response: refused, timeout, reset, not HTTP (the kind's key).
    Failed { kind: &'static str },
}

pub enum Msg {
    /// A request was queued for these destinations.
    Sent {
        key: ReqKey,
        endpoint: String,
        request: String,
        dests: Vec<usize>,
    },
    Skipped(&'static str),
    /// A request not sent to a destination, and why.
    Dropped(&'static str),
    /// Production's exchange. `key` is None for an exchange without request.
    Production {
        key: Option<ReqKey>,
        endpoint: String,
        request: String,
        /// None: no response was captured.
        status: Option<u16>,
        latency: Option<Duration>,
        view: Option<ResponseView>,
    },
    Answer {
        key: ReqKey,
        dest: usize,
        result: ShadowResult,
        /// From the request's last captured packet to its send.
        lag: Duration,
    },
}

/// Running totals since the mirror started, for `/metrics`.
#[derive(Default)]
pub struct Totals {
    pub total: Bucket,
}

struct Pending {
    endpoint: String,
    request: String,
    created: Instant,
    /// Destinations still to answer.
    waiting: Vec<usize>,
    /// Destinations that answered (an answer can come before word that it was sent).
    answered: Vec<usize>,
    /// Production's response: None until its exchange comes; Some(None) when it had none.
    prod: Option<Option<ResponseView>>,
    answers: Vec<(usize, ResponseView)>,
}

impl Pending {
    fn new(created: Instant) -> Self {
        Self {
            endpoint: String::new(),
            request: String::new(),
            created,
            waiting: Vec::new(),
            answered: Vec::new(),
            prod: None,
            answers: Vec::new(),
        }
    }
}

pub struct JudgeConfig {
    pub name: String,
    pub destinations: Vec<String>,
    pub compare: bool,
    pub options: CompareOptions,
    /// How long a request waits for its other half before it is given up.
    pub pair_timeout: Duration,
    /// What the diff log may hold of the exchanges (credentials masked by default).
    pub redaction: Redaction,
}

/// Runs until every sender of `rx` is gone.
pub fn run(cfg: JudgeConfig, rx: Receiver<Msg>, totals: Arc<Mutex<Totals>>, file: BucketFile) {
    let mut diffs = DiffLog::open(&cfg.name);
    let mut noise = NoiseModel::default();
    let mut pending: HashMap<ReqKey, Pending> = HashMap::new();
    let mut bucket = Bucket {
        minute: unix_now().as_secs() / 60,
        ..Bucket::default()
    };
    // The minutes closed since the start; the metrics' totals are these plus the current
    // minute, refreshed every second (merging histograms per message would cost more than
    // the judging).
    let mut closed = Bucket::default();
    let mut last_write = Instant::now();
    let mut last_sweep = Instant::now();
    let dest_name = |d: usize| cfg.destinations.get(d).cloned().unwrap_or_default();
    let mut done = false;
    while !done {
        let first = match rx.recv_timeout(Duration::from_millis(250)) {
            Ok(m) => Some(m),
            Err(RecvTimeoutError::Timeout) => None,
            Err(RecvTimeoutError::Disconnected) => {
                done = true;
                None
            }
        };
        let minute = unix_now().as_secs() / 60;
        if minute != bucket.minute {
            let _ = file.append(&bucket);
            closed.add(&bucket);
            bucket = Bucket {
                minute,
                noise_fields: noise.field_count() as u64,
                ..Bucket::default()
            };
        }
        // What is queued now, in one go.
        let queued = std::iter::from_fn(|| rx.try_recv().ok()).take(4096);
        for m in first.into_iter().chain(queued) {
            handle(
                m,
                &cfg,
                &mut pending,
                &mut noise,
                &mut bucket,
                &mut diffs,
                &dest_name,
            );
        }
        bucket.noise_fields = noise.field_count() as u64;
        if last_sweep.elapsed() >= Duration::from_secs(1) {
            last_sweep = Instant::now();
            // A request whose other half never came (the capture lost the response, or the
            // shadow's answer outlived the pairing window) is given up.
            let limit = cfg.pair_timeout;
            let mut given_up = 0;
            pending.retain(|_, p| {
                let keep = p.created.elapsed() < limit;
                given_up += u64::from(!keep);
                keep
            });
            if given_up > 0 {
                *bucket.dropped.entry("unpaired".into()).or_default() += given_up;
            }
        }
        if last_write.elapsed() >= Duration::from_secs(1) || done {
            last_write = Instant::now();
            let _ = file.write_current(&bucket);
            if let Ok(mut t) = totals.lock() {
                t.total = closed.clone();
                t.total.add(&bucket);
            }
        }
    }
    let _ = file.append(&bucket);
    let _ = std::fs::remove_file(super::store::data_dir(&cfg.name).join("current.json"));
}

fn success(status: u16) -> bool {
    status < 500
}

fn handle(
    m: Msg,
    cfg: &JudgeConfig,
    pending: &mut HashMap<ReqKey, Pending>,
    noise: &mut NoiseModel,
    b: &mut Bucket,
    diffs: &mut DiffLog,
    dest_name: &dyn Fn(usize) -> String,
) {
    match m {
        Msg::Skipped(reason) => *b.skipped.entry(reason.into()).or_default() += 1,
        Msg::Dropped(reason) => *b.dropped.entry(reason.into()).or_default() += 1,
        Msg::Sent {
            key,
            endpoint,
            request,
            dests,
        } => {
            b.mirrored += 1;
            let p = pending
                .entry(key)
                .or_insert_with(|| Pending::new(Instant::now()));
            p.endpoint = endpoint;
            p.request = request;
            let answered = p.answered.clone();
            p.waiting
                .extend(dests.into_iter().filter(|d| !answered.contains(d)));
            settle(key, pending, cfg, noise, b, diffs, dest_name);
        }
        Msg::Production {
            key,
            endpoint,
            request,
            status,
            latency,
            view,
        } => {
            let side = &mut b.production;
            side.requests += 1;
            match status {
                Some(s) if success(s) => side.succeeded += 1,
                _ => side.errors += 1,
            }
            if let Some(l) = latency {
                side.latency.record(l.as_micros() as u64);
            }
            if let Some(v) = &view {
                noise.observe(&endpoint, &request, v);
            }
            if let Some(key) = key {
                if let Some(p) = pending.get_mut(&key) {
                    p.prod = Some(view);
                    settle(key, pending, cfg, noise, b, diffs, dest_name);
                }
            }
        }
        Msg::Answer {
            key,
            dest,
            result,
            lag,
        } => {
            b.lag.record(lag.as_micros() as u64);
            let side = b.shadows.entry(dest_name(dest)).or_default();
            side.requests += 1;
            let view = match result {
                ShadowResult::Answer { view, latency } => {
                    side.latency.record(latency.as_micros() as u64);
                    if success(view.status) {
                        side.succeeded += 1;
                    } else {
                        side.errors += 1;
                    }
                    Some(view)
                }
                ShadowResult::Failed { kind, .. } => {
                    side.errors += 1;
                    *b.failures.entry(kind.into()).or_default() += 1;
                    None
                }
            };
            // The answer may come before word that its request was sent.
            let p = pending
                .entry(key)
                .or_insert_with(|| Pending::new(Instant::now()));
            p.waiting.retain(|d| *d != dest);
            p.answered.push(dest);
            if let Some(v) = view {
                p.answers.push((dest, v));
            }
            settle(key, pending, cfg, noise, b, diffs, dest_name);
        }
    }
}

/// Judges what can be judged of a pending request; forgets it once complete.
fn settle(
    key: ReqKey,
    pending: &mut HashMap<ReqKey, Pending>,
    cfg: &JudgeConfig,
    noise: &NoiseModel,
    b: &mut Bucket,
    diffs: &mut DiffLog,
    dest_name: &dyn Fn(usize) -> String,
) {
    let Some(p) = pending.get_mut(&key) else {
        return;
    };
    let Some(prod) = &p.prod else {
        return;
    };
    for (dest, answer) in p.answers.drain(..) {
        if !cfg.compare {
            continue;
        }
        let name = dest_name(dest);
        let verdict = judge(
            prod.as_ref(),
            &answer,
            &cfg.options,
            Noise::Learned {
                model: noise,
                endpoint: &p.endpoint,
            },
        );
        if !matches!(verdict, Verdict::Unjudged) {
            *b.compared.entry(name.clone()).or_default() += 1;
        }
        if let Verdict::Same { noise: n, .. } = &verdict {
            b.noise_diffs += *n as u64;
        }
        if let Verdict::Differs {
            comparison,
            noise: n,
        } = &verdict
        {
            b.noise_diffs += *n as u64;
            *b.diffs.entry(name.clone()).or_default() += 1;
            let red = &cfg.redaction;
            let mut differences = comparison.differences.clone();
            for d in &mut differences {
                red.difference(d);
            }
            let words: Vec<String> = differences
                .iter()
                .map(|d| d.to_string().replace("target response", "shadow response"))
                .collect();
            let text = |v: &ResponseView| {
                let b = red.body(v.headers.get_str("content-type").as_deref(), &v.body);
                String::from_utf8_lossy(&b[..b.len().min(4096)]).into_owned()
            };
            let request = match p.request.split_once(' ') {
                Some((method, target)) => format!("{method} {}", red.target(target)),
                None => p.request.clone(),
            };
            diffs.write(&MirrorDiff {
                ts: unix_now().as_secs_f64(),
                destination: name.clone(),
                endpoint: p.endpoint.clone(),
                request,
                production_status: prod.as_ref().map(|v| v.status),
                shadow_status: answer.status,
                production_body: prod.as_ref().map(text),
                shadow_body: text(&answer),
                differences,
                summary: words,
                noise_ignored: *n,
            });
        }
    }
    if p.waiting.is_empty() {
        pending.remove(&key);
    }
}

/// Sums of the per-destination maps, for one-line reports.
pub fn total(m: &BTreeMap<String, u64>) -> u64 {
    m.values().sum()
}
