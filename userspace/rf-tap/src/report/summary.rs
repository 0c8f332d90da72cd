//! The capture summary (a table for people, one JSON object for machines) and the live
//! status line.

use std::{
    fmt::Write as _,
    io::Write as _,
    time::{Duration, Instant},
};

use serde::Serialize;

use crate::capture::kernel::{HookMode, KernelCounters};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum StopReason {
    Signal,
    Duration,
    Count,
    OutputClosed,
    WriteError,
}

impl StopReason {
    fn words(self) -> &'static str {
        match self {
            Self::Signal => "stopped by signal",
            Self::Duration => "duration reached",
            Self::Count => "packet count reached",
            Self::OutputClosed => "output closed",
            Self::WriteError => "write error",
        }
    }
}

/// Every number of a capture. The kernel counters are exact per-CPU sums read after the
/// programs were detached, so `seen = matched + rejected + unmatched` and
/// `matched = sampled_out + captured + dropped_kernel (+ copy_failed)` hold exactly, and
/// `captured = written + dropped_user + over_limit` once the ring is drained.
#[derive(Clone, Debug, Serialize)]
pub struct CaptureSummary {
    pub interface: String,
    pub mode: HookMode,
    pub attach: String,
    pub stop_reason: Option<StopReason>,
    pub signal: Option<usize>,
    pub duration_s: f64,
    pub seen: u64,
    pub matched: u64,
    pub rejected: u64,
    pub unmatched: u64,
    pub sampled_out: u64,
    pub captured: u64,
    pub truncated: u64,
    pub malformed: u64,
    pub dropped_kernel: u64,
    pub copy_failed: u64,
    /// Records the kernel delivered to userspace.
    pub received: u64,
    /// Records that could not be decoded or written.
    pub dropped_user: u64,
    /// Records left unwritten because the capture stopped (count reached, output closed).
    pub over_limit: u64,
    /// Records rf-tap left out in userspace (--vxlan: not VXLAN, another VNI, or refused by
    /// the rules on the inner frame).
    pub left_out: u64,
    pub written: u64,
    pub bytes_written: u64,
    pub files: Vec<String>,
    /// HTTP exchanges handed to the live sinks (--rfcap, --jsonl, --har).
    pub exchanges: Option<u64>,
    /// --vxlan: what the decapsulation found.
    pub vxlan: Option<DecapCounts>,
    /// --mode afxdp: the sockets' own counters (their drops are `dropped_kernel`).
    pub af_xdp: Option<crate::capture::af_xdp::XskDrops>,
}

/// Outcomes of `--vxlan` decapsulation; all but `decapsulated` are in `left_out`.
#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct DecapCounts {
    pub decapsulated: u64,
    pub other_vni: u64,
    /// Inner frames the --rule/--filter/--port rules refused.
    pub filtered: u64,
    pub not_vxlan: u64,
    /// Non-first fragments of outer packets (the path MTU was smaller than the copy).
    pub fragments: u64,
    pub malformed: u64,
}

impl CaptureSummary {
    pub fn new(interface: &str, mode: HookMode, attach: &str) -> Self {
        Self {
            interface: interface.to_string(),
            mode,
            attach: attach.to_string(),
            stop_reason: None,
            signal: None,
            duration_s: 0.0,
            seen: 0,
            matched: 0,
            rejected: 0,
            unmatched: 0,
            sampled_out: 0,
            captured: 0,
            truncated: 0,
            malformed: 0,
            dropped_kernel: 0,
            copy_failed: 0,
            received: 0,
            dropped_user: 0,
            over_limit: 0,
            left_out: 0,
            written: 0,
            bytes_written: 0,
            files: Vec::new(),
            exchanges: None,
            vxlan: None,
            af_xdp: None,
        }
    }

    pub fn finish(&mut self, k: KernelCounters, elapsed: Duration, why: StopReason, signal: usize) {
        self.seen = k.seen;
        self.matched = k.accepted;
        self.rejected = k.rejected;
        self.unmatched = k.unmatched;
        self.sampled_out = k.sampled_out;
        self.captured = k.copied;
        self.truncated = k.truncated;
        self.malformed = k.malformed;
        self.dropped_kernel = k.ring_full;
        self.copy_failed = k.copy_failed;
        self.duration_s = (elapsed.as_secs_f64() * 1000.0).round() / 1000.0;
        self.stop_reason = Some(why);
        self.signal = (signal != 0).then_some(signal);
    }

