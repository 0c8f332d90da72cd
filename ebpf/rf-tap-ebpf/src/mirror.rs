//! Mirror sessions (VPC Traffic Mirroring semantics), two programs:
//!
//! * `tc_mirror_ingress`/`tc_mirror_egress` on each mirrored interface: evaluate the sessions
//!   of that interface in ascending session number; the first whose rules accept the packet
//!   claims it (a packet is mirrored once). The packet is cloned with `bpf_clone_redirect` to
//!   the namespace's VXLAN device; the session travels with the clone in `skb->mark`, which
//!   is set on the original only for the duration of the helper call and then restored, so
//!   the production packet leaves exactly as it came.
//! * `tc_mirror_encap` on that VXLAN device (collect_md mode) at egress: cuts the copy to the
//!   session's packet length or path MTU, then encapsulates it (RFC 7348). For an IPv4
//!   target it builds the outer Ethernet/IPv4/UDP/VXLAN headers itself and hands the copy
//!   to the neighbour of the next hop that `session create` resolved (`bpf_redirect_neigh`):
//!   no route lookup per copy. The kernel's VXLAN code, reached by setting the tunnel key
//!   and passing the copy on, does one per copy, because a tunnel key set from BPF disables
//!   the tunnel's route cache. That path still serves IPv6 targets (whose UDP checksum the
//!   kernel computes) and frames the direct path cannot take (non-IP, VLAN metadata, an
//!   already encapsulated packet).
use aya_ebpf::{
    bindings::{
        bpf_adj_room_mode::BPF_ADJ_ROOM_MAC, bpf_redir_neigh, bpf_tunnel_key,
        BPF_F_ADJ_ROOM_ENCAP_L2_ETH, BPF_F_ADJ_ROOM_ENCAP_L3_IPV4, BPF_F_ADJ_ROOM_ENCAP_L4_UDP,
        BPF_F_ADJ_ROOM_FIXED_GSO, BPF_F_RECOMPUTE_CSUM, BPF_F_TUNINFO_IPV6, TC_ACT_OK, TC_ACT_SHOT,
    },
    helpers::generated::{
        bpf_get_hash_recalc, bpf_get_prandom_u32, bpf_loop, bpf_redirect_neigh,
        bpf_skb_adjust_room, bpf_skb_change_tail, bpf_skb_set_tunnel_key, bpf_skb_store_bytes,
    },
    programs::TcContext,
};
use rf_tap_common::{
    mirror_counter as mc, rule_matches, sample_keeps, MirrorSession, PacketKey, ACTION_ACCEPT,
    MAX_RULES, MAX_SESSIONS, MIRROR_MARK_BASE, MIRROR_MARK_MASK,
};

use crate::{
    maps::{mirror_count, MIRROR_ACTIVE, MIRROR_ORDER, MIRROR_RULES, MIRROR_SLOTS},
    packet::PacketBytes,
    pipeline::parse_key,
};

#[inline(always)]
fn skb_field<T: Copy>(ctx: &TcContext, f: impl FnOnce(&aya_ebpf::bindings::__sk_buff) -> T) -> T {
    // SAFETY: reading fields of the program's own __sk_buff context.
    f(unsafe { &*ctx.skb.skb })
}

/// State of one walk over the sessions, shared with the `bpf_loop` callback.
#[repr(C)]
struct Walk {
    key: PacketKey,
    ifindex: u32,
    active: u32,
    direction: u8,
    _pad: [u8; 3],
    /// The slot that claimed the packet, or `MAX_SESSIONS`.
    claimed: u32,
}

/// One session of the walk (the `i`-th in the order): 1 stops the walk.
extern "C" fn visit_session(i: u64, walk: *mut core::ffi::c_void) -> i64 {
    // SAFETY: bpf_loop hands back the pointer mirror() passed: a Walk on its stack.
    let walk = unsafe { &mut *(walk as *mut Walk) };
    let Some(order) = MIRROR_ORDER.get(walk.active) else {
        return 1;
    };
    let slot = order.slots[(i as u32 & (MAX_SESSIONS - 1)) as usize];
    if slot >= MAX_SESSIONS {
        return 0;
    }
    let Some(s) = MIRROR_SLOTS.get(slot) else {
        return 0;
    };
    if s.ifindex != walk.ifindex {
        return 0;
    }
    for r in 0..MAX_RULES {
        if r >= s.rule_count {
            break;
        }
        if let Some(rule) = MIRROR_RULES.get(slot * MAX_RULES + r) {
            if rule_matches(rule, &walk.key, walk.direction) {
                if rule.action == ACTION_ACCEPT {
                    walk.claimed = slot;
                    return 1;
                }
                // Rejected by this session: the next session may still take it.
                return 0;
            }
        }
    }
    0
}

