//! `rf-tap attach IFACE`: copy packets in the kernel and write them to pcap/pcapng.

use std::{
    io::IsTerminal,
    os::fd::RawFd,
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use anyhow::bail;
use clap::Args;
use rf_tap_common::{CaptureConfig, MAX_CAPTURE, SAMPLE_SCALE};
use rf_tap_engine::{
    packet::CapturedPacket,
    pcap::{CaptureFormat, FrameEncoder, InterfaceInfo},
};

use crate::capture::ring::RingReader;
use crate::sink::capture_file::SinkError;
use crate::{
    capture::{
        self,
        af_xdp::{self, XskReceiver},
        decode_record,
        kernel::{HookMode, KernelCapture, KernelCounters, KernelSetup},
        BadRecord, ClockMap,
    },
    cli::{
        rules::FilterArgs,
        units::{parse_duration, parse_size},
    },
    pipeline::{
        live::{LiveConfig, LivePipeline},
        sinks::{self, Sink},
    },
    report::{
        packet_line::packet_line,
        summary::{CaptureSummary, DecapCounts, StatusLine, StopReason},
    },
    sink::capture_file::{CaptureFileSink, OutputTarget, Rotation},
};

#[derive(Debug, Args)]
#[command(after_help = "\
Filter rules (VPC Traffic Mirroring semantics): rules are evaluated in ascending number, the
first match decides (accept copies, reject does not), and a packet that matches no rule is not
copied. Without any rule everything is copied.
  --rule 'num=100,dir=ingress,action=accept,proto=tcp,dst-port=80-443'
  keys: num (1-32766), action (accept|reject), dir (ingress|egress|both, default both),
        proto (tcp|udp|icmp|icmpv6|sctp|all|0-255), src-cidr, dst-cidr (IPv4 or IPv6),
        src-port, dst-port (N or LO-HI)
  --filter FILE takes the same rules as YAML:  rules: [ {number: 100, action: accept, ...} ]
  --port 80-443 adds: accept TCP with either port in the range, both directions (numbered
        after the explicit rules).

Examples:
  sudo rf-tap attach eth0 --port 80-443 -w web.pcap
  sudo rf-tap attach eth0 --mode xdp -s 128 --sample-rate 10 -w sampled.pcapng --pcapng
  sudo rf-tap attach eth0 --port 443 -w - | tshark -r -
  sudo rf-tap attach sink0 --mode afxdp -w sink.pcap      a dedicated sink interface

Receiving mirrored traffic (from `rf-tap session` or a cloud mirror session):
  sudo rf-tap attach ens6 --vxlan -w inner.pcap          inner frames of every VNI
  sudo rf-tap attach ens6 --vxlan --vni 42 --port 80 --rfcap web.rfcap
  With --vxlan the kernel takes UDP to the VXLAN port, and --rule/--filter/--port apply to
  the inner frames (a mirror copy carries no direction: client->server counts as ingress).")]
pub struct AttachArgs {
    /// Interface to capture on
    pub iface: String,

    /// Hook: tc (clsact ingress and egress through TCX links), xdp (ingress only; native
    /// where the driver has it, generic otherwise), or afxdp (a dedicated sink interface:
    /// accepted packets go to AF_XDP sockets and no longer reach the kernel stack)
    #[arg(long, value_enum, default_value_t = HookMode::Tc)]
    pub mode: HookMode,

    /// With --mode afxdp: take the interface even though it has addresses of its own (the
    /// packets the rules accept are taken away from the kernel stack)
    #[arg(long)]
    pub force: bool,

    /// Write packets to FILE (`-` for standard output) instead of printing a line per packet
    #[arg(short = 'w', long = "write", value_name = "FILE")]
    pub write: Option<String>,

    /// Also reassemble TCP and HTTP live and append the exchanges to this .rfcap archive
    /// (readable while the capture runs: `rf-tap requests FILE`)
    #[arg(long, value_name = "FILE")]
    pub rfcap: Option<PathBuf>,

    /// Also write the live exchanges as JSON lines (`-` for standard output), in the
    /// contract of `rf-tap extract`; each line is written as soon as its exchange completes
    #[arg(long, value_name = "FILE")]
    pub jsonl: Option<String>,

    /// With --jsonl: also a line for each request as soon as it is complete, before its
    /// response (`"event": "request"`; exchanges then carry `"event": "exchange"`)
    #[arg(long, requires = "jsonl")]
    pub events: bool,

    /// Also write the live exchanges as a HAR 1.2 file (a whole document once the capture
    /// stops)
    #[arg(long, value_name = "FILE")]
    pub har: Option<PathBuf>,

    /// With --rfcap/--jsonl/--har: a connection with no packet for this long is closed, and
    /// its unanswered requests come out without a response (e.g. 30s, 5m)
    #[arg(long, value_name = "DURATION", value_parser = parse_duration, default_value = "300s")]
    pub flow_timeout: Duration,

    /// Threads reassembling for --rfcap/--jsonl/--har (connections are sharded across them)
    #[arg(long, value_name = "N")]
    pub workers: Option<usize>,

    /// Write pcapng (interface name and per-packet direction) instead of pcap
    #[arg(long)]
    pub pcapng: bool,

    /// Start a new file when the current one would exceed SIZE (e.g. 100M, 1G, 512KiB); files
    /// are named NAME-000.EXT, NAME-001.EXT, ...
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    pub rotate_size: Option<u64>,

    /// Start a new file every N seconds (same naming as --rotate-size)
    #[arg(long, value_name = "SECONDS", value_parser = parse_duration)]
    pub rotate_seconds: Option<Duration>,

    /// Stop after this long (e.g. 30, 30s, 5m, 1h)
    #[arg(long, value_parser = parse_duration)]
    pub duration: Option<Duration>,

    /// Stop after writing N packets
    #[arg(short = 'c', long)]
    pub count: Option<u64>,

    #[command(flatten)]
    pub filter: FilterArgs,

    /// The interface receives VXLAN-mirrored traffic: write the inner frames (RFC 7348),
    /// as if captured where they were mirrored
    #[arg(long)]
    pub vxlan: bool,

    /// With --vxlan: only this VXLAN network identifier
    #[arg(long, requires = "vxlan")]
    pub vni: Option<u32>,

    /// With --vxlan: the UDP port the VXLAN packets arrive on
    #[arg(long, requires = "vxlan", default_value_t = rf_tap_engine::wire::vxlan::VXLAN_PORT)]
    pub vxlan_port: u16,

    /// With --vxlan: write the whole encapsulated packets instead of the inner frames (still
    /// only VXLAN, of the --vni given)
    #[arg(long, requires = "vxlan")]
    pub keep_outer: bool,

    /// Copy at most N bytes of each packet (the original length is kept in the file)
    #[arg(short = 's', long = "packet-length", visible_alias = "snaplen", value_name = "N",
          default_value_t = MAX_CAPTURE)]
    pub packet_length: u32,

    /// Capture this percentage of flows (1-100; whole connections are kept or left out)
    #[arg(long, value_name = "PCT", default_value_t = 100.0)]
    pub sample_rate: f64,

    /// Kernel ring buffer size (rounded up to a power of two). A packet takes the smallest
    /// power of two (at least 64 bytes) that holds its copied bytes, plus 48 bytes of headers
    #[arg(long, value_name = "SIZE", value_parser = parse_size, default_value = "64MiB")]
    pub ring_size: u64,

    /// Scheduling niceness of the thread that empties the ring (-20..19): at the default
    /// -10 it keeps up when other processes keep every core busy, and it only runs while
    /// packets wait; 0 leaves it at the others' level (as tcpdump runs)
    #[arg(long, value_name = "N", default_value_t = -10, allow_negative_numbers = true)]
    pub reader_nice: i32,

    /// Print the final summary as one JSON object on standard output
    #[arg(long)]
    pub json: bool,

    /// No live status line
    #[arg(short, long)]
    pub quiet: bool,

    #[command(flatten)]
    pub run_as: RunAs,

    /// For --jsonl and --har (the rfcap archive keeps the original bytes)
    #[command(flatten)]
    pub redact: crate::cli::redaction::RedactArgs,
}

