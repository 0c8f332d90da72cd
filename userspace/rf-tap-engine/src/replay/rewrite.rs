//! Rewriting frames for the target network, on the fly (tcprewrite's edits).
//!
//! Every frame leaves as Ethernet: raw IP, BSD loopback and Linux SLL/SLL2 captures get an
//! Ethernet header (source MAC from SLL when it has one, else zero; destination broadcast,
//! unless `--enet-smac`/`--enet-dmac` say otherwise). Then, in this order: snaplen-truncated
//! frames are padded, trimmed or left out (`fixlen`), VLAN tags stripped or one added, MACs
//! set, IP addresses mapped (`srcipmap`/`dstipmap`, then `unique_ip` per loop), TCP/UDP
//! ports mapped. When any IP-level edit applies (or `fix_checksums`), the IPv4 header
//! checksum and the TCP/UDP/ICMPv6 checksum are recomputed over the whole segment, or
//! adjusted incrementally (RFC 1624) when the segment is not whole in the frame (truncated
//! capture, IP fragment), so a checksum that was right stays right.
//!
//! Malformed frames are sent as they are (no edit applies past a header that does not fit),
//! never a panic.

use std::net::IpAddr;

use crate::{filter::Cidr, wire};

/// Maps addresses inside `from` into `to`, keeping the host bits (tcprewrite's pseudo-NAT).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IpMap {
    pub from: Cidr,
    pub to: Cidr,
}

impl std::str::FromStr for IpMap {
    type Err = String;
    /// `10.0.0.0/24:192.168.1.0/24`, `2001:db8::/64:2001:db8:1::/64`, or with brackets
    /// `[2001:db8::]/64:[fd00::]/64`.
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("`{s}` is not a map CIDR:CIDR (e.g. 10.0.0.0/24:192.168.1.0/24)");
        let slash = s.find('/').ok_or_else(bad)?;
        let digits = s[slash + 1..]
            .find(|c: char| !c.is_ascii_digit())
            .ok_or_else(bad)?;
        let split = slash + 1 + digits;
        if s.as_bytes().get(split) != Some(&b':') {
            return Err(bad());
        }
        let clean = |t: &str| t.replace(['[', ']'], "");
        let from: Cidr = clean(&s[..split]).parse()?;
        let to: Cidr = clean(&s[split + 1..]).parse()?;
        if from.addr.is_ipv4() != to.addr.is_ipv4() {
            return Err(format!("`{s}` maps between IPv4 and IPv6"));
        }
        Ok(Self { from, to })
    }
}

fn mask_bytes(prefix: u8, len: usize) -> [u8; 16] {
    let mut m = [0u8; 16];
    for (i, b) in m.iter_mut().enumerate().take(len) {
        let covered = (prefix as i32 - 8 * i as i32).clamp(0, 8);
        *b = if covered == 0 {
            0
        } else {
            0xff << (8 - covered)
        };
    }
    m
}

fn addr_bytes(a: IpAddr) -> ([u8; 16], usize) {
    match a {
        IpAddr::V4(v) => {
            let mut b = [0u8; 16];
            b[..4].copy_from_slice(&v.octets());
            (b, 4)
        }
        IpAddr::V6(v) => (v.octets(), 16),
    }
}

impl IpMap {
    /// Rewrites `addr` (4 or 16 bytes) in place when it lies in `from`; true if it did.
    fn apply(&self, addr: &mut [u8]) -> bool {
        let (from, flen) = addr_bytes(self.from.addr);
        let (to, _) = addr_bytes(self.to.addr);
        if flen != addr.len() {
            return false;
        }
        let fm = mask_bytes(self.from.prefix, flen);
        if (0..flen).any(|i| addr[i] & fm[i] != from[i] & fm[i]) {
            return false;
        }
        let tm = mask_bytes(self.to.prefix, flen);
        for i in 0..flen {
            addr[i] = (to[i] & tm[i]) | (addr[i] & !tm[i]);
        }
        true
    }
}

/// What to do with frames the capture cut short (tcpreplay `--fixlen`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fixlen {
    /// Pad with zeros to the original length.
    Pad,
    /// Set the IP (and UDP) length fields to what was captured.
    Trim,
    /// Leave the frame out.
    Skip,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum VlanEdit {
    #[default]
    Keep,
    /// Remove every 802.1Q/802.1ad tag.
    Strip,
    /// Push an 802.1Q tag.
    Add { id: u16, pcp: u8 },
}

