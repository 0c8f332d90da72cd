//! TCP stream reassembly for one direction of a connection.
//!
//! Positions are kept as 64-bit stream offsets; a segment's offset is found from the signed
//! 32-bit distance between its sequence number and the next expected one, so wrap-around at
//! 2^32 needs no special case. Policy, documented and counted:
//! - overlaps: the bytes that arrived first win (what Zeek and Suricata's default do); an
//!   overlap whose bytes differ is counted as a conflict;
//! - mid-stream pickup: without a SYN the first segment seen starts the stream;
//! - gaps: bytes the capture never saw become `Gap(len)` when the out-of-order buffer exceeds
//!   its limit, when the stream ends (FIN reached, RST, close), or when the peer has
//!   acknowledged past them and the bytes have still not come within the [`ReorderWindow`]
//!   (copies arrive reordered: data seen after its own ACK is not lost);
//! - retransmitted bytes already delivered are dropped (counted).

use std::{collections::BTreeMap, time::Duration};

/// Where an event's bytes came from: capture time and frame number.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Origin {
    pub ts: Duration,
    pub frame: u64,
}

/// What one direction of a connection delivers, in order.
#[derive(Debug, PartialEq, Eq)]
pub enum StreamEvent<'a> {
    Data(&'a [u8], Origin),
    /// `len` bytes are missing from the stream here.
    Gap(u64, Origin),
    Fin(Origin),
    Reset(Origin),
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct ReassemblyStats {
    pub delivered_bytes: u64,
    pub gap_bytes: u64,
    pub gaps: u64,
    pub retransmitted_bytes: u64,
    pub conflicting_overlaps: u64,
    pub out_of_order_segments: u64,
    /// Bytes the capture cut (snap length): gaps known at once, not counted in `gap_bytes`.
    pub cut_bytes: u64,
    /// Segments that arrived after the peer had acknowledged them (reordered copies), and
    /// were still delivered in place.
    pub after_ack_segments: u64,
    /// Gaps declared because acknowledged bytes did not come within the reorder window.
    pub window_expired: u64,
}

/// How long bytes the peer has acknowledged may still arrive before they are declared lost:
/// counted from the ACK (or from the last progress of the stream), the hole waits until more
/// than `packets` packets of the connection or more than `time` of capture time have gone by.
/// Beyond it, and for bytes beyond the out-of-order limit, the hole is a gap.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReorderWindow {
    pub packets: u64,
    pub time: Duration,
}

impl Default for ReorderWindow {
    fn default() -> Self {
        Self {
            packets: 64,
            time: Duration::from_millis(500),
        }
    }
}

/// Signed distance from `b` to `a` in sequence space.
#[inline]
pub fn seq_diff(a: u32, b: u32) -> i64 {
    a.wrapping_sub(b) as i32 as i64
}

#[derive(Debug)]
struct Held {
    data: Vec<u8>,
    origin: Origin,
}

#[derive(Debug)]
pub struct Reassembler {
    /// Sequence number of stream offset `delivered`; None until the stream starts.
    next_seq: Option<u32>,
    delivered: u64,
    held: BTreeMap<u64, Held>,
    held_bytes: usize,
    limit: usize,
    fin_at: Option<u64>,
    fin_origin: Origin,
    finished: bool,
    /// Highest stream offset the peer acknowledged.
    acked: Option<u64>,
    /// Stream ranges (start offset → length) known to be missing because the capture cut
    /// their packets (a snap length): they come out as gaps in their place, at once, with
    /// no wait for an acknowledgement.
    cut: BTreeMap<u64, u64>,
    /// The packet the last cut range came with.
    cut_origin: Origin,
    window: ReorderWindow,
    /// Packets of the connection seen by this direction (its segments, the peer's ACKs),
    /// and the latest capture time among them.
    ticks: u64,
    clock: Duration,
    /// Since when (ticks, time) acknowledged bytes have been missing, if they are.
    overdue: Option<(u64, Duration)>,
    pub stats: ReassemblyStats,
}

