//! `rf-tap replay`: packets re-emitted onto an interface or into a file ([`packet`]), or HTTP
//! requests sent to a new version of a service and compared with production's responses
//! ([`http`]); `replay diff` ([`diff`]) reads the saved results ([`results`]).
//!
//! Each mode has its own argument type. Packet-only options given with `--target` are refused
//! by looking at which of [`packet::PacketArgs`]'s own arguments were on the command line, so
//! an option added there is covered without a list to keep.

pub mod diff;
pub mod http;
pub mod packet;
pub mod plan;
pub mod results;

use std::{path::PathBuf, process::ExitCode, time::Duration};

use anyhow::bail;
use clap::{parser::ValueSource, ArgMatches, Args};

use crate::cli::units::parse_duration;

#[derive(Debug, Args)]
#[command(
    group = clap::ArgGroup::new("http_mode").args(["target", "plan"]).multiple(false),
    args_conflicts_with_subcommands = true,
    subcommand_negates_reqs = true,
    after_help = "\
Two levels: packets re-emitted onto an interface (--iface, or -w FILE), or HTTP exchanges sent
to a new version of a service (--target URL) and compared with production's responses.

Timing: as recorded by default; --speed 2x halves every gap, --pps/--mbps pace at a fixed rate,
--topspeed sends as fast as the interface takes them. The schedule is anchored to the start
instant (no drift), with a sleep-then-spin wait for microsecond accuracy.

Rewriting (checksums fixed): --srcipmap/--dstipmap 10.0.0.0/24:192.168.1.0/24 (host bits
kept), --portmap 80:8080, --enet-smac/--enet-dmac, --vlan-add ID[:PCP] / --vlan-strip,
--unique-ip (addresses shifted on each loop), --fixlen pad|trim|skip for snaplen-cut frames.

Selection: --direction client|server replays one side of each connection (the client is the
sender of the SYN, else the endpoint with the higher port); --rule/--filter/--port take the
same rules as `attach`, with client-to-server packets as `ingress`.

Examples:
  sudo rf-tap replay web.pcap --iface veth0 --speed 2x
  sudo rf-tap replay web.pcap --iface veth0 --topspeed --loop 10 --unique-ip
  rf-tap replay web.pcap -w shifted.pcap --dstipmap 10.0.0.0/24:10.1.0.0/24 --portmap 80:8080
  rf-tap replay capture.rfcap --target http://staging:8080 --speed 2x --concurrency 100
  rf-tap replay capture.pcap --target http://staging:8080 --topspeed --fail-if 'diff_rate>1%'
  rf-tap replay diff capture.rfcap --show 5

Damaged input (a torn or corrupt capture or archive): everything readable is used, a warning
names where the damage is, and the exit status is 1; --strict refuses it before anything is
done."
)]
pub struct ReplayArgs {
    #[command(subcommand)]
    pub command: Option<ReplayCommand>,

    /// Capture to replay: pcap or pcapng (packets or HTTP), or .rfcap (HTTP, with --target)
    #[arg(required_unless_present = "plan")]
    pub input: Option<PathBuf>,

    /// Run a replay plan (YAML): mocks of the dependencies from captured outbound traffic,
    /// a readiness check, the inbound traffic replayed against the target, quality gates
    #[arg(long, value_name = "FILE", conflicts_with_all = ["input", "target"])]
    pub plan: Option<PathBuf>,

    /// Replay at N times the recorded speed (2x, 0.5x, 2)
    #[arg(long, visible_alias = "multiplier", value_name = "FACTOR", value_parser = parse_speed,
          group = "timing")]
    pub speed: Option<f64>,

    /// Send as fast as possible
    #[arg(long, group = "timing")]
    pub topspeed: bool,

    /// Stop after sending N packets (N requests with --target)
    #[arg(long, value_name = "N")]
    pub limit: Option<u64>,

    /// Stop after this long
    #[arg(long, value_parser = parse_duration)]
    pub duration: Option<Duration>,

    /// Print the report as one JSON object on standard output
    #[arg(long)]
    pub json: bool,

    /// Refuse damaged input (a torn or corrupt capture or archive) before sending anything
    #[arg(long)]
    pub strict: bool,

    /// No progress line
    #[arg(short, long)]
    pub quiet: bool,

    #[command(flatten)]
    pub packet: packet::PacketArgs,

    #[command(flatten)]
    pub http: http::HttpArgs,
}