impl AttachArgs {
    /// Whether the live exchange pipeline runs.
    fn exchanges(&self) -> bool {
        self.rfcap.is_some() || self.jsonl.is_some() || self.har.is_some()
    }

    fn validate(&self) -> anyhow::Result<()> {
        if self.packet_length == 0 || self.packet_length > MAX_CAPTURE {
            bail!("--packet-length must be 1..={MAX_CAPTURE}");
        }
        if !(self.sample_rate > 0.0 && self.sample_rate <= 100.0) {
            bail!("--sample-rate must be a percentage above 0 and at most 100");
        }
        let to_stdout = self.write.as_deref() == Some("-");
        let jsonl_stdout = self.jsonl.as_deref() == Some("-");
        if self.json && (to_stdout || jsonl_stdout || (self.write.is_none() && !self.exchanges())) {
            bail!(
                "--json prints the summary on standard output, so it needs -w FILE, --rfcap \
                 FILE, --jsonl FILE or --har FILE"
            );
        }
        if to_stdout && jsonl_stdout {
            bail!("-w - and --jsonl - cannot both write to standard output");
        }
        if self.flow_timeout.is_zero() {
            bail!("--flow-timeout must be above 0");
        }
        if to_stdout && (self.rotate_size.is_some() || self.rotate_seconds.is_some()) {
            bail!("--rotate-size/--rotate-seconds need -w FILE, not standard output");
        }
        if self.write.is_none()
            && (self.rotate_size.is_some() || self.rotate_seconds.is_some() || self.pcapng)
        {
            bail!("--pcapng, --rotate-size and --rotate-seconds need -w FILE");
        }
        if self.rotate_seconds.is_some_and(|d| d.is_zero()) {
            bail!("--rotate-seconds must be above 0");
        }
        if self.count == Some(0) {
            bail!("--count must be at least 1");
        }
        if self.vni.is_some_and(|v| v > 0x00ff_ffff) {
            bail!("--vni must be 0..=16777215 (24 bits)");
        }
        if !(4096..=(1 << 30)).contains(&self.ring_size) {
            bail!("--ring-size must be between 4KiB and 1GiB");
        }
        if !(-20..=19).contains(&self.reader_nice) {
            bail!("--reader-nice must be between -20 and 19");
        }
        if self.force && self.mode != HookMode::Afxdp {
            bail!("--force only applies to --mode afxdp");
        }
        Ok(())
    }
}