/// Mirrors the packet to the first session of this interface that accepts it.
#[inline(always)]
pub fn mirror(ctx: &TcContext, direction: u8) {
    let mark = skb_field(ctx, |s| s.mark);
    if mark & MIRROR_MARK_MASK == MIRROR_MARK_BASE {
        mirror_count(mc::LOOP_SKIPPED, 1);
        return;
    }
    mirror_count(mc::SEEN, 1);
    let ifindex = skb_field(ctx, |s| s.ifindex);
    let active = MIRROR_ACTIVE.get(0).copied().unwrap_or(0) & 1;
    let Some(order) = MIRROR_ORDER.get(active) else {
        return;
    };
    let count = if order.count < MAX_SESSIONS {
        order.count
    } else {
        MAX_SESSIONS
    };
    // How this interface's frames begin (the first of its sessions says); none: done.
    let mut link_kind = u32::MAX;
    for i in 0..MAX_SESSIONS {
        if i >= count {
            break;
        }
        let slot = order.slots[(i & (MAX_SESSIONS - 1)) as usize];
        if let Some(s) = MIRROR_SLOTS.get(slot) {
            if s.ifindex == ifindex {
                link_kind = s.link_kind;
                break;
            }
        }
    }
    if link_kind == u32::MAX {
        return;
    }
    let mut walk = Walk {
        key: PacketKey::default(),
        ifindex,
        active,
        direction,
        _pad: [0; 3],
        claimed: MAX_SESSIONS,
    };
    if parse_key(ctx, link_kind, &mut walk.key).is_err() {
        walk.key = PacketKey::default();
    }
    // SAFETY: the callback only touches the Walk passed, which lives across the call.
    unsafe {
        bpf_loop(
            count,
            visit_session as *mut core::ffi::c_void,
            (&mut walk as *mut Walk).cast(),
            0,
        )
    };
    let slot = walk.claimed;
    if slot >= MAX_SESSIONS {
        return;
    }
    let Some(s) = MIRROR_SLOTS.get(slot) else {
        return;
    };
    let base = slot * mc::PER_SESSION;
    mirror_count(base + mc::MATCHED, 1);
    if !sample_keeps(&walk.key, s.sample_threshold, s.sample_seed) {
        mirror_count(base + mc::SAMPLED_OUT, 1);
        return;
    }
    let len = ctx.len();
    ctx.set_mark(MIRROR_MARK_BASE | slot);
    let sent = ctx.clone_redirect(s.vxlan_ifindex, 0);
    ctx.set_mark(mark);
    if sent.is_ok() {
        mirror_count(base + mc::MIRRORED, 1);
        mirror_count(base + mc::MIRRORED_BYTES, len as u64);
    } else {
        mirror_count(base + mc::DROPPED, 1);
    }
}

/// Bytes of the Ethernet, IP and TCP/UDP headers at the front of a frame (0 if unknown).
#[inline(always)]
fn header_len(ctx: &TcContext) -> u32 {
    let Some(h) = PacketBytes::load::<[u8; 2]>(ctx, 12) else {
        return 0;
    };
    let (l3, et) = match u16::from_be_bytes(h) {
        0x8100 | 0x88a8 => match PacketBytes::load::<[u8; 2]>(ctx, 16) {
            Some(e) => (18u32, u16::from_be_bytes(e)),
            None => return 0,
        },
        e => (14u32, e),
    };
    let (l4, proto) = match et {
        0x0800 => match PacketBytes::load::<[u8; 10]>(ctx, l3) {
            Some(ip) => (l3 + ((ip[0] & 0x0f) as u32) * 4, ip[9]),
            None => return 0,
        },
        0x86dd => match PacketBytes::load::<[u8; 7]>(ctx, l3) {
            Some(ip) => (l3 + 40, ip[6]),
            None => return 0,
        },
        _ => return 0,
    };
    match proto {
        6 => match PacketBytes::load::<[u8; 13]>(ctx, l4) {
            Some(tcp) => l4 + ((tcp[12] >> 4) as u32) * 4,
            None => 0,
        },
        17 => l4 + 8,
        _ => 0,
    }
}