#[derive(Clone, Debug, Default)]
pub struct RewriteConfig {
    pub src_ip_maps: Vec<IpMap>,
    pub dst_ip_maps: Vec<IpMap>,
    /// (from, to) pairs, applied to source and destination ports.
    pub port_maps: Vec<(u16, u16)>,
    pub smac: Option<[u8; 6]>,
    pub dmac: Option<[u8; 6]>,
    pub vlan: VlanEdit,
    /// On loop k (from 0), add k to the middle 16 bits of every IPv4 address (second and
    /// third octets) and to the fourth 16-bit group of every IPv6 address.
    pub unique_ip: bool,
    pub fixlen: Option<Fixlen>,
    /// Recompute checksums even when no IP-level edit applies.
    pub fix_checksums: bool,
}

impl RewriteConfig {
    fn edits_ip(&self) -> bool {
        !self.src_ip_maps.is_empty()
            || !self.dst_ip_maps.is_empty()
            || !self.port_maps.is_empty()
            || self.unique_ip
            || self.fixlen.is_some()
            || self.fix_checksums
    }
}

/// Why a frame was left out.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Unsendable {
    #[error("link type {0} cannot be turned into Ethernet")]
    UnsupportedLink(u32),
    #[error("frame cut by the capture's snaplen (--fixlen skip)")]
    Truncated,
}

/// Counts of what the rewriter did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct RewriteStats {
    /// Frames shorter than their original length.
    pub truncated: u64,
    pub padded: u64,
    pub trimmed: u64,
    pub skipped_truncated: u64,
    /// Frames whose IP/TCP/UDP checksums were recomputed or adjusted.
    pub checksums_fixed: u64,
}

pub struct Rewriter {
    cfg: RewriteConfig,
    edits_ip: bool,
    pub stats: RewriteStats,
}

const ETH_HLEN: usize = 14;
const MAX_FRAME: usize = 65_535 + ETH_HLEN + 8;

fn be16(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes(b.get(at..at + 2)?.try_into().ok()?))
}

impl Rewriter {
    pub fn new(cfg: RewriteConfig) -> Self {
        let edits_ip = cfg.edits_ip();
        Self {
            cfg,
            edits_ip,
            stats: RewriteStats::default(),
        }
    }

    /// Whether frames of this link type can be sent (as Ethernet).
    pub fn supports_link(linktype: u32) -> bool {
        matches!(
            linktype,
            wire::LINKTYPE_ETHERNET
                | wire::LINKTYPE_RAW
                | wire::LINKTYPE_IPV4
                | wire::LINKTYPE_IPV6
                | wire::LINKTYPE_NULL
                | wire::LINKTYPE_LOOP
                | wire::LINKTYPE_LINUX_SLL
                | wire::LINKTYPE_LINUX_SLL2
        )
    }

    /// Appends the rewritten Ethernet frame to `out`. On `Err`, `out` is as it was.
    pub fn apply(
        &mut self,
        linktype: u32,
        data: &[u8],
        orig_len: u32,
        loop_index: u64,
        out: &mut Vec<u8>,
    ) -> Result<(), Unsendable> {
        let start = out.len();
        let missing = (orig_len as usize).saturating_sub(data.len());
        if missing > 0 {
            self.stats.truncated += 1;
            if self.cfg.fixlen == Some(Fixlen::Skip) {
                self.stats.skipped_truncated += 1;
                return Err(Unsendable::Truncated);
            }
        }
        if let Err(e) = to_ethernet(linktype, data, out) {
            out.truncate(start);
            return Err(e);
        }
        if missing > 0 && self.cfg.fixlen == Some(Fixlen::Pad) {
            let target = (out.len() + missing).min(start + MAX_FRAME);
            out.resize(target, 0);
            self.stats.padded += 1;
        }
        match self.cfg.vlan {
            VlanEdit::Keep => {}
            VlanEdit::Strip => {
                let mut n = 0;
                while matches!(be16(&out[start..], 12), Some(0x8100 | 0x88a8 | 0x9100))
                    && out.len() - start >= 18
                {
                    out.drain(start + 12..start + 16);
                    n += 1;
                    if n > 8 {
                        break;
                    }
                }
            }
            VlanEdit::Add { id, pcp } => {
                if out.len() - start >= 12 {
                    let tci = (u16::from(pcp & 7) << 13) | (id & 0x0fff);
                    let t = tci.to_be_bytes();
                    out.splice(start + 12..start + 12, [0x81, 0x00, t[0], t[1]]);
                }
            }
        }
        let frame = &mut out[start..];
        if frame.len() >= 12 {
            if let Some(d) = self.cfg.dmac {
                frame[..6].copy_from_slice(&d);
            }
            if let Some(s) = self.cfg.smac {
                frame[6..12].copy_from_slice(&s);
            }
        }
        if self.edits_ip {
            let trim = missing > 0 && self.cfg.fixlen == Some(Fixlen::Trim);
            if trim {
                self.stats.trimmed += 1;
            }
            if self.edit_ip(frame, loop_index, trim) {
                self.stats.checksums_fixed += 1;
            }
        }
        Ok(())
    }

