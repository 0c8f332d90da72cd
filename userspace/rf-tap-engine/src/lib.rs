//! rf-tap's engine: the sans-IO parts of the pipeline. Nothing here needs root, a kernel
//! feature or aya; a pcap file, a live capture and a unit test drive the same code.
pub mod filter;
pub mod packet;
pub mod pcap;
