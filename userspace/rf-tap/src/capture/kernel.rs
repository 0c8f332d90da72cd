//! The one narrow place that talks to the kernel: load the embedded eBPF object, configure
//! its maps, attach it (TCX links or an XDP link), read counters, and hand out the ring.
//!
//! Links are owned by file descriptors of this process, so they detach when it exits for any
//! reason, SIGKILL included; nothing is pinned.

use std::fmt;

use aya::{
    maps::{Array, MapData, PerCpuArray, XskMap},
    programs::{
        tc::TcAttachOptions, LinkOrder, ProgramError, SchedClassifier, TcAttachType, Xdp, XdpMode,
    },
    Ebpf, EbpfLoader,
};
use rf_tap_common::{counter, names, CaptureConfig, FilterRule, MAX_CAPTURE};

use super::{ring::RingReader, CaptureError};

/// Where the programs hook in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum HookMode {
    /// TC clsact ingress and egress through TCX links (both directions).
    Tc,
    /// XDP on ingress only: native where the driver supports it, generic otherwise.
    Xdp,
    /// A dedicated sink interface: XDP redirects accepted packets to AF_XDP sockets (taken
    /// from the kernel stack); ingress only.
    Afxdp,
}

impl fmt::Display for HookMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Tc => "tc",
            Self::Xdp => "xdp",
            Self::Afxdp => "afxdp",
        })
    }
}

/// Everything the kernel side needs to start copying.
pub struct KernelSetup<'a> {
    pub iface: &'a str,
    pub mode: HookMode,
    pub rules: &'a [FilterRule],
    pub config: CaptureConfig,
    /// Ring buffer size in bytes (power of two, multiple of the page size).
    pub ring_bytes: u32,
    /// `Afxdp`: the socket of each receive queue, in queue order.
    pub xsk_fds: &'a [std::os::fd::RawFd],
    /// A loopback device: each packet crosses it on egress and again on ingress, so only
    /// egress is hooked (each packet captured once, as `tcpdump -i lo` does).
    pub loopback: bool,
}

/// Sums of the per-CPU counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct KernelCounters {
    pub seen: u64,
    pub accepted: u64,
    pub rejected: u64,
    pub unmatched: u64,
    pub sampled_out: u64,
    pub copied: u64,
    pub ring_full: u64,
    pub truncated: u64,
    pub copied_bytes: u64,
    pub malformed: u64,
    pub copy_failed: u64,
}

/// A loaded and attached capture. Dropping it detaches everything.
pub struct KernelCapture {
    bpf: Option<Ebpf>,
    counters: PerCpuArray<MapData, u64>,
    /// How the XDP program ended up attached ("native" or "generic"), for the report.
    pub attach_detail: String,
    logger: Option<aya_log::EbpfLogger<&'static dyn log::Log>>,
}

static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/rf-tap"));

impl KernelCapture {
    /// Loads, configures and attaches. On any error nothing stays attached (whatever was
    /// attached is dropped with the `Ebpf` before returning).
    pub fn attach(setup: &KernelSetup<'_>) -> Result<(Self, RingReader), CaptureError> {
        let mut bpf = EbpfLoader::new()
            .map_max_entries(names::EVENTS, setup.ring_bytes)
            .map_max_entries(names::XSKS, (setup.xsk_fds.len() as u32).max(1))
            .load(OBJECT)
            .map_err(|e| CaptureError::from_load(e.to_string()))?;
        let logger = aya_log::EbpfLogger::init(&mut bpf).ok();

        {
            let mut rules: Array<_, FilterRule> = Array::try_from(
                bpf.map_mut(names::RULES)
                    .ok_or(CaptureError::MissingObject(names::RULES))?,
            )
            .map_err(|e| CaptureError::map(names::RULES, e))?;
            for (i, r) in setup.rules.iter().enumerate() {
                rules
                    .set(i as u32, r, 0)
                    .map_err(|e| CaptureError::map(names::RULES, e))?;
            }
        }
        {
            let mut config: Array<_, CaptureConfig> = Array::try_from(
                bpf.map_mut(names::CONFIG)
                    .ok_or(CaptureError::MissingObject(names::CONFIG))?,
            )
            .map_err(|e| CaptureError::map(names::CONFIG, e))?;
            let mut cfg = setup.config;
            cfg.rule_count = setup.rules.len() as u32;
            cfg.snaplen = cfg.snaplen.clamp(1, MAX_CAPTURE);
            config
                .set(0, cfg, 0)
                .map_err(|e| CaptureError::map(names::CONFIG, e))?;
        }

        let attach_detail = match setup.mode {
            HookMode::Tc => {
                let hooks: &[(&str, TcAttachType)] = if setup.loopback {
                    &[(names::TC_EGRESS, TcAttachType::Egress)]
                } else {
                    &[
                        (names::TC_INGRESS, TcAttachType::Ingress),
                        (names::TC_EGRESS, TcAttachType::Egress),
                    ]
                };
                for &(name, kind) in hooks {
                    let prog: &mut SchedClassifier = bpf
                        .program_mut(name)
                        .ok_or(CaptureError::MissingObject(name))?
                        .try_into()
                        .map_err(|e: ProgramError| CaptureError::program(name, e))?;
                    prog.load().map_err(|e| CaptureError::program(name, e))?;
                    prog.attach_with_options(
                        setup.iface,
                        kind,
                        TcAttachOptions::TcxOrder(LinkOrder::default()),
                    )
                    .map_err(|e| CaptureError::attach(setup.iface, name, e))?;
                }
                if setup.loopback {
                    "tcx egress (loopback: each packet once)".to_string()
                } else {
                    "tcx ingress+egress".to_string()
                }
            }
            HookMode::Xdp => attach_xdp(&mut bpf, names::XDP_INGRESS, setup.iface)?,
            HookMode::Afxdp => {
                // The sockets go in first, so that no accepted packet finds an empty slot.
                let mut xsks: XskMap<_> = XskMap::try_from(
                    bpf.map_mut(names::XSKS)
                        .ok_or(CaptureError::MissingObject(names::XSKS))?,
                )
                .map_err(|e| CaptureError::map(names::XSKS, e))?;
                for (q, &fd) in setup.xsk_fds.iter().enumerate() {
                    // SAFETY: the caller's sockets stay open for the whole call.
                    let fd = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
                    xsks.set(q as u32, fd, 0)
                        .map_err(|e| CaptureError::map(names::XSKS, e))?;
                }
                attach_xdp(&mut bpf, names::XDP_SINK, setup.iface)?
            }
        };

        let ring = match bpf.take_map(names::EVENTS) {
            Some(aya::maps::Map::RingBuf(data)) => {
                RingReader::new(data).map_err(|e| CaptureError::Kernel {
                    what: "map the ring buffer",
                    detail: e.to_string(),
                })?
            }
            _ => return Err(CaptureError::MissingObject(names::EVENTS)),
        };
        let counters = PerCpuArray::try_from(
            bpf.take_map(names::COUNTERS)
                .ok_or(CaptureError::MissingObject(names::COUNTERS))?,
        )
        .map_err(|e| CaptureError::map(names::COUNTERS, e))?;
        Ok((
            Self {
                bpf: Some(bpf),
                counters,
                attach_detail,
                logger,
            },
            ring,
        ))
    }