#[derive(Debug, clap::Subcommand)]
pub enum ReplayCommand {
    /// Show the responses that differed from production in the last HTTP replay of FILE
    Diff(diff::DiffArgs),
}

fn parse_speed(s: &str) -> Result<f64, String> {
    let t = s.trim().trim_end_matches(['x', 'X']);
    match t.parse::<f64>() {
        Ok(v) if v.is_finite() && v > 0.0 => Ok(v),
        _ => Err(format!(
            "`{s}` is not a speed factor above 0 (e.g. 2x, 0.5x)"
        )),
    }
}

/// The first packet-replay option given on the command line, as `--name`.
fn packet_option_given(m: &ArgMatches) -> Option<String> {
    let cmd = <packet::PacketArgs as Args>::augment_args(clap::Command::new("packet"));
    let given = cmd
        .get_arguments()
        .find(|a| m.value_source(a.get_id().as_str()) == Some(ValueSource::CommandLine))
        .map(|a| match a.get_long() {
            Some(l) => format!("--{l}"),
            None => a.get_id().to_string(),
        });
    given
}

/// `matches`: the `replay` subcommand's own (None when not parsed from a command line).
pub fn run(args: ReplayArgs, matches: Option<&ArgMatches>) -> anyhow::Result<ExitCode> {
    if let Some(ReplayCommand::Diff(d)) = args.command {
        return diff::run(d);
    }
    if args.plan.is_some() {
        return http::run_plan(args);
    }
    if args.http.target.is_some() {
        if let Some(flag) = matches.and_then(packet_option_given) {
            bail!(
                "{flag} applies to packet replay (--iface/-w), not to an HTTP replay with --target"
            );
        }
        return http::run(args);
    }
    packet::run(args)
}

/// The `replay` subcommand's matches within a whole command line.
pub fn matches_of(root: &ArgMatches) -> Option<&ArgMatches> {
    root.subcommand_matches("replay")
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory as _;

    fn replay_matches(args: &[&str]) -> ArgMatches {
        let mut argv = vec!["rf-tap", "replay"];
        argv.extend_from_slice(args);
        let root = crate::cli::Cli::command().get_matches_from(argv);
        matches_of(&root).cloned().expect("replay matches")
    }

    #[test]
    fn every_packet_option_is_refused_with_target_and_none_else() {
        let cmd = <packet::PacketArgs as Args>::augment_args(clap::Command::new("packet"));
        let mut seen = 0;
        for a in cmd.get_arguments() {
            let Some(long) = a.get_long() else { continue };
            // A value each option accepts.
            let value = match long {
                "iface" | "write" => continue, // clap refuses these with --target itself
                "backend" => Some("af-xdp"),
                "srcipmap" | "dstipmap" => Some("10.0.0.0/24:10.1.0.0/24"),
                "portmap" => Some("80:8080"),
                "enet-smac" | "enet-dmac" => Some("02:00:00:00:00:01"),
                "vlan-add" => Some("5"),
                "fixlen" => Some("pad"),
                "direction" => Some("client"),
                "pps" | "mbps" | "loop" => Some("2"),
                "loop-delay" | "max-sleep" => Some("1s"),
                "rule" => Some("num=1,action=accept,proto=tcp"),
                "filter" => Some("/dev/null"),
                "port" => Some("80"),
                _ if a.get_action().takes_values() => Some("1"),
                _ => None,
            };
            let flag = format!("--{long}");
            let mut args = vec!["c.pcap", "--target", "http://127.0.0.1:9", flag.as_str()];
            args.extend(value);
            let m = replay_matches(&args);
            assert_eq!(
                packet_option_given(&m).as_deref(),
                Some(flag.as_str()),
                "{args:?}"
            );
            seen += 1;
        }
        assert!(seen >= 15, "only {seen} packet options found");
        // Shared and HTTP options are not packet options, nor are defaults.
        let m = replay_matches(&[
            "c.pcap",
            "--target",
            "http://127.0.0.1:9",
            "--speed",
            "2x",
            "--concurrency",
            "4",
        ]);
        assert_eq!(packet_option_given(&m), None);
    }
}
