//! Packet-level replay, sans IO: when each frame is due ([`schedule`]), what it looks like
//! on the target network ([`rewrite`]), which frames go ([`select`]), and the loop that
//! drives a clock and a send backend ([`player`]). The binary supplies the real clock and
//! backends (AF_PACKET, AF_XDP, pcap file).
pub mod http;
pub mod player;
pub mod rewrite;
pub mod schedule;
pub mod select;