    /// IP-level edits; true when checksums were touched.
    fn edit_ip(&self, frame: &mut [u8], loop_index: u64, trim: bool) -> bool {
        let mut off = 12;
        let mut ethertype = match be16(frame, off) {
            Some(e) => e,
            None => return false,
        };
        let mut tags = 0;
        while matches!(ethertype, 0x8100 | 0x88a8 | 0x9100) && tags < 8 {
            off += 4;
            tags += 1;
            ethertype = match be16(frame, off) {
                Some(e) => e,
                None => return false,
            };
        }
        let l3 = off + 2;
        match ethertype {
            0x0800 => self.edit_ipv4(&mut frame[l3..], loop_index, trim),
            0x86dd => self.edit_ipv6(&mut frame[l3..], loop_index, trim),
            _ => false,
        }
    }

    fn map_addrs(&self, src: &mut [u8], dst: &mut [u8], loop_index: u64) {
        for m in &self.cfg.src_ip_maps {
            if m.apply(src) {
                break;
            }
        }
        for m in &self.cfg.dst_ip_maps {
            if m.apply(dst) {
                break;
            }
        }
        if self.cfg.unique_ip && loop_index > 0 {
            let at = if src.len() == 4 { 1 } else { 6 };
            for a in [src, dst] {
                let v = u16::from_be_bytes([a[at], a[at + 1]]).wrapping_add(loop_index as u16);
                a[at..at + 2].copy_from_slice(&v.to_be_bytes());
            }
        }
    }

    fn map_port(&self, p: u16) -> u16 {
        self.cfg
            .port_maps
            .iter()
            .find(|(from, _)| *from == p)
            .map_or(p, |(_, to)| *to)
    }

    fn edit_ipv4(&self, ip: &mut [u8], loop_index: u64, trim: bool) -> bool {
        if ip.len() < 20 || ip[0] >> 4 != 4 {
            return false;
        }
        let ihl = usize::from(ip[0] & 0x0f) * 4;
        if ihl < 20 || ip.len() < ihl {
            return false;
        }
        let mut total = usize::from(u16::from_be_bytes([ip[2], ip[3]]));
        if trim && total > ip.len() {
            total = ip.len();
            ip[2..4].copy_from_slice(&(total as u16).to_be_bytes());
        }
        let frag = u16::from_be_bytes([ip[6], ip[7]]);
        let first_fragment = frag & 0x1fff == 0;
        let fragmented = frag & 0x3fff != 0;
        let proto = ip[9];
        let old_pseudo = ones_sum(&ip[12..20], 0);
        {
            let (head, rest) = ip.split_at_mut(16);
            self.map_addrs(&mut head[12..16], &mut rest[..4], loop_index);
        }
        ip[10] = 0;
        ip[11] = 0;
        let c = !fold(ones_sum(&ip[..ihl], 0));
        ip[10..12].copy_from_slice(&c.to_be_bytes());
        if !first_fragment || total < ihl {
            return true;
        }
        let seg_len = total - ihl;
        let (hdr, l4) = ip.split_at_mut(ihl);
        let new_pseudo = ones_sum(&hdr[12..20], 0);
        let whole = !fragmented && l4.len() >= seg_len;
        let pseudo = ones_sum(&hdr[12..20], u32::from(proto) + seg_len as u32);
        let avail = seg_len.min(l4.len());
        self.edit_l4(
            proto,
            &mut l4[..avail],
            seg_len,
            whole,
            pseudo,
            (old_pseudo, new_pseudo),
            trim,
            true,
        );
        true
    }

