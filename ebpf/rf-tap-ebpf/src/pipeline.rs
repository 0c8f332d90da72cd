//! The capture pipeline shared by every hook: parse, filter, sample, truncate, copy, count.
use aya_ebpf::helpers::generated::{
    bpf_ktime_get_ns, bpf_ringbuf_discard, bpf_ringbuf_reserve, bpf_ringbuf_submit,
};
use rf_tap_common::{
    copy_len, counter, rule_matches, sample_keeps, CaptureConfig, PacketKey, PacketRecord,
    VlanMeta, ACTION_ACCEPT, LINK_RAW_IP, MAX_CAPTURE, MAX_RULES, RECORD_HEADER_LEN, RECORD_VLAN,
};

use crate::{
    maps::{count, CONFIG, EVENTS, RULES},
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
    let ts_ns = unsafe { bpf_ktime_get_ns() };
    let wall = (ts_ns as i64).saturating_add(cfg.wall_offset_ns).max(0) as u64;
    let header = PacketRecord {
        ts_ns,
        ifindex,
        direction,
        flags: if vlan.present { RECORD_VLAN } else { 0 },
        vlan_tci: vlan.tci,
        vlan_proto: vlan.proto,
        _pad: [0; 6],
        pcap_sec: (wall / 1_000_000_000) as u32,
        pcap_nsec: (wall % 1_000_000_000) as u32,
        cap_len,
        orig_len,
    };
    // The packet goes straight into a ring slot: one copy, no staging area. A slot's size
    // must be a constant, so records take the smallest power of two that holds them (the
    // reader goes by `cap_len` and skips the rest).
    let outcome = match cap_len {
        0..=64 => emit::<P, 64>(p, &header),
        65..=128 => emit::<P, 128>(p, &header),
        129..=256 => emit::<P, 256>(p, &header),
        257..=512 => emit::<P, 512>(p, &header),
        513..=1024 => emit::<P, 1024>(p, &header),
        1025..=2048 => emit::<P, 2048>(p, &header),
        2049..=4096 => emit::<P, 4096>(p, &header),
        4097..=8192 => emit::<P, 8192>(p, &header),
        8193..=16384 => emit::<P, 16384>(p, &header),
        16385..=32768 => emit::<P, 32768>(p, &header),
        _ => emit::<P, { MAX_CAPTURE as usize }>(p, &header),
    };
    match outcome {
        Emitted::Copied => {
            count(counter::COPIED, 1);
            count(counter::COPIED_BYTES, orig_len as u64);
            if cap_len < orig_len {
                count(counter::TRUNCATED, 1);
            }
        }
        Emitted::RingFull => count(counter::RING_FULL, 1),
        Emitted::CopyFailed => count(counter::COPY_FAILED, 1),
    }
}

enum Emitted {
    Copied,
    RingFull,
    CopyFailed,
}

/// Reserves a ring slot of `N` packet bytes, reads up to `header.cap_len` (at most `N`) bytes
/// of the packet into it, and submits it.
#[inline(always)]
fn emit<P: PacketBytes, const N: usize>(p: &P, header: &PacketRecord) -> Emitted {
    let ring = core::ptr::addr_of!(EVENTS).cast_mut().cast();
    // No wakeup flag on submit: the kernel then wakes the reader only for a record that finds
    // it caught up (the first of a burst). While traffic flows the reader drains in batches
    // on its own schedule, so this costs nothing per packet.
    // SAFETY: plain helper call; a constant size, as the verifier requires.
    let slot = unsafe { bpf_ringbuf_reserve(ring, (RECORD_HEADER_LEN + N) as u64, 0) };
    if slot.is_null() {
        return Emitted::RingFull;
    }
    let slot = slot.cast::<u8>();
    let want = header.cap_len;
    if want > 0 {
        // Arithmetic clamp to [1, N] the verifier can follow (N is a power of two).
        let n = N as u32;
        let len = ((if want < n { want } else { n }) - 1) & (n - 1);
        // SAFETY: the slot holds RECORD_HEADER_LEN + N bytes and len + 1 <= N.
        if !p.read(0, unsafe { slot.add(RECORD_HEADER_LEN) }, len + 1) {
            // SAFETY: giving back the slot reserved above.
            unsafe { bpf_ringbuf_discard(slot.cast(), 0) };
            return Emitted::CopyFailed;
        }
    }
    // SAFETY: the slot is 8-byte aligned and starts with room for the header; submitting
    // hands it to the reader and it is not touched afterwards.
    unsafe {
        slot.cast::<PacketRecord>().write(*header);
        bpf_ringbuf_submit(slot.cast(), 0);
    }
    Emitted::Copied
}