/// Most cut ranges remembered ahead of the delivered point (beyond, a cut range is an
/// ordinary hole, declared as such).
const MAX_CUT_RANGES: usize = 4096;

impl Reassembler {
    /// `limit`: most out-of-order bytes held before a gap is declared.
    pub fn new(limit: usize) -> Self {
        Self::with_window(limit, ReorderWindow::default())
    }

    pub fn with_window(limit: usize, window: ReorderWindow) -> Self {
        Self {
            next_seq: None,
            delivered: 0,
            held: BTreeMap::new(),
            held_bytes: 0,
            limit,
            fin_at: None,
            fin_origin: Origin::default(),
            finished: false,
            acked: None,
            cut: BTreeMap::new(),
            cut_origin: Origin::default(),
            window,
            ticks: 0,
            clock: Duration::ZERO,
            overdue: None,
            stats: ReassemblyStats::default(),
        }
    }

    /// One more packet of the connection, at `origin`.
    fn tick(&mut self, origin: Origin) {
        self.ticks += 1;
        self.clock = self.clock.max(origin.ts);
    }

    /// Keeps `overdue` true to the stream: set while acknowledged bytes are missing, from
    /// the moment they became so or the stream last moved.
    fn rearm(&mut self, progressed: bool) {
        let missing = self.acked.is_some_and(|a| a > self.delivered);
        if !missing {
            self.overdue = None;
        } else if progressed || self.overdue.is_none() {
            self.overdue = Some((self.ticks, self.clock));
        }
    }

    fn window_passed(&self) -> bool {
        self.overdue.is_some_and(|(t, ts)| {
            self.ticks - t > self.window.packets || self.clock.saturating_sub(ts) > self.window.time
        })
    }

    pub fn held_bytes(&self) -> usize {
        self.held_bytes
    }

    pub fn finished(&self) -> bool {
        self.finished
    }

    fn offset_of(&self, seq: u32) -> Option<i128> {
        let next = self.next_seq?;
        Some(self.delivered as i128 + seq_diff(seq, next) as i128)
    }