    fn edit_ipv6(&self, ip: &mut [u8], loop_index: u64, trim: bool) -> bool {
        if ip.len() < 40 || ip[0] >> 4 != 6 {
            return false;
        }
        let mut payload = usize::from(u16::from_be_bytes([ip[4], ip[5]]));
        if trim && payload + 40 > ip.len() {
            payload = ip.len() - 40;
            ip[4..6].copy_from_slice(&(payload as u16).to_be_bytes());
        }
        let old_pseudo = ones_sum(&ip[8..40], 0);
        {
            let (head, rest) = ip.split_at_mut(24);
            self.map_addrs(&mut head[8..24], &mut rest[..16], loop_index);
        }
        let new_pseudo = ones_sum(&ip[8..40], 0);
        // Walk extension headers to the transport header.
        let mut next = ip[6];
        let mut off = 40;
        let mut fragmented = false;
        for _ in 0..8 {
            match next {
                0 | 43 | 60 => {
                    let Some(&len) = ip.get(off + 1) else {
                        return true;
                    };
                    next = ip[off];
                    off += (usize::from(len) + 1) * 8;
                }
                44 => {
                    let Some(fo) = be16(ip, off + 2) else {
                        return true;
                    };
                    if fo & 0xfff8 != 0 {
                        return true; // not the first fragment: no transport header
                    }
                    fragmented = true;
                    next = ip[off];
                    off += 8;
                }
                51 => {
                    let Some(&len) = ip.get(off + 1) else {
                        return true;
                    };
                    next = ip[off];
                    off += (usize::from(len) + 2) * 4;
                }
                _ => break,
            }
        }
        let end = 40 + payload;
        if off > end || off > ip.len() {
            return true;
        }
        let seg_len = end - off;
        let whole = !fragmented && ip.len() >= end;
        let pseudo = ones_sum(&ip[8..40], u32::from(next) + seg_len as u32);
        let avail = seg_len.min(ip.len() - off);
        self.edit_l4(
            next,
            &mut ip[off..off + avail],
            seg_len,
            whole,
            pseudo,
            (old_pseudo, new_pseudo),
            trim,
            false,
        );
        true
    }

    /// Ports and checksum of a TCP, UDP or ICMPv6 segment (`l4` holds what is captured of
    /// it, `seg_len` its length per the IP header).
    #[allow(clippy::too_many_arguments)]
    fn edit_l4(
        &self,
        proto: u8,
        l4: &mut [u8],
        seg_len: usize,
        whole: bool,
        pseudo: u32,
        (old_pseudo, new_pseudo): (u32, u32),
        trim: bool,
        v4: bool,
    ) {
        let csum_at = match proto {
            6 => 16,
            17 => 6,
            58 => 2,
            _ => return,
        };
        if l4.len() < csum_at + 2 {
            return;
        }
        // One's-complement sums of the fields the edits touch, before and after.
        let (mut old_sum, mut new_sum) = (old_pseudo, new_pseudo);
        if proto != 58 && l4.len() >= 4 {
            let sp = u16::from_be_bytes([l4[0], l4[1]]);
            let dp = u16::from_be_bytes([l4[2], l4[3]]);
            let (nsp, ndp) = (self.map_port(sp), self.map_port(dp));
            l4[..2].copy_from_slice(&nsp.to_be_bytes());
            l4[2..4].copy_from_slice(&ndp.to_be_bytes());
            old_sum += u32::from(sp) + u32::from(dp);
            new_sum += u32::from(nsp) + u32::from(ndp);
        }
        if proto == 17 && trim && l4.len() >= 8 {
            let old = u16::from_be_bytes([l4[4], l4[5]]);
            let new = (seg_len as u16).min(old);
            l4[4..6].copy_from_slice(&new.to_be_bytes());
        }
        let old_csum = u16::from_be_bytes([l4[csum_at], l4[csum_at + 1]]);
        if proto == 17 && v4 && old_csum == 0 {
            return; // no UDP checksum over IPv4: keep it absent
        }
        let new_csum = if whole && l4.len() >= seg_len {
            l4[csum_at] = 0;
            l4[csum_at + 1] = 0;
            let c = !fold(ones_sum(&l4[..seg_len], pseudo));
            if c == 0 && proto == 17 {
                0xffff
            } else {
                c
            }
        } else {
            adjust(old_csum, fold(old_sum), fold(new_sum))
        };
        l4[csum_at..csum_at + 2].copy_from_slice(&new_csum.to_be_bytes());
    }
}

/// Writes `data` as an Ethernet frame.
fn to_ethernet(linktype: u32, data: &[u8], out: &mut Vec<u8>) -> Result<(), Unsendable> {
    let header = |smac: &[u8], ethertype: u16, out: &mut Vec<u8>| {
        out.extend_from_slice(&[0xff; 6]);
        let mut s = [0u8; 6];
        let n = smac.len().min(6);
        s[..n].copy_from_slice(&smac[..n]);
        out.extend_from_slice(&s);
        out.extend_from_slice(&ethertype.to_be_bytes());
    };
    let by_version = |d: &[u8]| match d.first().map(|v| v >> 4) {
        Some(6) => 0x86dd,
        _ => 0x0800,
    };
    match linktype {
        wire::LINKTYPE_ETHERNET => out.extend_from_slice(data),
        wire::LINKTYPE_RAW | wire::LINKTYPE_IPV4 | wire::LINKTYPE_IPV6 => {
            header(&[], by_version(data), out);
            out.extend_from_slice(data);
        }
        wire::LINKTYPE_NULL | wire::LINKTYPE_LOOP => {
            let rest = data.get(4..).unwrap_or(&[]);
            header(&[], by_version(rest), out);
            out.extend_from_slice(rest);
        }
        wire::LINKTYPE_LINUX_SLL => {
            let et = be16(data, 14).unwrap_or(0x0800);
            let halen = usize::from(be16(data, 4).unwrap_or(0)).min(8);
            header(data.get(6..6 + halen).unwrap_or(&[]), et, out);
            out.extend_from_slice(data.get(16..).unwrap_or(&[]));
        }
        wire::LINKTYPE_LINUX_SLL2 => {
            let et = be16(data, 0).unwrap_or(0x0800);
            let halen = usize::from(data.get(11).copied().unwrap_or(0)).min(8);
            header(data.get(12..12 + halen).unwrap_or(&[]), et, out);
            out.extend_from_slice(data.get(20..).unwrap_or(&[]));
        }
        other => return Err(Unsendable::UnsupportedLink(other)),
    }
    Ok(())
}

