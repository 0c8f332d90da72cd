//! Records shared by the rf-tap kernel programs and userspace.
//!
//! Everything here is `#[repr(C)]` plain data, laid out identically on both sides of the
//! BPF map boundary. The matching and sampling functions are plain `no_std` Rust: the
//! kernel programs call them per packet, and userspace unit tests call the very same code,
//! so the semantics that are tested are the semantics that run in the kernel.
#![no_std]

/// Most rules one capture can carry. Userspace refuses more.
pub const MAX_RULES: u32 = 64;

/// Largest number of bytes copied from one packet. A power of two, so that the kernel can
/// clamp a copy length arithmetically (`((min(len, N) - 1) & (N - 1)) + 1`). Large enough for
/// a whole GSO/GRO super-packet (64 KiB); longer BIG TCP packets are cut here and counted
/// as truncated, with their original length kept.
pub const MAX_CAPTURE: u32 = 65536;

/// Names of the maps and programs in the object file.
pub mod names {
    pub const RULES: &str = "RULES";
    pub const CONFIG: &str = "CONFIG";
    pub const COUNTERS: &str = "COUNTERS";
    pub const EVENTS: &str = "EVENTS";
    pub const TC_INGRESS: &str = "tc_ingress";
    pub const TC_EGRESS: &str = "tc_egress";
    pub const XDP_INGRESS: &str = "xdp_ingress";
    pub const XDP_SINK: &str = "xdp_sink";
    pub const XSKS: &str = "XSKS";
    pub const MIRROR_SLOTS: &str = "MIRROR_SLOTS";
    pub const MIRROR_RULES: &str = "MIRROR_RULES";
    pub const MIRROR_ORDER: &str = "MIRROR_ORDER";
    pub const MIRROR_ACTIVE: &str = "MIRROR_ACTIVE";
    pub const MIRROR_COUNTERS: &str = "MIRROR_COUNTERS";
    pub const TC_MIRROR_INGRESS: &str = "tc_mirror_ingress";
    pub const TC_MIRROR_EGRESS: &str = "tc_mirror_egress";
    pub const TC_MIRROR_ENCAP: &str = "tc_mirror_encap";
}

/// Actions of a filter rule.
pub const ACTION_ACCEPT: u8 = 1;
pub const ACTION_REJECT: u8 = 2;

/// Direction bits (a rule's `directions` is a mask of these; a packet has exactly one).
pub const DIR_INGRESS: u8 = 1;
pub const DIR_EGRESS: u8 = 2;

/// `FilterRule::flags`: the rule names an IP protocol.
pub const RULE_MATCH_PROTO: u8 = 1;
/// `FilterRule::flags`: the rule names a port range, so only packets with ports (TCP, UDP,
/// SCTP, first fragment) can match.
pub const RULE_MATCH_PORTS: u8 = 2;

/// How the frames of the attached interface begin.
pub const LINK_ETHERNET: u32 = 0;
/// No link-layer header (tun, wireguard, ...): the frame starts with the IP header.
pub const LINK_RAW_IP: u32 = 1;

/// Sampling thresholds are in units of 1/10000 (so 12.5 % is 1250).
pub const SAMPLE_SCALE: u32 = 10_000;

/// One numbered filter rule, in the order the kernel evaluates them (ascending number).
///
/// Addresses and masks are four 32-bit words in the byte order they have on the wire,
/// loaded as native words; an IPv4 rule uses word 0 only.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FilterRule {
    pub number: u32,
    pub action: u8,
    pub directions: u8,
    /// IP protocol number, meaningful with `RULE_MATCH_PROTO`.
    pub protocol: u8,
    /// 0: any frame (IP or not), 4: IPv4 only, 6: IPv6 only.
    pub family: u8,
    pub flags: u8,
    pub _pad: [u8; 3],
    /// Inclusive ranges `[lo, hi]`; `[0, 65535]` when the rule does not constrain it.
    pub src_port: [u16; 2],
    pub dst_port: [u16; 2],
    pub src_addr: [u32; 4],
    pub src_mask: [u32; 4],
    pub dst_addr: [u32; 4],
    pub dst_mask: [u32; 4],
}

