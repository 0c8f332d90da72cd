//! Mirror sessions: packets of an interface cloned in the kernel and sent, VXLAN-encapsulated,
//! to a target, with the semantics of VPC Traffic Mirroring.
//!
//! A session outlives the command that created it. Per network namespace, rf-tap keeps:
//! * pinned maps and links under `/sys/fs/bpf/rf-tap/net-<netns inode>/`: the session table
//!   (`MIRROR_*` maps), TCX links of the mirroring programs on each mirrored interface
//!   (`tc-in-<ifindex>`, `tc-eg-<ifindex>`) and of the encapsulating program on each VXLAN
//!   device (`encap-<port>`);
//! * one VXLAN device in collect_md mode per destination port (`rftvx<port>`);
//! * the sessions as the user described them, in `/run/rf-tap/net-<netns inode>.json`.
//!
//! The JSON file is the truth. Every change ends with [`Registry::reconcile`], which removes
//! every pin and device no recorded session needs, so a command that failed half way (or was
//! killed) leaves nothing behind once any session command runs again.

pub mod host;

use crate::capture;

use std::{
    collections::BTreeSet,
    fs,
    io::Write as _,
    net::IpAddr,
    os::{fd::AsRawFd, unix::fs::MetadataExt},
    path::{Path, PathBuf},
};

use anyhow::{anyhow, bail, Context as _};
use aya::{
    maps::{Array, Map, MapData, PerCpuArray, PerCpuValues},
    programs::{links::FdLink, tc::TcAttachOptions, LinkOrder, SchedClassifier, TcAttachType},
    Ebpf, EbpfLoader,
};
use rf_tap_common::{
    mirror_counter as mc, names, FilterRule, MirrorSession, SessionOrder, MAX_RULES, MAX_SESSIONS,
};
use serde::{Deserialize, Serialize};

/// A session as the user created it (the JSON state).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SessionRecord {
    pub number: u32,
    /// Index into the kernel's session slots and counters.
    pub slot: u32,
    pub iface: String,
    pub ifindex: u32,
    pub target: IpAddr,
    pub vni: u32,
    pub dst_port: u16,
    /// `--packet-length`, when given.
    pub packet_length: Option<u32>,
    /// Largest inner frame that fits the path MTU once encapsulated.
    pub mtu_limit: u32,
    /// Where the kernel program sends this session's IPv4 copies (resolved at creation);
    /// None: the VXLAN device routes every copy.
    #[serde(default)]
    pub direct: Option<DirectRoute>,
    pub sample_rate: f64,
    /// The rules, one per line as `--rule` would take them.
    pub rules: Vec<String>,
    pub created: String,
}

/// The egress interface and next hop a session's copies are handed to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DirectRoute {
    pub ifindex: u32,
    pub next_hop: std::net::Ipv4Addr,
}

#[derive(Debug, Default, Serialize, Deserialize)]
pub struct State {
    /// The namespace the sessions belong to. The files are named by the namespace's inode,
    /// which a new namespace may reuse once the old one is gone; the cookie tells them apart.
    #[serde(default)]
    pub netns_cookie: Option<u64>,
    pub sessions: Vec<SessionRecord>,
}

/// Live counters of one session.
#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct SessionCounters {
    pub matched: u64,
    pub sampled_out: u64,
    pub mirrored: u64,
    pub mirrored_bytes: u64,
    pub truncated: u64,
    pub mtu_truncated: u64,
    pub dropped: u64,
    /// Copies encapsulated by rf-tap's program and sent to the next hop's neighbour; the
    /// rest went through the VXLAN device's own path.
    pub direct: u64,
}

pub fn vxlan_device(port: u16) -> String {
    format!("rftvx{port}")
}

static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/rf-tap"));

const MAP_NAMES: [&str; 5] = [
    names::MIRROR_SLOTS,
    names::MIRROR_RULES,
    names::MIRROR_ORDER,
    names::MIRROR_ACTIVE,
    names::MIRROR_COUNTERS,
];

/// The sessions of this network namespace, locked for the life of the value.
pub struct Registry {
    pin_dir: PathBuf,
    state_path: PathBuf,
    lock_path: PathBuf,
    _lock: fs::File,
    pub state: State,
}