/// Whether a whole frame's IPv4, TCP or UDP checksums are wrong as captured: what a capture
/// taken where the NIC computes checksums (offload: veth, most NICs) holds for outgoing
/// packets. A frame cut by the snap length cannot be checked and counts as sound.
pub fn checksums_left_to_nic(linktype: u32, data: &[u8], orig_len: u32) -> bool {
    if (orig_len as usize) > data.len() {
        return false;
    }
    let mut plain = Vec::new();
    if to_ethernet(linktype, data, &mut plain).is_err() {
        return false;
    }
    let mut fixed = Vec::new();
    let mut fix = Rewriter::new(RewriteConfig {
        fix_checksums: true,
        ..RewriteConfig::default()
    });
    fix.apply(linktype, data, orig_len, 0, &mut fixed).is_ok() && fixed != plain
}

/// One's-complement sum of big-endian 16-bit words (an odd last byte is padded).
pub fn ones_sum(data: &[u8], init: u32) -> u32 {
    let mut sum = u64::from(init);
    let mut chunks = data.chunks_exact(4);
    for c in &mut chunks {
        sum += u64::from(u32::from_be_bytes([c[0], c[1], c[2], c[3]]));
    }
    let rest = chunks.remainder();
    let mut i = 0;
    while i + 1 < rest.len() {
        sum += u64::from(u16::from_be_bytes([rest[i], rest[i + 1]]));
        i += 2;
    }
    if i < rest.len() {
        sum += u64::from(rest[i]) << 8;
    }
    while sum > 0xffff_ffff {
        sum = (sum & 0xffff_ffff) + (sum >> 32);
    }
    sum as u32
}

pub fn fold(mut sum: u32) -> u16 {
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum as u16
}

/// RFC 1624: HC' = ~(~HC + ~m + m'), with m and m' the one's-complement sums of every
/// changed word before and after (the sum of complements is the complement of the sum).
fn adjust(csum: u16, old: u16, new: u16) -> u16 {
    !fold(u32::from(!csum) + u32::from(!old) + u32::from(new))
}

#[cfg(test)]
mod tests {
    use super::*;
    use etherparse::{PacketBuilder, SlicedPacket, TransportSlice};

    fn tcp4(payload: &[u8]) -> Vec<u8> {
        let b = PacketBuilder::ethernet2([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2])
            .ipv4([10, 0, 0, 1], [10, 0, 0, 2], 64)
            .tcp(40000, 80, 1000, 65535);
        let mut v = Vec::new();
        b.write(&mut v, payload).unwrap();
        v
    }

    fn udp6(payload: &[u8]) -> Vec<u8> {
        let b = PacketBuilder::ethernet2([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2])
            .ipv6(
                "2001:db8::1"
                    .parse::<std::net::Ipv6Addr>()
                    .unwrap()
                    .octets(),
                "2001:db8::2"
                    .parse::<std::net::Ipv6Addr>()
                    .unwrap()
                    .octets(),
                64,
            )
            .udp(5353, 53);
        let mut v = Vec::new();
        b.write(&mut v, payload).unwrap();
        v
    }

