//! The replay loop: schedule → batch → send, against an injectable clock and sink.
//!
//! Frames are written straight into the batch buffer (by the rewriter). A frame that is
//! already due joins the batch; the batch is sent when it is full or when the next frame is
//! not due yet, then the player waits for that frame's instant (the clock sleeps, then
//! spins). Lateness (send instant minus due instant) is recorded for every frame of a timed
//! replay.

use std::{io, time::Duration};

use super::schedule::{Schedule, ScheduleConfig, Timing};

/// A monotonic clock the player can wait on. Tests use a virtual one.
pub trait Clock {
    /// Time since a fixed origin.
    fn now(&mut self) -> Duration;
    /// Returns once `now() >= t`.
    fn wait_until(&mut self, t: Duration);
}

/// Frames ready to go, in order, with the offset (from the replay's start) each was due at.
#[derive(Debug, Default)]
pub struct Batch {
    buf: Vec<u8>,
    frames: Vec<(usize, usize)>,
    due: Vec<Duration>,
}

impl Batch {
    pub fn len(&self) -> usize {
        self.frames.len()
    }
    pub fn is_empty(&self) -> bool {
        self.frames.is_empty()
    }
    pub fn frame(&self, i: usize) -> &[u8] {
        let (s, l) = self.frames[i];
        &self.buf[s..s + l]
    }
    pub fn due(&self, i: usize) -> Duration {
        self.due[i]
    }
    pub fn iter(&self) -> impl Iterator<Item = (&[u8], Duration)> + '_ {
        self.frames
            .iter()
            .zip(&self.due)
            .map(|(&(s, l), &d)| (&self.buf[s..s + l], d))
    }
}

/// What a sink did with one batch.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SendOutcome {
    pub sent: u64,
    pub sent_bytes: u64,
    /// Frames the backend refused (counted, the replay goes on).
    pub failed: u64,
    /// Times the backend was full and a send was tried again.
    pub retried: u64,
}