/// Egress of the VXLAN device: cut the copy and give it its tunnel key.
#[inline(always)]
pub fn encap(ctx: &TcContext) -> i32 {
    let mark = skb_field(ctx, |s| s.mark);
    if mark & MIRROR_MARK_MASK != MIRROR_MARK_BASE {
        // Nothing but rf-tap copies belongs on this device (IPv6 neighbour chatter, say).
        mirror_count(mc::FOREIGN, 1);
        return TC_ACT_SHOT as i32;
    }
    let slot = mark & !MIRROR_MARK_MASK;
    if slot >= MAX_SESSIONS {
        mirror_count(mc::FOREIGN, 1);
        return TC_ACT_SHOT as i32;
    }
    let base = slot * mc::PER_SESSION;
    let Some(s) = MIRROR_SLOTS.get(slot) else {
        return TC_ACT_SHOT as i32;
    };
    let len = ctx.len();
    let limit = if s.packet_length < s.mtu_limit {
        s.packet_length
    } else {
        s.mtu_limit
    };
    if len > limit {
        // A GSO super-packet whose segments fit is left whole: the VXLAN device segments it
        // into one encapsulated packet per wire segment. Otherwise the copy is cut, as AWS
        // does when a mirrored packet is larger than the target's MTU.
        let gso_size = skb_field(ctx, |s| s.gso_size);
        let gso_segs = skb_field(ctx, |s| s.gso_segs);
        let headers = if gso_segs > 1 && gso_size > 0 {
            header_len(ctx)
        } else {
            0
        };
        let segment_fits = headers > 0 && headers + gso_size <= limit;
        if !segment_fits {
            // SAFETY: plain helper call on our own context.
            let cut = unsafe { bpf_skb_change_tail(ctx.skb.skb, limit, 0) };
            if cut != 0 {
                mirror_count(base + mc::DROPPED, 1);
                return TC_ACT_SHOT as i32;
            }
            mirror_count(base + mc::TRUNCATED, 1);
            if s.mtu_limit <= s.packet_length {
                mirror_count(base + mc::MTU_TRUNCATED, 1);
            }
        }
    }
    if let Some(verdict) = encap_direct(ctx, s, base) {
        return verdict;
    }
    // SAFETY: bpf_tunnel_key is plain data; all zeroes is a valid value.
    let mut key: bpf_tunnel_key = unsafe { core::mem::zeroed() };
    key.tunnel_id = s.vni;
    key.tunnel_ttl = 64;
    let flags = if s.family == 6 {
        key.__bindgen_anon_1.remote_ipv6 = s.remote;
        BPF_F_TUNINFO_IPV6 as u64
    } else {
        // The helper takes the IPv4 address in host order.
        key.__bindgen_anon_1.remote_ipv4 = u32::from_be(s.remote[0]);
        0
    };
    // SAFETY: key is a valid bpf_tunnel_key of the size passed.
    let ret = unsafe {
        bpf_skb_set_tunnel_key(
            ctx.skb.skb,
            &mut key,
            core::mem::size_of::<bpf_tunnel_key>() as u32,
            flags,
        )
    };
    if ret != 0 {
        mirror_count(base + mc::DROPPED, 1);
        return TC_ACT_SHOT as i32;
    }
    TC_ACT_OK as i32
}

/// Outer headers of an IPv4 copy: Ethernet (filled in by the neighbour), IPv4, UDP, VXLAN.
const OUTER_V4: u32 = 14 + 20 + 8 + 8;