    /// Checks every checksum in an Ethernet frame with etherparse's own computation.
    fn checksums_ok(frame: &[u8]) -> bool {
        let p = SlicedPacket::from_ethernet(frame).unwrap();
        let net = p.net.unwrap();
        match (net, p.transport.unwrap()) {
            (etherparse::NetSlice::Ipv4(ip), TransportSlice::Tcp(tcp)) => {
                let h = ip.header().to_header();
                h.header_checksum == h.calc_header_checksum()
                    && tcp.checksum()
                        == tcp
                            .to_header()
                            .calc_checksum_ipv4(&h, tcp.payload())
                            .unwrap()
            }
            (etherparse::NetSlice::Ipv4(ip), TransportSlice::Udp(udp)) => {
                let h = ip.header().to_header();
                h.header_checksum == h.calc_header_checksum()
                    && udp.checksum()
                        == udp
                            .to_header()
                            .calc_checksum_ipv4(&h, udp.payload())
                            .unwrap()
            }
            (etherparse::NetSlice::Ipv6(ip), TransportSlice::Udp(udp)) => {
                let h = ip.header().to_header();
                udp.checksum()
                    == udp
                        .to_header()
                        .calc_checksum_ipv6(&h, udp.payload())
                        .unwrap()
            }
            (etherparse::NetSlice::Ipv6(ip), TransportSlice::Tcp(tcp)) => {
                let h = ip.header().to_header();
                tcp.checksum()
                    == tcp
                        .to_header()
                        .calc_checksum_ipv6(&h, tcp.payload())
                        .unwrap()
            }
            _ => panic!("unexpected packet"),
        }
    }

    fn rw(cfg: RewriteConfig, frame: &[u8], orig: u32, loop_index: u64) -> Vec<u8> {
        let mut out = Vec::new();
        Rewriter::new(cfg)
            .apply(wire::LINKTYPE_ETHERNET, frame, orig, loop_index, &mut out)
            .unwrap();
        out
    }

    #[test]
    fn ip_map_parses_and_keeps_host_bits() {
        let m: IpMap = "10.0.0.0/24:192.168.7.0/24".parse().unwrap();
        let mut a = [10, 0, 0, 42];
        assert!(m.apply(&mut a));
        assert_eq!(a, [192, 168, 7, 42]);
        let mut b = [10, 0, 1, 42];
        assert!(!m.apply(&mut b));
        let m6: IpMap = "2001:db8::/64:[fd00:1::]/64".parse().unwrap();
        assert_eq!(m6.to.prefix, 64);
        assert!("10.0.0.0/24:2001:db8::/64".parse::<IpMap>().is_err());
        assert!("10.0.0.0/24".parse::<IpMap>().is_err());
        assert!("10.0.0.0/33:10.0.0.0/24".parse::<IpMap>().is_err());
    }

    #[test]
    fn unchanged_without_edits() {
        let f = tcp4(b"GET / HTTP/1.1\r\n\r\n");
        assert_eq!(rw(RewriteConfig::default(), &f, f.len() as u32, 3), f);
    }

    #[test]
    fn ipv4_tcp_maps_addresses_and_ports_byte_by_byte() {
        let f = tcp4(b"hello");
        let cfg = RewriteConfig {
            src_ip_maps: vec!["10.0.0.0/24:192.168.1.0/24".parse().unwrap()],
            dst_ip_maps: vec!["10.0.0.2/32:172.16.0.9/32".parse().unwrap()],
            port_maps: vec![(80, 8080)],
            smac: Some([0xaa; 6]),
            dmac: Some([0xbb; 6]),
            ..Default::default()
        };
        let out = rw(cfg, &f, f.len() as u32, 0);
        let mut want = f.clone();
        want[..6].copy_from_slice(&[0xbb; 6]);
        want[6..12].copy_from_slice(&[0xaa; 6]);
        want[26..30].copy_from_slice(&[192, 168, 1, 1]);
        want[30..34].copy_from_slice(&[172, 16, 0, 9]);
        want[36..38].copy_from_slice(&8080u16.to_be_bytes());
        // Only the two checksums may differ beyond the edits.
        let mut masked = out.clone();
        masked[24..26].copy_from_slice(&want[24..26]);
        masked[50..52].copy_from_slice(&want[50..52]);
        assert_eq!(masked, want);
        assert!(checksums_ok(&out));
    }

    #[test]
    fn ipv6_udp_checksum_fixed() {
        let f = udp6(b"\x12\x34query");
        let cfg = RewriteConfig {
            src_ip_maps: vec!["2001:db8::/64:fd00:1::/64".parse().unwrap()],
            port_maps: vec![(53, 5300)],
            ..Default::default()
        };
        let out = rw(cfg, &f, f.len() as u32, 0);
        assert_eq!(&out[22..30], &[0xfd, 0, 0, 1, 0, 0, 0, 0]);
        assert_eq!(u16::from_be_bytes([out[56], out[57]]), 5300);
        assert!(checksums_ok(&out));
    }