/// How long the reader lets records accumulate after draining a non-empty ring.
const BATCH_PAUSE: Duration = Duration::from_millis(10);

/// Where packets go: a capture file, or one text line each on stdout.
enum Output {
    File(Box<CaptureFileSink>),
    Lines {
        stdout: std::io::Stdout,
    },
    /// Only the live exchanges (--rfcap/--jsonl/--har without -w).
    Nothing,
}

fn poll_readable(fds: &[RawFd], timeout: Duration) {
    let mut pfds: Vec<libc::pollfd> = fds
        .iter()
        .map(|&fd| libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        })
        .collect();
    // SAFETY: pfds is a valid array of pollfd of the given length.
    unsafe {
        libc::poll(
            pfds.as_mut_ptr(),
            pfds.len() as libc::nfds_t,
            timeout.as_millis().min(i32::MAX as u128) as i32,
        )
    };
}

/// `-Z USER`: who a command that keeps running once attached becomes (see `privs`).
#[derive(Clone, Debug, clap::Args)]
pub struct RunAs {
    /// Once attached and with its outputs open, run as this user with no capabilities (as
    /// tcpdump -Z); `-Z root` keeps root
    #[arg(
        short = 'Z',
        long = "relinquish-privileges",
        value_name = "USER",
        default_value = "nobody"
    )]
    pub user: String,
}

/// Called once the programs are attached, with the interface's name.
pub type OnAttached = Box<dyn FnOnce(&str)>;

/// What a command built on `attach` adds to it (the live mirror).
#[derive(Default)]
pub struct Extra {
    /// More sinks for the live exchange pipeline (which then runs).
    pub sinks: Vec<Box<dyn Sink + Send>>,
    /// Most of each body the live engine keeps (default: the engine's 64 KiB).
    pub keep_body: Option<usize>,
    pub on_attached: Option<OnAttached>,
    /// The longest the ring reader lets records build up after a busy drain (default 10 ms;
    /// the live mirror wants its requests sooner).
    pub max_pause: Option<Duration>,
    /// Kept up to date (about once a second) with the kernel's capture counters (the live
    /// mirror's `/metrics`).
    pub counters: Option<std::sync::Arc<std::sync::Mutex<KernelCounters>>>,
}

pub fn run(args: AttachArgs) -> anyhow::Result<std::process::ExitCode> {
    run_with(args, Extra::default())
}