impl Registry {
    /// Joins the bpffs (see [`host::enter_bpffs`]), takes the namespace's lock and reads the
    /// state.
    pub fn open() -> anyhow::Result<Self> {
        let netns = host::netns_id()?;
        host::enter_bpffs()?;
        let run = Path::new("/run/rf-tap");
        // Without rights, say what to run it with (as `attach` does), not which file failed.
        let rights = |e: std::io::Error, what: String| -> anyhow::Error {
            if matches!(e.raw_os_error(), Some(libc::EACCES | libc::EPERM)) {
                anyhow::anyhow!(
                    "mirror sessions need root (CAP_NET_ADMIN and CAP_BPF): run it with sudo"
                )
            } else {
                anyhow::Error::new(e).context(what)
            }
        };
        fs::create_dir_all(run)
            .map_err(|e| rights(e, format!("cannot create {}", run.display())))?;
        let lock_path = run.join(format!("net-{netns}.lock"));
        // The lock file is removed when the last session goes, so a lock taken on a file that
        // was removed meanwhile is retaken on the file now at the path.
        let lock = loop {
            let f = fs::OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .open(&lock_path)
                .map_err(|e| rights(e, format!("cannot open {}", lock_path.display())))?;
            // SAFETY: flock on a descriptor we own.
            if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX) } != 0 {
                return Err(std::io::Error::last_os_error())
                    .context("cannot lock the session state");
            }
            let held = f.metadata()?.ino();
            if fs::metadata(&lock_path).is_ok_and(|m| m.ino() == held) {
                break f;
            }
        };
        let state_path = run.join(format!("net-{netns}.json"));
        let mut state: State = match fs::read_to_string(&state_path) {
            Ok(text) => serde_json::from_str(&text).with_context(|| {
                format!(
                    "the session state {} is corrupt (remove it, then `rf-tap session delete --all`)",
                    state_path.display()
                )
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => State::default(),
            Err(e) => return Err(e).context("cannot read the session state"),
        };
        let cookie = host::netns_cookie();
        let stale = state.netns_cookie.is_some() && state.netns_cookie != cookie;
        if stale {
            eprintln!(
                "rf-tap: removing {} session(s) left by a network namespace that no longer \
                 exists (this one reuses its inode)",
                state.sessions.len()
            );
            state = State::default();
        }
        state.netns_cookie = cookie;
        let reg = Self {
            pin_dir: Path::new(host::BPFFS).join(format!("rf-tap/net-{netns}")),
            state_path,
            lock_path,
            _lock: lock,
            state,
        };
        if reg.state.sessions.is_empty() {
            // With no recorded session, every pin and rf-tap VXLAN device here is a leftover:
            // of a command killed half way, or of a namespace that had this inode before.
            // A pinned link of a dead namespace's interface must not pass for ours.
            reg.reconcile()?;
            reg.save()?;
        }
        Ok(reg)
    }

    pub fn save(&self) -> anyhow::Result<()> {
        if self.state.sessions.is_empty() {
            let _ = fs::remove_file(&self.state_path);
            return Ok(());
        }
        let tmp = self.state_path.with_extension("json.tmp");
        let mut f = fs::File::create(&tmp)?;
        f.write_all(serde_json::to_string_pretty(&self.state)?.as_bytes())?;
        f.sync_all()?;
        fs::rename(&tmp, &self.state_path).context("cannot save the session state")?;
        Ok(())
    }

    fn pin(&self, name: &str) -> PathBuf {
        self.pin_dir.join(name)
    }

    /// Loads the object with the session maps bound to their pins (created on first use).
    pub fn load(&self) -> anyhow::Result<Ebpf> {
        fs::create_dir_all(&self.pin_dir)
            .with_context(|| format!("cannot create {}", self.pin_dir.display()))?;
        let paths: Vec<(&str, PathBuf)> = MAP_NAMES.iter().map(|n| (*n, self.pin(n))).collect();
        let mut loader = EbpfLoader::new();
        for (n, p) in &paths {
            loader.map_pin_path(n, p.as_path());
        }
        loader
            .load(OBJECT)
            .map_err(|e| anyhow!("cannot load the eBPF programs: {e}"))
    }

    /// Attaches `program` to `iface` in `kind` through a TCX link pinned at `pin`, unless
    /// that pin exists.
    fn attach_pinned(
        &self,
        bpf: &mut Ebpf,
        program: &'static str,
        iface: &str,
        kind: TcAttachType,
        pin: &str,
    ) -> anyhow::Result<()> {
        let path = self.pin(pin);
        if host::exists(&path) {
            return Ok(());
        }
        let prog: &mut SchedClassifier = bpf
            .program_mut(program)
            .ok_or_else(|| anyhow!("the eBPF object has no {program}"))?
            .try_into()?;
        if prog.fd().is_err() {
            prog.load()
                .map_err(|e| anyhow!("cannot load {program}: {}", short_error(&e.to_string())))?;
        }
        // Last in the chain: whatever else runs there has seen the packet first.
        let id = prog
            .attach_with_options(iface, kind, TcAttachOptions::TcxOrder(LinkOrder::last()))
            .map_err(|e| anyhow!("cannot attach {program} to {iface}: {e}"))?;
        let link = prog.take_link(id)?;
        let fd: FdLink = link
            .try_into()
            .map_err(|e| anyhow!("{program} on {iface} is not a TCX link: {e:?}"))?;
        fd.pin(&path)
            .map_err(|e| anyhow!("cannot pin {}: {e}", path.display()))?;
        Ok(())
    }

    /// The mirroring programs on both directions of an interface.
    pub fn attach_interface(
        &self,
        bpf: &mut Ebpf,
        iface: &str,
        ifindex: u32,
    ) -> anyhow::Result<()> {
        self.attach_pinned(
            bpf,
            names::TC_MIRROR_INGRESS,
            iface,
            TcAttachType::Ingress,
            &format!("tc-in-{ifindex}"),
        )?;
        self.attach_pinned(
            bpf,
            names::TC_MIRROR_EGRESS,
            iface,
            TcAttachType::Egress,
            &format!("tc-eg-{ifindex}"),
        )
    }

    /// The VXLAN device for a destination port, with the encapsulating program; returns its
    /// ifindex.
    pub fn vxlan(&self, bpf: &mut Ebpf, port: u16) -> anyhow::Result<u32> {
        let dev = vxlan_device(port);
        if capture::ifindex(&dev).is_none() {
            let port_s = port.to_string();
            host::ip(&[
                "link",
                "add",
                &dev,
                "type",
                "vxlan",
                "external",
                "dstport",
                &port_s,
                "nolearning",
            ])
            .map_err(|e| {
                anyhow!(
                    "cannot create the VXLAN device (is VXLAN in this kernel? CONFIG_VXLAN): {e:#}"
                )
            })?;
            // No addresses, no IPv6 chatter; room for any copy (the encapsulating program cuts
            // copies to the path MTU).
            host::ip(&["link", "set", "dev", &dev, "addrgenmode", "none"])?;
            host::ip(&["link", "set", "dev", &dev, "mtu", "65000", "up"]).map_err(|e| {
                if format!("{e:#}").contains("Address already in use") {
                    anyhow!(
                        "UDP port {port} is already taken in this network namespace (another \
                         VXLAN device or socket: `ip -d link show type vxlan`); pick another \
                         --dst-port"
                    )
                } else {
                    e
                }
            })?;
        }
        let index = capture::ifindex(&dev).ok_or_else(|| anyhow!("the device {dev} vanished"))?;
        self.attach_pinned(
            bpf,
            names::TC_MIRROR_ENCAP,
            &dev,
            TcAttachType::Egress,
            &format!("encap-{port}"),
        )?;
        Ok(index)
    }

    fn map<T: TryFrom<Map, Error = aya::maps::MapError>>(&self, name: &str) -> anyhow::Result<T> {
        let data = MapData::from_pin(self.pin(name))
            .map_err(|e| anyhow!("cannot open the pinned map {name}: {e}"))?;
        let map = Map::from_map_data(data)?;
        Ok(T::try_from(map)?)
    }

    /// Writes a session's slot, rules and zeroed counters (before it goes into the order).
    pub fn write_slot(
        &self,
        slot: u32,
        session: &MirrorSession,
        rules: &[FilterRule],
    ) -> anyhow::Result<()> {
        if rules.len() > MAX_RULES as usize {
            bail!("a session takes at most {MAX_RULES} rules");
        }
        let mut slots: Array<MapData, MirrorSession> = self.map(names::MIRROR_SLOTS)?;
        let mut rule_map: Array<MapData, FilterRule> = self.map(names::MIRROR_RULES)?;
        let mut counters: PerCpuArray<MapData, u64> = self.map(names::MIRROR_COUNTERS)?;
        for (i, r) in rules.iter().enumerate() {
            rule_map.set(slot * MAX_RULES + i as u32, r, 0)?;
        }
        let cpus = aya::util::nr_cpus().map_err(|(w, e)| anyhow!("{w}: {e}"))?;
        for c in 0..mc::PER_SESSION {
            counters.set(
                slot * mc::PER_SESSION + c,
                PerCpuValues::try_from(vec![0u64; cpus])?,
                0,
            )?;
        }
        let mut s = *session;
        s.rule_count = rules.len() as u32;
        slots.set(slot, s, 0)?;
        Ok(())
    }

    /// Publishes the evaluation order of the recorded sessions (ascending number): writes
    /// the inactive copy, then flips.
    pub fn publish_order(&self) -> anyhow::Result<()> {
        let mut order: Array<MapData, SessionOrder> = self.map(names::MIRROR_ORDER)?;
        let mut active: Array<MapData, u32> = self.map(names::MIRROR_ACTIVE)?;
        let mut sessions: Vec<&SessionRecord> = self.state.sessions.iter().collect();
        sessions.sort_by_key(|s| s.number);
        let mut o = SessionOrder::default();
        for (i, s) in sessions.iter().take(MAX_SESSIONS as usize).enumerate() {
            o.slots[i] = s.slot;
            o.count += 1;
        }
        let now = active.get(&0, 0)? & 1;
        let next = now ^ 1;
        order.set(next, o, 0)?;
        active.set(0, next, 0)?;
        Ok(())
    }

    pub fn counters(&self, slot: u32) -> anyhow::Result<SessionCounters> {
        let counters: PerCpuArray<MapData, u64> = self.map(names::MIRROR_COUNTERS)?;
        let sum = |c: u32| -> anyhow::Result<u64> {
            Ok(counters.get(&(slot * mc::PER_SESSION + c), 0)?.iter().sum())
        };
        Ok(SessionCounters {
            matched: sum(mc::MATCHED)?,
            sampled_out: sum(mc::SAMPLED_OUT)?,
            mirrored: sum(mc::MIRRORED)?,
            mirrored_bytes: sum(mc::MIRRORED_BYTES)?,
            truncated: sum(mc::TRUNCATED)?,
            mtu_truncated: sum(mc::MTU_TRUNCATED)?,
            dropped: sum(mc::DROPPED)?,
            direct: sum(mc::DIRECT)?,
        })
    }

    /// Namespace-wide counters: (seen, loop_skipped, foreign).
    pub fn global_counters(&self) -> anyhow::Result<(u64, u64, u64)> {
        let counters: PerCpuArray<MapData, u64> = self.map(names::MIRROR_COUNTERS)?;
        let sum = |c: u32| -> anyhow::Result<u64> { Ok(counters.get(&c, 0)?.iter().sum()) };
        Ok((sum(mc::SEEN)?, sum(mc::LOOP_SKIPPED)?, sum(mc::FOREIGN)?))
    }

    pub fn has_kernel_state(&self) -> bool {
        host::exists(&self.pin(names::MIRROR_COUNTERS))
    }

    /// Removes every pin and VXLAN device no recorded session needs; with no sessions left,
    /// removes everything, directory included. Errors are collected, not stopped at.
    pub fn reconcile(&self) -> anyhow::Result<()> {
        let ifindexes: BTreeSet<u32> = self.state.sessions.iter().map(|s| s.ifindex).collect();
        let ports: BTreeSet<u16> = self.state.sessions.iter().map(|s| s.dst_port).collect();
        let mut problems = Vec::new();
        if host::exists(&self.pin_dir) {
            if self.has_kernel_state() {
                if let Err(e) = self.publish_order() {
                    problems.push(format!("session order: {e:#}"));
                }
            }
            let entries = fs::read_dir(&self.pin_dir)
                .with_context(|| format!("cannot list {}", self.pin_dir.display()))?;
            for entry in entries.flatten() {
                let name = entry.file_name().to_string_lossy().into_owned();
                let keep = if let Some(i) = name
                    .strip_prefix("tc-in-")
                    .or_else(|| name.strip_prefix("tc-eg-"))
                {
                    i.parse().is_ok_and(|i: u32| ifindexes.contains(&i))
                } else if let Some(p) = name.strip_prefix("encap-") {
                    p.parse().is_ok_and(|p: u16| ports.contains(&p))
                } else {
                    !self.state.sessions.is_empty()
                };
                if !keep {
                    if let Err(e) = fs::remove_file(entry.path()) {
                        problems.push(format!("{}: {e}", entry.path().display()));
                    }
                }
            }
            if self.state.sessions.is_empty() {
                let _ = fs::remove_dir(&self.pin_dir);
                let _ = fs::remove_dir(self.pin_dir.parent().unwrap_or(&self.pin_dir));
            }
        }
        // VXLAN devices of ports no session uses.
        for (dev, _) in host::net_devices() {
            if let Some(p) = dev.strip_prefix("rftvx") {
                if p.parse().is_ok_and(|p: u16| !ports.contains(&p)) {
                    if let Err(e) = host::ip(&["link", "del", &dev]) {
                        problems.push(format!("{e:#}"));
                    }
                }
            }
        }
        if problems.is_empty() {
            Ok(())
        } else {
            bail!("could not clean up: {}", problems.join("; "))
        }
    }
}

impl Drop for Registry {
    /// With no sessions, nothing of this namespace stays behind, lock file included. (A
    /// command waiting on the lock holds the old file and goes on once we exit; the next
    /// one makes a new file.)
    fn drop(&mut self) {
        if self.state.sessions.is_empty() {
            let _ = fs::remove_file(&self.lock_path);
        }
    }
}

/// The first line and the end of a long kernel error (verifier logs run to thousands of
/// lines; the cause is at the end).
fn short_error(text: &str) -> String {
    let lines: Vec<&str> = text.lines().collect();
    if lines.len() <= 6 {
        return text.to_string();
    }
    format!(
        "{}\n  ...\n{}",
        lines[0],
        lines[lines.len() - 4..].join("\n")
    )
}
