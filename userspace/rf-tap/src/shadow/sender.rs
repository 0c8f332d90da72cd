//! The shadow sender: one tokio runtime on its own thread, a dispatcher per destination, and
//! a task per captured connection that sends that connection's requests in order on one
//! keep-alive connection (the replay client's [`Connection`]).
//!
//! Isolation: the capture side only ever `try_send`s. Each destination holds at most
//! `queue` requests (and `queue_bytes` bytes) queued or in flight; past that a request is
//! dropped and counted (`queue_full`). A slow or dead shadow therefore fills only its own
//! queue: production is never waited on, and memory stays bounded.

use std::{
    collections::HashMap,
    sync::{
        atomic::{AtomicI64, AtomicU64, Ordering},
        Arc,
    },
    time::Duration,
};

use crossbeam::channel::Sender as JudgeTx;
use tokio::sync::mpsc;

use super::judge::{Msg, ReqKey, ShadowResult};
use crate::replay::http::client::{Connection, Connector};

/// One request to send to one destination.
pub struct Job {
    pub key: ReqKey,
    pub conn: u64,
    pub method: String,
    pub bytes: Arc<Vec<u8>>,
    /// Wall-clock capture time of the request's last packet.
    pub captured: Duration,
}

/// The capture side's handle on one destination.
pub struct Destination {
    tx: mpsc::Sender<Job>,
    /// Requests queued or in flight.
    pub depth: Arc<AtomicI64>,
    bytes: Arc<AtomicU64>,
    queue: i64,
    queue_bytes: u64,
}

/// Why a request was not queued.
#[derive(Debug, PartialEq, Eq)]
pub enum NotQueued {
    QueueFull,
    /// The sender has stopped.
    Closed,
}

impl Destination {
    pub fn try_send(&self, job: Job) -> Result<(), NotQueued> {
        let len = job.bytes.len() as u64;
        if self.depth.load(Ordering::Relaxed) >= self.queue
            || self.bytes.load(Ordering::Relaxed) + len > self.queue_bytes
        {
            return Err(NotQueued::QueueFull);
        }
        self.depth.fetch_add(1, Ordering::Relaxed);
        self.bytes.fetch_add(len, Ordering::Relaxed);
        match self.tx.try_send(job) {
            Ok(()) => Ok(()),
            Err(e) => {
                self.depth.fetch_sub(1, Ordering::Relaxed);
                self.bytes.fetch_sub(len, Ordering::Relaxed);
                Err(match e {
                    mpsc::error::TrySendError::Full(_) => NotQueued::QueueFull,
                    mpsc::error::TrySendError::Closed(_) => NotQueued::Closed,
                })
            }
        }
    }
}

pub struct SenderConfig {
    pub connectors: Vec<Arc<Connector>>,
    pub timeout: Duration,
    pub queue: usize,
    pub queue_bytes: u64,
}

/// Starts the runtime thread; returns a handle per destination (in `connectors` order) and
/// the thread, which ends once every handle is dropped and the queues are drained.
pub fn start(
    cfg: SenderConfig,
    judge: JudgeTx<Msg>,
) -> anyhow::Result<(Vec<Destination>, std::thread::JoinHandle<()>)> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let mut handles = Vec::new();
    let mut receivers = Vec::new();
    for _ in &cfg.connectors {
        let (tx, rx) = mpsc::channel::<Job>(cfg.queue.max(1));
        let depth = Arc::new(AtomicI64::new(0));
        let bytes = Arc::new(AtomicU64::new(0));
        handles.push(Destination {
            tx,
            depth: Arc::clone(&depth),
            bytes: Arc::clone(&bytes),
            queue: cfg.queue as i64,
            queue_bytes: cfg.queue_bytes,
        });
        receivers.push((rx, depth, bytes));
    }
    let timeout = cfg.timeout;
    let connectors = cfg.connectors;
    let thread = std::thread::Builder::new()
        .name("shadow-sender".into())
        .spawn(move || {
            rt.block_on(async move {
                let mut dispatchers = Vec::new();
                for (dest, ((rx, depth, bytes), connector)) in
                    receivers.into_iter().zip(connectors).enumerate()
                {
                    let judge = judge.clone();
                    dispatchers.push(tokio::spawn(dispatch(
                        dest, rx, connector, depth, bytes, timeout, judge,
                    )));
                }
                for d in dispatchers {
                    let _ = d.await;
                }
            });
        })?;
    Ok((handles, thread))
}

/// Hands each job to its captured connection's task (made on first use, gone when idle).
async fn dispatch(
    dest: usize,
    mut rx: mpsc::Receiver<Job>,
    connector: Arc<Connector>,
    depth: Arc<AtomicI64>,
    bytes: Arc<AtomicU64>,
    timeout: Duration,
    judge: JudgeTx<Msg>,
) {
    let mut conns: HashMap<u64, mpsc::UnboundedSender<Job>> = HashMap::new();
    let mut tasks = tokio::task::JoinSet::new();
    while let Some(job) = rx.recv().await {
        if conns.len() > 1024 {
            conns.retain(|_, tx| !tx.is_closed());
        }
        let mut job = Some(job);
        if let Some(tx) = conns.get(&job.as_ref().map_or(0, |j| j.conn)) {
            if let Some(j) = job.take() {
                if let Err(e) = tx.send(j) {
                    job = Some(e.0);
                }
            }
        }
        let Some(job) = job else { continue };
        // A new captured connection (or one whose task went idle): a new task.
        let (tx, crx) = mpsc::unbounded_channel();
        let conn = job.conn;
        let _ = tx.send(job);
        conns.insert(conn, tx);
        tasks.spawn(per_connection(
            dest,
            crx,
            Arc::clone(&connector),
            Arc::clone(&depth),
            Arc::clone(&bytes),
            timeout,
            judge.clone(),
        ));
        while tasks.try_join_next().is_some() {}
    }
    drop(conns);
    while tasks.join_next().await.is_some() {}
}

/// How long a captured connection's task stays without a request before it closes.
const IDLE: Duration = Duration::from_secs(30);

async fn per_connection(
    dest: usize,
    mut rx: mpsc::UnboundedReceiver<Job>,
    connector: Arc<Connector>,
    depth: Arc<AtomicI64>,
    bytes: Arc<AtomicU64>,
    timeout: Duration,
    judge: JudgeTx<Msg>,
) {
    let mut c = Connection::default();
    loop {
        let job = match tokio::time::timeout(IDLE, rx.recv()).await {
            Ok(Some(j)) => j,
            // Idle, or the dispatcher is gone: requests still queued here are answered
            // first by the loop above, so nothing is lost.
            _ => {
                rx.close();
                match rx.try_recv() {
                    Ok(j) => j,
                    Err(_) => return,
                }
            }
        };
        // Shadow lag: from the request's last captured packet to its send.
        let lag = super::store::unix_now().saturating_sub(job.captured);
        let result = match c
            .exchange(&connector, &job.bytes, &job.method, timeout)
            .await
        {
            Ok(a) => ShadowResult::Answer {
                view: a.view,
                latency: a.latency,
            },
            Err(f) => ShadowResult::Failed { kind: f.kind.key() },
        };
        depth.fetch_sub(1, Ordering::Relaxed);
        bytes.fetch_sub(job.bytes.len() as u64, Ordering::Relaxed);
        let _ = judge.send(Msg::Answer {
            key: job.key,
            dest,
            result,
            lag,
        });
    }
}