pub fn run_with(args: AttachArgs, mut extra: Extra) -> anyhow::Result<std::process::ExitCode> {
    args.validate()?;
    let account = crate::privs::account(&args.run_as.user)?;
    // Where rotation will open new files once root is gone.
    let rotate_dir = args
        .write
        .as_ref()
        .filter(|_| args.rotate_size.is_some() || args.rotate_seconds.is_some())
        .map(|w| {
            Path::new(w)
                .parent()
                .filter(|p| !p.as_os_str().is_empty())
                .unwrap_or(Path::new("."))
                .to_path_buf()
        });
    let pipeline = args.exchanges() || !extra.sinks.is_empty();
    let user_rules = args.filter.rule_set()?;
    let facts = capture::interface_facts(&args.iface)?;
    // With --vxlan the kernel takes the VXLAN packets and the user's rules judge the inner
    // frames in userspace.
    let (rules, decap) = if args.vxlan {
        let outer: rf_tap_engine::filter::Rule =
            format!("num=1,action=accept,proto=udp,dst-port={}", args.vxlan_port)
                .parse()
                .map_err(|e| anyhow::anyhow!("VXLAN rule: {e}"))?;
        let selector = args
            .filter
            .given()
            .then(|| rf_tap_engine::replay::select::Selector::new(Some(&user_rules), None));
        (
            rf_tap_engine::filter::RuleSet::new(vec![outer])?,
            Some(Decap {
                port: args.vxlan_port,
                vni: args.vni,
                keep_outer: args.keep_outer,
                linktype: if facts.datalink == pcap_file::DataLink::RAW {
                    rf_tap_engine::wire::LINKTYPE_RAW
                } else {
                    rf_tap_engine::wire::LINKTYPE_ETHERNET
                },
                selector,
                counts: DecapCounts::default(),
            }),
        )
    } else {
        (user_rules, None)
    };
    capture::check_kernel(args.mode)?;
    capture::check_privileges()?;
    if args.mode == HookMode::Afxdp && !args.force {
        refuse_addressed_sink(&facts.name)?;
    }

    let output = match &args.write {
        None if pipeline => Output::Nothing,
        None => Output::Lines {
            stdout: std::io::stdout(),
        },
        Some(w) => {
            let format = if args.pcapng {
                CaptureFormat::PcapNg
            } else {
                CaptureFormat::Pcap
            };
            let inner = args.vxlan && !args.keep_outer;
            let encoder = FrameEncoder::new(
                format,
                InterfaceInfo {
                    name: facts.name.clone(),
                    linktype: if inner {
                        pcap_file::DataLink::ETHERNET
                    } else {
                        facts.datalink
                    },
                    snaplen: args.packet_length,
                },
            );
            let target = if w == "-" {
                OutputTarget::Stdout
            } else {
                OutputTarget::File(PathBuf::from(w))
            };
            let rotation = Rotation {
                max_bytes: args.rotate_size,
                max_age: args.rotate_seconds,
            };
            Output::File(Box::new(CaptureFileSink::open(encoder, target, rotation)?))
        }
    };

    let live = if pipeline {
        let linktype = if args.vxlan && !args.keep_outer {
            rf_tap_engine::wire::LINKTYPE_ETHERNET
        } else if facts.link_kind == rf_tap_common::LINK_RAW_IP {
            rf_tap_engine::wire::LINKTYPE_RAW
        } else {
            rf_tap_engine::wire::LINKTYPE_ETHERNET
        };
        let workers = args.workers.unwrap_or_else(|| {
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1)
        });
        let mut out: Vec<Box<dyn Sink + Send>> = Vec::new();
        if let Some(p) = &args.rfcap {
            out.push(Box::new(sinks::Rfcap::live(p)?));
        }
        if let Some(p) = &args.jsonl {
            out.push(Box::new(sinks::Jsonl::new(
                sinks::Text::open(p)?,
                args.events,
                args.redact.policy(),
            )));
        }
        if let Some(p) = &args.har {
            let text = sinks::Text::open(&p.to_string_lossy())?;
            out.push(Box::new(sinks::Har::new(text, args.redact.policy())?));
        }
        out.append(&mut extra.sinks);
        let config = LiveConfig {
            workers,
            linktype,
            idle_timeout: args.flow_timeout,
            keep_body: extra.keep_body,
        };
        Some(LivePipeline::start(config, out))
    } else {
        None
    };

    let stop = crate::cli::stop_on_signals()?;
    let signal = Arc::new(AtomicUsize::new(0));
    for sig in crate::cli::STOP_SIGNALS {
        signal_hook::flag::register_usize(sig, Arc::clone(&signal), sig as usize)?;
    }

    let compiled = rules.compile();
    let clock = ClockMap::now();
    let config = CaptureConfig {
        rule_count: compiled.len() as u32,
        snaplen: args.packet_length,
        sample_threshold: ((args.sample_rate / 100.0) * SAMPLE_SCALE as f64).round() as u32,
        sample_seed: rand_seed(),
        link_kind: facts.link_kind,
        _pad: 0,
        wall_offset_ns: clock.offset_ns(),
    };
    let ring_bytes = args.ring_size.next_power_of_two().max(4096) as u32;
    // AF_XDP: the sockets exist before the program that feeds them; --ring-size is their
    // buffer memory, shared out over the receive queues.
    let xsk = if args.mode == HookMode::Afxdp {
        let queues = af_xdp::rx_queue_count(&facts.name);
        let frames = (args.ring_size / 4096 / u64::from(queues)).min(1 << 16) as u32;
        Some(
            XskReceiver::open(facts.ifindex, queues, frames, args.packet_length).map_err(|e| {
                anyhow::anyhow!("cannot open AF_XDP sockets on {}: {e}", facts.name)
            })?,
        )
    } else {
        None
    };
    let xsk_fds = xsk.as_ref().map(XskReceiver::fds).unwrap_or_default();
    let (mut kernel, ring) = KernelCapture::attach(&KernelSetup {
        iface: &facts.name,
        mode: args.mode,
        rules: &compiled,
        config,
        ring_bytes: if xsk.is_some() { 4096 } else { ring_bytes },
        xsk_fds: &xsk_fds,
        loopback: facts.loopback,
    })?;
    if let Some(x) = &xsk {
        kernel.attach_detail = format!(
            "{}, AF_XDP {} mode on {} queue{}",
            kernel.attach_detail,
            x.mode(),
            x.queue_count(),
            if x.queue_count() == 1 { "" } else { "s" }
        );
    }
    let mut source = match xsk {
        Some(x) => Source::Xsk(x),
        None => Source::Ring {
            ring,
            rebuilt: Vec::new(),
        },
    };
    let started = Instant::now();
    let mut target_name = match &output {
        Output::File(s) => s.files()[0].clone(),
        Output::Lines { .. } => "standard output (text)".into(),
        Output::Nothing => String::new(),
    };
    let exchange_outputs: Vec<String> = [
        args.rfcap.as_ref().map(|p| p.display().to_string()),
        args.jsonl.as_ref().map(|p| {
            if p == "-" {
                "standard output (JSON lines)".to_string()
            } else {
                p.clone()
            }
        }),
        args.har.as_ref().map(|p| p.display().to_string()),
    ]
    .into_iter()
    .flatten()
    .collect();
    if !exchange_outputs.is_empty() {
        if !target_name.is_empty() {
            target_name.push_str(" and ");
        }
        target_name.push_str(&format!("exchanges to {}", exchange_outputs.join(", ")));
    }
    if target_name.is_empty() {
        target_name = "requests to the live mirror".into();
    }
    if let Some(f) = extra.on_attached.take() {
        f(&facts.name);
    }
    // Everything that needs root is done: the programs are attached, the rings mapped, the
    // outputs open. Rotation into a directory the user cannot write keeps CAP_DAC_OVERRIDE
    // (on this thread, which opens the files), and nothing else.
    let keep = if rotate_dir
        .as_ref()
        .is_some_and(|d| !crate::privs::can_create_in(&account, d))
    {
        1 << crate::privs::CAP_DAC_OVERRIDE
    } else {
        0
    };
    // The reader's priority, while it still may raise it (this thread alone: the live
    // pipeline's workers, started already, stay where they are).
    crate::privs::set_thread_nice(args.reader_nice)?;
    crate::privs::become_user(&account, keep)?;
    let running_as = match (account.uid, keep) {
        (0, _) => String::new(),
        (_, 0) => format!(", as {} with no capabilities", account.name),
        _ => format!(
            ", as {} with CAP_DAC_OVERRIDE only (for rotation)",
            account.name
        ),
    };
    // With no rule given, an accept-all rule is loaded: say what that means.
    let rule_words = match rules.rules().len() {
        _ if !args.filter.given() && !args.vxlan => "no rules (every packet)".to_string(),
        1 => "1 rule".to_string(),
        n => format!("{n} rules"),
    };
    eprintln!(
        "rf-tap: attached to {} ({}), {rule_words}, packet length {}{}, writing {}{running_as}; Ctrl-C to stop",
        facts.name,
        kernel.attach_detail,
        args.packet_length,
        if args.sample_rate < 100.0 {
            format!(", sampling {}% of flows", args.sample_rate)
        } else {
            String::new()
        },
        target_name,
    );

    let show_status = !args.quiet && std::io::stderr().is_terminal();
    let mut status = StatusLine::new(show_status);
    let mut last_counters = Instant::now() - Duration::from_secs(1);
    let mut summary = CaptureSummary::new(&facts.name, args.mode, &kernel.attach_detail);
    let mut stop_reason;
    let mut write_error: Option<anyhow::Error> = None;
    let fds = source.fds();
    let mut rx = Receiver {
        output,
        live,
        decap,
    };

    // Plain `-w FILE.pcap` from the ring: records go to the file as they are.
    let fast_pcap = match (&source, &rx.output) {
        (Source::Ring { .. }, Output::File(sink))
            if rx.live.is_none() && rx.decap.is_none() && args.count.is_none() =>
        {
            sink.takes_pcap_records()
        }
        _ => None,
    };
    loop {
        if stop.load(Ordering::Relaxed) {
            stop_reason = StopReason::Signal;
            break;
        }
        if let Some(d) = args.duration {
            if started.elapsed() >= d {
                stop_reason = StopReason::Duration;
                break;
            }
        }
        let timeout = args
            .duration
            .map(|d| d.saturating_sub(started.elapsed()))
            .unwrap_or(Duration::MAX)
            .min(Duration::from_millis(100));
        poll_readable(&fds, timeout);
        kernel.flush_logs();
        let mut ended: Option<(StopReason, Option<anyhow::Error>)> = None;
        let drained = if let Some(snaplen) = fast_pcap {
            source
                .drain_to_pcap(&mut rx, snaplen, &mut summary)
                .unwrap_or_else(|e| {
                    ended = Some(output_failure(e));
                    0
                })
        } else {
            source.drain(&clock, |pkt| {
                if let Err(e) = rx.deliver(pkt, &mut summary) {
                    ended = Some(output_failure(e));
                    return false;
                }
                if args.count.is_some_and(|c| summary.written >= c) {
                    ended = Some((StopReason::Count, None));
                    return false;
                }
                true
            })
        };
        if let Some((why, e)) = ended {
            stop_reason = why;
            write_error = e;
            break;
        }
        if drained > 0 {
            // Traffic is flowing: let a batch build up instead of waking per packet, for
            // no longer than a quarter of the ring (at the rate just seen) or of the AF_XDP
            // RX ring (at 1 Mpps, 1 ms is 1,000 frames) takes to fill.
            std::thread::sleep(
                extra
                    .max_pause
                    .map_or(source.pause(), |m| source.pause().min(m)),
            );
        }
        if let Output::File(s) = &mut rx.output {
            if let Err(e) = s.tick() {
                stop_reason = StopReason::WriteError;
                write_error = Some(e.into());
                break;
            }
        }
        if rx.live.as_ref().is_some_and(LivePipeline::failed) {
            // A sink failed (a full disk, a closed pipe): its error comes with finish().
            stop_reason = StopReason::WriteError;
            break;
        }
        if status.due() {
            let k = source.counters(&kernel)?;
            status.show(started.elapsed(), &k, &summary);
        }
        if let Some(shared) = &extra.counters {
            if last_counters.elapsed() >= Duration::from_secs(1) {
                last_counters = Instant::now();
                let k = source.counters(&kernel)?;
                if let Ok(mut c) = shared.lock() {
                    *c = k;
                }
            }
        }
    }

    // Detach first, so that the counters are final, then take what is still queued.
    kernel.detach();
    let take_rest = !matches!(
        stop_reason,
        StopReason::Count | StopReason::OutputClosed | StopReason::WriteError
    );
    source.drain(&clock, |pkt| {
        if !take_rest || write_error.is_some() {
            summary.over_limit += 1;
            return true;
        }
        if let Err(e) = rx.deliver(pkt, &mut summary) {
            if !is_broken_pipe(&e) {
                write_error = Some(e);
            }
            summary.over_limit += 1;
        }
        true
    });
    if let Output::File(s) = &mut rx.output {
        if let Err(e) = s.finish() {
            if write_error.is_none() && !is_broken_pipe(&anyhow::Error::from(e)) {
                write_error = Some(anyhow::anyhow!("cannot finish the capture file"));
            }
        }
        summary.bytes_written = s.bytes_written;
        summary.files = s.files().to_vec();
    }
    status.clear();
    if let Some(l) = rx.live.take() {
        let (report, failed) = l.finish();
        summary.exchanges = Some(report.exchanges);
        match failed {
            Some(sinks::SinkError::Closed) if stop_reason == StopReason::WriteError => {
                stop_reason = StopReason::OutputClosed;
            }
            Some(e @ sinks::SinkError::Write { .. }) if write_error.is_none() => {
                write_error = Some(e.into());
            }
            _ => {}
        }
    }
    if let Some(d) = &rx.decap {
        summary.vxlan = Some(d.counts);
    }
    if let Source::Xsk(x) = &source {
        summary.af_xdp = Some(x.drops());
    }
    let counters = source.counters(&kernel)?;
    summary.finish(
        counters,
        started.elapsed(),
        stop_reason,
        signal.load(Ordering::Relaxed),
    );
    if args.json {
        println!("{}", serde_json::to_string(&summary)?);
    } else {
        eprint!("{}", summary.table());
    }
    if let Some(e) = write_error {
        return Err(e);
    }
    Ok(std::process::ExitCode::SUCCESS)
}

