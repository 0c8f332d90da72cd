//! Running an HTTP replay: a dispatcher thread that walks the capture and releases each
//! request at its scaled instant (sleep-then-spin clock, anchored to the start), one tokio
//! task per captured connection that sends that connection's requests in order on one
//! connection; each task tallies its outcomes into a shared collector (which saves diffs and
//! draws the progress bar) under a lock, with no thread hand-off per request.
//!
//! Backpressure: at most `concurrency` replay connections are open; a new captured
//! connection waits for an idle one (closed to make room), and each connection queues at
//! most [`CONN_QUEUE`] requests. When the target is slower than the schedule, the dispatcher
//! blocks instead of queueing without bound, and the lateness shows as "behind schedule".

use std::{
    collections::{BinaryHeap, HashMap},
    io::Write as _,
    sync::{
        atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering},
        Arc, Condvar, Mutex,
    },
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use rf_tap_engine::{
    compare::{endpoint_key, judge, schema_hint, CompareOptions, Noise, Verdict},
    http::exchange::Exchange,
    redact::Redaction,
    replay::{
        http::{
            plan::{ReplayRequest, Selection},
            record::{
                body_text, DiffRecord, FailureRecord, RequestRef, ResultRecord, SavedResponse,
                SAVED_BODY,
            },
            report::{Outcome, Tally},
            transform::{Transform, Vars},
        },
        player::Clock as _,
    },
};
use tokio::sync::mpsc;

use super::client::{Connection, Connector, Failure, H2Session};
use crate::replay::clock::MonotonicClock;

/// Requests queued on one connection before the dispatcher waits.
pub const CONN_QUEUE: usize = 32;
/// Exchanges held to put them back in request-start order (a capture lists an exchange
/// when its response ends).
const REORDER_WINDOW: usize = 4096;
const REORDER_SPAN: Duration = Duration::from_secs(5);

/// Everything a connection task needs, shared.
pub struct Shared {
    pub connector: Connector,
    pub transform: Transform,
    pub compare: CompareOptions,
    pub timeout: Duration,
    pub noise_runs: u32,
    /// The target's name in difference wording ("New field "x" in staging response").
    pub label: String,
    /// What the results file may hold of the exchanges (credentials masked by default).
    pub redaction: Redaction,
}

pub struct RunConfig {
    pub selection: Selection,
    /// None: as fast as the target answers (`--topspeed`).
    pub speed: Option<f64>,
    pub concurrency: usize,
    pub limit: Option<u64>,
    pub duration: Option<Duration>,
    pub workers: usize,
}

/// The tally and the collector, shared by the connection tasks.
struct Collector<C> {
    tally: Tally,
    collect: C,
}

type SharedCollector<C> = Arc<Mutex<Collector<C>>>;

/// What the collector gets for each request.
struct Done {
    endpoint: String,
    prod_status: Option<u16>,
    prod_latency_ms: Option<f64>,
    lateness: Duration,
    outcome: Outcome,
    /// The first problem in words (for the JUnit file).
    problem: Option<String>,
    /// A record for the results file (a diff or a failure).
    record: Option<ResultRecord>,
}

struct Job {
    req: ReplayRequest,
    endpoint: String,
    due: Instant,
}

struct ConnHandle {
    tx: mpsc::Sender<Job>,
    pending: Arc<AtomicUsize>,
}

/// Signalled when a connection runs out of queued requests or closes.
#[derive(Default)]
struct Idle {
    lock: Mutex<()>,
    cond: Condvar,
    /// Connection tasks alive (each holds at most one connection).
    open: AtomicUsize,
}

impl Idle {
    fn notify(&self) {
        let _g = self.lock.lock();
        self.cond.notify_all();
    }
}

/// Live figures the progress bar reads.
#[derive(Default)]
pub struct Progress {
    /// Capture time (ns) of the last request released.
    pub capture_ns: AtomicU64,
}

/// The end of a run.
pub struct RunEnd<C> {
    pub tally: Tally,
    /// The collector given to [`run`], back.
    pub collect: C,
    pub elapsed: Duration,
    pub stopped: Option<String>,
    pub read_error: Option<String>,
}

/// Walks a capture's exchanges, handing each to the visitor until it returns false.
pub type ExchangeWalk<'a> =
    &'a mut dyn FnMut(&mut dyn FnMut(Exchange) -> bool) -> anyhow::Result<()>;

/// Where each request's outcome goes.
pub trait Collect: Send {
    fn done(&mut self, tally: &Tally, record: Option<ResultRecord>);
}

