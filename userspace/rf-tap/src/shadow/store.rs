//! What a live mirror keeps on disk.
//!
//! - `/run/rf-tap/mirrors/NAME.json`: the running mirror (PID, source, shadows, start time),
//!   written once it is attached and removed when it stops. A file whose PID is gone is a
//!   mirror that died (`mirror list` says so).
//! - `/var/lib/rf-tap/mirrors/NAME/stats.jsonl`: one line per minute of stats (a [`Bucket`]);
//!   the current minute is rewritten in `current.json` every second, so `mirror stats --last`
//!   works for any window, during the run and after a restart.
//! - `/var/lib/rf-tap/mirrors/NAME/diffs.jsonl`: each difference found, for `mirror diff`.
//!
//! `RF_TAP_STATE_DIR` moves both roots under one directory (tests).

use std::{collections::BTreeMap, io::Write, path::PathBuf};

use anyhow::Context as _;
use rf_tap_engine::replay::player::Histogram;
use serde::{Deserialize, Serialize};

fn roots() -> (PathBuf, PathBuf) {
    match std::env::var_os("RF_TAP_STATE_DIR") {
        Some(d) => {
            let d = PathBuf::from(d);
            (d.join("run"), d.join("lib"))
        }
        None => (
            PathBuf::from("/run/rf-tap/mirrors"),
            PathBuf::from("/var/lib/rf-tap/mirrors"),
        ),
    }
}

/// A mirror name: letters, digits, `-` and `_`, at most 64.
pub fn check_name(name: &str) -> anyhow::Result<()> {
    if name.is_empty()
        || name.len() > 64
        || !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        anyhow::bail!("mirror name `{name}`: use letters, digits, `-` and `_` (at most 64)");
    }
    Ok(())
}

pub fn state_path(name: &str) -> PathBuf {
    roots().0.join(format!("{name}.json"))
}

pub fn log_path(name: &str) -> PathBuf {
    roots().0.join(format!("{name}.log"))
}

pub fn data_dir(name: &str) -> PathBuf {
    roots().1.join(name)
}

/// The running mirror, as `mirror list` shows it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct MirrorState {
    pub name: String,
    pub pid: u32,
    pub started_unix: u64,
    pub iface: String,
    /// The traffic selected: `port 8080`, `3 rules`, or `all`.
    pub source: String,
    pub shadows: Vec<String>,
    pub sample_rate: f64,
    pub metrics: Option<String>,
    pub log: Option<String>,
}

pub fn write_state(s: &MirrorState) -> anyhow::Result<()> {
    let p = state_path(&s.name);
    if let Some(dir) = p.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    let tmp = p.with_extension("json.tmp");
    std::fs::write(&tmp, serde_json::to_vec_pretty(s)?)
        .with_context(|| format!("cannot write {}", tmp.display()))?;
    std::fs::rename(&tmp, &p).with_context(|| format!("cannot write {}", p.display()))
}

pub fn read_state(name: &str) -> Option<MirrorState> {
    serde_json::from_slice(&std::fs::read(state_path(name)).ok()?).ok()
}

pub fn remove_state(name: &str) {
    let _ = std::fs::remove_file(state_path(name));
}

/// Every mirror with a state file.
/// Gives the mirror's data directory and what is in it to the account the mirror will run
/// as once attached (it keeps writing its stats and diffs there without root). Links are
/// changed themselves, never followed.
pub fn hand_over(name: &str, uid: u32, gid: u32) -> anyhow::Result<()> {
    let dir = data_dir(name);
    std::os::unix::fs::lchown(&dir, Some(uid), Some(gid))
        .with_context(|| format!("cannot hand {} over to uid {uid}", dir.display()))?;
    for e in std::fs::read_dir(&dir)
        .with_context(|| format!("cannot read {}", dir.display()))?
        .flatten()
    {
        std::os::unix::fs::lchown(e.path(), Some(uid), Some(gid))
            .with_context(|| format!("cannot hand {} over to uid {uid}", e.path().display()))?;
    }
    Ok(())
}

