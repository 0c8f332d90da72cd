//! pcap and pcapng: reading captures ([`reader`]) and encoding captured packets into file
//! bytes ([`FrameEncoder`]; no I/O here: the caller decides when whole records reach disk).
mod encode;
pub mod reader;
pub mod synth;

pub use encode::{CaptureFormat, FrameEncoder, InterfaceInfo};
