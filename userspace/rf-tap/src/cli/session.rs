//! `rf-tap session create|list|delete`: mirror sessions to a VXLAN target.

use std::net::IpAddr;

use anyhow::{bail, Context as _};
use clap::{Args, Subcommand};
use rf_tap_common::{MirrorSession, MAX_CAPTURE, MAX_SESSIONS, SAMPLE_SCALE};

use crate::{
    capture::{self, kernel::HookMode},
    cli::rules::FilterArgs,
    mirror::{self, host, Registry, SessionCounters, SessionRecord},
};

#[derive(Debug, Args)]
pub struct SessionArgs {
    #[command(subcommand)]
    pub command: SessionCommand,
}

#[derive(Debug, Subcommand)]
pub enum SessionCommand {
    /// Mirror an interface's packets to a VXLAN target, in the kernel, until deleted
    Create(CreateArgs),
    /// Show the sessions of this network namespace with live counters
    List {
        /// One JSON object on standard output
        #[arg(long)]
        json: bool,
    },
    /// Stop and remove a session (or all of them)
    Delete {
        /// Session number
        #[arg(required_unless_present = "all")]
        number: Option<u32>,
        /// Remove every session of this network namespace
        #[arg(long, conflicts_with = "number")]
        all: bool,
    },
}

#[derive(Debug, Args)]
#[command(after_help = "\
Packets on the interface (both directions unless the rules say otherwise) that the filter
accepts are cloned in the kernel and sent to the target in standard VXLAN (RFC 7348). The
production packets are never changed or delayed. Sessions outlive this command; see them with
`rf-tap session list`, remove them with `rf-tap session delete N`.

Several sessions on one interface follow VPC Traffic Mirroring: a packet goes to the
lowest-numbered session whose filter accepts it, and is mirrored once. Copies larger than the
path MTU to the target allows are truncated and counted (mtu_truncated), as AWS does.

Copies to an IPv4 target are encapsulated by rf-tap's kernel program and handed to the next
hop on the route found at creation (no route lookup per copy; `session list` says when that
route has changed, and re-creating the session follows the new one). Copies to an IPv6
target, and frames that are not IP, go through the kernel's VXLAN device, which routes each.

Filter rules are those of `rf-tap attach` (--rule, --filter FILE, --port).

Examples:
  sudo rf-tap session create --iface eth0 --target 10.0.0.5 --port 80-443
  sudo rf-tap session create --iface eth0 --target 10.0.0.5 --vni 42 --packet-length 128 \\
       --rule 'num=100,action=accept,proto=tcp,dst-port=443,dir=ingress'")]
pub struct CreateArgs {
    /// Interface whose packets are mirrored
    #[arg(long)]
    pub iface: String,

    /// Where the copies go: the VXLAN endpoint (IPv4 or IPv6), e.g. a collector or an NLB
    #[arg(long)]
    pub target: IpAddr,

    /// VXLAN network identifier (0-16777215); default: a random one no other session uses
    #[arg(long)]
    pub vni: Option<u32>,

    /// UDP destination port of the VXLAN packets
    #[arg(long, default_value_t = 4789)]
    pub dst_port: u16,

    /// Session number (1-32766): lower numbers win when filters overlap; default: the lowest
    /// unused
    #[arg(long)]
    pub session_number: Option<u32>,

    /// Mirror at most N bytes of each packet (the inner frame after the VXLAN header)
    #[arg(long, value_name = "N")]
    pub packet_length: Option<u32>,

    /// Mirror this percentage of flows (whole connections are kept or left out)
    #[arg(long, value_name = "PCT", default_value_t = 100.0)]
    pub sample_rate: f64,

    #[command(flatten)]
    pub filter: FilterArgs,

    /// Print the created session as JSON
    #[arg(long)]
    pub json: bool,
}

pub fn run(args: SessionArgs) -> anyhow::Result<std::process::ExitCode> {
    match args.command {
        SessionCommand::Create(c) => create(c),
        SessionCommand::List { json } => list(json),
        SessionCommand::Delete { number, all } => delete(number, all),
    }
}

/// IPv4 outer header + UDP + VXLAN (the outer Ethernet header is not part of the MTU).
const OVERHEAD_V4: u32 = 20 + 8 + 8;
const OVERHEAD_V6: u32 = 40 + 8 + 8;
const MIN_PACKET_LENGTH: u32 = 14;