/// How a failed write ends the capture: a closed pipe (`-w - | head`) is a normal end.
fn output_failure(e: anyhow::Error) -> (StopReason, Option<anyhow::Error>) {
    if is_broken_pipe(&e) {
        (StopReason::OutputClosed, None)
    } else {
        (StopReason::WriteError, Some(e))
    }
}

fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

/// `--vxlan`: what to open and keep.
struct Decap {
    port: u16,
    vni: Option<u32>,
    keep_outer: bool,
    /// Link type of the outer frames.
    linktype: u32,
    /// The user's rules, applied to the inner frames.
    selector: Option<rf_tap_engine::replay::select::Selector>,
    counts: DecapCounts,
}

/// Where packets come from: the ring buffer (tc, xdp) or the AF_XDP sockets (afxdp).
enum Source {
    Ring {
        ring: RingReader,
        /// Reused for frames whose VLAN tag is put back.
        rebuilt: Vec<u8>,
    },
    Xsk(XskReceiver),
}

impl Source {
    fn fds(&self) -> Vec<RawFd> {
        match self {
            Self::Ring { ring, .. } => vec![ring.fd()],
            Self::Xsk(x) => x.fds(),
        }
    }

    /// Hands everything waiting to `each` (undecodable records as errors) until it returns
    /// false; returns how many were taken.
    fn drain(
        &mut self,
        clock: &ClockMap,
        mut each: impl FnMut(Result<CapturedPacket<'_>, BadRecord>) -> bool,
    ) -> u64 {
        match self {
            Self::Ring { ring, rebuilt } => {
                let batch = ring.batch();
                let mut n = 0;
                while let Some(item) = batch.next() {
                    n += 1;
                    if !each(decode_record(item, rebuilt)) {
                        break;
                    }
                }
                n
            }
            Self::Xsk(x) => x.drain(clock, |p| each(Ok(p))),
        }
    }

    /// How long to let records accumulate after a non-empty drain.
    fn pause(&self) -> Duration {
        match self {
            Self::Ring { ring, .. } => ring.pause(BATCH_PAUSE),
            Self::Xsk(x) => x.pause(),
        }
    }

    /// The fast path to a classic pcap file (tc/xdp, no rotation, count, decapsulation or
    /// live archive): each record's pcap part goes from the ring to the file by `writev`,
    /// without a copy. Records it cannot take (a VLAN tag to put back, a bad record) go
    /// through [`Receiver::deliver`] in order. Returns how many records were taken.
    fn drain_to_pcap(
        &mut self,
        rx: &mut Receiver,
        snaplen: u32,
        summary: &mut CaptureSummary,
    ) -> anyhow::Result<u64> {
        let Self::Ring { ring, rebuilt } = self else {
            return Ok(0);
        };
        let batch = ring.batch();
        let mut records: Vec<&[u8]> = Vec::new();
        let mut n = 0;
        while let Some(item) = batch.next() {
            n += 1;
            if let Some(r) = capture::pcap_record(item, snaplen) {
                records.push(r);
                summary.received += 1;
                summary.written += 1;
                continue;
            }
            rx.write_pcap_records(&records)?;
            records.clear();
            rx.deliver(decode_record(item, rebuilt), summary)?;
        }
        rx.write_pcap_records(&records)?;
        Ok(n)
    }

    /// The kernel counters, with the AF_XDP sockets' own drops and userspace truncation
    /// folded in for afxdp (a packet redirected to a socket that had no room is a drop).
    fn counters(&self, kernel: &KernelCapture) -> anyhow::Result<KernelCounters> {
        let mut k = kernel.counters()?;
        if let Self::Xsk(x) = self {
            let drops = x.drops().total();
            k.ring_full = drops;
            k.copied = k.copied.saturating_sub(drops);
            k.truncated = x.truncated();
        }
        Ok(k)
    }
}

/// Everything a captured packet goes through on its way out.
struct Receiver {
    output: Output,
    live: Option<LivePipeline>,
    decap: Option<Decap>,
}

impl Receiver {
    /// Appends records already in the pcap file's layout (see `Source::drain_to_pcap`).
    fn write_pcap_records(&mut self, records: &[&[u8]]) -> Result<(), SinkError> {
        match &mut self.output {
            Output::File(sink) => sink.write_pcap_records(records),
            _ => Ok(()),
        }
    }