/// Written by a mirror as it ends (it may no longer be allowed to remove its state file):
/// its PID, so that `list` tells a mirror that stopped from one that died.
pub fn mark_stopped(name: &str, pid: u32) {
    let _ = std::fs::write(data_dir(name).join("stopped"), pid.to_string());
}

/// Whether the mirror of `s` ended by itself (see [`mark_stopped`]).
pub fn stopped_cleanly(s: &MirrorState) -> bool {
    std::fs::read_to_string(data_dir(&s.name).join("stopped"))
        .is_ok_and(|p| p.trim() == s.pid.to_string())
}

pub fn all_states() -> Vec<MirrorState> {
    let Ok(rd) = std::fs::read_dir(roots().0) else {
        return Vec::new();
    };
    let mut v: Vec<MirrorState> = rd
        .filter_map(Result::ok)
        .filter(|e| e.path().extension().is_some_and(|x| x == "json"))
        .filter_map(|e| serde_json::from_slice(&std::fs::read(e.path()).ok()?).ok())
        .collect();
    v.sort_by(|a, b| a.name.cmp(&b.name));
    v
}

/// Whether `pid` is an rf-tap process that is alive.
pub fn alive(pid: u32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    // The state field follows the parenthesised command name; Z is a zombie.
    let state = stat
        .rsplit(')')
        .next()
        .and_then(|r| r.split_whitespace().next());
    if state == Some("Z") {
        return false;
    }
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|c| String::from_utf8_lossy(&c).contains("rf-tap"))
        .unwrap_or(false)
}

/// One side's figures (production, or one shadow).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Side {
    pub requests: u64,
    pub succeeded: u64,
    pub errors: u64,
    /// Latency in µs.
    pub latency: Histogram,
}

impl Side {
    pub fn add(&mut self, o: &Side) {
        self.requests += o.requests;
        self.succeeded += o.succeeded;
        self.errors += o.errors;
        self.latency.merge(&o.latency);
    }
}

/// One minute of a mirror's stats.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Bucket {
    /// Minutes since the Unix epoch.
    pub minute: u64,
    pub production: Side,
    /// Per destination (its URL).
    pub shadows: BTreeMap<String, Side>,
    /// Responses that differed from production's, per destination.
    pub diffs: BTreeMap<String, u64>,
    /// Responses compared with production's, per destination.
    pub compared: BTreeMap<String, u64>,
    /// Differences on learned noise fields, left out of `diffs`.
    pub noise_diffs: u64,
    /// Noise fields learned so far (the highest count in the window is reported).
    pub noise_fields: u64,
    /// Requests sent to at least one shadow.
    pub mirrored: u64,
    pub skipped: BTreeMap<String, u64>,
    pub dropped: BTreeMap<String, u64>,
    /// Shadow answers that were not HTTP responses, by kind (timeout, refused, ...).
    #[serde(default)]
    pub failures: BTreeMap<String, u64>,
    /// Shadow lag, µs: from a request's last captured packet to its send.
    #[serde(default)]
    pub lag: Histogram,
}

fn add_map(a: &mut BTreeMap<String, u64>, b: &BTreeMap<String, u64>) {
    for (k, v) in b {
        *a.entry(k.clone()).or_default() += v;
    }
}

impl Bucket {
    pub fn add(&mut self, o: &Bucket) {
        self.production.add(&o.production);
        for (k, v) in &o.shadows {
            self.shadows.entry(k.clone()).or_default().add(v);
        }
        add_map(&mut self.diffs, &o.diffs);
        add_map(&mut self.compared, &o.compared);
        self.noise_diffs += o.noise_diffs;
        self.noise_fields = self.noise_fields.max(o.noise_fields);
        self.mirrored += o.mirrored;
        add_map(&mut self.skipped, &o.skipped);
        add_map(&mut self.dropped, &o.dropped);
        add_map(&mut self.failures, &o.failures);
        self.lag.merge(&o.lag);
    }
}

/// Appends closed minutes and rewrites the current one.
pub struct BucketFile {
    dir: PathBuf,
}

