//! HTTP/1.x: message parsing, body framing and decoding, request/response pairing.
pub mod anomaly;
pub mod body;
pub mod exchange;
pub mod message;