    /// Writes one packet (or the frame inside it) everywhere it goes.
    fn deliver(
        &mut self,
        pkt: Result<CapturedPacket<'_>, BadRecord>,
        summary: &mut CaptureSummary,
    ) -> anyhow::Result<()> {
        let Ok(mut pkt) = pkt else {
            summary.dropped_user += 1;
            return Ok(());
        };
        summary.received += 1;
        if let Some(d) = self.decap.as_mut() {
            use rf_tap_engine::wire::vxlan::{decapsulate, NotVxlan, INNER_LINKTYPE};
            let inner = match decapsulate(d.linktype, pkt.data, pkt.orig_len, d.port) {
                Ok(i) => i,
                Err(why) => {
                    match why {
                        NotVxlan::OtherTraffic => d.counts.not_vxlan += 1,
                        NotVxlan::Fragment => d.counts.fragments += 1,
                        NotVxlan::Malformed => d.counts.malformed += 1,
                    }
                    summary.left_out += 1;
                    return Ok(());
                }
            };
            if d.vni.is_some_and(|v| v != inner.vni) {
                d.counts.other_vni += 1;
                summary.left_out += 1;
                return Ok(());
            }
            if let Some(sel) = d.selector.as_mut() {
                if !sel.keep(INNER_LINKTYPE, inner.frame, inner.orig_len) {
                    d.counts.filtered += 1;
                    summary.left_out += 1;
                    return Ok(());
                }
            }
            d.counts.decapsulated += 1;
            if !d.keep_outer {
                // A mirror copy carries no direction.
                pkt = CapturedPacket {
                    ts: pkt.ts,
                    ifindex: pkt.ifindex,
                    direction: None,
                    orig_len: inner.orig_len,
                    data: inner.frame,
                };
            }
        }
        match &mut self.output {
            Output::File(sink) => sink.write(&pkt)?,
            Output::Lines { stdout } => {
                use std::io::Write;
                writeln!(stdout.lock(), "{}", packet_line(&pkt))?;
            }
            Output::Nothing => {}
        }
        if let Some(l) = self.live.as_mut() {
            l.packet(&pkt);
        }
        summary.written += 1;
        Ok(())
    }
}

/// AF_XDP takes the packets the rules accept away from the kernel stack, so an interface
/// that the host itself uses (it has addresses beyond the automatic IPv6 link-local one) is
/// refused unless the user says --force.
fn refuse_addressed_sink(iface: &str) -> anyhow::Result<()> {
    let own: Vec<String> = crate::mirror::host::local_addresses()
        .into_iter()
        .filter(|(name, a)| {
            name == iface && !matches!(a, std::net::IpAddr::V6(v6) if v6.is_unicast_link_local())
        })
        .map(|(_, a)| a.to_string())
        .collect();
    if !own.is_empty() {
        bail!(
            "{iface} has addresses of its own ({}); --mode afxdp takes the packets the rules \
             accept away from the kernel stack, so it is meant for a dedicated sink interface. \
             Use --mode tc to capture beside the stack, or --force if taking them is intended \
             (with --vxlan only UDP to the VXLAN port is taken)",
            own.join(", ")
        );
    }
    Ok(())
}

/// A per-capture seed for flow sampling, so that repeated captures sample different flows.
pub(crate) fn rand_seed() -> u32 {
    let mut b = [0u8; 4];
    if std::fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut b))
        .is_ok()
    {
        return u32::from_ne_bytes(b);
    }
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0x5eed)
}