impl BucketFile {
    pub fn open(name: &str) -> anyhow::Result<Self> {
        let dir = data_dir(name);
        std::fs::create_dir_all(&dir)
            .with_context(|| format!("cannot create {}", dir.display()))?;
        // A minute the last run had not closed (it was killed) is kept.
        let current = dir.join("current.json");
        if let Ok(b) = std::fs::read(&current) {
            if let Ok(bucket) = serde_json::from_slice::<Bucket>(&b) {
                let f = Self { dir: dir.clone() };
                f.append(&bucket)?;
            }
            let _ = std::fs::remove_file(&current);
        }
        Ok(Self { dir })
    }

    pub fn append(&self, b: &Bucket) -> anyhow::Result<()> {
        let p = self.dir.join("stats.jsonl");
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&p)
            .with_context(|| format!("cannot write {}", p.display()))?;
        let mut line = serde_json::to_vec(b)?;
        line.push(b'\n');
        f.write_all(&line)
            .with_context(|| format!("cannot write {}", p.display()))
    }

    pub fn write_current(&self, b: &Bucket) -> anyhow::Result<()> {
        let p = self.dir.join("current.json");
        let tmp = self.dir.join("current.json.tmp");
        std::fs::write(&tmp, serde_json::to_vec(b)?)
            .with_context(|| format!("cannot write {}", tmp.display()))?;
        std::fs::rename(&tmp, &p).with_context(|| format!("cannot write {}", p.display()))
    }

    /// The stats of `[from_minute, ∞)` summed, `minute` being the first minute found (0 when
    /// none is); None when the mirror never ran here.
    pub fn read_window(name: &str, from_minute: u64) -> anyhow::Result<Option<Bucket>> {
        let dir = data_dir(name);
        if !dir.exists() {
            return Ok(None);
        }
        let mut total = Bucket::default();
        let mut first: Option<u64> = None;
        let mut take = |b: Bucket| {
            if b.minute >= from_minute {
                first = Some(first.map_or(b.minute, |f| f.min(b.minute)));
                total.add(&b);
            }
        };
        if let Ok(text) = std::fs::read_to_string(dir.join("stats.jsonl")) {
            for line in text.lines() {
                // A line cut by a crash is skipped.
                if let Ok(b) = serde_json::from_str::<Bucket>(line) {
                    take(b);
                }
            }
        }
        if let Ok(b) = std::fs::read(dir.join("current.json")) {
            if let Ok(b) = serde_json::from_slice::<Bucket>(&b) {
                take(b);
            }
        }
        total.minute = first.unwrap_or(0);
        Ok(Some(total))
    }
}

/// One line of a mirror's `diffs.jsonl`: a shadow answer that differed from production's.
/// The judge writes it and `mirror diff` reads it back with this same type.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MirrorDiff {
    /// When it was judged (Unix seconds).
    pub ts: f64,
    pub destination: String,
    pub endpoint: String,
    /// `METHOD target`.
    pub request: String,
    pub production_status: Option<u16>,
    pub shadow_status: u16,
    /// The first 4 KiB of each body, as text.
    pub production_body: Option<String>,
    pub shadow_body: String,
    pub differences: Vec<rf_tap_engine::compare::Difference>,
    /// `differences` in words.
    pub summary: Vec<String>,
    pub noise_ignored: usize,
}

/// Appends difference records (bounded per run).
pub struct DiffLog {
    path: PathBuf,
    written: u64,
}

/// Most difference records one run writes.
const MAX_DIFF_RECORDS: u64 = 10_000;

impl DiffLog {
    pub fn open(name: &str) -> Self {
        Self {
            path: data_dir(name).join("diffs.jsonl"),
            written: 0,
        }
    }

    pub fn path_of(name: &str) -> PathBuf {
        data_dir(name).join("diffs.jsonl")
    }

    pub fn write(&mut self, record: &MirrorDiff) {
        if self.written >= MAX_DIFF_RECORDS {
            return;
        }
        self.written += 1;
        let Ok(mut f) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)
        else {
            return;
        };
        let Ok(mut line) = serde_json::to_vec(record) else {
            return;
        };
        line.push(b'\n');
        let _ = f.write_all(&line);
    }
}

/// Wall-clock time since the Unix epoch (the live capture's clock).
pub use crate::pipeline::live::wall_clock as unix_now;
