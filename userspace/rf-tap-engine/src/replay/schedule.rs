//! When each packet is due, as an offset from the instant the replay started.
//!
//! Offsets are computed from the start, never by summing sleeps (tcpreplay's issue #724:
//! summed sleeps drift). A timestamp earlier than the one before it (out-of-order capture)
//! is due at once instead of stalling the replay; `max_sleep` caps a long idle gap.

use std::time::Duration;

/// How fast to replay (tcpreplay's timing modes).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Timing {
    /// The recorded gaps between packets.
    AsRecorded,
    /// The recorded gaps divided by this factor (`--speed 2x` halves them).
    Multiplier(f64),
    /// A fixed number of packets per second.
    Pps(f64),
    /// A fixed bit rate, in megabits (10^6 bits) per second, counted on the frames sent.
    Mbps(f64),
    /// As fast as the backend takes them.
    TopSpeed,
}

/// The schedule's parameters.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ScheduleConfig {
    pub timing: Timing,
    /// Longest wait between two packets (after scaling); longer recorded gaps are cut to it.
    pub max_sleep: Option<Duration>,
    /// Pause between the end of one loop and the start of the next.
    pub loop_delay: Duration,
}

impl Default for ScheduleConfig {
    fn default() -> Self {
        Self {
            timing: Timing::AsRecorded,
            max_sleep: None,
            loop_delay: Duration::ZERO,
        }
    }
}

/// Computes the due offset of each packet in turn.
#[derive(Clone, Debug)]
pub struct Schedule {
    cfg: ScheduleConfig,
    /// Offset at which the current loop started.
    loop_base_ns: u128,
    /// Recorded time elapsed in this loop, gaps capped and clamped at zero (ns).
    recorded_ns: u128,
    /// Largest timestamp seen so far in this loop.
    last_ts: Option<Duration>,
    /// Packets and bits already scheduled in this loop (for Pps and Mbps).
    packets: u64,
    bits: u128,
    /// Offset of the last packet scheduled, whatever the loop (ns).
    last_offset_ns: u128,
}

const NS: f64 = 1e9;

impl Schedule {
    /// Panics never; non-finite or non-positive rates are treated as top speed (the CLI
    /// refuses them before they reach here).
    pub fn new(cfg: ScheduleConfig) -> Self {
        Self {
            cfg,
            loop_base_ns: 0,
            recorded_ns: 0,
            last_ts: None,
            packets: 0,
            bits: 0,
            last_offset_ns: 0,
        }
    }

    pub fn config(&self) -> &ScheduleConfig {
        &self.cfg
    }

    /// The offset from the start at which a packet with timestamp `ts` and `wire_len` bytes
    /// on the wire is due. Call in file order.
    pub fn next(&mut self, ts: Duration, wire_len: usize) -> Duration {
        let offset_in_loop: u128 = match self.cfg.timing {
            Timing::AsRecorded | Timing::Multiplier(_) => {
                let factor = match self.cfg.timing {
                    Timing::Multiplier(m) if m.is_finite() && m > 0.0 => m,
                    _ => 1.0,
                };
                if let Some(prev) = self.last_ts {
                    let gap = ts.saturating_sub(prev).as_nanos();
                    let gap = match self.cfg.max_sleep {
                        // The cap applies to the wait, that is after scaling.
                        Some(cap) => gap.min((cap.as_nanos() as f64 * factor) as u128),
                        None => gap,
                    };
                    self.recorded_ns += gap;
                }
                if self.last_ts.is_none_or(|p| ts > p) {
                    self.last_ts = Some(ts);
                }
                (self.recorded_ns as f64 / factor) as u128
            }
            Timing::Pps(pps) => {
                if pps.is_finite() && pps > 0.0 {
                    (self.packets as f64 * NS / pps) as u128
                } else {
                    0
                }
            }
            Timing::Mbps(mbps) => {
                if mbps.is_finite() && mbps > 0.0 {
                    (self.bits as f64 * NS / (mbps * 1e6)) as u128
                } else {
                    0
                }
            }
            Timing::TopSpeed => 0,
        };
        self.packets += 1;
        self.bits += wire_len as u128 * 8;
        let offset = self.loop_base_ns + offset_in_loop;
        self.last_offset_ns = offset;
        duration_from_ns(offset)
    }

    /// Starts the next loop over the file: it is due `loop_delay` after the last packet of
    /// this one (after one packet interval for the rate modes, so the rate holds across).
    pub fn next_loop(&mut self) {
        let interval: u128 = match self.cfg.timing {
            Timing::Pps(pps) if pps.is_finite() && pps > 0.0 => (NS / pps) as u128,
            Timing::Mbps(mbps) if mbps.is_finite() && mbps > 0.0 && self.packets > 0 => {
                // The last frame's own transmission time at the rate.
                let per_packet_bits = self.bits as f64 / self.packets as f64;
                (per_packet_bits * NS / (mbps * 1e6)) as u128
            }
            _ => 0,
        };
        let started = self.packets > 0;
        self.loop_base_ns = if started {
            self.last_offset_ns + interval + self.cfg.loop_delay.as_nanos()
        } else {
            self.loop_base_ns + self.cfg.loop_delay.as_nanos()
        };
        self.recorded_ns = 0;
        self.last_ts = None;
        self.packets = 0;
        self.bits = 0;
    }
}

