//! The capture pipeline shared by every hook: parse, filter, sample, truncate, copy, count.
use aya_ebpf::helpers::generated::{
    bpf_get_smp_processor_id, bpf_ktime_get_ns, bpf_ringbuf_output,
};
use rf_tap_common::{
    copy_len, counter, rule_matches, sample_keeps, CaptureConfig, PacketKey, VlanMeta,
    ACTION_ACCEPT, LINK_RAW_IP, MAX_RULES, RECORD_HEADER_LEN, RECORD_VLAN,
};

use crate::{
    maps::{count, CONFIG, EVENTS, RULES, SCRATCH},
    packet::PacketBytes,
};

const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;
const ETH_P_8021Q: u16 = 0x8100;
const ETH_P_8021AD: u16 = 0x88a8;
const IPPROTO_TCP: u8 = 6;
const IPPROTO_UDP: u8 = 17;
const IPPROTO_SCTP: u8 = 132;
const MAX_IPV6_EXT_HEADERS: u32 = 4;

/// Where parsing gave up: the packet is then matched as a non-IP frame.
pub(crate) struct Malformed;

// Each header is read with one helper call (helper calls dominate the per-packet cost).

#[inline(always)]
fn parse_ipv4<P: PacketBytes>(p: &P, off: u32, key: &mut PacketKey) -> Result<(), Malformed> {
    let h = p.load::<[u8; 20]>(off).ok_or(Malformed)?;
    let ihl = ((h[0] & 0x0f) as u32) * 4;
    if ihl < 20 {
        return Err(Malformed);
    }
    let frag = u16::from_be_bytes([h[6], h[7]]);
    key.protocol = h[9];
    key.src_addr[0] = u32::from_ne_bytes([h[12], h[13], h[14], h[15]]);
    key.dst_addr[0] = u32::from_ne_bytes([h[16], h[17], h[18], h[19]]);
    key.family = 4;
    // Only the first fragment carries the transport header.
    if frag & 0x1fff == 0 {
        parse_ports(p, off + ihl, key);
    }
    Ok(())
}

#[inline(always)]
fn parse_ipv6<P: PacketBytes>(p: &P, off: u32, key: &mut PacketKey) -> Result<(), Malformed> {
    let h = p.load::<[u8; 40]>(off).ok_or(Malformed)?;
    let mut next = h[6];
    for i in 0..4usize {
        key.src_addr[i] =
            u32::from_ne_bytes([h[8 + 4 * i], h[9 + 4 * i], h[10 + 4 * i], h[11 + 4 * i]]);
        key.dst_addr[i] =
            u32::from_ne_bytes([h[24 + 4 * i], h[25 + 4 * i], h[26 + 4 * i], h[27 + 4 * i]]);
    }
    key.family = 6;
    let mut l4 = off + 40;
    let mut first_fragment = true;
    for _ in 0..MAX_IPV6_EXT_HEADERS {
        match next {
            // Hop-by-hop, routing, destination options: length in 8-octet units, minus one.
            0 | 43 | 60 => {
                let hdr = p.load::<[u8; 2]>(l4).ok_or(Malformed)?;
                next = hdr[0];
                l4 += (hdr[1] as u32 + 1) * 8;
            }
            // Fragment header: fixed 8 bytes.
            44 => {
                let hdr = p.load::<[u8; 4]>(l4).ok_or(Malformed)?;
                next = hdr[0];
                first_fragment = u16::from_be_bytes([hdr[2], hdr[3]]) & 0xfff8 == 0;
                l4 += 8;
            }
            _ => break,
        }
    }
    key.protocol = next;
    if first_fragment {
        parse_ports(p, l4, key);
    }
    Ok(())
}

#[inline(always)]
fn parse_ports<P: PacketBytes>(p: &P, l4: u32, key: &mut PacketKey) {
    if matches!(key.protocol, IPPROTO_TCP | IPPROTO_UDP | IPPROTO_SCTP) {
        if let Some(ports) = p.load::<[u8; 4]>(l4) {
            key.src_port = u16::from_be_bytes([ports[0], ports[1]]);
            key.dst_port = u16::from_be_bytes([ports[2], ports[3]]);
            key.has_ports = true;
        }
    }
}