fn create(args: CreateArgs) -> anyhow::Result<std::process::ExitCode> {
    if let Some(v) = args.vni {
        if v > 0x00ff_ffff {
            bail!("--vni must be 0..=16777215 (24 bits)");
        }
    }
    if let Some(n) = args.session_number {
        if !(1..=32766).contains(&n) {
            bail!("--session-number must be 1..=32766");
        }
    }
    if let Some(l) = args.packet_length {
        if !(MIN_PACKET_LENGTH..=MAX_CAPTURE).contains(&l) {
            bail!("--packet-length must be {MIN_PACKET_LENGTH}..={MAX_CAPTURE}");
        }
    }
    if !(args.sample_rate > 0.0 && args.sample_rate <= 100.0) {
        bail!("--sample-rate must be a percentage above 0 and at most 100");
    }
    if args.dst_port == 0 {
        bail!("--dst-port must be 1..=65535");
    }
    if args.target.is_unspecified() || args.target.is_multicast() {
        bail!("--target must be a unicast address");
    }
    let rules = args.filter.rule_set()?;
    let facts = capture::interface_facts(&args.iface)?;
    capture::check_kernel(HookMode::Tc)?;
    capture::check_privileges()?;
    let ifindex = facts.ifindex;
    if facts.name.starts_with("rftvx") {
        bail!(
            "{} is rf-tap's own VXLAN device: mirroring it would loop",
            facts.name
        );
    }
    if let Some((dev, _)) = host::local_addresses()
        .into_iter()
        .find(|(_, a)| *a == args.target)
    {
        bail!(
            "the target {} is an address of this host (on {dev}): the copies would come back \
             into the mirrored traffic path (a mirror loop); pick a target on another host",
            args.target
        );
    }
    let path = host::route_to(args.target, args.dst_port)?;
    let overhead = if args.target.is_ipv4() {
        OVERHEAD_V4
    } else {
        OVERHEAD_V6
    };
    if path.mtu <= overhead + MIN_PACKET_LENGTH {
        bail!(
            "the path MTU to {} is {}, too small to carry any VXLAN copy",
            args.target,
            path.mtu
        );
    }
    let mtu_limit = path.mtu - overhead;

    let mut reg = Registry::open()?;
    if reg.state.sessions.len() >= MAX_SESSIONS as usize {
        bail!("this network namespace already has {MAX_SESSIONS} sessions, the most rf-tap keeps");
    }
    let number = match args.session_number {
        Some(n) => {
            if reg.state.sessions.iter().any(|s| s.number == n) {
                bail!("session {n} exists (rf-tap session list)");
            }
            n
        }
        None => (1..=32766)
            .find(|n| reg.state.sessions.iter().all(|s| s.number != *n))
            .context("no free session number")?,
    };
    let vni = match args.vni {
        Some(v) => v,
        None => loop {
            let v = crate::cli::attach::rand_seed() & 0x00ff_ffff;
            if v != 0 && reg.state.sessions.iter().all(|s| s.vni != v) {
                break v;
            }
        },
    };
    let slot = (0..MAX_SESSIONS)
        .find(|i| reg.state.sessions.iter().all(|s| s.slot != *i))
        .context("no free session slot")?;
    let compiled = rules.compile();
    let record = SessionRecord {
        number,
        slot,
        iface: facts.name.clone(),
        ifindex,
        target: args.target,
        vni,
        dst_port: args.dst_port,
        packet_length: args.packet_length,
        mtu_limit,
        direct: path.direct.map(|d| mirror::DirectRoute {
            ifindex: d.ifindex,
            next_hop: d.nexthop,
        }),
        sample_rate: args.sample_rate,
        rules: rules.rules().iter().map(|r| r.to_string()).collect(),
        created: rf_tap_engine::query::format_utc(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default(),
            'T',
            0,
        ) + "Z",
    };

    let made = (|| -> anyhow::Result<()> {
        let mut bpf = reg.load()?;
        let vxlan_ifindex = reg.vxlan(&mut bpf, args.dst_port)?;
        let (port_min, port_max) = host::source_port_range();
        let kernel = MirrorSession {
            number,
            ifindex,
            link_kind: facts.link_kind,
            rule_count: compiled.len() as u32,
            sample_threshold: ((args.sample_rate / 100.0) * SAMPLE_SCALE as f64).round() as u32,
            sample_seed: crate::cli::attach::rand_seed(),
            vxlan_ifindex,
            vni,
            packet_length: args.packet_length.unwrap_or(u32::MAX),
            mtu_limit,
            family: if args.target.is_ipv4() { 4 } else { 6 },
            egress_ifindex: path.direct.map_or(0, |d| d.ifindex),
            remote: address_words(args.target),
            local: address_words(path.local),
            nexthop: path
                .direct
                .map_or([0; 4], |d| address_words(IpAddr::V4(d.nexthop))),
            dst_port: args.dst_port.into(),
            src_port_min: port_min.into(),
            src_port_span: u32::from(port_max - port_min) + 1,
            _pad: 0,
        };
        reg.write_slot(slot, &kernel, &compiled)?;
        reg.attach_interface(&mut bpf, &facts.name, ifindex)?;
        reg.state.sessions.push(record.clone());
        reg.publish_order()?;
        reg.save()?;
        Ok(())
    })();
    if let Err(e) = made {
        reg.state.sessions.retain(|s| s.number != number);
        let cleanup = reg.reconcile();
        return Err(match cleanup {
            Ok(()) => e,
            Err(c) => e.context(format!("and cleaning up failed too: {c:#}")),
        });
    }
    if args.json {
        println!("{}", serde_json::to_string(&record)?);
    } else {
        let filter = if record.rules.is_empty() {
            "everything, both directions".to_string()
        } else {
            record.rules.join("; ")
        };
        eprintln!(
            "rf-tap: session {number} created: {} -> {}:{} VNI {vni}, copies up to {} bytes{}; \
             filter: {filter}",
            record.iface,
            record.target,
            record.dst_port,
            args.packet_length.unwrap_or(mtu_limit).min(mtu_limit),
            if args.packet_length.is_some_and(|l| l > mtu_limit) {
                format!(" (the path MTU {} allows no more)", path.mtu)
            } else {
                String::new()
            },
        );
        eprintln!("rf-tap: it keeps running after this command; `rf-tap session list` shows it");
    }
    Ok(std::process::ExitCode::SUCCESS)
}

