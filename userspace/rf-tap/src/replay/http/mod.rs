//! HTTP-level replay's real-world parts: the client ([`client`]: TCP, TLS, keep-alive,
//! timeouts) and the run ([`runner`]: schedule, per-connection ordering, concurrency,
//! backpressure, comparison, collection).
pub mod client;
pub mod runner;