/// Encapsulates the copy in place and sends it to the next hop's neighbour. `None`: the copy
/// is untouched and takes the VXLAN device's path instead.
#[inline(always)]
fn encap_direct(ctx: &TcContext, s: &MirrorSession, base: u32) -> Option<i32> {
    if s.egress_ifindex == 0 || s.family != 4 || skb_field(ctx, |k| k.vlan_present) != 0 {
        return None;
    }
    let inner_eth = PacketBytes::load::<[u8; 14]>(ctx, 0)?;
    let ether_type = u16::from_be_bytes([inner_eth[12], inner_eth[13]]);
    // __sk_buff.protocol holds the be16 value. The helper below only grows IP packets.
    let protocol = u16::from_be(skb_field(ctx, |k| k.protocol) as u16);
    if ether_type != protocol || (ether_type != 0x0800 && ether_type != 0x86dd) {
        return None;
    }
    // Room after the Ethernet header for the outer IPv4/UDP/VXLAN headers and a copy of the
    // inner Ethernet header (50 bytes): the first 14 bytes then become the outer Ethernet
    // header. FIXED_GSO keeps the
    // segment size, so a super-packet is cut into the same segments as the wire carried.
    let flags = (BPF_F_ADJ_ROOM_FIXED_GSO
        | BPF_F_ADJ_ROOM_ENCAP_L3_IPV4
        | BPF_F_ADJ_ROOM_ENCAP_L4_UDP
        | BPF_F_ADJ_ROOM_ENCAP_L2_ETH) as u64
        | (14u64 << 56);
    // SAFETY: plain helper call on our own context.
    if unsafe { bpf_skb_adjust_room(ctx.skb.skb, OUTER_V4 as i32, BPF_ADJ_ROOM_MAC, flags) } != 0 {
        // Not growable here (say, already encapsulated): the VXLAN device's path takes it.
        return None;
    }
    // From here on the copy is changed: any failure drops it.
    let len = ctx.len();
    let ip_len = (len - 14) as u16;
    let udp_len = (len - 34) as u16;
    // SAFETY: plain helper calls.
    let hash = unsafe { bpf_get_hash_recalc(ctx.skb.skb) };
    let hash = hash ^ (hash << 16);
    let span = if s.src_port_span == 0 {
        1
    } else {
        s.src_port_span
    };
    let src_port = (s.src_port_min + (((hash as u64) * span as u64) >> 32) as u32) as u16;
    // SAFETY: as above.
    let id = unsafe { bpf_get_prandom_u32() } as u16;
    let src = s.local[0].to_ne_bytes();
    let dst = s.remote[0].to_ne_bytes();
    let mut h = [0u8; OUTER_V4 as usize + 14];
    // Outer Ethernet: addresses are written by the neighbour; a zero destination keeps
    // bpf_redirect_neigh from taking the copy for multicast.
    h[12] = 0x08;
    // IPv4: version 4, 20 bytes, no DF (the kernel's VXLAN default), TTL 64, UDP.
    h[14] = 0x45;
    h[16..18].copy_from_slice(&ip_len.to_be_bytes());
    h[18..20].copy_from_slice(&id.to_be_bytes());
    h[22] = 64;
    h[23] = 17;
    h[26..30].copy_from_slice(&src);
    h[30..34].copy_from_slice(&dst);
    let mut sum = 0u32;
    for i in 0..10 {
        sum += u16::from_be_bytes([h[14 + 2 * i], h[15 + 2 * i]]) as u32;
    }
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    h[24..26].copy_from_slice(&(!(sum as u16)).to_be_bytes());
    // UDP: checksum 0, which IPv4 allows and the kernel's VXLAN device sends by default.
    h[34..36].copy_from_slice(&src_port.to_be_bytes());
    h[36..38].copy_from_slice(&(s.dst_port as u16).to_be_bytes());
    h[38..40].copy_from_slice(&udp_len.to_be_bytes());
    // VXLAN: the I flag and the VNI.
    h[42] = 0x08;
    h[46..49].copy_from_slice(&s.vni.to_be_bytes()[1..4]);
    h[50..64].copy_from_slice(&inner_eth);
    // SAFETY: h is a valid buffer of the length passed.
    let stored = unsafe {
        bpf_skb_store_bytes(
            ctx.skb.skb,
            0,
            h.as_ptr().cast(),
            h.len() as u32,
            BPF_F_RECOMPUTE_CSUM as u64,
        )
    };
    if stored != 0 {
        mirror_count(base + mc::DROPPED, 1);
        return Some(TC_ACT_SHOT as i32);
    }
    let mut nh = bpf_redir_neigh {
        nh_family: 2, // AF_INET
        __bindgen_anon_1: aya_ebpf::bindings::bpf_redir_neigh__bindgen_ty_1 {
            ipv4_nh: s.nexthop[0],
        },
    };
    // SAFETY: nh is a valid bpf_redir_neigh of the size passed.
    let verdict = unsafe {
        bpf_redirect_neigh(
            s.egress_ifindex,
            &mut nh,
            core::mem::size_of::<bpf_redir_neigh>() as i32,
            0,
        )
    };
    if verdict as i32 == TC_ACT_SHOT as i32 {
        mirror_count(base + mc::DROPPED, 1);
    } else {
        mirror_count(base + mc::DIRECT, 1);
    }
    Some(verdict as i32)
}