#[derive(serde::Serialize)]
struct Listed<'a> {
    #[serde(flatten)]
    session: &'a SessionRecord,
    interface_present: bool,
    /// The route to the target now differs from the one the copies are sent along.
    route_changed: bool,
    /// The next hop that stopped answering ARP or neighbour discovery, if it did.
    next_hop_failed: Option<IpAddr>,
    counters: SessionCounters,
}

fn list(json: bool) -> anyhow::Result<std::process::ExitCode> {
    let reg = Registry::open()?;
    let mut rows = Vec::new();
    let mut sessions: Vec<&SessionRecord> = reg.state.sessions.iter().collect();
    sessions.sort_by_key(|s| s.number);
    for s in sessions {
        let counters = if reg.has_kernel_state() {
            reg.counters(s.slot)?
        } else {
            SessionCounters::default()
        };
        // Copies follow the route as it was at creation; say so when it has moved.
        let route_changed = match (s.target, s.direct) {
            (IpAddr::V4(t), Some(d)) => {
                host::direct_path(t).map(|p| (p.ifindex, p.nexthop))
                    != Some((d.ifindex, d.next_hop))
            }
            _ => false,
        };
        rows.push(Listed {
            session: s,
            interface_present: capture::ifindex(&s.iface) == Some(s.ifindex),
            route_changed,
            next_hop_failed: host::next_hop_failed(s.target),
            counters,
        });
    }
    let device_drops: Vec<(String, u64)> = {
        let ports: Vec<u16> = reg.state.sessions.iter().map(|s| s.dst_port).collect();
        host::net_devices()
            .into_iter()
            .filter(|(d, _)| ports.iter().any(|p| *d == mirror::vxlan_device(*p)))
            .collect()
    };
    let (_, loop_skipped, _) = if reg.has_kernel_state() {
        reg.global_counters()?
    } else {
        (0, 0, 0)
    };
    if json {
        println!(
            "{}",
            serde_json::json!({
                "sessions": rows,
                "loop_skipped": loop_skipped,
                "vxlan_device_drops": device_drops.iter().map(|(d, n)| serde_json::json!({"device": d, "dropped": n})).collect::<Vec<_>>(),
            })
        );
        return Ok(std::process::ExitCode::SUCCESS);
    }
    if rows.is_empty() {
        println!("no mirror sessions in this network namespace");
        return Ok(std::process::ExitCode::SUCCESS);
    }
    println!(
        "{:>5}  {:<12} {:<26} {:>8} {:>6}  {:>10} {:>10} {:>10} {:>8}  FILTER",
        "NUM", "IFACE", "TARGET", "VNI", "LENGTH", "MIRRORED", "TRUNCATED", "MTU-CUT", "DROPPED"
    );
    for r in &rows {
        let s = r.session;
        let c = r.counters;
        let length = s
            .packet_length
            .unwrap_or(s.mtu_limit)
            .min(s.mtu_limit)
            .to_string();
        let iface = if r.interface_present {
            s.iface.clone()
        } else {
            format!("{} (gone)", s.iface)
        };
        let filter = if s.rules.is_empty() {
            "everything".to_string()
        } else {
            s.rules.join("; ")
        };
        let sample = if s.sample_rate < 100.0 {
            format!(" [sampling {}% of flows]", s.sample_rate)
        } else {
            String::new()
        };
        println!(
            "{:>5}  {:<12} {:<26} {:>8} {:>6}  {:>10} {:>10} {:>10} {:>8}  {filter}{sample}",
            s.number,
            iface,
            format!("{}:{}", s.target, s.dst_port),
            s.vni,
            length,
            c.mirrored,
            c.truncated,
            c.mtu_truncated,
            c.dropped,
        );
    }
    for r in rows.iter().filter(|r| r.route_changed) {
        println!(
            "session {}: the route to {} has changed since the session was created, and its \
             copies still go the old way; delete and re-create the session",
            r.session.number, r.session.target
        );
    }
    for r in &rows {
        if let Some(hop) = r.next_hop_failed {
            println!(
                "session {}: the next hop {hop} towards {} no longer answers ARP or neighbour \
                 discovery: its copies are dropped",
                r.session.number, r.session.target
            );
        }
    }
    for (d, n) in device_drops.iter().filter(|(_, n)| *n > 0) {
        println!("{d}: {n} copies dropped after encapsulation (no route or neighbour to a target)");
    }
    Ok(std::process::ExitCode::SUCCESS)
}

