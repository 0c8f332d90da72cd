//! What users read: the live status line, the final summary, per-packet text lines.
pub mod packet_line;
pub mod summary;