pub fn vars(needed: bool) -> Vars {
    if !needed {
        return Vars {
            now: Duration::ZERO,
            random: [0; 16],
        };
    }
    let mut random = [0u8; 16];
    // SAFETY: getrandom writes at most the given length into the buffer.
    let n = unsafe { libc::getrandom(random.as_mut_ptr().cast(), random.len(), 0) };
    if n != random.len() as isize {
        // Never fails on Linux for 16 bytes; a fallback keeps ids distinct anyway.
        let t = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos();
        random = t.to_le_bytes();
    }
    Vars {
        now: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default(),
        random,
    }
}

/// Sends one request (`noise_runs` times) and compares the answer with production's.
async fn replay_one(conn: &mut Connection, shared: &Shared, job: &Job, lateness: Duration) -> Done {
    let req = &job.req;
    let mut bytes = Vec::with_capacity(512 + req.body.len());
    shared
        .transform
        .build(req, &vars(shared.transform.uses_variables()), &mut bytes);
    let first = conn
        .exchange(&shared.connector, &bytes, &req.method, shared.timeout)
        .await;
    let red = &shared.redaction;
    let request = RequestRef {
        id: req.id,
        conn: req.conn,
        method: req.method.clone(),
        target: red.target(&req.target).into_owned(),
        endpoint: job.endpoint.clone(),
    };
    let answer = match first {
        Err(Failure { kind, detail }) => {
            return Done {
                endpoint: job.endpoint.clone(),
                prod_status: req.prod.as_ref().map(|p| p.status),
                prod_latency_ms: req.prod_latency_ms,
                lateness,
                outcome: Outcome::Failed { kind },
                problem: Some(format!("{}: {detail}", kind.words())),
                record: Some(ResultRecord::Failure(FailureRecord {
                    request,
                    error: kind.key().to_string(),
                    words: kind.words().to_string(),
                    detail,
                    hint: None,
                })),
            };
        }
        Ok(a) => a,
    };
    // The same request again, for the fields and headers the target itself varies.
    let mut again = Vec::new();
    if shared.noise_runs > 1 && req.prod.is_some() {
        for _ in 1..shared.noise_runs {
            bytes.clear();
            shared
                .transform
                .build(req, &vars(shared.transform.uses_variables()), &mut bytes);
            if let Ok(a) = conn
                .exchange(&shared.connector, &bytes, &req.method, shared.timeout)
                .await
            {
                again.push(a.view);
            }
        }
    }
    let verdict = judge(
        req.prod.as_ref(),
        &answer.view,
        &shared.compare,
        Noise::Reruns(&again),
    );
    let mut problem = None;
    let mut record = None;
    if let (
        Verdict::Differs {
            comparison: c,
            noise,
        },
        Some(p),
    ) = (&verdict, &req.prod)
    {
        let mut differences = c.differences.clone();
        for d in &mut differences {
            red.difference(d);
        }
        let words: Vec<String> = differences
            .iter()
            .map(|d| {
                d.to_string()
                    .replace("target response", &format!("{} response", shared.label))
            })
            .collect();
        problem = words.first().cloned();
        record = Some(ResultRecord::Diff(Box::new(DiffRecord {
            request: request.clone(),
            n: 0,
            partial: req.partial,
            production: SavedResponse::of(p, red),
            target_response: SavedResponse::of(&answer.view, red),
            differences,
            count: c.count,
            words,
            hint: schema_hint(answer.view.status, &answer.view.body).map(str::to_string),
            noise_ignored: *noise,
            latency_ms: answer.latency.as_secs_f64() * 1000.0,
            production_latency_ms: req.prod_latency_ms,
        })));
    }
    if record.is_none() && answer.view.status >= 500 {
        problem = Some(format!("{} response", answer.view.status));
        record = Some(ResultRecord::Failure(FailureRecord {
            request,
            error: "server_error_5xx".into(),
            words: format!("{} response", answer.view.status),
            detail: body_text(
                &red.body(
                    answer.view.headers.get_str("content-type").as_deref(),
                    &answer.view.body[..answer.view.body.len().min(512)],
                ),
                SAVED_BODY,
            ),
            hint: schema_hint(answer.view.status, &answer.view.body).map(str::to_string),
        }));
    }
    Done {
        endpoint: job.endpoint.clone(),
        prod_status: req.prod.as_ref().map(|p| p.status),
        prod_latency_ms: req.prod_latency_ms,
        lateness,
        outcome: Outcome::Answered {
            status: answer.view.status,
            latency: answer.latency,
            verdict,
        },
        problem,
        record,
    }
}