/// Settings of one capture, in slot 0 of the `CONFIG` array.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CaptureConfig {
    pub rule_count: u32,
    /// Bytes copied per packet, 1..=MAX_CAPTURE.
    pub snaplen: u32,
    /// A flow is captured when `flow_hash % SAMPLE_SCALE < sample_threshold`.
    pub sample_threshold: u32,
    pub sample_seed: u32,
    pub link_kind: u32,
    pub _pad: u32,
    /// CLOCK_REALTIME - CLOCK_MONOTONIC in nanoseconds, measured at attach: the kernel stamps
    /// each record with wall-clock time from `bpf_ktime_get_ns()` and this.
    pub wall_offset_ns: i64,
}

/// Header of each record in the `EVENTS` ring buffer; `cap_len` packet bytes follow it, then
/// padding up to the record's slot size (the smallest power of two, at least 64, that holds
/// `cap_len`: the kernel reserves slots of constant size), which readers skip.
///
/// Its last 16 bytes are a classic pcap record header (nanosecond timestamps, host byte
/// order), so `header[PCAP_RECORD_AT..]` plus the packet bytes is a pcap record as it goes into
/// a file, and userspace can hand it to `writev` straight from the ring.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PacketRecord {
    /// `bpf_ktime_get_ns()`: CLOCK_MONOTONIC nanoseconds.
    pub ts_ns: u64,
    pub ifindex: u32,
    pub direction: u8,
    /// `RECORD_VLAN`: the kernel had moved a VLAN tag out of the frame into metadata (VLAN
    /// offload); userspace puts it back, as libpcap does.
    pub flags: u8,
    pub vlan_tci: u16,
    /// Tag protocol in host order (0x8100 or 0x88a8).
    pub vlan_proto: u16,
    pub _pad: [u8; 6],
    /// Wall-clock seconds (`ts_ns` + `CaptureConfig::wall_offset_ns`).
    pub pcap_sec: u32,
    /// Nanoseconds within `pcap_sec`.
    pub pcap_nsec: u32,
    pub cap_len: u32,
    pub orig_len: u32,
}

/// Where the pcap record header starts inside [`PacketRecord`].
pub const PCAP_RECORD_AT: usize = 24;

/// `PacketRecord::flags`: `vlan_tci`/`vlan_proto` hold a tag to re-insert after the MACs.
pub const RECORD_VLAN: u8 = 1;

/// A VLAN tag the kernel keeps outside the frame data.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VlanMeta {
    pub present: bool,
    pub tci: u16,
    pub proto: u16,
}

pub const RECORD_HEADER_LEN: usize = core::mem::size_of::<PacketRecord>();

/// What the AF_XDP sink program puts in front of each frame (XDP metadata, which copy mode
/// copies into the UMEM too): the kernel's receive time, as the ring buffer records carry it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct XskMeta {
    pub ts_ns: u64,
    pub magic: u32,
    pub _pad: u32,
}

/// `XskMeta::magic`, so that userspace never takes stray bytes for a timestamp.
pub const XSK_META_MAGIC: u32 = 0x5246_584d;
pub const XSK_META_LEN: usize = core::mem::size_of::<XskMeta>();

/// Slots of the per-CPU `COUNTERS` array. For every packet:
/// `seen = accepted + rejected + unmatched` and
/// `accepted = sampled_out + copied + ring_full + copy_failed`.
pub mod counter {
    pub const SEEN: u32 = 0;
    pub const ACCEPTED: u32 = 1;
    pub const REJECTED: u32 = 2;
    pub const UNMATCHED: u32 = 3;
    pub const SAMPLED_OUT: u32 = 4;
    pub const COPIED: u32 = 5;
    /// Dropped because the ring buffer was full (userspace too slow).
    pub const RING_FULL: u32 = 6;
    /// Copied with fewer bytes than the packet had (snaplen or MAX_CAPTURE).
    pub const TRUNCATED: u32 = 7;
    /// Bytes of all copied packets, before truncation.
    pub const COPIED_BYTES: u32 = 8;
    /// Headers too short to parse; such packets are treated as non-IP frames.
    pub const MALFORMED: u32 = 9;
    /// The packet could not be read into its ring slot (should never happen); for the
    /// AF_XDP sink: no socket was bound to the packet's receive queue.
    pub const COPY_FAILED: u32 = 10;
    pub const SLOTS: u32 = 16;
}

/// What the kernel parsed out of a packet's headers, the input of rule matching.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PacketKey {
    /// 0 for non-IP frames, else 4 or 6.
    pub family: u8,
    pub protocol: u8,
    pub has_ports: bool,
    pub src_port: u16,
    pub dst_port: u16,
    pub src_addr: [u32; 4],
    pub dst_addr: [u32; 4],
}

