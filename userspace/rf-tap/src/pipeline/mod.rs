//! The exchange pipeline of the binary: frames from a file or a live capture → the engine
//! (single, or sharded by connection) → events → sinks behind one trait ([`sinks::Sink`]).
pub mod file;
pub mod live;
pub mod sinks;