fn finished<C: Collect>(d: Done, done: &SharedCollector<C>, pending: &AtomicUsize, idle: &Idle) {
    {
        let mut c = done.lock().unwrap_or_else(|e| e.into_inner());
        c.tally.record(
            &d.endpoint,
            d.prod_status,
            d.prod_latency_ms,
            d.lateness,
            &d.outcome,
            d.problem,
        );
        let Collector { tally, collect } = &mut *c;
        collect.done(tally, d.record);
    }
    if pending.fetch_sub(1, Ordering::AcqRel) == 1 {
        idle.notify();
    }
}

async fn conn_task<C: Collect + 'static>(
    mut rx: mpsc::Receiver<Job>,
    shared: Arc<Shared>,
    pending: Arc<AtomicUsize>,
    idle: Arc<Idle>,
    done: SharedCollector<C>,
) {
    if shared.connector.is_h2() {
        // HTTP/2: the captured connection's requests are streams of one connection, each
        // sent when it is due, without waiting for the ones before (their concurrency).
        let session = H2Session::default();
        let mut streams = tokio::task::JoinSet::new();
        while let Some(job) = rx.recv().await {
            let (shared, pending, idle, done) = (
                Arc::clone(&shared),
                Arc::clone(&pending),
                Arc::clone(&idle),
                Arc::clone(&done),
            );
            let mut conn = Connection::on(session.clone());
            streams.spawn(async move {
                let lateness = Instant::now().saturating_duration_since(job.due);
                let d = replay_one(&mut conn, &shared, &job, lateness).await;
                finished(d, &done, &pending, &idle);
            });
            while streams.try_join_next().is_some() {}
        }
        while streams.join_next().await.is_some() {}
        drop(session);
    } else {
        let mut conn = Connection::default();
        while let Some(job) = rx.recv().await {
            let lateness = Instant::now().saturating_duration_since(job.due);
            let d = replay_one(&mut conn, &shared, &job, lateness).await;
            finished(d, &done, &pending, &idle);
        }
        // The connection is closed before the slot is given back, so at most
        // `concurrency` are ever open.
        drop(conn);
    }
    idle.open.fetch_sub(1, Ordering::AcqRel);
    idle.notify();
}

/// Entries in request-start order (min-heap on capture time, then id).
struct Ordered(ReplayRequest);
impl PartialEq for Ordered {
    fn eq(&self, o: &Self) -> bool {
        (self.0.at, self.0.id) == (o.0.at, o.0.id)
    }
}
impl Eq for Ordered {}
impl PartialOrd for Ordered {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Ordered {
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        (o.0.at, o.0.id).cmp(&(self.0.at, self.0.id))
    }
}

struct Dispatcher<'a, C> {
    cfg: &'a RunConfig,
    rt: &'a tokio::runtime::Runtime,
    shared: Arc<Shared>,
    idle: Arc<Idle>,
    done: SharedCollector<C>,
    conns: HashMap<u64, ConnHandle>,
    clock: MonotonicClock,
    stop: Arc<AtomicBool>,
    progress: Arc<Progress>,
    /// Capture time of the first request, and the last scheduled one (kept monotonic).
    first_at: Option<Duration>,
    last_at: Duration,
    dispatched: u64,
    stopped: Option<String>,
}

impl<C: Collect + 'static> Dispatcher<'_, C> {
    fn halted(&mut self) -> bool {
        if self.stopped.is_some() {
            return true;
        }
        if self.stop.load(Ordering::Relaxed) {
            self.stopped = Some("interrupted".into());
        } else if self.cfg.limit.is_some_and(|l| self.dispatched >= l) {
            self.stopped = Some("--limit reached".into());
        } else if self.cfg.duration.is_some_and(|d| self.clock.now() >= d) {
            self.stopped = Some("--duration reached".into());
        }
        self.stopped.is_some()
    }