#[inline(always)]
fn addr_matches(addr: &[u32; 4], want: &[u32; 4], mask: &[u32; 4], family: u8) -> bool {
    if family == 4 {
        addr[0] & mask[0] == want[0]
    } else {
        (addr[0] & mask[0] == want[0])
            & (addr[1] & mask[1] == want[1])
            & (addr[2] & mask[2] == want[2])
            & (addr[3] & mask[3] == want[3])
    }
}

#[inline(always)]
fn in_range(port: u16, range: [u16; 2]) -> bool {
    port >= range[0] && port <= range[1]
}

/// Whether `rule` selects a packet with headers `key` seen in direction `direction`.
#[inline(always)]
pub fn rule_matches(rule: &FilterRule, key: &PacketKey, direction: u8) -> bool {
    if rule.directions & direction == 0 {
        return false;
    }
    if rule.family != 0 {
        if key.family != rule.family {
            return false;
        }
        if !addr_matches(&key.src_addr, &rule.src_addr, &rule.src_mask, rule.family)
            || !addr_matches(&key.dst_addr, &rule.dst_addr, &rule.dst_mask, rule.family)
        {
            return false;
        }
    }
    if rule.flags & RULE_MATCH_PROTO != 0 && (key.family == 0 || key.protocol != rule.protocol) {
        return false;
    }
    if rule.flags & RULE_MATCH_PORTS != 0
        && (!key.has_ports
            || !in_range(key.src_port, rule.src_port)
            || !in_range(key.dst_port, rule.dst_port))
    {
        return false;
    }
    true
}

#[inline(always)]
const fn fmix32(mut h: u32) -> u32 {
    h ^= h >> 16;
    h = h.wrapping_mul(0x85eb_ca6b);
    h ^= h >> 13;
    h = h.wrapping_mul(0xc2b2_ae35);
    h ^= h >> 16;
    h
}

#[inline(always)]
fn endpoint_hash(addr: &[u32; 4], port: u16) -> u32 {
    fmix32(
        addr[0]
            ^ addr[1].rotate_left(7)
            ^ addr[2].rotate_left(13)
            ^ addr[3].rotate_left(19)
            ^ (port as u32).wrapping_mul(0x9e37_79b1),
    )
}

/// A hash of the flow that is the same in both directions, so that sampling keeps or drops
/// whole connections.
#[inline(always)]
pub fn flow_hash(key: &PacketKey, seed: u32) -> u32 {
    let ports = key.has_ports;
    let sp = if ports { key.src_port } else { 0 };
    let dp = if ports { key.dst_port } else { 0 };
    fmix32(
        endpoint_hash(&key.src_addr, sp)
            ^ endpoint_hash(&key.dst_addr, dp)
            ^ (key.protocol as u32).wrapping_mul(0x27d4_eb2d)
            ^ seed,
    )
}

/// Whether sampling keeps this packet. Non-IP frames are always kept.
#[inline(always)]
pub fn sample_keeps(key: &PacketKey, threshold: u32, seed: u32) -> bool {
    if threshold >= SAMPLE_SCALE || key.family == 0 {
        return true;
    }
    flow_hash(key, seed) % SAMPLE_SCALE < threshold
}

/// Bytes to copy for a packet of `len` bytes under `snaplen`, clamped into
/// `1..=MAX_CAPTURE` in a form the verifier can follow. Returns 0 for an empty packet.
#[inline(always)]
pub fn copy_len(len: u32, snaplen: u32) -> u32 {
    let want = if len < snaplen { len } else { snaplen };
    if want == 0 {
        return 0;
    }
    let want = if want < MAX_CAPTURE {
        want
    } else {
        MAX_CAPTURE
    };
    ((want - 1) & (MAX_CAPTURE - 1)) + 1
}

/// Most mirror sessions one network namespace can hold.
pub const MAX_SESSIONS: u32 = 16;

/// A mirror copy carries `MIRROR_MARK_BASE | slot` in `skb->mark` from the moment it is
/// cloned: the encapsulating program reads the session from it, and the mirroring programs
/// never mirror a packet with such a mark (so the encapsulated copies, which keep it, can
/// never be mirrored again, even when they leave through a mirrored interface).
pub const MIRROR_MARK_BASE: u32 = 0x5246_5400;
pub const MIRROR_MARK_MASK: u32 = 0xffff_ff00;

