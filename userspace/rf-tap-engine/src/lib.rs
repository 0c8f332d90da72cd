//! rf-tap's engine: the sans-IO parts of the pipeline. Nothing here needs root, a kernel
//! feature or aya; a pcap file, a live capture and a unit test drive the same code.
//!
//! frames ([`pcap::reader`]) → IP/TCP ([`wire`]) → streams ([`reassembly`], per flow in
//! [`flow`]) → HTTP exchanges ([`http`]).
pub mod analyzer;
pub mod archive;
pub mod compare;
pub mod filter;
pub mod flow;
pub mod grpc;
pub mod har;
pub mod http;
pub mod http2;
pub mod mock;
pub mod packet;
pub mod pcap;
pub mod query;
pub mod reassembly;
pub mod redact;
pub mod replay;
pub mod wire;
