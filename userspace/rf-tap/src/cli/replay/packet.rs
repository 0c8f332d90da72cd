//! `rf-tap replay FILE.pcap --iface IF`: re-emit a capture's packets with tcpreplay-class
//! timing, rewritten for the target network.

use std::{
    io::{IsTerminal, Write as _},
    path::PathBuf,
    process::ExitCode,
    sync::{atomic::Ordering, Arc},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use anyhow::{bail, Context as _};
use clap::{Args, ValueEnum};
use rf_tap_engine::{
    pcap::{reader::CaptureReader, CaptureFormat, FrameEncoder, InterfaceInfo},
    replay::{
        player::{Player, PlayerConfig, ReplayStats, Stop},
        rewrite::{
            checksums_left_to_nic, Fixlen, IpMap, RewriteConfig, RewriteStats, Rewriter,
            Unsendable, VlanEdit,
        },
        schedule::{ScheduleConfig, Timing},
        select::{Selector, Side},
    },
};
use serde::Serialize;

use super::ReplayArgs;
use crate::{
    cli::{rules::FilterArgs, units::parse_duration},
    replay::{
        af_packet::AfPacketSink, af_xdp::AfXdpSink, clock::MonotonicClock, file_sink::PcapFileSink,
        interface, Backend as ReplayBackend,
    },
    report::summary::StatusLine,
    sink::capture_file::{CaptureFileSink, OutputTarget, Rotation},
};

#[derive(Debug, Args)]
#[command(next_help_heading = "Packet replay (--iface, -w)")]
pub struct PacketArgs {
    /// Interface to send on
    #[arg(
        short = 'i',
        long,
        value_name = "IFACE",
        required_unless_present_any = ["write", "target", "plan"],
        conflicts_with_all = ["write", "target"]
    )]
    pub iface: Option<String>,

    /// Write the frames to a pcap file instead, stamped with their scheduled instants
    #[arg(short = 'w', long, value_name = "FILE", conflicts_with = "target")]
    pub write: Option<PathBuf>,

    /// Send backend for --iface
    #[arg(long, value_enum, default_value_t = Backend::AfPacket)]
    pub backend: Backend,

    /// AF_PACKET: hand frames straight to the driver, past qdiscs and egress hooks
    #[arg(long)]
    pub qdisc_bypass: bool,

    /// Send N packets per second
    #[arg(long, value_name = "N", group = "timing")]
    pub pps: Option<f64>,

    /// Send at N megabits per second
    #[arg(long, value_name = "N", group = "timing")]
    pub mbps: Option<f64>,

    /// Pass over the file N times (0: until stopped)
    #[arg(long = "loop", value_name = "N", default_value_t = 1)]
    pub loops: u64,

    /// Pause between loops (e.g. 500ms, 2s)
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub loop_delay: Option<Duration>,

    /// Longest wait between two packets (longer gaps are cut to it)
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub max_sleep: Option<Duration>,

    /// Map source addresses CIDR:CIDR (repeatable, or comma-separated)
    #[arg(long, value_name = "MAP", value_delimiter = ',')]
    pub srcipmap: Vec<IpMap>,

    /// Map destination addresses CIDR:CIDR (repeatable, or comma-separated)
    #[arg(long, value_name = "MAP", value_delimiter = ',')]
    pub dstipmap: Vec<IpMap>,

    /// Map TCP/UDP ports FROM:TO in both source and destination (repeatable, or comma-separated)
    #[arg(long, value_name = "FROM:TO", value_delimiter = ',', value_parser = parse_portmap)]
    pub portmap: Vec<(u16, u16)>,

    /// Set the source MAC address
    #[arg(long, value_name = "MAC", value_parser = parse_mac)]
    pub enet_smac: Option<[u8; 6]>,

    /// Set the destination MAC address
    #[arg(long, value_name = "MAC", value_parser = parse_mac)]
    pub enet_dmac: Option<[u8; 6]>,

    /// Push an 802.1Q tag ID[:PCP]
    #[arg(long, value_name = "ID[:PCP]", value_parser = parse_vlan, conflicts_with = "vlan_strip")]
    pub vlan_add: Option<(u16, u8)>,

    /// Remove VLAN tags
    #[arg(long)]
    pub vlan_strip: bool,

    /// Shift IP addresses on every loop so each pass makes new flows
    #[arg(long)]
    pub unique_ip: bool,

    /// Frames cut by the capture's snaplen: pad to the original length, trim the IP length to
    /// the captured bytes, or skip them (default: sent as captured, counted)
    #[arg(long, value_enum)]
    pub fixlen: Option<FixlenArg>,

    /// Recompute IP/TCP/UDP checksums even when nothing else is rewritten (with --iface this
    /// is the default for a capture whose checksums were left to the NIC)
    #[arg(long)]
    pub fixcsum: bool,

    /// With --iface, send the checksums as captured even when they were left to the NIC
    /// (the receiver drops such packets)
    #[arg(long, conflicts_with = "fixcsum")]
    pub keep_checksums: bool,

    /// Replay only the packets sent by this side of each connection
    #[arg(long, value_enum)]
    pub direction: Option<SideArg>,

    #[command(flatten)]
    pub filter: FilterArgs,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Backend {
    /// Raw packet socket, batched with sendmmsg
    AfPacket,
    /// XDP socket TX ring (zero-copy where the driver has it, copy mode otherwise)
    AfXdp,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum FixlenArg {
    Pad,
    Trim,
    Skip,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum SideArg {
    Client,
    Server,
}

fn parse_portmap(s: &str) -> Result<(u16, u16), String> {
    let (a, b) = s
        .split_once(':')
        .ok_or_else(|| format!("`{s}` is not FROM:TO (e.g. 80:8080)"))?;
    let p = |x: &str| {
        x.trim()
            .parse::<u16>()
            .map_err(|_| format!("`{x}` is not a port"))
    };
    Ok((p(a)?, p(b)?))
}

fn parse_mac(s: &str) -> Result<[u8; 6], String> {
    let parts: Vec<&str> = s.split([':', '-']).collect();
    if parts.len() != 6 {
        return Err(format!("`{s}` is not a MAC address (aa:bb:cc:dd:ee:ff)"));
    }
    let mut mac = [0u8; 6];
    for (m, p) in mac.iter_mut().zip(parts) {
        *m = u8::from_str_radix(p, 16)
            .map_err(|_| format!("`{s}` is not a MAC address (aa:bb:cc:dd:ee:ff)"))?;
    }
    Ok(mac)
}

fn parse_vlan(s: &str) -> Result<(u16, u8), String> {
    let (id, pcp) = s.split_once(':').unwrap_or((s, "0"));
    let id: u16 = id
        .parse()
        .ok()
        .filter(|v| (1..=4094).contains(v))
        .ok_or_else(|| format!("VLAN id `{id}` must be 1..=4094"))?;
    let pcp: u8 = pcp
        .parse()
        .ok()
        .filter(|v| *v <= 7)
        .ok_or_else(|| format!("VLAN priority `{pcp}` must be 0..=7"))?;
    Ok((id, pcp))
}

fn timing(args: &ReplayArgs) -> anyhow::Result<Timing> {
    {
        let rate_ok = |v: f64, what: &str| -> anyhow::Result<f64> {
            if v.is_finite() && v > 0.0 {
                Ok(v)
            } else {
                bail!("--{what} must be a number above 0")
            }
        };
        Ok(
            match (args.speed, args.packet.pps, args.packet.mbps, args.topspeed) {
                (Some(m), ..) => Timing::Multiplier(m),
                (_, Some(p), ..) => Timing::Pps(rate_ok(p, "pps")?),
                (_, _, Some(m), _) => Timing::Mbps(rate_ok(m, "mbps")?),
                (.., true) => Timing::TopSpeed,
                _ => Timing::AsRecorded,
            },
        )
    }
}

impl PacketArgs {
    fn rewrite(&self) -> RewriteConfig {
        RewriteConfig {
            src_ip_maps: self.srcipmap.clone(),
            dst_ip_maps: self.dstipmap.clone(),
            port_maps: self.portmap.clone(),
            smac: self.enet_smac,
            dmac: self.enet_dmac,
            vlan: match (self.vlan_add, self.vlan_strip) {
                (Some((id, pcp)), _) => VlanEdit::Add { id, pcp },
                (None, true) => VlanEdit::Strip,
                _ => VlanEdit::Keep,
            },
            unique_ip: self.unique_ip,
            fixlen: self.fixlen.map(|f| match f {
                FixlenArg::Pad => Fixlen::Pad,
                FixlenArg::Trim => Fixlen::Trim,
                FixlenArg::Skip => Fixlen::Skip,
            }),
            fix_checksums: self.fixcsum,
        }
    }
}

/// What the replay did, as printed at the end (`--json`: this object).
#[derive(Debug, Serialize)]
pub struct ReplayReport {
    pub input: String,
    pub output: String,
    pub packets: u64,
    pub bytes: u64,
    pub elapsed_s: f64,
    pub pps: f64,
    pub mbps: f64,
    /// Frames sent more than 100 µs after their instant (timed modes).
    pub late: u64,
    pub p50_late_us: u64,
    pub p99_late_us: u64,
    pub max_late_us: u64,
    /// Frames the backend refused.
    pub errors: u64,
    pub error_kinds: Vec<(String, u64)>,
    /// Times a full device queue made the sender wait.
    pub retried: u64,
    pub loops: u64,
    /// Frames left out by --direction or the rules.
    pub filtered: u64,
    pub rewrite: RewriteStats,
    /// Why the replay ended: end, limit, duration, signal, error.
    pub stopped: &'static str,
    /// Where reading the file stopped early, when it did.
    pub file_error: Option<String>,
}

fn stop_words(s: Option<Stop>, signal: bool) -> &'static str {
    match (signal, s) {
        (true, _) => "signal",
        (_, Some(Stop::Limit)) => "limit",
        (_, Some(Stop::Duration)) => "duration",
        _ => "end",
    }
}

pub fn run(args: ReplayArgs) -> anyhow::Result<ExitCode> {
    let Some(input_path) = args.input.clone() else {
        bail!("give the capture to replay");
    };
    let timing = timing(&args)?;
    let rules = args.packet.filter.rule_set()?;
    let map = crate::cli::mapped::open(&input_path)?;
    if args.strict {
        crate::cli::mapped::refuse_damaged(&input_path, &map)?;
    }
    let input = input_path.display().to_string();
    let mut probe = CaptureReader::new(&map).with_context(|| input.clone())?;
    match probe.next() {
        None => bail!("{input}: the capture holds no packets"),
        Some(Err(e)) => bail!("{input}: {e}; nothing to replay"),
        Some(Ok(f)) if !Rewriter::supports_link(f.linktype) => bail!(
            "{input}: link type {} cannot be replayed onto Ethernet (supported: Ethernet, raw IP, \
             BSD loopback, Linux SLL/SLL2)",
            f.linktype
        ),
        Some(Ok(_)) => {}
    }

    let stop = crate::cli::stop_on_signals()?;

    let (sink, output): (ReplayBackend, String) = match (&args.packet.iface, &args.packet.write) {
        (Some(iface), _) => {
            let st = interface::inspect(iface)?;
            if st.operstate == "down" || st.operstate == "lowerlayerdown" {
                eprintln!(
                    "rf-tap: warning: {iface} has no carrier ({}); the kernel will drop what is sent",
                    st.operstate
                );
            }
            let denied = |e: &std::io::Error| e.raw_os_error() == Some(libc::EPERM);
            let sink = match args.packet.backend {
                Backend::AfPacket => ReplayBackend::Packet(
                    AfPacketSink::open(st.ifindex, st.mtu, args.packet.qdisc_bypass).map_err(|e| {
                        if denied(&e) {
                            anyhow::anyhow!(
                                "sending on {iface} needs CAP_NET_RAW (run as root, or `sudo rf-tap replay ...`)"
                            )
                        } else {
                            anyhow::anyhow!("cannot open a packet socket on {iface}: {e}")
                        }
                    })?,
                ),
                Backend::AfXdp => {
                    ReplayBackend::Xdp(Box::new(AfXdpSink::open(st.ifindex, st.mtu).map_err(|e| {
                        if denied(&e) {
                            anyhow::anyhow!(
                                "AF_XDP on {iface} needs CAP_NET_RAW and CAP_NET_ADMIN (run as root)"
                            )
                        } else {
                            anyhow::anyhow!(
                                "cannot open an AF_XDP socket on {iface} queue 0: {e} (is AF_XDP \
                                 enabled in this kernel? --backend af-packet works everywhere)"
                            )
                        }
                    })?))
                }
            };
            (sink, iface.clone())
        }
        (None, Some(path)) => {
            let encoder = FrameEncoder::new(
                CaptureFormat::Pcap,
                InterfaceInfo {
                    name: "replay".into(),
                    linktype: pcap_file::DataLink::ETHERNET,
                    snaplen: 262_144,
                },
            );
            let file = CaptureFileSink::open(
                encoder,
                OutputTarget::File(path.clone()),
                Rotation::default(),
            )?;
            let wall_start = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap_or_default();
            (
                ReplayBackend::File(Box::new(PcapFileSink { file, wall_start })),
                path.display().to_string(),
            )
        }
        (None, None) => bail!("give --iface IFACE to send on, or -w FILE to write a pcap"),
    };

    let mut rewrite = args.packet.rewrite();
    if args.packet.iface.is_some() && !rewrite.fix_checksums && !args.packet.keep_checksums {
        // A capture taken where the NIC computes checksums holds wrong ones for the packets
        // the host sent; sent as they are, the receiver drops them. Look at the first frames.
        let (mut looked, mut bad) = (0u32, 0u32);
        for f in CaptureReader::new(&map)
            .with_context(|| input.clone())?
            .take(1000)
        {
            let Ok(f) = f else { break };
            looked += 1;
            if checksums_left_to_nic(f.linktype, f.data, f.orig_len) {
                bad += 1;
            }
        }
        if bad > 0 {
            rewrite.fix_checksums = true;
            eprintln!(
                "rf-tap: {input}: {bad} of the first {looked} frames carry checksums left to the \
                 NIC (offload); fixing them (--keep-checksums sends them as captured)"
            );
        }
    }
    let mut rewriter = Rewriter::new(rewrite);
    let mut selector = Selector::new(
        args.packet.filter.given().then_some(&rules),
        args.packet.direction.map(|d| match d {
            SideArg::Client => Side::Client,
            SideArg::Server => Side::Server,
        }),
    );
    let cfg = PlayerConfig {
        schedule: ScheduleConfig {
            timing,
            max_sleep: args.packet.max_sleep,
            loop_delay: args.packet.loop_delay.unwrap_or_default(),
        },
        limit: args.limit,
        duration: args.duration,
        // AF_XDP queues a whole batch with one ring update and one kick.
        batch_size: if args.packet.backend == Backend::AfXdp && args.packet.iface.is_some() {
            256
        } else {
            64
        },
    };
    let mut player = Player::new(cfg, MonotonicClock::new(Arc::clone(&stop)), sink);
    let mut progress = StatusLine::new(!args.quiet && std::io::stderr().is_terminal());
    let mut filtered = 0u64;
    let mut file_error = None;
    let mut stop_reason = None;
    let mut loop_index = 0u64;
    'passes: loop {
        let reader = CaptureReader::new(&map).with_context(|| input.clone())?;
        for item in reader {
            let frame = match item {
                Ok(f) => f,
                Err(e) => {
                    file_error.get_or_insert_with(|| e.to_string());
                    break;
                }
            };
            if stop.load(Ordering::Relaxed) {
                break 'passes;
            }
            if !selector.keep(frame.linktype, frame.data, frame.orig_len) {
                filtered += 1;
                continue;
            }
            let r = player.offer(frame.ts, |buf| {
                match rewriter.apply(frame.linktype, frame.data, frame.orig_len, loop_index, buf) {
                    Ok(()) => true,
                    Err(Unsendable::Truncated) | Err(Unsendable::UnsupportedLink(_)) => false,
                }
            });
            match r {
                Ok(None) => {}
                Ok(Some(s)) => {
                    stop_reason = Some(s);
                    break 'passes;
                }
                Err(e) => {
                    let (_, stats, _) = player.finish();
                    progress.clear();
                    bail!(
                        "sending to {output} failed after {} packets: {e}",
                        stats.packets
                    );
                }
            }
            if progress.due() {
                let elapsed = player.elapsed();
                progress.draw(&progress_text(elapsed, player.stats(), loop_index + 1));
            }
        }
        loop_index += 1;
        if (args.packet.loops != 0 && loop_index >= args.packet.loops)
            || stop.load(Ordering::Relaxed)
        {
            break;
        }
        player.next_loop();
    }
    let (res, stats, mut sink) = player.finish();
    progress.clear();
    res.with_context(|| format!("sending to {output}"))?;
    let error_kinds = sink.error_kinds();
    let report = build_report(
        input,
        output,
        &stats,
        error_kinds,
        filtered,
        rewriter.stats,
        stop_words(stop_reason, stop.load(Ordering::Relaxed)),
        file_error,
    );
    if let Some(e) = &report.file_error {
        eprintln!(
            "rf-tap: warning: {}: reading stopped early: {e}",
            report.input
        );
    }
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        print!("{}", report_table(&report));
    }
    let _ = std::io::stdout().flush();
    if report.packets == 0 {
        eprintln!("rf-tap: nothing was sent");
        return Ok(ExitCode::FAILURE);
    }
    if report.file_error.is_some() {
        // Everything readable was replayed; the status says the input was damaged.
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::SUCCESS)
}