fn duration_from_ns(ns: u128) -> Duration {
    let secs = (ns / 1_000_000_000).min(u64::MAX as u128) as u64;
    Duration::new(secs, (ns % 1_000_000_000) as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(v: u64) -> Duration {
        Duration::from_millis(v)
    }
    fn us(v: u64) -> Duration {
        Duration::from_micros(v)
    }

    fn run(cfg: ScheduleConfig, pkts: &[(Duration, usize)]) -> Vec<Duration> {
        let mut s = Schedule::new(cfg);
        pkts.iter().map(|&(ts, len)| s.next(ts, len)).collect()
    }

    fn timing(t: Timing) -> ScheduleConfig {
        ScheduleConfig {
            timing: t,
            ..Default::default()
        }
    }

    const BASE: Duration = Duration::from_secs(1_700_000_000);

    #[test]
    fn as_recorded_keeps_gaps_from_the_first_packet() {
        let pkts = [(BASE, 60), (BASE + ms(10), 60), (BASE + ms(25), 60)];
        assert_eq!(
            run(timing(Timing::AsRecorded), &pkts),
            vec![ms(0), ms(10), ms(25)]
        );
    }

    #[test]
    fn multiplier_scales_gaps() {
        let pkts = [(BASE, 60), (BASE + ms(10), 60), (BASE + ms(25), 60)];
        assert_eq!(
            run(timing(Timing::Multiplier(2.0)), &pkts),
            vec![ms(0), ms(5), us(12_500)]
        );
        assert_eq!(
            run(timing(Timing::Multiplier(0.5)), &pkts),
            vec![ms(0), ms(20), ms(50)]
        );
    }

    #[test]
    fn no_drift_over_many_packets() {
        // 1/3 ms gaps cannot be represented exactly; the offset of packet n is still exact.
        let gap = Duration::from_nanos(333_333);
        let pkts: Vec<_> = (0..30_000u32).map(|i| (BASE + gap * i, 100)).collect();
        let out = run(timing(Timing::Multiplier(3.0)), &pkts);
        assert_eq!(out[29_999], Duration::from_nanos(333_333 * 29_999 / 3));
    }

    #[test]
    fn out_of_order_timestamps_do_not_stall() {
        let pkts = [
            (BASE + ms(10), 60),
            (BASE, 60), // earlier than the one before: due at once
            (BASE + ms(5), 60),
            (BASE + ms(20), 60),
        ];
        assert_eq!(
            run(timing(Timing::AsRecorded), &pkts),
            vec![ms(0), ms(0), ms(0), ms(10)]
        );
    }

    #[test]
    fn max_sleep_caps_scaled_gaps() {
        let cfg = ScheduleConfig {
            timing: Timing::Multiplier(2.0),
            max_sleep: Some(ms(100)),
            loop_delay: Duration::ZERO,
        };
        let pkts = [
            (BASE, 60),
            (BASE + ms(100), 60),                 // 50 ms after scaling: kept
            (BASE + Duration::from_secs(60), 60), // 30 s after scaling: capped at 100 ms
            (BASE + Duration::from_secs(60) + ms(10), 60),
        ];
        assert_eq!(run(cfg, &pkts), vec![ms(0), ms(50), ms(150), ms(155)]);
    }

    #[test]
    fn pps_ignores_timestamps() {
        let pkts = [(BASE, 60), (BASE + ms(999), 60), (BASE, 1500), (BASE, 60)];
        assert_eq!(
            run(timing(Timing::Pps(1000.0)), &pkts),
            vec![ms(0), ms(1), ms(2), ms(3)]
        );
    }

    #[test]
    fn mbps_spaces_by_size() {
        // 1 Mbps: a 125-byte frame takes 1 ms, a 1250-byte frame 10 ms.
        let pkts = [(BASE, 125), (BASE, 1250), (BASE, 125), (BASE, 125)];
        assert_eq!(
            run(timing(Timing::Mbps(1.0)), &pkts),
            vec![ms(0), ms(1), ms(11), ms(12)]
        );
    }

    #[test]
    fn top_speed_is_always_due() {
        let pkts = [(BASE, 60), (BASE + ms(500), 60)];
        assert_eq!(run(timing(Timing::TopSpeed), &pkts), vec![ms(0), ms(0)]);
    }

    #[test]
    fn loops_follow_each_other_with_the_delay() {
        let cfg = ScheduleConfig {
            timing: Timing::AsRecorded,
            max_sleep: None,
            loop_delay: ms(100),
        };
        let mut s = Schedule::new(cfg);
        assert_eq!(s.next(BASE, 60), ms(0));
        assert_eq!(s.next(BASE + ms(30), 60), ms(30));
        s.next_loop();
        assert_eq!(s.next(BASE, 60), ms(130));
        assert_eq!(s.next(BASE + ms(30), 60), ms(160));

        let mut p = Schedule::new(ScheduleConfig {
            timing: Timing::Pps(100.0),
            max_sleep: None,
            loop_delay: Duration::ZERO,
        });
        assert_eq!(p.next(BASE, 60), ms(0));
        assert_eq!(p.next(BASE, 60), ms(10));
        p.next_loop();
        assert_eq!(p.next(BASE, 60), ms(20));

        let mut t = Schedule::new(ScheduleConfig {
            timing: Timing::TopSpeed,
            max_sleep: None,
            loop_delay: ms(5),
        });
        t.next(BASE, 60);
        t.next_loop();
        assert_eq!(t.next(BASE, 60), ms(5));
    }
}
