//! `replay -w OUT.pcap`: frames go to a pcap file, each stamped with the instant it was
//! due (replay start + scheduled offset), so a schedule can be checked without a NIC.

use std::{io, time::Duration};

use rf_tap_engine::{
    packet::CapturedPacket,
    replay::player::{Batch, FrameSink, SendOutcome},
};

use crate::sink::capture_file::CaptureFileSink;

pub struct PcapFileSink {
    pub file: CaptureFileSink,
    /// Wall-clock time of the replay's start.
    pub wall_start: Duration,
}

impl FrameSink for PcapFileSink {
    fn send(&mut self, batch: &Batch) -> io::Result<SendOutcome> {
        let mut o = SendOutcome::default();
        for (frame, due) in batch.iter() {
            let pkt = CapturedPacket {
                ts: self.wall_start + due,
                ifindex: 0,
                direction: None,
                orig_len: frame.len() as u32,
                data: frame,
            };
            self.file.write(&pkt).map_err(io::Error::other)?;
            o.sent += 1;
            o.sent_bytes += frame.len() as u64;
        }
        self.file.tick().map_err(io::Error::other)?;
        Ok(o)
    }

    fn finish(&mut self) -> io::Result<()> {
        self.file.finish().map_err(io::Error::other)
    }
}