    #[test]
    fn unique_ip_changes_per_loop_consistently() {
        let f = tcp4(b"x");
        let cfg = RewriteConfig {
            unique_ip: true,
            ..Default::default()
        };
        let l0 = rw(cfg.clone(), &f, f.len() as u32, 0);
        assert_eq!(&l0[26..34], &f[26..34]);
        let l2 = rw(cfg, &f, f.len() as u32, 2);
        assert_eq!(&l2[26..30], &[10, 0, 2, 1]);
        assert_eq!(&l2[30..34], &[10, 0, 2, 2]);
        assert!(checksums_ok(&l2));
    }

    #[test]
    fn fixlen_pad_trim_and_skip() {
        let f = tcp4(&[b'a'; 100]);
        let cut = &f[..80];
        let orig = f.len() as u32;
        let mut r = Rewriter::new(RewriteConfig {
            fixlen: Some(Fixlen::Pad),
            ..Default::default()
        });
        let mut out = Vec::new();
        r.apply(wire::LINKTYPE_ETHERNET, cut, orig, 0, &mut out)
            .unwrap();
        assert_eq!(out.len(), f.len());
        assert!(out[80..].iter().all(|b| *b == 0));
        assert!(checksums_ok(&out));
        assert_eq!(r.stats.padded, 1);

        let mut r = Rewriter::new(RewriteConfig {
            fixlen: Some(Fixlen::Trim),
            ..Default::default()
        });
        let mut out = Vec::new();
        r.apply(wire::LINKTYPE_ETHERNET, cut, orig, 0, &mut out)
            .unwrap();
        assert_eq!(out.len(), 80);
        assert_eq!(u16::from_be_bytes([out[16], out[17]]), 80 - 14);
        assert!(checksums_ok(&out));

        let mut r = Rewriter::new(RewriteConfig {
            fixlen: Some(Fixlen::Skip),
            ..Default::default()
        });
        let mut out = vec![1, 2, 3];
        assert_eq!(
            r.apply(wire::LINKTYPE_ETHERNET, cut, orig, 0, &mut out),
            Err(Unsendable::Truncated)
        );
        assert_eq!(out, vec![1, 2, 3]);
        assert_eq!(r.stats.skipped_truncated, 1);
    }

    #[test]
    fn offloaded_checksums_are_detected() {
        let good = tcp4(b"GET / HTTP/1.1\r\n\r\n");
        assert!(!checksums_left_to_nic(
            wire::LINKTYPE_ETHERNET,
            &good,
            good.len() as u32
        ));
        // As a capture on a veth holds it: the TCP checksum is the pseudo-header's partial
        // sum the NIC was to complete.
        let mut offloaded = good.clone();
        offloaded[50] ^= 0x5a;
        assert!(checksums_left_to_nic(
            wire::LINKTYPE_ETHERNET,
            &offloaded,
            offloaded.len() as u32
        ));
        // Cut by the snap length: cannot be checked.
        assert!(!checksums_left_to_nic(
            wire::LINKTYPE_ETHERNET,
            &offloaded[..40],
            offloaded.len() as u32
        ));
    }

    #[test]
    fn truncated_frame_checksum_adjusted_incrementally() {
        // The checksum of a cut segment cannot be recomputed; it is adjusted so that the
        // whole segment (as it was on the wire) would verify.
        let f = tcp4(&[b'z'; 200]);
        let cfg = RewriteConfig {
            src_ip_maps: vec!["10.0.0.1/32:10.9.9.9/32".parse().unwrap()],
            port_maps: vec![(40000, 1234)],
            ..Default::default()
        };
        let cut = rw(cfg.clone(), &f[..100], f.len() as u32, 0);
        let whole = rw(cfg, &f, f.len() as u32, 0);
        assert_eq!(&cut[..], &whole[..100]);
        assert!(checksums_ok(&whole));
    }

    #[test]
    fn vlan_add_and_strip() {
        let f = tcp4(b"v");
        let tagged = rw(
            RewriteConfig {
                vlan: VlanEdit::Add { id: 100, pcp: 3 },
                ..Default::default()
            },
            &f,
            f.len() as u32,
            0,
        );
        assert_eq!(&tagged[12..18], &[0x81, 0x00, 0x60, 0x64, 0x08, 0x00]);
        assert_eq!(tagged.len(), f.len() + 4);
        let stripped = rw(
            RewriteConfig {
                vlan: VlanEdit::Strip,
                port_maps: vec![(80, 81)],
                ..Default::default()
            },
            &tagged,
            tagged.len() as u32,
            0,
        );
        assert_eq!(stripped.len(), f.len());
        assert_eq!(u16::from_be_bytes([stripped[36], stripped[37]]), 81);
        assert!(checksums_ok(&stripped));
    }