/// Where frames go: a socket, an AF_XDP ring, a pcap file, a test vector.
pub trait FrameSink {
    /// Sends the batch in order. `Err` means nothing more can be sent (the replay stops).
    fn send(&mut self, batch: &Batch) -> io::Result<SendOutcome>;
    /// Called once at the end (flush files, wait for completions).
    fn finish(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct PlayerConfig {
    pub schedule: ScheduleConfig,
    /// Stop after this many frames were offered to the sink.
    pub limit: Option<u64>,
    /// Stop when this much time has passed (or the next frame is due later).
    pub duration: Option<Duration>,
    /// Most frames per send call.
    pub batch_size: usize,
}

impl Default for PlayerConfig {
    fn default() -> Self {
        Self {
            schedule: ScheduleConfig::default(),
            limit: None,
            duration: None,
            batch_size: 64,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stop {
    Limit,
    Duration,
}

/// Lateness above this counts as a late frame.
pub const LATE_THRESHOLD: Duration = Duration::from_micros(100);

/// A log-linear histogram of microseconds: exact below 1024 µs, then 32 buckets per
/// power of two (3% resolution). Fixed size whatever the number of samples.
#[derive(Clone, Debug)]
pub struct Histogram {
    buckets: Vec<u64>,
    count: u64,
    max: u64,
    sum: u128,
}

const EXACT: u64 = 1024;
const SUB: u64 = 32;

impl Default for Histogram {
    fn default() -> Self {
        Self {
            buckets: vec![0; (EXACT + 54 * SUB) as usize],
            count: 0,
            max: 0,
            sum: 0,
        }
    }
}

impl Histogram {
    fn index(v: u64) -> usize {
        if v < EXACT {
            return v as usize;
        }
        let exp = 63 - u64::from(v.leading_zeros()); // >= 10
        let sub = (v >> (exp - 5)) & (SUB - 1);
        (EXACT + (exp - 10) * SUB + sub) as usize
    }
    fn lower_bound(i: usize) -> u64 {
        let i = i as u64;
        if i < EXACT {
            return i;
        }
        let exp = (i - EXACT) / SUB + 10;
        let sub = (i - EXACT) % SUB;
        (1 << exp) + (sub << (exp - 5))
    }
    pub fn record(&mut self, micros: u64) {
        let i = Self::index(micros).min(self.buckets.len() - 1);
        self.buckets[i] += 1;
        self.count += 1;
        self.max = self.max.max(micros);
        self.sum += u128::from(micros);
    }
    /// The exact mean (0 without samples).
    pub fn mean(&self) -> f64 {
        if self.count == 0 {
            0.0
        } else {
            self.sum as f64 / self.count as f64
        }
    }
    pub fn count(&self) -> u64 {
        self.count
    }
    pub fn max(&self) -> u64 {
        self.max
    }
    /// The value at quantile `q` (0..=1), as the lower bound of its bucket.
    pub fn quantile(&self, q: f64) -> u64 {
        if self.count == 0 {
            return 0;
        }
        let rank = ((q.clamp(0.0, 1.0) * self.count as f64).ceil() as u64).max(1);
        let mut seen = 0;
        for (i, n) in self.buckets.iter().enumerate() {
            seen += n;
            if seen >= rank {
                return Self::lower_bound(i).min(self.max);
            }
        }
        self.max
    }

    /// Adds another histogram's samples (the same bucket layout).
    pub fn merge(&mut self, o: &Histogram) {
        for (a, b) in self.buckets.iter_mut().zip(&o.buckets) {
            *a += b;
        }
        self.count += o.count;
        self.max = self.max.max(o.max);
        self.sum += o.sum;
    }

    /// The samples at or below `micros` (for cumulative histogram exports such as
    /// Prometheus's `le` buckets; exact at bucket bounds).
    pub fn count_at_most(&self, micros: u64) -> u64 {
        let last = Self::index(micros.saturating_add(1)).min(self.buckets.len());
        self.buckets[..last].iter().sum()
    }

    /// The sum of every sample, in µs.
    pub fn sum(&self) -> u128 {
        self.sum
    }
}

/// Saved sparsely: `{"n": count, "max": µs, "sum": µs, "b": [[bucket, count], ...]}`.
impl serde::Serialize for Histogram {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let sparse: Vec<(usize, u64)> = self
            .buckets
            .iter()
            .enumerate()
            .filter(|(_, n)| **n > 0)
            .map(|(i, n)| (i, *n))
            .collect();
        let mut st = s.serialize_struct("Histogram", 4)?;
        st.serialize_field("n", &self.count)?;
        st.serialize_field("max", &self.max)?;
        st.serialize_field("sum", &(self.sum.min(u128::from(u64::MAX)) as u64))?;
        st.serialize_field("b", &sparse)?;
        st.end()
    }
}

impl<'de> serde::Deserialize<'de> for Histogram {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(serde::Deserialize)]
        struct Sparse {
            n: u64,
            max: u64,
            sum: u64,
            b: Vec<(usize, u64)>,
        }
        let sp = Sparse::deserialize(d)?;
        let mut h = Histogram::default();
        for (i, n) in sp.b {
            let Some(slot) = h.buckets.get_mut(i) else {
                return Err(serde::de::Error::custom("histogram bucket out of range"));
            };
            *slot += n;
        }
        h.count = sp.n;
        h.max = sp.max;
        h.sum = u128::from(sp.sum);
        Ok(h)
    }
}

/// Figures of a replay.
#[derive(Clone, Debug, Default)]
pub struct ReplayStats {
    pub packets: u64,
    pub bytes: u64,
    pub failed: u64,
    pub retried: u64,
    /// Frames sent more than [`LATE_THRESHOLD`] after they were due.
    pub late: u64,
    /// Lateness of each frame of a timed replay, in µs.
    pub lateness: Histogram,
    /// From the start to the end of the last send.
    pub elapsed: Duration,
    /// Loops started (1 for a single pass).
    pub loops: u64,
}

pub struct Player<C: Clock, S: FrameSink> {
    cfg: PlayerConfig,
    clock: C,
    sink: S,
    schedule: Schedule,
    batch: Batch,
    start: Duration,
    stats: ReplayStats,
    offered: u64,
    stopped: Option<Stop>,
    timed: bool,
}

impl<C: Clock, S: FrameSink> Player<C, S> {
    pub fn new(cfg: PlayerConfig, mut clock: C, sink: S) -> Self {
        let start = clock.now();
        Self {
            schedule: Schedule::new(cfg.schedule),
            timed: cfg.schedule.timing != Timing::TopSpeed,
            cfg: PlayerConfig {
                batch_size: cfg.batch_size.max(1),
                ..cfg
            },
            clock,
            sink,
            batch: Batch::default(),
            start,
            stats: ReplayStats {
                loops: 1,
                ..Default::default()
            },
            offered: 0,
            stopped: None,
        }
    }

    /// Figures so far (sent frames only; the current batch is not counted yet).
    pub fn stats(&self) -> &ReplayStats {
        &self.stats
    }

    /// Time since the start.
    pub fn elapsed(&mut self) -> Duration {
        self.clock.now().saturating_sub(self.start)
    }

    /// Offers the next frame of the file: `write` appends it to the buffer (returning false
    /// to leave it out). Returns why the replay must stop, if it must.
    pub fn offer(
        &mut self,
        ts: Duration,
        write: impl FnOnce(&mut Vec<u8>) -> bool,
    ) -> io::Result<Option<Stop>> {
        if self.stopped.is_some() {
            return Ok(self.stopped);
        }
        if self.cfg.limit.is_some_and(|l| self.offered >= l) {
            return self.stop(Stop::Limit);
        }
        let now = self.elapsed();
        if self.cfg.duration.is_some_and(|d| now >= d) {
            return self.stop(Stop::Duration);
        }
        let at = self.batch.buf.len();
        if !write(&mut self.batch.buf) {
            self.batch.buf.truncate(at);
            return Ok(None);
        }
        let len = self.batch.buf.len() - at;
        let due = self.schedule.next(ts, len);
        if self.cfg.duration.is_some_and(|d| due > d) {
            self.batch.buf.truncate(at);
            return self.stop(Stop::Duration);
        }
        if due > now {
            if !self.batch.is_empty() {
                self.flush()?;
                self.batch.buf.copy_within(at..at + len, 0);
                self.batch.buf.truncate(len);
            }
            self.clock.wait_until(self.start + due);
        }
        let at = self.batch.buf.len() - len;
        self.batch.frames.push((at, len));
        self.batch.due.push(due);
        self.offered += 1;
        if self.batch.len() >= self.cfg.batch_size {
            self.flush()?;
            self.batch.buf.clear();
        }
        Ok(None)
    }

    fn stop(&mut self, why: Stop) -> io::Result<Option<Stop>> {
        self.stopped = Some(why);
        Ok(Some(why))
    }

    /// Starts the next pass over the file.
    pub fn next_loop(&mut self) {
        self.schedule.next_loop();
        self.stats.loops += 1;
    }

    /// Sends the batch (its frame metadata is cleared; the caller compacts the buffer).
    fn flush(&mut self) -> io::Result<()> {
        if self.batch.is_empty() {
            return Ok(());
        }
        let sent_at = self.elapsed();
        let outcome = self.sink.send(&self.batch);
        if self.timed {
            for d in &self.batch.due {
                let late = sent_at.saturating_sub(*d);
                self.stats.lateness.record(late.as_micros() as u64);
                if late > LATE_THRESHOLD {
                    self.stats.late += 1;
                }
            }
        }
        self.batch.frames.clear();
        self.batch.due.clear();
        let o = outcome?;
        self.stats.packets += o.sent;
        self.stats.bytes += o.sent_bytes;
        self.stats.failed += o.failed;
        self.stats.retried += o.retried;
        self.stats.elapsed = self.elapsed();
        Ok(())
    }

    /// Sends what is left and closes the sink.
    pub fn finish(mut self) -> (io::Result<()>, ReplayStats, S) {
        let r = self.flush().and_then(|_| self.sink.finish());
        self.stats.elapsed = self.elapsed();
        (r, self.stats, self.sink)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::replay::schedule::Timing;

    /// Time moves only when the player waits (plus a fixed cost per send).
    struct VirtualClock {
        now: Duration,
    }
    impl Clock for VirtualClock {
        fn now(&mut self) -> Duration {
            self.now
        }
        fn wait_until(&mut self, t: Duration) {
            self.now = self.now.max(t);
        }
    }

    #[derive(Default)]
    struct Recorder {
        sent: Vec<(Vec<u8>, Duration)>,
        calls: usize,
        fail_every: Option<usize>,
    }
    impl FrameSink for Recorder {
        fn send(&mut self, batch: &Batch) -> io::Result<SendOutcome> {
            self.calls += 1;
            let mut o = SendOutcome::default();
            for (f, d) in batch.iter() {
                if self
                    .fail_every
                    .is_some_and(|n| (f[0] as usize).is_multiple_of(n))
                {
                    o.failed += 1;
                    continue;
                }
                self.sent.push((f.to_vec(), d));
                o.sent += 1;
                o.sent_bytes += f.len() as u64;
            }
            Ok(o)
        }
    }

    const T0: Duration = Duration::from_secs(1_000);

    fn play(cfg: PlayerConfig, pkts: &[(Duration, u8)], loops: u64) -> (ReplayStats, Recorder) {
        let clock = VirtualClock {
            now: Duration::from_secs(5),
        };
        let mut p = Player::new(cfg, clock, Recorder::default());
        'outer: for l in 0..loops {
            if l > 0 {
                p.next_loop();
            }
            for &(ts, id) in pkts {
                if p.offer(ts, |b| {
                    b.extend_from_slice(&[id; 10]);
                    true
                })
                .unwrap()
                .is_some()
                {
                    break 'outer;
                }
            }
        }
        let (r, stats, sink) = p.finish();
        r.unwrap();
        (stats, sink)
    }

    /// Offers one-byte frames holding each packet's id.
    fn offer_ids<C: Clock>(p: &mut Player<C, Recorder>, pkts: &[(Duration, u8)]) {
        for &(ts, id) in pkts {
            p.offer(ts, |b| {
                b.push(id);
                true
            })
            .unwrap();
        }
    }

    fn timing(t: Timing) -> PlayerConfig {
        PlayerConfig {
            schedule: ScheduleConfig {
                timing: t,
                ..Default::default()
            },
            ..Default::default()
        }
    }

    fn ms(v: u64) -> Duration {
        Duration::from_millis(v)
    }

    #[test]
    fn each_frame_leaves_at_its_due_instant() {
        let pkts = [
            (T0, 1),
            (T0 + ms(10), 2),
            (T0 + ms(10), 3),
            (T0 + ms(40), 4),
        ];
        let (stats, sink) = play(timing(Timing::Multiplier(2.0)), &pkts, 1);
        let dues: Vec<_> = sink.sent.iter().map(|(f, d)| (f[0], *d)).collect();
        assert_eq!(dues, vec![(1, ms(0)), (2, ms(5)), (3, ms(5)), (4, ms(20))]);
        // Frames 2 and 3 were due together and went in one batch.
        assert_eq!(sink.calls, 3);
        assert_eq!(stats.packets, 4);
        assert_eq!(stats.bytes, 40);
        assert_eq!(stats.late, 0);
        assert_eq!(stats.lateness.max(), 0);
        assert_eq!(stats.elapsed, ms(20));
    }

    #[test]
    fn top_speed_fills_batches() {
        let pkts: Vec<_> = (0..200u32).map(|i| (T0 + ms(i as u64), i as u8)).collect();
        let (stats, sink) = play(timing(Timing::TopSpeed), &pkts, 1);
        assert_eq!(stats.packets, 200);
        assert_eq!(sink.calls, 4); // 64 + 64 + 64 + 8
        assert_eq!(stats.elapsed, Duration::ZERO);
        assert_eq!(stats.lateness.count(), 0);
    }

    #[test]
    fn limit_and_loops() {
        let pkts = [(T0, 1), (T0 + ms(1), 2), (T0 + ms(2), 3)];
        let cfg = PlayerConfig {
            limit: Some(7),
            ..timing(Timing::Pps(1000.0))
        };
        let (stats, sink) = play(cfg, &pkts, 10);
        assert_eq!(stats.packets, 7);
        assert_eq!(stats.loops, 3);
        let ids: Vec<u8> = sink.sent.iter().map(|(f, _)| f[0]).collect();
        assert_eq!(ids, vec![1, 2, 3, 1, 2, 3, 1]);
        assert_eq!(sink.sent[6].1, ms(6));
    }

    #[test]
    fn duration_stops_before_a_frame_due_later() {
        let pkts = [(T0, 1), (T0 + ms(10), 2), (T0 + ms(30), 3)];
        let cfg = PlayerConfig {
            duration: Some(ms(20)),
            ..timing(Timing::AsRecorded)
        };
        let (stats, sink) = play(cfg, &pkts, 1);
        assert_eq!(stats.packets, 2);
        assert_eq!(sink.sent.len(), 2);
    }

    #[test]
    fn failures_are_counted_and_replay_goes_on() {
        let pkts: Vec<_> = (1..=10u8).map(|i| (T0, i)).collect();
        let clock = VirtualClock { now: T0 };
        let sink = Recorder {
            fail_every: Some(5),
            ..Default::default()
        };
        let mut p = Player::new(timing(Timing::TopSpeed), clock, sink);
        offer_ids(&mut p, &pkts);
        let (_, stats, _) = p.finish();
        assert_eq!(stats.packets, 8);
        assert_eq!(stats.failed, 2);
    }

    #[test]
    fn skipped_frames_leave_no_bytes() {
        let clock = VirtualClock { now: T0 };
        let mut p = Player::new(timing(Timing::TopSpeed), clock, Recorder::default());
        p.offer(T0, |b| {
            b.extend_from_slice(b"junk");
            false
        })
        .unwrap();
        p.offer(T0, |b| {
            b.extend_from_slice(b"ok");
            true
        })
        .unwrap();
        let (_, _, sink) = p.finish();
        assert_eq!(sink.sent, vec![(b"ok".to_vec(), Duration::ZERO)]);
    }

    /// A clock whose waits overshoot: lateness is measured, not assumed.
    #[test]
    fn lateness_is_measured() {
        struct Sloppy(Duration);
        impl Clock for Sloppy {
            fn now(&mut self) -> Duration {
                self.0
            }
            fn wait_until(&mut self, t: Duration) {
                self.0 = self.0.max(t) + Duration::from_micros(250);
            }
        }
        let pkts = [(T0, 1), (T0 + ms(1), 2), (T0 + ms(2), 3)];
        let mut p = Player::new(
            timing(Timing::AsRecorded),
            Sloppy(Duration::ZERO),
            Recorder::default(),
        );
        offer_ids(&mut p, &pkts);
        let (_, stats, _) = p.finish();
        assert_eq!(stats.late, 2);
        assert_eq!(stats.lateness.max(), 250);
        assert_eq!(stats.lateness.quantile(0.5), 250);
    }

    #[test]
    fn histogram_quantiles() {
        let mut h = Histogram::default();
        for v in 1..=1000u64 {
            h.record(v);
        }
        assert_eq!(h.quantile(0.5), 500);
        assert_eq!(h.quantile(0.99), 990);
        h.record(5_000_000);
        assert_eq!(h.max(), 5_000_000);
        let q = h.quantile(1.0);
        assert!(q <= 5_000_000 && q as f64 >= 5_000_000.0 * 0.96, "{q}");
    }
}