    /// Detaches every program now (the maps stay readable).
    pub fn detach(&mut self) {
        self.logger = None;
        self.bpf = None;
    }

    /// Moves kernel log lines (aya-log) to the `log` crate.
    pub fn flush_logs(&mut self) {
        if let Some(l) = self.logger.as_mut() {
            l.flush();
        }
    }

    pub fn counters(&self) -> Result<KernelCounters, CaptureError> {
        let sum = |slot: u32| -> Result<u64, CaptureError> {
            let v = self
                .counters
                .get(&slot, 0)
                .map_err(|e| CaptureError::map(names::COUNTERS, e))?;
            Ok(v.iter().sum())
        };
        Ok(KernelCounters {
            seen: sum(counter::SEEN)?,
            accepted: sum(counter::ACCEPTED)?,
            rejected: sum(counter::REJECTED)?,
            unmatched: sum(counter::UNMATCHED)?,
            sampled_out: sum(counter::SAMPLED_OUT)?,
            copied: sum(counter::COPIED)?,
            ring_full: sum(counter::RING_FULL)?,
            truncated: sum(counter::TRUNCATED)?,
            copied_bytes: sum(counter::COPIED_BYTES)?,
            malformed: sum(counter::MALFORMED)?,
            copy_failed: sum(counter::COPY_FAILED)?,
        })
    }
}

/// Loads and attaches an XDP program: native where the driver has it, generic otherwise.
fn attach_xdp(bpf: &mut Ebpf, name: &'static str, iface: &str) -> Result<String, CaptureError> {
    let prog: &mut Xdp = bpf
        .program_mut(name)
        .ok_or(CaptureError::MissingObject(name))?
        .try_into()
        .map_err(|e: ProgramError| CaptureError::program(name, e))?;
    prog.load().map_err(|e| CaptureError::program(name, e))?;
    match prog.attach(iface, XdpMode::Driver) {
        Ok(_) => Ok("xdp native (driver) ingress".to_string()),
        Err(native) => match prog.attach(iface, XdpMode::Skb) {
            Ok(_) => Ok("xdp generic (skb) ingress".to_string()),
            Err(generic) => Err(CaptureError::Attach {
                iface: iface.to_string(),
                program: name,
                detail: format!("native: {native}; generic: {generic}"),
            }),
        },
    }
}

/// Errors of loading and attaching, each naming the thing and the fix.
impl CaptureError {
    fn from_load(detail: String) -> Self {
        if detail.contains("Operation not permitted") || detail.contains("EPERM") {
            Self::Permission
        } else {
            Self::Kernel {
                what: "load the eBPF programs",
                detail,
            }
        }
    }
    fn map(name: &'static str, e: aya::maps::MapError) -> Self {
        Self::Kernel {
            what: name,
            detail: e.to_string(),
        }
    }
    fn program(name: &'static str, e: ProgramError) -> Self {
        let detail = match &e {
            ProgramError::LoadError {
                io_error,
                verifier_log,
            } => {
                format!("{io_error}\n{verifier_log}")
            }
            other => other.to_string(),
        };
        if detail.contains("Operation not permitted") {
            return Self::Permission;
        }
        Self::Kernel { what: name, detail }
    }
    fn attach(iface: &str, name: &'static str, e: ProgramError) -> Self {
        Self::Attach {
            iface: iface.to_string(),
            program: name,
            detail: e.to_string(),
        }
    }
}