fn delete(number: Option<u32>, all: bool) -> anyhow::Result<std::process::ExitCode> {
    capture::check_privileges()?;
    let mut reg = Registry::open()?;
    let removed: Vec<u32> = if all {
        reg.state.sessions.drain(..).map(|s| s.number).collect()
    } else {
        let n = number.context("give a session number or --all")?;
        if !reg.state.sessions.iter().any(|s| s.number == n) {
            // Still clean up whatever a killed command may have left.
            reg.reconcile()?;
            bail!("no session {n} in this network namespace (rf-tap session list)");
        }
        reg.state.sessions.retain(|s| s.number != n);
        vec![n]
    };
    reg.save()?;
    reg.reconcile()?;
    if removed.is_empty() {
        eprintln!("rf-tap: no sessions to delete");
    } else {
        let list: Vec<String> = removed.iter().map(|n| n.to_string()).collect();
        eprintln!(
            "rf-tap: deleted session{} {}",
            if removed.len() == 1 { "" } else { "s" },
            list.join(", ")
        );
    }
    Ok(std::process::ExitCode::SUCCESS)
}

/// An address as the kernel programs read it: wire-order bytes loaded as native words.
fn address_words(a: IpAddr) -> [u32; 4] {
    let mut words = [0u32; 4];
    match a {
        IpAddr::V4(a) => words[0] = u32::from_ne_bytes(a.octets()),
        IpAddr::V6(a) => {
            for (i, w) in a.octets().chunks_exact(4).enumerate() {
                words[i] = u32::from_ne_bytes([w[0], w[1], w[2], w[3]]);
            }
        }
    }
    words
}