    #[test]
    fn raw_ip_and_sll_become_ethernet() {
        let f = tcp4(b"raw");
        let ip = &f[14..];
        let mut out = Vec::new();
        let mut r = Rewriter::new(RewriteConfig {
            dmac: Some([2, 2, 2, 2, 2, 2]),
            ..Default::default()
        });
        r.apply(wire::LINKTYPE_RAW, ip, ip.len() as u32, 0, &mut out)
            .unwrap();
        assert_eq!(&out[..6], &[2; 6]);
        assert_eq!(&out[12..14], &[0x08, 0x00]);
        assert_eq!(&out[14..], ip);

        let mut sll = vec![0, 0, 0, 1, 0, 6, 9, 9, 9, 9, 9, 9, 0, 0, 0x08, 0x00];
        sll.extend_from_slice(ip);
        let mut out = Vec::new();
        r.apply(
            wire::LINKTYPE_LINUX_SLL,
            &sll,
            sll.len() as u32,
            0,
            &mut out,
        )
        .unwrap();
        assert_eq!(&out[6..12], &[9; 6]);
        assert_eq!(&out[14..], ip);
        assert_eq!(
            r.apply(147, ip, ip.len() as u32, 0, &mut out),
            Err(Unsendable::UnsupportedLink(147))
        );
    }

    #[test]
    fn fragments_get_ip_edits_only() {
        // A non-first IPv4 fragment: addresses mapped and header checksum fixed, payload
        // (no transport header) untouched.
        let mut f = tcp4(&[7u8; 40]);
        f[20] = 0x00;
        f[21] = 0x10; // fragment offset 16 * 8
        let cfg = RewriteConfig {
            src_ip_maps: vec!["10.0.0.0/8:11.0.0.0/8".parse().unwrap()],
            port_maps: vec![(80, 8080)],
            ..Default::default()
        };
        let out = rw(cfg, &f, f.len() as u32, 0);
        assert_eq!(out[26], 11);
        assert_eq!(&out[34..], &f[34..]);
        let h = etherparse::Ipv4HeaderSlice::from_slice(&out[14..])
            .unwrap()
            .to_header();
        assert_eq!(h.header_checksum, h.calc_header_checksum());
    }

    #[test]
    fn hostile_frames_never_panic() {
        let cfg = RewriteConfig {
            src_ip_maps: vec!["0.0.0.0/0:1.0.0.0/8".parse().unwrap()],
            dst_ip_maps: vec!["::/0:fd00::/8".parse().unwrap()],
            port_maps: vec![(1, 2)],
            vlan: VlanEdit::Strip,
            unique_ip: true,
            fixlen: Some(Fixlen::Trim),
            ..Default::default()
        };
        let mut r = Rewriter::new(cfg);
        let seeds = [tcp4(b"abc"), udp6(b"def")];
        let mut out = Vec::new();
        for s in &seeds {
            for cut in 0..s.len() {
                for flip in [0usize, 14, 16, 20, 23, 54] {
                    let mut f = s[..cut].to_vec();
                    if let Some(b) = f.get_mut(flip) {
                        *b ^= 0xff;
                    }
                    for lt in [1, 101, 113, 276, 0] {
                        out.clear();
                        let _ = r.apply(lt, &f, s.len() as u32, 1, &mut out);
                    }
                }
            }
        }
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(3000))]
        /// Arbitrary bytes under every edit: no panic, output bounded by the input plus a
        /// header, a tag and the padding to the original length.
        #[test]
        fn arbitrary_frames_never_panic(
            data in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..200),
            orig_extra in 0u32..3000,
            linktype in proptest::sample::select(vec![0u32, 1, 101, 108, 113, 228, 229, 276]),
            fix in 0u8..4,
            strip in proptest::prelude::any::<bool>(),
            loop_index in 0u64..4,
        ) {
            let cfg = RewriteConfig {
                src_ip_maps: vec!["0.0.0.0/1:10.0.0.0/8".parse().unwrap()],
                dst_ip_maps: vec!["::/1:fd00::/16".parse().unwrap()],
                port_maps: vec![(80, 8080), (0, 1)],
                vlan: if strip { VlanEdit::Strip } else { VlanEdit::Add { id: 7, pcp: 1 } },
                unique_ip: true,
                fixlen: [None, Some(Fixlen::Pad), Some(Fixlen::Trim), Some(Fixlen::Skip)][fix as usize],
                fix_checksums: true,
                ..Default::default()
            };
            let mut r = Rewriter::new(cfg);
            let mut out = Vec::new();
            let orig = data.len() as u32 + orig_extra;
            if r.apply(linktype, &data, orig, loop_index, &mut out).is_ok() {
                proptest::prop_assert!(out.len() <= orig as usize + 14 + 4);
            }
        }
    }
}
