//! Where captured packets go.
pub mod capture_file;
