//! pcap and pcapng: encoding captured packets into file bytes (no I/O here: the caller
//! decides when whole records reach the disk).
mod encode;

pub use encode::{CaptureFormat, FrameEncoder, InterfaceInfo};