    fn send(&mut self, req: ReplayRequest) {
        if self.halted() {
            return;
        }
        let at = req.at.max(self.last_at);
        self.last_at = at;
        let first = *self.first_at.get_or_insert(at);
        let offset = match self.cfg.speed {
            Some(s) => Duration::from_secs_f64((at - first).as_secs_f64() / s),
            None => Duration::ZERO,
        };
        if let Some(d) = self.cfg.duration {
            if offset > d {
                self.stopped = Some("--duration reached".into());
                return;
            }
        }
        self.clock.wait_until(offset);
        if self.halted() {
            return;
        }
        let due = match self.cfg.speed {
            Some(_) => Instant::now() - self.clock.now().saturating_sub(offset),
            None => Instant::now(),
        };
        let conn = req.conn;
        if !self.conns.contains_key(&conn) {
            self.make_room();
            if self.halted() {
                return;
            }
            self.idle.open.fetch_add(1, Ordering::AcqRel);
            let (tx, rx) = mpsc::channel(CONN_QUEUE);
            let pending = Arc::new(AtomicUsize::new(0));
            self.rt.spawn(conn_task(
                rx,
                Arc::clone(&self.shared),
                Arc::clone(&pending),
                Arc::clone(&self.idle),
                Arc::clone(&self.done),
            ));
            self.conns.insert(conn, ConnHandle { tx, pending });
        }
        let Some(h) = self.conns.get(&conn) else {
            return;
        };
        h.pending.fetch_add(1, Ordering::AcqRel);
        let endpoint = endpoint_key(&req.method, &req.target);
        let job = Job { req, endpoint, due };
        if h.tx.blocking_send(job).is_err() {
            h.pending.fetch_sub(1, Ordering::AcqRel);
            return;
        }
        self.dispatched += 1;
        self.progress.capture_ns.store(
            u64::try_from(at.as_nanos()).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
    }

    /// Waits until fewer than `concurrency` connections are open, closing idle ones, then
    /// takes a slot.
    fn make_room(&mut self) {
        while self.idle.open.load(Ordering::Acquire) >= self.cfg.concurrency.max(1) {
            let idle = self
                .conns
                .iter()
                .find(|(_, h)| h.pending.load(Ordering::Acquire) == 0)
                .map(|(k, _)| *k);
            if let Some(k) = idle {
                // Its task ends and closes the connection; the wait below sees the slot.
                self.conns.remove(&k);
            }
            if self.halted() {
                return;
            }
            let g = self.idle.lock.lock().unwrap_or_else(|e| e.into_inner());
            let _ = self
                .idle
                .cond
                .wait_timeout(g, Duration::from_millis(5))
                .map(|(g, _)| drop(g));
        }
    }
}

/// Replays the exchanges `each` walks (calling its visitor with each; the visitor returns
/// false to stop the walk).
pub fn run<C: Collect + 'static>(
    cfg: &RunConfig,
    shared: Shared,
    each: ExchangeWalk<'_>,
    collect: C,
    stop: Arc<AtomicBool>,
    progress: Arc<Progress>,
) -> anyhow::Result<RunEnd<C>> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(cfg.workers.max(1))
        .enable_all()
        .build()?;
    let done: SharedCollector<C> = Arc::new(Mutex::new(Collector {
        tally: Tally::default(),
        collect,
    }));
    let mut tally_skips = Tally::default();
    let started = Instant::now();
    let mut d = Dispatcher {
        cfg,
        rt: &rt,
        shared: Arc::new(shared),
        idle: Arc::new(Idle::default()),
        done: Arc::clone(&done),
        conns: HashMap::new(),
        clock: MonotonicClock::new(Arc::clone(&stop)),
        stop: Arc::clone(&stop),
        progress,
        first_at: None,
        last_at: Duration::ZERO,
        dispatched: 0,
        stopped: None,
    };
    let mut heap: BinaryHeap<Ordered> = BinaryHeap::new();
    let mut newest = Duration::ZERO;
    let read = each(&mut |x: Exchange| {
        match cfg.selection.plan(x) {
            Err(why) => tally_skips.skip(why),
            Ok(req) => {
                newest = newest.max(req.at);
                heap.push(Ordered(req));
                while heap
                    .peek()
                    .is_some_and(|o| heap.len() > REORDER_WINDOW || o.0.at + REORDER_SPAN <= newest)
                {
                    if let Some(o) = heap.pop() {
                        d.send(o.0);
                    }
                }
            }
        }
        !d.halted()
    });
    while let Some(o) = heap.pop() {
        if d.halted() {
            break;
        }
        d.send(o.0);
    }
    let stopped = d.stopped.take();
    // Closing the queues ends each connection task once its queued requests are done.
    let idle = Arc::clone(&d.idle);
    drop(d);
    {
        let mut g = idle.lock.lock().unwrap_or_else(|e| e.into_inner());
        while idle.open.load(Ordering::Acquire) > 0 {
            g = idle
                .cond
                .wait_timeout(g, Duration::from_millis(20))
                .map_or_else(|e| e.into_inner().0, |(g, _)| g);
        }
    }
    drop(rt);
    let Ok(state) = Arc::try_unwrap(done) else {
        anyhow::bail!("a connection task outlived the run");
    };
    let Collector { mut tally, collect } = state.into_inner().unwrap_or_else(|e| e.into_inner());
    tally.skipped = tally_skips.skipped;
    let _ = std::io::stderr().flush();
    Ok(RunEnd {
        tally,
        collect,
        elapsed: started.elapsed(),
        stopped,
        read_error: read.err().map(|e| format!("{e:#}")),
    })
}