    /// Feeds one segment. `syn` segments set the initial sequence number.
    #[allow(clippy::too_many_arguments)]
    pub fn segment(
        &mut self,
        seq: u32,
        syn: bool,
        fin: bool,
        rst: bool,
        payload: &[u8],
        origin: Origin,
        emit: &mut dyn FnMut(StreamEvent<'_>),
    ) {
        self.segment_cut(seq, syn, fin, rst, payload, 0, origin, emit)
    }

    /// [`Self::segment`] for a packet the capture cut: `missing` bytes of its payload, after
    /// `payload`, were not captured (the record's original length says how many).
    #[allow(clippy::too_many_arguments)]
    pub fn segment_cut(
        &mut self,
        seq: u32,
        syn: bool,
        fin: bool,
        rst: bool,
        payload: &[u8],
        missing: u32,
        origin: Origin,
        emit: &mut dyn FnMut(StreamEvent<'_>),
    ) {
        if self.finished {
            return;
        }
        self.tick(origin);
        if syn {
            if self.next_seq.is_none() {
                self.next_seq = Some(seq.wrapping_add(1));
            }
            // SYN data (TCP Fast Open) starts after the SYN's own sequence number.
            return self.data(seq.wrapping_add(1), payload, missing, fin, origin, emit);
        }
        if self.next_seq.is_none() {
            if payload.is_empty() && missing == 0 && !fin {
                if rst {
                    self.finished = true;
                    emit(StreamEvent::Reset(origin));
                }
                return;
            }
            self.next_seq = Some(seq);
        }
        self.data(seq, payload, missing, fin, origin, emit);
        if rst {
            self.close(origin, emit, true);
        }
    }

    fn data(
        &mut self,
        seq: u32,
        payload: &[u8],
        missing: u32,
        fin: bool,
        origin: Origin,
        emit: &mut dyn FnMut(StreamEvent<'_>),
    ) {
        let Some(off) = self.offset_of(seq) else {
            return;
        };
        let end = off + payload.len() as i128;
        let cut_end = end + i128::from(missing);
        if fin && self.fin_at.is_none() && cut_end >= self.delivered as i128 {
            self.fin_at = Some(cut_end as u64);
            self.fin_origin = origin;
        }
        if missing > 0 && cut_end > self.delivered as i128 && self.cut.len() < MAX_CUT_RANGES {
            let start = end.max(self.delivered as i128) as u64;
            let len = cut_end as u64 - start;
            let e = self.cut.entry(start).or_insert(0);
            *e = (*e).max(len);
            self.cut_origin = origin;
        }
        if end <= self.delivered as i128 {
            self.stats.retransmitted_bytes += payload.len() as u64;
        } else {
            let skip = (self.delivered as i128 - off).max(0) as usize;
            self.stats.retransmitted_bytes += skip as u64;
            let start = (off + skip as i128) as u64;
            let bytes = &payload[skip..];
            if start == self.delivered {
                if self.acked.is_some_and(|a| a > start) {
                    self.stats.after_ack_segments += 1;
                }
                self.deliver(bytes, origin, emit);
                self.drain(emit);
            } else if !bytes.is_empty() {
                self.hold(start, bytes, origin);
                self.stats.out_of_order_segments += 1;
                self.check_gap(emit);
            }
        }
        // A cut range where the stream stands now comes out as its gap.
        self.drain(emit);
        self.check_gap(emit);
        self.check_fin(emit);
    }

    fn deliver(&mut self, bytes: &[u8], origin: Origin, emit: &mut dyn FnMut(StreamEvent<'_>)) {
        if bytes.is_empty() {
            return;
        }
        self.delivered += bytes.len() as u64;
        self.stats.delivered_bytes += bytes.len() as u64;
        if let Some(n) = self.next_seq.as_mut() {
            *n = n.wrapping_add(bytes.len() as u32);
        }
        self.rearm(true);
        emit(StreamEvent::Data(bytes, origin));
    }

    /// Stores out-of-order bytes, keeping what is already held where they overlap.
    fn hold(&mut self, start: u64, bytes: &[u8], origin: Origin) {
        let mut pieces: Vec<(u64, &[u8])> = vec![(start, bytes)];
        let end = start + bytes.len() as u64;
        // Existing pieces overlapping [start, end).
        let overlapping: Vec<(u64, u64)> = self
            .held
            .range(..end)
            .filter(|(k, h)| **k + h.data.len() as u64 > start)
            .map(|(k, h)| (*k, *k + h.data.len() as u64))
            .collect();
        for (hs, he) in overlapping {
            let mut next = Vec::new();
            for (ps, p) in pieces {
                let pe = ps + p.len() as u64;
                if pe <= hs || ps >= he {
                    next.push((ps, p));
                    continue;
                }
                // Compare the overlapping bytes (first wins).
                let os = ps.max(hs);
                let oe = pe.min(he);
                if let Some(h) = self.held.get(&hs) {
                    let old = &h.data[(os - hs) as usize..(oe - hs) as usize];
                    let new = &p[(os - ps) as usize..(oe - ps) as usize];
                    if old != new {
                        self.stats.conflicting_overlaps += 1;
                    }
                }
                self.stats.retransmitted_bytes += oe - os;
                if ps < hs {
                    next.push((ps, &p[..(hs - ps) as usize]));
                }
                if pe > he {
                    next.push((he, &p[(he - ps) as usize..]));
                }
            }
            pieces = next;
        }
        for (s, p) in pieces {
            if p.is_empty() {
                continue;
            }
            self.held_bytes += p.len();
            self.held.insert(
                s,
                Held {
                    data: p.to_vec(),
                    origin,
                },
            );
        }
    }

    /// Delivers held pieces that have become contiguous, and the cut ranges reached.
    fn drain(&mut self, emit: &mut dyn FnMut(StreamEvent<'_>)) {
        loop {
            // Cut ranges wholly behind the stream are done with.
            while let Some((&s, &l)) = self.cut.first_key_value() {
                if s + l <= self.delivered {
                    self.cut.pop_first();
                } else {
                    break;
                }
            }
            if let Some((&s, &l)) = self.cut.first_key_value() {
                if s <= self.delivered {
                    self.cut.pop_first();
                    let len = s + l - self.delivered;
                    self.stats.cut_bytes += len;
                    self.delivered += len;
                    if let Some(n) = self.next_seq.as_mut() {
                        *n = n.wrapping_add(len as u32);
                    }
                    self.rearm(true);
                    emit(StreamEvent::Gap(len, self.cut_origin));
                    continue;
                }
            }
            let Some((&start, _)) = self.held.first_key_value() else {
                break;
            };
            if start > self.delivered {
                break;
            }
            let Some(h) = self.held.remove(&start) else {
                break;
            };
            self.held_bytes -= h.data.len();
            let skip = (self.delivered - start) as usize;
            if skip < h.data.len() {
                self.deliver(&h.data[skip..], h.origin, emit);
            } else {
                self.stats.retransmitted_bytes += h.data.len() as u64;
            }
        }
    }

    /// Declares the hole before the first held piece lost, delivering from there.
    fn skip_hole(&mut self, emit: &mut dyn FnMut(StreamEvent<'_>)) {
        let Some((&start, h)) = self.held.first_key_value() else {
            return;
        };
        if start <= self.delivered {
            return;
        }
        let len = start - self.delivered;
        let origin = h.origin;
        self.stats.gaps += 1;
        self.stats.gap_bytes += len;
        self.delivered = start;
        if let Some(n) = self.next_seq.as_mut() {
            *n = n.wrapping_add(len as u32);
        }
        emit(StreamEvent::Gap(len, origin));
        self.drain(emit);
    }

    fn check_gap(&mut self, emit: &mut dyn FnMut(StreamEvent<'_>)) {
        loop {
            let Some((&first, _)) = self.held.first_key_value() else {
                return;
            };
            if self.held_bytes > self.limit {
                self.skip_hole(emit);
                continue;
            }
            // The peer has the bytes of the hole: they may still come (reordered copies)
            // until the window has passed.
            let acked_past = self.acked.is_some_and(|a| a >= first);
            if acked_past && self.window_passed() {
                self.stats.window_expired += 1;
                self.skip_hole(emit);
                // The stream moved: what is still missing waits a window of its own.
                self.rearm(true);
            } else {
                return;
            }
        }
    }

    fn check_fin(&mut self, emit: &mut dyn FnMut(StreamEvent<'_>)) {
        if let Some(f) = self.fin_at {
            if self.delivered >= f && !self.finished {
                self.finished = true;
                emit(StreamEvent::Fin(self.fin_origin));
            }
        }
    }

    /// Gives up on every hole now (memory pressure): held bytes are delivered after gaps.
    pub fn release_held(&mut self, emit: &mut dyn FnMut(StreamEvent<'_>)) {
        // As in acknowledged(): the stream has ended, held bytes beyond the end stay unsaid.
        if self.finished {
            return;
        }
        while !self.held.is_empty() {
            self.skip_hole(emit);
            self.drain(emit);
        }
        self.check_fin(emit);
    }

    /// The peer acknowledged up to `ack`: anything held beyond a hole it covers means the
    /// capture missed the hole's bytes (the receiver had them).
    pub fn acknowledged(
        &mut self,
        ack: u32,
        origin: Origin,
        emit: &mut dyn FnMut(StreamEvent<'_>),
    ) {
        // After the end (FIN or RST) nothing more comes out, not even bytes held beyond it.
        if self.finished {
            return;
        }
        self.tick(origin);
        let Some(off) = self.offset_of(ack) else {
            return;
        };
        if off <= 0 {
            return;
        }
        let off = off as u64;
        if self.acked.is_none_or(|a| off > a) {
            self.acked = Some(off);
        }
        self.rearm(false);
        self.check_gap(emit);
        self.check_fin(emit);
    }

    /// Ends the stream (connection closed, evicted, or end of input): what is held is
    /// delivered with gaps for the holes; `reset` reports a RST.
    pub fn close(&mut self, origin: Origin, emit: &mut dyn FnMut(StreamEvent<'_>), reset: bool) {
        if self.finished {
            return;
        }
        while !self.held.is_empty() {
            self.skip_hole(emit);
            self.drain(emit);
        }
        self.check_fin(emit);
        if !self.finished {
            self.finished = true;
            emit(if reset {
                StreamEvent::Reset(origin)
            } else {
                StreamEvent::Fin(origin)
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Collects a stream's events as text: data, `<gap N>`, `<fin>`, `<rst>`.
    #[derive(Default)]
    struct Sink(String);

    fn feed(r: &mut Reassembler, sink: &mut Sink, seq: u32, flags: &str, data: &[u8]) {
        let mut emit = |e: StreamEvent<'_>| match e {
            StreamEvent::Data(d, _) => sink.0.push_str(&String::from_utf8_lossy(d)),
            StreamEvent::Gap(n, _) => sink.0.push_str(&format!("<gap {n}>")),
            StreamEvent::Fin(_) => sink.0.push_str("<fin>"),
            StreamEvent::Reset(_) => sink.0.push_str("<rst>"),
        };
        r.segment(
            seq,
            flags.contains('S'),
            flags.contains('F'),
            flags.contains('R'),
            data,
            Origin::default(),
            &mut emit,
        );
    }

    #[test]
    fn bytes_the_capture_cut_are_a_gap_in_place_at_once() {
        let mut r = Reassembler::new(1 << 16);
        let mut sink = Sink::default();
        let mut emit = |e: StreamEvent<'_>| match e {
            StreamEvent::Data(d, _) => sink.0.push_str(&String::from_utf8_lossy(d)),
            StreamEvent::Gap(n, _) => sink.0.push_str(&format!("<gap {n}>")),
            StreamEvent::Fin(_) => sink.0.push_str("<fin>"),
            StreamEvent::Reset(_) => sink.0.push_str("<rst>"),
        };
        let o = Origin::default();
        r.segment(99, true, false, false, b"", o, &mut emit);
        // 3 bytes captured of 8: the next segment follows without waiting for an ACK.
        r.segment_cut(100, false, false, false, b"abc", 5, o, &mut emit);
        r.segment(108, false, false, false, b"xyz", o, &mut emit);
        // Cut, then the FIN after the missing bytes.
        r.segment_cut(111, false, true, false, b"12", 4, o, &mut emit);
        assert_eq!(sink.0, "abc<gap 5>xyz12<gap 4><fin>");
        assert_eq!(r.stats.cut_bytes, 9);
        assert_eq!((r.stats.gaps, r.stats.out_of_order_segments), (0, 0));
    }

    fn ack(r: &mut Reassembler, sink: &mut Sink, ack: u32) {
        r.acknowledged(ack, Origin::default(), &mut |e| {
            if let StreamEvent::Gap(n, _) = e {
                sink.0.push_str(&format!("<gap {n}>"))
            } else if let StreamEvent::Data(d, _) = e {
                sink.0.push_str(&String::from_utf8_lossy(d))
            }
        });
    }

    fn new() -> (Reassembler, Sink) {
        (Reassembler::new(1 << 20), Sink::default())
    }

    #[test]
    fn in_order_with_syn_and_fin() {
        let (mut r, mut s) = new();
        feed(&mut r, &mut s, 100, "S", b"");
        feed(&mut r, &mut s, 101, "", b"hello ");
        feed(&mut r, &mut s, 107, "F", b"world");
        assert_eq!(s.0, "hello world<fin>");
    }

    #[test]
    fn nothing_follows_the_end_of_a_stream() {
        // Found by the reassembly fuzz target: bytes held beyond the FIN came out, after
        // a gap, once memory pressure released the holes after the stream had ended.
        let (mut r, mut s) = new();
        feed(&mut r, &mut s, 100, "S", b"");
        feed(&mut r, &mut s, 500, "", b"far");
        feed(&mut r, &mut s, 150, "F", b"x");
        let mut emit = |e: StreamEvent<'_>| s.0.push_str(&format!("{e:?}"));
        // The peer acknowledged the FIN's byte, and the window passed: the hole before it
        // was lost.
        for _ in 0..66 {
            r.acknowledged(152, Origin::default(), &mut emit);
        }
        assert!(r.finished(), "{}", s.0);
        let ended = s.0.clone();
        let mut emit = |e: StreamEvent<'_>| s.0.push_str(&format!("{e:?}"));
        r.release_held(&mut emit);
        r.acknowledged(6000, Origin::default(), &mut emit);
        r.close(Origin::default(), &mut emit, false);
        assert_eq!(s.0, ended, "no event after the end");
    }

    #[test]
    fn retransmit_is_delivered_once() {
        let (mut r, mut s) = new();
        feed(&mut r, &mut s, 0, "S", b"");
        feed(&mut r, &mut s, 1, "", b"abc");
        feed(&mut r, &mut s, 1, "", b"abc");
        feed(&mut r, &mut s, 4, "", b"def");
        assert_eq!(s.0, "abcdef");
        assert_eq!(r.stats.retransmitted_bytes, 3);
    }

    #[test]
    fn out_of_order_is_put_back_in_order() {
        let (mut r, mut s) = new();
        feed(&mut r, &mut s, 0, "S", b"");
        feed(&mut r, &mut s, 7, "", b"ghi");
        feed(&mut r, &mut s, 4, "", b"def");
        assert_eq!(s.0, "");
        feed(&mut r, &mut s, 1, "", b"abc");
        assert_eq!(s.0, "abcdefghi");
    }

    #[test]
    fn partial_overlap_keeps_the_new_tail() {
        let (mut r, mut s) = new();
        feed(&mut r, &mut s, 0, "S", b"");
        feed(&mut r, &mut s, 1, "", b"abcd");
        feed(&mut r, &mut s, 3, "", b"cdefg");
        assert_eq!(s.0, "abcdefg");
    }

    #[test]
    fn conflicting_overlap_first_wins_and_is_counted() {
        let (mut r, mut s) = new();
        feed(&mut r, &mut s, 0, "S", b"");
        feed(&mut r, &mut s, 4, "", b"DEF");
        feed(&mut r, &mut s, 4, "", b"xyz");
        feed(&mut r, &mut s, 1, "", b"abc");
        assert_eq!(s.0, "abcDEF");
        assert_eq!(r.stats.conflicting_overlaps, 1);
    }

    #[test]
    fn wraps_at_2_pow_32() {
        let (mut r, mut s) = new();
        feed(&mut r, &mut s, u32::MAX - 2, "S", b"");
        feed(&mut r, &mut s, u32::MAX - 1, "", b"ab");
        feed(&mut r, &mut s, 0, "", b"cd");
        feed(&mut r, &mut s, 4, "", b"ef"); // out of order across the wrap
        feed(&mut r, &mut s, 2, "F", b"XY");
        assert_eq!(s.0, "abcdXYef<fin>");
    }

    #[test]
    fn mid_stream_pickup_without_syn() {
        let (mut r, mut s) = new();
        feed(&mut r, &mut s, 5000, "", b"HTTP/1.1 200 OK\r\n");
        feed(&mut r, &mut s, 5017, "", b"\r\n");
        assert_eq!(s.0, "HTTP/1.1 200 OK\r\n\r\n");
    }

    #[test]
    fn fin_before_data_waits_for_the_data() {
        let (mut r, mut s) = new();
        feed(&mut r, &mut s, 0, "S", b"");
        feed(&mut r, &mut s, 4, "F", b"");
        assert_eq!(s.0, "");
        feed(&mut r, &mut s, 1, "", b"abc");
        assert_eq!(s.0, "abc<fin>");
    }

    #[test]
    fn rst_flushes_with_gaps() {
        let (mut r, mut s) = new();
        feed(&mut r, &mut s, 0, "S", b"");
        feed(&mut r, &mut s, 1, "", b"ab");
        feed(&mut r, &mut s, 6, "", b"fg");
        feed(&mut r, &mut s, 8, "R", b"");
        assert_eq!(s.0, "ab<gap 3>fg<rst>");
    }

    #[test]
    fn acked_hole_becomes_a_gap_past_the_window_in_packets() {
        let (mut r, mut s) = new();
        feed(&mut r, &mut s, 0, "S", b"");
        feed(&mut r, &mut s, 1, "", b"ab");
        feed(&mut r, &mut s, 10, "", b"jk");
        assert_eq!(s.0, "ab");
        ack(&mut r, &mut s, 12);
        // The window: the bytes may still come, reordered, for 64 more packets.
        for _ in 0..64 {
            ack(&mut r, &mut s, 12);
        }
        assert_eq!(s.0, "ab");
        ack(&mut r, &mut s, 12);
        assert_eq!(s.0, "ab<gap 7>jk");
        assert_eq!((r.stats.gaps, r.stats.gap_bytes), (1, 7));
        assert_eq!(r.stats.window_expired, 1);
    }

    #[test]
    fn acked_hole_becomes_a_gap_past_the_window_in_time() {
        let (mut r, mut s) = new();
        let at = |ms| Origin {
            ts: Duration::from_millis(ms),
            frame: 0,
        };
        let mut emit = |e: StreamEvent<'_>| {
            if let StreamEvent::Gap(n, _) = e {
                s.0.push_str(&format!("<gap {n}>"))
            } else if let StreamEvent::Data(d, _) = e {
                s.0.push_str(&String::from_utf8_lossy(d))
            }
        };
        r.segment(0, true, false, false, b"", at(0), &mut emit);
        r.segment(1, false, false, false, b"ab", at(0), &mut emit);
        r.segment(10, false, false, false, b"jk", at(1), &mut emit);
        r.acknowledged(12, at(2), &mut emit);
        r.acknowledged(12, at(502), &mut emit);
        r.acknowledged(12, at(503), &mut emit);
        assert_eq!(s.0, "ab<gap 7>jk");
    }

    #[test]
    fn reordered_copies_within_the_window_are_not_loss() {
        // Segments of 2 bytes, shuffled within windows of 2 to 4 segments, each ACK in its
        // original place (so often before the data it acknowledges), one duplicate.
        let (mut r, mut s) = new();
        feed(&mut r, &mut s, 0, "S", b"");
        let text = b"abcdefghijklmnopqrstuvwx";
        let order = [1usize, 0, 3, 4, 2, 5, 7, 6, 9, 10, 11, 8, 8];
        for (i, &k) in order.iter().enumerate() {
            feed(
                &mut r,
                &mut s,
                1 + 2 * k as u32,
                "",
                &text[2 * k..2 * k + 2],
            );
            // The receiver's ACK of segment i, where it was sent.
            ack(&mut r, &mut s, 1 + 2 * (i as u32 + 1).min(12));
        }
        assert_eq!(s.0, "abcdefghijklmnopqrstuvwx");
        assert_eq!(r.stats.gaps, 0);
        assert!(r.stats.after_ack_segments > 0);
    }

    #[test]
    fn data_arriving_after_its_ack_is_still_delivered() {
        // The ACK shows up in the capture before the data it acknowledges.
        let (mut r, mut s) = new();
        feed(&mut r, &mut s, 0, "S", b"");
        ack(&mut r, &mut s, 7);
        feed(&mut r, &mut s, 1, "", b"abcdef");
        assert_eq!(s.0, "abcdef");
        assert_eq!(r.stats.gaps, 0);
    }

    #[test]
    fn hole_past_capacity_is_skipped() {
        let mut r = Reassembler::new(8);
        let mut s = Sink::default();
        feed(&mut r, &mut s, 0, "S", b"");
        feed(&mut r, &mut s, 1, "", b"a");
        feed(&mut r, &mut s, 3, "", b"cdefg");
        assert_eq!(s.0, "a");
        feed(&mut r, &mut s, 8, "", b"hijk");
        assert_eq!(s.0, "a<gap 1>cdefghijk");
        assert!(r.held_bytes() == 0);
    }

    /// A naive model: the first copy of each byte, in offset order; holes as gaps.
    fn model(segments: &[(u32, Vec<u8>)], total: usize) -> String {
        let mut have: Vec<Option<u8>> = vec![None; total];
        for (off, d) in segments {
            for (i, b) in d.iter().enumerate() {
                let at = *off as usize + i;
                if at < total && have[at].is_none() {
                    have[at] = Some(*b);
                }
            }
        }
        let mut out = String::new();
        let mut gap = 0;
        let last = have
            .iter()
            .rposition(Option::is_some)
            .map(|p| p + 1)
            .unwrap_or(0);
        for b in &have[..last] {
            match b {
                Some(b) => {
                    if gap > 0 {
                        out.push_str(&format!("<gap {gap}>"));
                        gap = 0;
                    }
                    out.push(*b as char);
                }
                None => gap += 1,
            }
        }
        out
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(500))]
        /// Shuffled, duplicated and dropped segments of a stream that starts near the
        /// 2^32 wrap: what comes out is what the model says.
        #[test]
        fn matches_the_reference_model(
            isn in prop_oneof![Just(u32::MAX - 20), any::<u32>()],
            cuts in proptest::collection::vec(1usize..12, 1..12),
            order in proptest::collection::vec(any::<u16>(), 0..40),
            keep in proptest::collection::vec(any::<bool>(), 0..40),
        ) {
            let stream: Vec<u8> = (0..cuts.iter().sum::<usize>()).map(|i| b'a' + (i % 26) as u8).collect();
            let mut segs = Vec::new();
            let mut at = 0;
            for c in &cuts {
                segs.push((at as u32, stream[at..at + c].to_vec()));
                at += c;
            }
            // Drop some (never the first: it anchors the stream), duplicate some, shuffle.
            let mut sent: Vec<(u32, Vec<u8>)> = vec![segs[0].clone()];
            for (i, s) in segs.iter().enumerate().skip(1) {
                if keep.get(i).copied().unwrap_or(true) {
                    sent.push(s.clone());
                }
                if keep.get(i + 20).copied().unwrap_or(false) {
                    sent.push(s.clone());
                }
            }
            let mut shuffled = sent.clone();
            for (i, o) in order.iter().enumerate() {
                let n = shuffled.len();
                if n > 2 {
                    let a = 1 + i % (n - 1);
                    let b = 1 + (*o as usize) % (n - 1);
                    shuffled.swap(a, b);
                }
            }
            let mut r = Reassembler::new(1 << 20);
            let mut sink = Sink::default();
            feed(&mut r, &mut sink, isn, "S", b"");
            for (off, d) in &shuffled {
                feed(&mut r, &mut sink, isn.wrapping_add(1).wrapping_add(*off), "", d);
            }
            r.close(Origin::default(), &mut |e| match e {
                StreamEvent::Data(d, _) => sink.0.push_str(&String::from_utf8_lossy(d)),
                StreamEvent::Gap(n, _) => sink.0.push_str(&format!("<gap {n}>")),
                _ => {}
            }, false);
            prop_assert_eq!(sink.0, model(&sent, stream.len()));
        }
    }
}
