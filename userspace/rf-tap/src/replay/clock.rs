//! The replay clock: `CLOCK_MONOTONIC`, waiting by sleeping most of the way and spinning
//! the rest, so a frame leaves within microseconds of its instant.

use std::{
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use rf_tap_engine::replay::player::Clock;

/// Below this much time left, spin instead of sleeping (covers the kernel's wake-up latency).
const SPIN: Duration = Duration::from_micros(150);
/// Longest single sleep, so a stop request is noticed.
const MAX_NAP: Duration = Duration::from_millis(50);

pub struct MonotonicClock {
    origin: Instant,
    stop: Arc<AtomicBool>,
}

impl MonotonicClock {
    /// `stop` cuts a wait short (Ctrl-C during a long gap).
    pub fn new(stop: Arc<AtomicBool>) -> Self {
        // Timer slack defaults to 50 µs; 1 ns makes sleeps end when asked.
        // SAFETY: prctl(PR_SET_TIMERSLACK) takes a plain integer and affects this thread only.
        unsafe {
            libc::prctl(libc::PR_SET_TIMERSLACK, 1 as libc::c_ulong, 0, 0, 0);
        }
        Self {
            origin: Instant::now(),
            stop,
        }
    }
}

impl Clock for MonotonicClock {
    fn now(&mut self) -> Duration {
        self.origin.elapsed()
    }

    fn wait_until(&mut self, t: Duration) {
        loop {
            let now = self.origin.elapsed();
            if now >= t || self.stop.load(Ordering::Relaxed) {
                return;
            }
            let left = t - now;
            if left > SPIN {
                std::thread::sleep((left - SPIN).min(MAX_NAP));
            } else {
                std::hint::spin_loop();
            }
        }
    }
}