#[inline(always)]
pub(crate) fn parse_key<P: PacketBytes>(
    p: &P,
    link_kind: u32,
    key: &mut PacketKey,
) -> Result<(), Malformed> {
    let (ethertype, off) = if link_kind == LINK_RAW_IP {
        match p.u8_at(0).ok_or(Malformed)? >> 4 {
            4 => (ETH_P_IP, 0),
            6 => (ETH_P_IPV6, 0),
            _ => return Ok(()),
        }
    } else {
        // Ethertype plus room for two VLAN tags in one read; short frames fall back.
        match p.load::<[u8; 10]>(12) {
            Some(h) => {
                let mut et = u16::from_be_bytes([h[0], h[1]]);
                let mut off = 14;
                if et == ETH_P_8021Q || et == ETH_P_8021AD {
                    et = u16::from_be_bytes([h[4], h[5]]);
                    off = 18;
                    if et == ETH_P_8021Q || et == ETH_P_8021AD {
                        et = u16::from_be_bytes([h[8], h[9]]);
                        off = 22;
                    }
                }
                (et, off)
            }
            None => (p.be16_at(12).ok_or(Malformed)?, 14),
        }
    };
    match ethertype {
        ETH_P_IP => parse_ipv4(p, off, key),
        ETH_P_IPV6 => parse_ipv6(p, off, key),
        _ => Ok(()),
    }
}

/// Parses, filters and samples one packet, counting the outcome; returns the configuration
/// when the packet is to be copied.
#[inline(always)]
pub fn judge<P: PacketBytes>(p: &P, direction: u8) -> Option<&'static CaptureConfig> {
    count(counter::SEEN, 1);
    let cfg = CONFIG.get(0)?;
    let mut key = PacketKey::default();
    if parse_key(p, cfg.link_kind, &mut key).is_err() {
        // Treat what could not be parsed as a non-IP frame; only catch-all rules take it.
        key = PacketKey::default();
        count(counter::MALFORMED, 1);
    }

    let mut verdict = 0u8;
    for i in 0..MAX_RULES {
        if i >= cfg.rule_count {
            break;
        }
        if let Some(rule) = RULES.get(i) {
            if rule_matches(rule, &key, direction) {
                verdict = rule.action;
                break;
            }
        }
    }
    match verdict {
        0 => {
            count(counter::UNMATCHED, 1);
            return None;
        }
        ACTION_ACCEPT => count(counter::ACCEPTED, 1),
        _ => {
            count(counter::REJECTED, 1);
            return None;
        }
    }

    if !sample_keeps(&key, cfg.sample_threshold, cfg.sample_seed) {
        count(counter::SAMPLED_OUT, 1);
        return None;
    }
    Some(cfg)
}

/// Runs the whole pipeline for one packet. Never fails the packet: errors are counted.
#[inline(always)]
pub fn capture<P: PacketBytes>(p: &P, direction: u8, ifindex: u32, vlan: VlanMeta) {
    let Some(cfg) = judge(p, direction) else {
        return;
    };
    let orig_len = p.len();
    let cap_len = copy_len(orig_len, cfg.snaplen);
    // SAFETY: plain helper call.
    let cpu = unsafe { bpf_get_smp_processor_id() };
    let Some(scratch) = SCRATCH.get_ptr_mut(cpu) else {
        count(counter::COPY_FAILED, 1);
        return;
    };
    // SAFETY: the scratch slot of this CPU is ours until the program returns (no nesting).
    let scratch = unsafe { &mut *scratch };
    if cap_len > 0 && !p.read(0, scratch.data.as_mut_ptr(), cap_len) {
        count(counter::COPY_FAILED, 1);
        return;
    }
    // SAFETY: plain helper call.
    let ts_ns = unsafe { bpf_ktime_get_ns() };
    let wall = (ts_ns as i64).saturating_add(cfg.wall_offset_ns).max(0) as u64;
    scratch.header.ts_ns = ts_ns;
    scratch.header.pcap_sec = (wall / 1_000_000_000) as u32;
    scratch.header.pcap_nsec = (wall % 1_000_000_000) as u32;
    scratch.header.orig_len = orig_len;
    scratch.header.cap_len = cap_len;
    scratch.header.ifindex = ifindex;
    scratch.header.direction = direction;
    scratch.header.flags = if vlan.present { RECORD_VLAN } else { 0 };
    scratch.header.vlan_tci = vlan.tci;
    scratch.header.vlan_proto = vlan.proto;

    let size = RECORD_HEADER_LEN as u64 + cap_len as u64;
    let ring = core::ptr::addr_of!(EVENTS).cast_mut().cast();
    // No wakeup flag: the kernel then wakes the reader only for a record that finds it
    // caught up (the first of a burst). While traffic flows the reader drains in batches on
    // its own schedule, so this costs nothing per packet (no query of the ring's positions).
    // SAFETY: `size` never exceeds the scratch value (header + MAX_CAPTURE bytes).
    let ret = unsafe {
        bpf_ringbuf_output(
            ring,
            (scratch as *mut rf_tap_common::Scratch).cast(),
            size,
            0,
        )
    };
    if ret == 0 {
        count(counter::COPIED, 1);
        count(counter::COPIED_BYTES, orig_len as u64);
        if cap_len < orig_len {
            count(counter::TRUNCATED, 1);
        }
    } else {
        count(counter::RING_FULL, 1);
    }
}
