//! Packet replay's real-world parts: the monotonic clock and the send backends behind
//! [`rf_tap_engine::replay::player::FrameSink`].
pub mod af_packet;
pub mod af_xdp;
pub mod clock;
pub mod file_sink;
pub mod http;
pub mod interface;

use std::io;

use rf_tap_engine::replay::player::{Batch, FrameSink, SendOutcome};

/// The backend chosen on the command line.
pub enum Backend {
    Packet(af_packet::AfPacketSink),
    Xdp(Box<af_xdp::AfXdpSink>),
    File(Box<file_sink::PcapFileSink>),
}

impl Backend {
    /// Kinds of send errors, with counts (file output stops at its first error instead).
    pub fn error_kinds(&mut self) -> Vec<(String, u64)> {
        match self {
            Self::Packet(s) => std::mem::take(&mut s.errors),
            Self::Xdp(s) => std::mem::take(&mut s.errors),
            Self::File(_) => Vec::new(),
        }
    }
}

impl FrameSink for Backend {
    fn send(&mut self, batch: &Batch) -> io::Result<SendOutcome> {
        match self {
            Self::Packet(s) => s.send(batch),
            Self::Xdp(s) => s.send(batch),
            Self::File(s) => s.send(batch),
        }
    }
    fn finish(&mut self) -> io::Result<()> {
        match self {
            Self::Packet(s) => s.finish(),
            Self::Xdp(s) => s.finish(),
            Self::File(s) => s.finish(),
        }
    }
}
