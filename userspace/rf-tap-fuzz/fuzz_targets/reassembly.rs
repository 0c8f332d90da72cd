//! A stream of TCP segments in any order, with any overlaps, SYN/FIN/RST and acks: the
//! reassembler holds no more than its limit and delivers every stream offset at most once.
#![no_main]
use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use rf_tap_engine::reassembly::{Origin, Reassembler, StreamEvent};

const LIMIT: usize = 4096;

fuzz_target!(|data: &[u8]| {
    let mut r = Reassembler::new(LIMIT);
    // Stream position after everything delivered so far (data and gaps).
    let mut position = 0u64;
    let mut ended = false;
    let mut emit = |e: StreamEvent<'_>| {
        assert!(!ended, "an event after the stream ended");
        match e {
            StreamEvent::Data(d, _) => position += d.len() as u64,
            StreamEvent::Gap(n, _) => {
                assert!(n > 0, "an empty gap");
                position += n;
            }
            StreamEvent::Fin(_) | StreamEvent::Reset(_) => ended = true,
        }
    };
    let base = 0xffff_f000u32; // near the wrap, so sequence arithmetic wraps too
    let mut rest = data;
    let mut frame = 0;
    while rest.len() >= 5 {
        let (head, tail) = rest.split_at(5);
        let flags = head[0];
        let offset = u16::from_le_bytes([head[1], head[2]]) as u32;
        let len = (head[3] as usize).min(tail.len());
        let ack = head[4] as u32 * 64;
        let (payload, tail) = tail.split_at(len);
        rest = tail;
        frame += 1;
        let origin = Origin {
            ts: Duration::from_millis(frame),
            frame,
        };
        let seq = base.wrapping_add(offset);
        // Bit 64: the capture cut this packet, `ack`'s low byte of it missing.
        let missing = if flags & 64 != 0 {
            u32::from(head[4])
        } else {
            0
        };
        r.segment_cut(
            seq,
            flags & 1 != 0,
            flags & 2 != 0,
            flags & 4 != 0 && flags & 8 != 0,
            payload,
            missing,
            origin,
            &mut emit,
        );
        if flags & 16 != 0 {
            r.acknowledged(base.wrapping_add(1).wrapping_add(ack), origin, &mut emit);
        }
        if flags & 32 != 0 {
            r.release_held(&mut emit);
        }
        assert!(r.held_bytes() <= LIMIT, "held {} > {LIMIT}", r.held_bytes());
    }
    let origin = Origin {
        ts: Duration::from_millis(frame + 1),
        frame: frame + 1,
    };
    r.close(origin, &mut emit, false);
    assert!(r.held_bytes() == 0 || r.finished());
});