#[allow(clippy::too_many_arguments)]
fn build_report(
    input: String,
    output: String,
    s: &ReplayStats,
    error_kinds: Vec<(String, u64)>,
    filtered: u64,
    rewrite: RewriteStats,
    stopped: &'static str,
    file_error: Option<String>,
) -> ReplayReport {
    let secs = s.elapsed.as_secs_f64();
    let rate = |v: f64| if secs > 0.0 { v / secs } else { 0.0 };
    ReplayReport {
        input,
        output,
        packets: s.packets,
        bytes: s.bytes,
        elapsed_s: secs,
        pps: rate(s.packets as f64),
        mbps: rate(s.bytes as f64 * 8.0) / 1e6,
        late: s.late,
        p50_late_us: s.lateness.quantile(0.5),
        p99_late_us: s.lateness.quantile(0.99),
        max_late_us: s.lateness.max(),
        errors: s.failed,
        error_kinds,
        retried: s.retried,
        loops: s.loops,
        filtered,
        rewrite,
        stopped,
        file_error,
    }
}

fn report_table(r: &ReplayReport) -> String {
    let mut t = String::new();
    let mut row = |k: &str, v: String| t.push_str(&format!("{k:<16}{v}\n"));
    row("replayed", format!("{} → {}", r.input, r.output));
    row("packets", r.packets.to_string());
    row("bytes", r.bytes.to_string());
    row("elapsed", format!("{:.3} s", r.elapsed_s));
    row("rate", format!("{:.0} pps, {:.2} Mbps", r.pps, r.mbps));
    row(
        "lateness",
        format!(
            "p50 {} µs, p99 {} µs, max {} µs; {} late (>100 µs)",
            r.p50_late_us, r.p99_late_us, r.max_late_us, r.late
        ),
    );
    row("loops", r.loops.to_string());
    row("send errors", r.errors.to_string());
    for (kind, n) in &r.error_kinds {
        row("", format!("{n} × {kind}"));
    }
    if r.retried > 0 {
        row("queue full", format!("{} retries", r.retried));
    }
    if r.filtered > 0 {
        row("filtered out", r.filtered.to_string());
    }
    if r.rewrite.truncated > 0 {
        row(
            "snaplen-cut",
            format!(
                "{} (padded {}, trimmed {}, skipped {})",
                r.rewrite.truncated,
                r.rewrite.padded,
                r.rewrite.trimmed,
                r.rewrite.skipped_truncated
            ),
        );
    }
    if r.rewrite.checksums_fixed > 0 {
        row(
            "checksums",
            format!("{} frames fixed", r.rewrite.checksums_fixed),
        );
    }
    row("stopped", r.stopped.to_string());
    t
}

/// The packet replay's progress line.
fn progress_text(elapsed: Duration, s: &ReplayStats, pass: u64) -> String {
    let secs = elapsed.as_secs_f64().max(1e-9);
    format!(
        "{:>7.1}s  loop {}  sent {}  {:.0} pps  {:.2} Mbps  late {}  errors {}",
        secs,
        pass,
        s.packets,
        s.packets as f64 / secs,
        s.bytes as f64 * 8.0 / secs / 1e6,
        s.late,
        s.failed
    )
}
