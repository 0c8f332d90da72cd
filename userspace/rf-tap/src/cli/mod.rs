//! The command line.
pub mod attach;
pub mod extract;
pub mod mapped;
pub mod mirror;
pub mod mock;
pub mod redaction;
pub mod replay;
pub mod requests;
pub mod rules;
pub mod session;
pub mod units;

use std::sync::{atomic::AtomicBool, Arc};

use clap::{Parser, Subcommand};

/// The signals that end a long-running command cleanly (flush, close, detach).
pub const STOP_SIGNALS: [i32; 3] = [
    signal_hook::consts::SIGINT,
    signal_hook::consts::SIGTERM,
    signal_hook::consts::SIGHUP,
];

/// A flag the [`STOP_SIGNALS`] set.
pub fn stop_on_signals() -> std::io::Result<Arc<AtomicBool>> {
    let stop = Arc::new(AtomicBool::new(false));
    for sig in STOP_SIGNALS {
        signal_hook::flag::register(sig, Arc::clone(&stop))?;
    }
    Ok(stop)
}

/// rf-tap: packet-level traffic capture, mirroring and replay.
///
/// Production traffic is copied in the kernel by eBPF programs (TC or XDP) that select,
/// truncate and sample packets without touching the production path.
#[derive(Debug, Parser)]
#[command(name = "rf-tap", version, about, long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,

    /// Permission bits of the files rf-tap creates (captures, archives, JSONL/HAR, replay
    /// results); they are private to their owner by default
    #[arg(long, global = true, value_name = "MODE", default_value = "0600",
          value_parser = crate::output::parse_mode)]
    pub file_mode: u32,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Capture packets on an interface with in-kernel filter rules, truncation and sampling
    Attach(attach::AttachArgs),
    /// Reassemble TCP, HTTP/1.x and cleartext HTTP/2 from a capture file and print the
    /// exchanges (HTTP/2 over TLS cannot be read from packets: TLS connections are counted)
    Extract(extract::ExtractArgs),
    /// List the HTTP exchanges of an .rfcap or pcap, filtered; `requests show ID FILE` for one
    Requests(requests::RequestsArgs),
    /// Re-emit a capture's packets onto an interface (or into a pcap), with tcpreplay-class
    /// timing and rewriting
    Replay(Box<replay::ReplayArgs>),
    /// Mirror sessions: copy an interface's packets in the kernel to a VXLAN target, like a
    /// VPC Traffic Mirroring session (`session create|list|delete`)
    Session(session::SessionArgs),
    /// Live shadow mirroring: send production's requests to shadow services as they happen
    /// and compare their answers with production's (`mirror start|list|stop|stats|diff`)
    Mirror(mirror::MirrorArgs),
    /// Serve a dependency from captured exchanges (a service's outbound calls), matched by
    /// request signature
    Mock(mock::MockArgs),
}