/// One mirror session, in slot `slot` of `MIRROR_SLOTS`. Written before the session is put
/// into the evaluation order and never changed while it is in it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MirrorSession {
    /// Session number (1-32766): lower numbers are evaluated first.
    pub number: u32,
    /// The mirrored interface.
    pub ifindex: u32,
    pub link_kind: u32,
    pub rule_count: u32,
    pub sample_threshold: u32,
    pub sample_seed: u32,
    /// The VXLAN device (collect_md) the copies are encapsulated by.
    pub vxlan_ifindex: u32,
    pub vni: u32,
    /// Bytes of the inner frame kept (`--packet-length`; MAX when not given).
    pub packet_length: u32,
    /// Largest inner frame that fits the path MTU to the target once encapsulated.
    pub mtu_limit: u32,
    /// 4 or 6.
    pub family: u32,
    /// The interface the route to the target leaves by, when the encapsulating program
    /// builds IPv4 copies itself and hands them to that interface's neighbour (no route
    /// lookup per copy); 0: every copy goes through the VXLAN device's own path.
    pub egress_ifindex: u32,
    /// Target address: words in wire byte order loaded as native words (IPv4 uses word 0).
    pub remote: [u32; 4],
    /// The source address the route to the target picks (same layout as `remote`).
    pub local: [u32; 4],
    /// The next hop towards the target: the target itself, or the route's gateway.
    pub nexthop: [u32; 4],
    /// VXLAN destination UDP port, host order.
    pub dst_port: u32,
    /// Source UDP ports are spread over `src_port_min..src_port_min + src_port_span` by the
    /// inner flow's hash, as the kernel's VXLAN device does.
    pub src_port_min: u32,
    pub src_port_span: u32,
    pub _pad: u32,
}

/// The order sessions are evaluated in: `count` slot numbers, ascending session number.
/// Two copies exist; `MIRROR_ACTIVE[0]` says which one is live, so userspace rewrites the
/// other and flips, and a packet never sees a half-written order.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SessionOrder {
    pub count: u32,
    pub slots: [u32; MAX_SESSIONS as usize],
}

/// Per-CPU counters of mirror sessions: slot `s` uses `s * mirror_counter::PER_SESSION + c`;
/// the namespace-wide ones follow the last session.
pub mod mirror_counter {
    /// Packets this session's filter accepted (it claimed them: no later session sees them).
    pub const MATCHED: u32 = 0;
    pub const SAMPLED_OUT: u32 = 1;
    /// Copies handed to the VXLAN device.
    pub const MIRRORED: u32 = 2;
    /// Bytes of the mirrored packets, before truncation.
    pub const MIRRORED_BYTES: u32 = 3;
    /// Copies cut to `--packet-length` or to the path MTU.
    pub const TRUNCATED: u32 = 4;
    /// Of those, copies cut because the path MTU was smaller than the copy.
    pub const MTU_TRUNCATED: u32 = 5;
    /// Copies the kernel could not clone, cut or encapsulate.
    pub const DROPPED: u32 = 6;
    /// Of the mirrored copies, those rf-tap encapsulated itself and handed to the next hop's
    /// neighbour; the rest took the VXLAN device's own path.
    pub const DIRECT: u32 = 7;
    pub const PER_SESSION: u32 = 8;

    /// Namespace-wide: packets the mirror programs looked at.
    pub const SEEN: u32 = super::MAX_SESSIONS * PER_SESSION;
    /// Namespace-wide: rf-tap's own encapsulated copies, never mirrored again.
    pub const LOOP_SKIPPED: u32 = SEEN + 1;
    /// Namespace-wide: packets on an rf-tap VXLAN device that were not rf-tap copies
    /// (dropped there).
    pub const FOREIGN: u32 = SEEN + 2;
    pub const SLOTS: u32 = SEEN + PER_SESSION;
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: all of these are #[repr(C)] structs of integers and integer arrays with
    // explicit padding fields, so every bit pattern is a valid value.
    unsafe impl aya::Pod for super::FilterRule {}
    unsafe impl aya::Pod for super::CaptureConfig {}
    unsafe impl aya::Pod for super::PacketRecord {}
    unsafe impl aya::Pod for super::MirrorSession {}
    unsafe impl aya::Pod for super::SessionOrder {}
}