    pub fn table(&self) -> String {
        let mut s = String::new();
        let why = self.stop_reason.map(StopReason::words).unwrap_or("stopped");
        let _ = writeln!(
            s,
            "rf-tap: capture on {} ({}) ended after {:.2} s: {why}",
            self.interface, self.attach, self.duration_s
        );
        let rows: [(&str, u64, &str); 13] = [
            ("seen", self.seen, "packets the kernel programs saw"),
            ("matched", self.matched, "accepted by a filter rule"),
            ("rejected", self.rejected, "refused by a reject rule"),
            ("unmatched", self.unmatched, "matched no rule (not copied)"),
            (
                "sampled out",
                self.sampled_out,
                "flows left out by --sample-rate",
            ),
            ("captured", self.captured, "copied to userspace"),
            (
                "truncated",
                self.truncated,
                "cut to --packet-length (original length kept)",
            ),
            (
                "dropped (kernel)",
                self.dropped_kernel,
                if self.af_xdp.is_some() {
                    "AF_XDP socket had no room"
                } else {
                    "ring buffer full"
                },
            ),
            (
                "dropped (user)",
                self.dropped_user,
                "undecodable or unwritable records",
            ),
            (
                "over limit",
                self.over_limit,
                "not written: left in the ring after the capture stopped",
            ),
            (
                "left out",
                self.left_out,
                "not VXLAN, another VNI, or refused by the rules (--vxlan)",
            ),
            ("written", self.written, "records written"),
            (
                "bytes written",
                self.bytes_written,
                "file bytes, headers included",
            ),
        ];
        for (name, v, what) in rows {
            // `left out` only means something with --vxlan.
            if name == "left out" && self.vxlan.is_none() {
                continue;
            }
            let _ = writeln!(s, "  {name:<18}{v:>14}  {what}");
        }
        if let Some(v) = &self.vxlan {
            let _ = writeln!(
                s,
                "  {:<18}{:>14}  inner frames (other VNI {}, refused by rules {}, not VXLAN {}, \
                 fragments {}, malformed {})",
                "decapsulated",
                v.decapsulated,
                v.other_vni,
                v.filtered,
                v.not_vxlan,
                v.fragments,
                v.malformed
            );
        }
        if let Some(x) = &self.af_xdp {
            let _ = writeln!(
                s,
                "  {:<18}{:>14}  AF_XDP drops: no buffer {}, RX ring full {}, invalid {}; \
                 fill ring found empty {} times; {} stamped in userspace",
                "af_xdp",
                x.total(),
                x.dropped,
                x.rx_ring_full,
                x.invalid_descs,
                x.fill_ring_empty,
                x.unstamped
            );
        }
        if let Some(x) = self.exchanges {
            let _ = writeln!(
                s,
                "  {:<18}{x:>14}  HTTP exchanges written (--rfcap, --jsonl, --har)",
                "exchanges"
            );
        }
        if !self.files.is_empty() {
            let _ = writeln!(s, "  files             {}", self.files.join(", "));
        }
        s
    }
}

/// A one-line live view on a terminal, redrawn at most once per interval (a second unless
/// told otherwise), and wiped when cleared or dropped.
pub struct StatusLine {
    enabled: bool,
    every: Duration,
    last: Instant,
    drawn: bool,
}

impl StatusLine {
    pub fn new(enabled: bool) -> Self {
        Self::every(enabled, Duration::from_secs(1))
    }

    pub fn every(enabled: bool, every: Duration) -> Self {
        Self {
            enabled,
            every,
            last: Instant::now(),
            drawn: false,
        }
    }

    pub fn due(&self) -> bool {
        self.enabled && self.last.elapsed() >= self.every
    }

    /// Replaces the line with `text`.
    pub fn draw(&mut self, text: &str) {
        self.last = Instant::now();
        self.drawn = true;
        let mut err = std::io::stderr().lock();
        let _ = write!(err, "\r\x1b[K{text}");
        let _ = err.flush();
    }

    pub fn show(&mut self, elapsed: Duration, k: &KernelCounters, s: &CaptureSummary) {
        self.draw(&format!(
            "{:>7.1}s  seen {}  matched {}  captured {}  written {}  dropped {} kernel / {} user",
            elapsed.as_secs_f64(),
            k.seen,
            k.accepted,
            k.copied,
            s.written,
            k.ring_full,
            s.dropped_user
        ));
    }

    pub fn clear(&mut self) {
        if self.drawn {
            eprint!("\r\x1b[K");
            self.drawn = false;
        }
    }
}

impl Drop for StatusLine {
    fn drop(&mut self) {
        self.clear();
    }
}
