//! The value every stage passes around: one captured packet.
use std::time::Duration;

/// Which way the packet crossed the capture point.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PacketDirection {
    Ingress,
    Egress,
}

/// One packet as captured: from the kernel ring, from a pcap file, or from a test.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CapturedPacket<'a> {
    /// Wall-clock time since the Unix epoch.
    pub ts: Duration,
    pub ifindex: u32,
    pub direction: Option<PacketDirection>,
    /// Length on the wire; `data` may be shorter (snaplen truncation).
    pub orig_len: u32,
    pub data: &'a [u8],
}
