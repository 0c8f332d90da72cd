//! Wire decoding: link layer → IP → TCP, zero-copy, with every offset checked.
//!
//! Link types: Ethernet, raw IPv4/IPv6, BSD null/loopback, Linux SLL and SLL2, NFLOG.
//! Inside: 802.1Q/QinQ tags, MPLS label stacks, PPPoE sessions, IPv4 options, IPv6 extension
//! headers, VXLAN (UDP 4789) and Teredo (UDP 3544) decapsulated. IP fragments are handed to
//! [`defrag::Defragmenter`]. Checksums are not verified (captures on the sending host carry
//! offloaded, unfinished checksums), as Zeek does with `-C`.

pub mod defrag;
pub mod vxlan;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

pub const LINKTYPE_NULL: u32 = 0;
pub const LINKTYPE_PPP: u32 = 9;
pub const LINKTYPE_C_HDLC: u32 = 104;
pub const LINKTYPE_IEEE802_11: u32 = 105;
pub const LINKTYPE_IEEE802_11_RADIOTAP: u32 = 127;
pub const LINKTYPE_PPI: u32 = 192;
pub const LINKTYPE_ETHERNET: u32 = 1;
pub const LINKTYPE_RAW: u32 = 101;
pub const LINKTYPE_LOOP: u32 = 108;
pub const LINKTYPE_LINUX_SLL: u32 = 113;
pub const LINKTYPE_IPV4: u32 = 228;
pub const LINKTYPE_IPV6: u32 = 229;
pub const LINKTYPE_NFLOG: u32 = 239;
pub const LINKTYPE_LINUX_SLL2: u32 = 276;

/// Every link type [`ip_packet`] decodes.
pub const DECODED_LINKTYPES: [u32; 14] = [
    LINKTYPE_NULL,
    LINKTYPE_PPP,
    LINKTYPE_C_HDLC,
    LINKTYPE_IEEE802_11,
    LINKTYPE_IEEE802_11_RADIOTAP,
    LINKTYPE_PPI,
    LINKTYPE_ETHERNET,
    LINKTYPE_RAW,
    LINKTYPE_LOOP,
    LINKTYPE_LINUX_SLL,
    LINKTYPE_IPV4,
    LINKTYPE_IPV6,
    LINKTYPE_NFLOG,
    LINKTYPE_LINUX_SLL2,
];

const MAX_TUNNEL_DEPTH: u8 = 4;

/// TCP flag bits.
pub mod tcp_flags {
    pub const FIN: u8 = 0x01;
    pub const SYN: u8 = 0x02;
    pub const RST: u8 = 0x04;
    pub const PSH: u8 = 0x08;
    pub const ACK: u8 = 0x10;
}

/// One TCP segment, borrowed from the frame (or a reassembled datagram).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TcpSegment<'a> {
    pub src: IpAddr,
    pub dst: IpAddr,
    pub sport: u16,
    pub dport: u16,
    pub seq: u32,
    pub ack: u32,
    pub flags: u8,
    pub payload: &'a [u8],
    /// Payload bytes the segment had on the wire but the capture cut (snaplen).
    pub missing: u32,
}

impl TcpSegment<'_> {
    pub fn has(&self, flag: u8) -> bool {
        self.flags & flag != 0
    }
}

/// An IP packet (or fragment) found in a frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IpPacket<'a> {
    pub src: IpAddr,
    pub dst: IpAddr,
    pub protocol: u8,
    /// Fragment identification (IPv4 id, IPv6 fragment header id).
    pub frag_id: u32,
    /// Offset of this fragment's payload in bytes, and whether more follow.
    pub frag_offset: u32,
    pub more_fragments: bool,
    pub is_fragment: bool,
    pub payload: &'a [u8],
    /// Payload bytes cut by the snaplen.
    pub missing: u32,
}

/// Why a frame yielded nothing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Skip {
    /// Not IP, or a protocol other than TCP (counted, not an error).
    NotTcp,
    /// A link type rf-tap does not decode.
    UnsupportedLink(u32),
    /// Headers shorter than they claim.
    Malformed(&'static str),
}

fn be16(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes(b.get(at..at + 2)?.try_into().ok()?))
}
fn be32(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_be_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

/// Finds the IP packet in a frame of the given link type. `orig_len` is the wire length
/// (to know how much the capture cut).
pub fn ip_packet(linktype: u32, data: &[u8], orig_len: u32) -> Result<IpPacket<'_>, Skip> {
    let cut = orig_len.saturating_sub(data.len() as u32);
    let (ethertype, rest) = match linktype {
        LINKTYPE_ETHERNET => ethernet(data)?,
        LINKTYPE_RAW | LINKTYPE_IPV4 | LINKTYPE_IPV6 => (by_version(data)?, data),
        LINKTYPE_NULL | LINKTYPE_LOOP => {
            let af = data.get(..4).ok_or(Skip::Malformed("null header"))?;
            let le = u32::from_le_bytes([af[0], af[1], af[2], af[3]]);
            let be = u32::from_be_bytes([af[0], af[1], af[2], af[3]]);
            let family = if le < 256 { le } else { be };
            let et = match family {
                2 => 0x0800,
                24 | 28 | 30 => 0x86dd,
                _ => return Err(Skip::NotTcp),
            };
            (et, &data[4..])
        }
        LINKTYPE_LINUX_SLL => {
            let et = be16(data, 14).ok_or(Skip::Malformed("SLL header"))?;
            let rest = data.get(16..).ok_or(Skip::Malformed("SLL header"))?;
            l3_or_tags(et, rest)?
        }
        LINKTYPE_LINUX_SLL2 => {
            let et = be16(data, 0).ok_or(Skip::Malformed("SLL2 header"))?;
            let rest = data.get(20..).ok_or(Skip::Malformed("SLL2 header"))?;
            l3_or_tags(et, rest)?
        }
        LINKTYPE_NFLOG => nflog(data)?,
        LINKTYPE_PPP => {
            // With HDLC-like framing the protocol follows address 0xff and control 0x03.
            let b = data.strip_prefix(&[0xff, 0x03]).unwrap_or(data);
            ppp(b)?
        }
        LINKTYPE_C_HDLC => {
            // Address, control, then an Ethernet type.
            let et = be16(data, 2).ok_or(Skip::Malformed("Cisco HDLC header"))?;
            l3_or_tags(
                et,
                data.get(4..).ok_or(Skip::Malformed("Cisco HDLC header"))?,
            )?
        }
        LINKTYPE_IEEE802_11 => wifi(data)?,
        LINKTYPE_IEEE802_11_RADIOTAP => {
            let len = data
                .get(2..4)
                .map(|b| u16::from_le_bytes([b[0], b[1]]) as usize)
                .ok_or(Skip::Malformed("radiotap header"))?;
            wifi(data.get(len..).ok_or(Skip::Malformed("radiotap header"))?)?
        }
        LINKTYPE_PPI => {
            let len = data
                .get(2..4)
                .map(|b| u16::from_le_bytes([b[0], b[1]]) as usize)
                .ok_or(Skip::Malformed("PPI header"))?;
            let dlt = data
                .get(4..8)
                .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .ok_or(Skip::Malformed("PPI header"))?;
            let inner = data.get(len..).ok_or(Skip::Malformed("PPI header"))?;
            match dlt {
                LINKTYPE_IEEE802_11 => wifi(inner)?,
                LINKTYPE_ETHERNET => ethernet(inner)?,
                other => return Err(Skip::UnsupportedLink(other)),
            }
        }
        other => return Err(Skip::UnsupportedLink(other)),
    };
    ip_layer(ethertype, rest, cut)
}

/// A PPP frame from its protocol field: two bytes, or one with protocol-field compression
/// (RFC 1661: an odd first byte is the whole field).
fn ppp(b: &[u8]) -> Result<(u16, &[u8]), Skip> {
    let first = *b.first().ok_or(Skip::Malformed("PPP header"))?;
    let (proto, rest) = if first & 1 == 1 {
        (u16::from(first), &b[1..])
    } else {
        (
            be16(b, 0).ok_or(Skip::Malformed("PPP header"))?,
            b.get(2..).ok_or(Skip::Malformed("PPP header"))?,
        )
    };
    match proto {
        0x0021 => Ok((0x0800, rest)),
        0x0057 => Ok((0x86dd, rest)),
        _ => Err(Skip::NotTcp),
    }
}

/// An IEEE 802.11 data frame: the MAC header (24 bytes; 30 with a fourth address, then QoS
/// and HT control when present), then LLC/SNAP with an Ethernet type. Protected (encrypted)
/// frames and management or control frames hold no IP to read.
fn wifi(b: &[u8]) -> Result<(u16, &[u8]), Skip> {
    let fc0 = *b.first().ok_or(Skip::Malformed("802.11 header"))?;
    let fc1 = *b.get(1).ok_or(Skip::Malformed("802.11 header"))?;
    if (fc0 >> 2) & 3 != 2 {
        return Err(Skip::NotTcp); // not a data frame
    }
    if fc1 & 0x40 != 0 {
        return Err(Skip::NotTcp); // protected: encrypted payload
    }
    let subtype = fc0 >> 4;
    if subtype & 4 != 0 {
        return Err(Skip::NotTcp); // null data: no payload
    }
    let mut len = 24;
    if fc1 & 3 == 3 {
        len += 6; // to and from the distribution system: a fourth address
    }
    if subtype & 8 != 0 {
        len += 2; // QoS control
        if fc1 & 0x80 != 0 {
            len += 4; // HT control (the order bit of a QoS frame)
        }
    }
    let llc = b.get(len..).ok_or(Skip::Malformed("802.11 header"))?;
    if llc.get(..3) != Some(&[0xaa, 0xaa, 0x03]) {
        return Err(Skip::NotTcp);
    }
    let et = be16(llc, 6).ok_or(Skip::Malformed("LLC/SNAP header"))?;
    l3_or_tags(et, llc.get(8..).ok_or(Skip::Malformed("LLC/SNAP header"))?)
}

fn by_version(data: &[u8]) -> Result<u16, Skip> {
    match data.first().map(|v| v >> 4) {
        Some(4) => Ok(0x0800),
        Some(6) => Ok(0x86dd),
        _ => Err(Skip::NotTcp),
    }
}

fn ethernet(data: &[u8]) -> Result<(u16, &[u8]), Skip> {
    let et = be16(data, 12).ok_or(Skip::Malformed("Ethernet header"))?;
    l3_or_tags(et, &data[14..])
}

/// Strips VLAN tags, MPLS labels and PPPoE, returning the L3 ethertype and its bytes.
fn l3_or_tags(mut et: u16, mut rest: &[u8]) -> Result<(u16, &[u8]), Skip> {
    for _ in 0..8 {
        match et {
            0x8100 | 0x88a8 | 0x9100 => {
                et = be16(rest, 2).ok_or(Skip::Malformed("VLAN tag"))?;
                rest = &rest[4..];
            }
            0x8847 | 0x8848 => {
                // MPLS: pop labels until bottom of stack, then guess by IP version.
                loop {
                    let label = be32(rest, 0).ok_or(Skip::Malformed("MPLS label"))?;
                    rest = &rest[4..];
                    if label & 0x100 != 0 {
                        break;
                    }
                }
                return Ok((by_version(rest)?, rest));
            }
            0x8864 => {
                // PPPoE session: 6-byte header, then a PPP frame (its protocol field maybe
                // compressed to one byte).
                return ppp(rest.get(6..).ok_or(Skip::Malformed("PPPoE header"))?);
            }
            _ => return Ok((et, rest)),
        }
    }
    Err(Skip::Malformed("too many tags"))
}

fn nflog(data: &[u8]) -> Result<(u16, &[u8]), Skip> {
    // 4-byte header (family, version, resource id), then TLVs (host-order length, 4-aligned).
    let family = *data.first().ok_or(Skip::Malformed("NFLOG header"))?;
    let mut o = 4;
    while o + 4 <= data.len() {
        let len = u16::from_le_bytes([data[o], data[o + 1]]) as usize;
        let ty = u16::from_le_bytes([data[o + 2], data[o + 3]]);
        if len < 4 {
            return Err(Skip::Malformed("NFLOG TLV"));
        }
        if ty == 9 {
            let payload = data
                .get(o + 4..(o + len).min(data.len()))
                .ok_or(Skip::Malformed("NFLOG payload"))?;
            let et = match family {
                2 => 0x0800,
                10 => 0x86dd,
                _ => by_version(payload)?,
            };
            return Ok((et, payload));
        }
        o += len.div_ceil(4) * 4;
    }
    Err(Skip::NotTcp)
}

fn ip_layer(et: u16, b: &[u8], cut: u32) -> Result<IpPacket<'_>, Skip> {
    match et {
        0x0800 => {
            let vihl = *b.first().ok_or(Skip::Malformed("IPv4 header"))?;
            let ihl = ((vihl & 0x0f) as usize) * 4;
            if vihl >> 4 != 4 || ihl < 20 || b.len() < ihl {
                return Err(Skip::Malformed("IPv4 header"));
            }
            let total = be16(b, 2).unwrap_or(0) as usize;
            // Total length 0 happens with TSO captures: take what is there.
            let end = if total >= ihl {
                total.min(b.len())
            } else {
                b.len()
            };
            let wire_end = if total >= ihl {
                total
            } else {
                b.len() + cut as usize
            };
            let frag = be16(b, 6).unwrap_or(0);
            let src: [u8; 4] = b[12..16]
                .try_into()
                .map_err(|_| Skip::Malformed("IPv4 header"))?;
            let dst: [u8; 4] = b[16..20]
                .try_into()
                .map_err(|_| Skip::Malformed("IPv4 header"))?;
            let offset = ((frag & 0x1fff) as u32) * 8;
            let mf = frag & 0x2000 != 0;
            Ok(IpPacket {
                src: IpAddr::V4(Ipv4Addr::from(src)),
                dst: IpAddr::V4(Ipv4Addr::from(dst)),
                protocol: b[9],
                frag_id: be16(b, 4).unwrap_or(0) as u32,
                frag_offset: offset,
                more_fragments: mf,
                is_fragment: mf || offset != 0,
                payload: &b[ihl..end],
                missing: (wire_end.saturating_sub(end)) as u32,
            })
        }
        0x86dd => {
            if b.len() < 40 || b[0] >> 4 != 6 {
                return Err(Skip::Malformed("IPv6 header"));
            }
            let plen = be16(b, 4).unwrap_or(0) as usize;
            let src: [u8; 16] = b[8..24]
                .try_into()
                .map_err(|_| Skip::Malformed("IPv6 header"))?;
            let dst: [u8; 16] = b[24..40]
                .try_into()
                .map_err(|_| Skip::Malformed("IPv6 header"))?;
            let end = if plen == 0 {
                b.len()
            } else {
                (40 + plen).min(b.len())
            };
            let wire_end = if plen == 0 {
                b.len() + cut as usize
            } else {
                40 + plen
            };
            let mut next = b[6];
            let mut o = 40;
            let mut pkt = IpPacket {
                src: IpAddr::V6(Ipv6Addr::from(src)),
                dst: IpAddr::V6(Ipv6Addr::from(dst)),
                protocol: next,
                frag_id: 0,
                frag_offset: 0,
                more_fragments: false,
                is_fragment: false,
                payload: &[],
                missing: 0,
            };
            for _ in 0..8 {
                match next {
                    0 | 43 | 60 => {
                        let h = b.get(o..o + 2).ok_or(Skip::Malformed("IPv6 extension"))?;
                        next = h[0];
                        o += (h[1] as usize + 1) * 8;
                    }
                    44 => {
                        let h = b.get(o..o + 8).ok_or(Skip::Malformed("IPv6 fragment"))?;
                        next = h[0];
                        let off = u16::from_be_bytes([h[2], h[3]]);
                        pkt.frag_offset = (off & 0xfff8) as u32;
                        pkt.more_fragments = off & 1 != 0;
                        pkt.is_fragment = true;
                        pkt.frag_id = u32::from_be_bytes([h[4], h[5], h[6], h[7]]);
                        o += 8;
                    }
                    _ => break,
                }
            }
            if o > end {
                return Err(Skip::Malformed("IPv6 extension"));
            }
            pkt.protocol = next;
            pkt.payload = &b[o..end];
            pkt.missing = wire_end.saturating_sub(end) as u32;
            Ok(pkt)
        }
        _ => Err(Skip::NotTcp),
    }
}

/// What an IP payload turned out to be.
pub enum Transport<'a> {
    Tcp(TcpSegment<'a>),
    /// A tunnel (VXLAN, Teredo) whose inner packet follows.
    Inner(IpPacket<'a>),
}

/// Decodes the transport layer of a whole (not fragmented, or reassembled) IP packet.
pub fn transport<'a>(ip: &IpPacket<'a>, depth: u8) -> Result<Transport<'a>, Skip> {
    let p = ip.payload;
    match ip.protocol {
        6 => {
            let off = ((*p.get(12).ok_or(Skip::Malformed("TCP header"))? >> 4) as usize) * 4;
            if off < 20 || p.len() < off {
                return Err(Skip::Malformed("TCP header"));
            }
            Ok(Transport::Tcp(TcpSegment {
                src: ip.src,
                dst: ip.dst,
                sport: be16(p, 0).unwrap_or(0),
                dport: be16(p, 2).unwrap_or(0),
                seq: be32(p, 4).unwrap_or(0),
                ack: be32(p, 8).unwrap_or(0),
                flags: p[13],
                payload: &p[off..],
                missing: ip.missing,
            }))
        }
        17 if depth < MAX_TUNNEL_DEPTH => {
            let sport = be16(p, 0).ok_or(Skip::Malformed("UDP header"))?;
            let dport = be16(p, 2).ok_or(Skip::Malformed("UDP header"))?;
            let body = p.get(8..).ok_or(Skip::Malformed("UDP header"))?;
            if dport == 4789 && body.len() >= 8 && body[0] & 0x08 != 0 {
                let (et, rest) = ethernet(&body[8..])?;
                return Ok(Transport::Inner(ip_layer(et, rest, ip.missing)?));
            }
            // Teredo (RFC 4380): port 3544 sets the tunnel up, but the data then flows
            // between any ports, so it is recognised by shape: after the optional
            // authentication and origin headers, exactly one whole IPv6 packet.
            let mut b = body;
            if b.len() >= 4 && b[0] == 0 && b[1] == 1 {
                let skip = 4 + b[2] as usize + b[3] as usize + 9;
                b = b.get(skip..).unwrap_or(&[]);
            }
            if b.len() >= 8 && b[0] == 0 && b[1] == 0 {
                b = &b[8..];
            }
            let whole_ipv6 = b.len() >= 40
                && b[0] >> 4 == 6
                && be16(b, 4).is_some_and(|l| l as usize + 40 == b.len());
            if whole_ipv6
                || ((sport == 3544 || dport == 3544) && b.first().map(|v| v >> 4) == Some(6))
            {
                return Ok(Transport::Inner(ip_layer(0x86dd, b, ip.missing)?));
            }
            Err(Skip::NotTcp)
        }
        _ => Err(Skip::NotTcp),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tcp_frame(
        builder: etherparse::PacketBuilderStep<etherparse::TcpHeader>,
        payload: &[u8],
    ) -> Vec<u8> {
        let mut v = Vec::new();
        builder.write(&mut v, payload).unwrap();
        v
    }

    #[test]
    fn ppp_hdlc_and_wifi_link_layers() {
        let mut inner = Vec::new();
        etherparse::PacketBuilder::ipv4([10, 0, 0, 1], [10, 0, 0, 2], 64)
            .tcp(40000, 80, 1, 1000)
            .write(&mut inner, b"hi")
            .unwrap();
        let with = |head: &[u8]| {
            let mut v = head.to_vec();
            v.extend_from_slice(&inner);
            v
        };
        // PPPoE with the PPP protocol field compressed to one byte, and not.
        let mut eth = vec![0; 12];
        eth.extend_from_slice(&[0x88, 0x64, 0x11, 0, 0, 1, 0, 0]);
        assert_eq!(
            tcp_of(
                LINKTYPE_ETHERNET,
                &with(&[eth.clone(), vec![0x21]].concat())
            )
            .payload,
            b"hi"
        );
        assert_eq!(
            tcp_of(LINKTYPE_ETHERNET, &with(&[eth, vec![0x00, 0x21]].concat())).payload,
            b"hi"
        );
        // Raw PPP: with HDLC-like framing, compressed, plain.
        assert_eq!(
            tcp_of(LINKTYPE_PPP, &with(&[0xff, 0x03, 0x00, 0x21])).payload,
            b"hi"
        );
        assert_eq!(tcp_of(LINKTYPE_PPP, &with(&[0x21])).payload, b"hi");
        assert_eq!(tcp_of(LINKTYPE_PPP, &with(&[0x00, 0x21])).payload, b"hi");
        // Cisco HDLC: address, control, Ethernet type.
        assert_eq!(
            tcp_of(LINKTYPE_C_HDLC, &with(&[0x0f, 0x00, 0x08, 0x00])).payload,
            b"hi"
        );
        // 802.11: a QoS data frame from the distribution system, LLC/SNAP.
        let mut dot11 = vec![0x88, 0x02];
        dot11.extend_from_slice(&[0; 22]); // duration, three addresses, sequence
        dot11.extend_from_slice(&[0, 0]); // QoS control
        dot11.extend_from_slice(&[0xaa, 0xaa, 0x03, 0, 0, 0, 0x08, 0x00]);
        assert_eq!(tcp_of(LINKTYPE_IEEE802_11, &with(&dot11)).payload, b"hi");
        // The same behind radiotap (8-byte header) and PPI (8-byte header, DLT 105).
        let radiotap = [vec![0, 0, 8, 0, 0, 0, 0, 0], dot11.clone()].concat();
        assert_eq!(
            tcp_of(LINKTYPE_IEEE802_11_RADIOTAP, &with(&radiotap)).payload,
            b"hi"
        );
        let ppi = [vec![0, 0, 8, 0, 105, 0, 0, 0], dot11.clone()].concat();
        assert_eq!(tcp_of(LINKTYPE_PPI, &with(&ppi)).payload, b"hi");
        // Protected (encrypted) and management frames hold no IP to read.
        let mut protected = dot11.clone();
        protected[1] |= 0x40;
        assert_eq!(
            ip_packet(LINKTYPE_IEEE802_11, &with(&protected), 0).err(),
            Some(Skip::NotTcp)
        );
        let beacon = [0x80u8, 0x00, 0, 0];
        assert!(ip_packet(LINKTYPE_IEEE802_11, &beacon, 4).is_err());
        // Cut short anywhere: an error, never a panic.
        let whole = with(&radiotap);
        for n in 0..whole.len() {
            let _ = ip_packet(
                LINKTYPE_IEEE802_11_RADIOTAP,
                &whole[..n],
                whole.len() as u32,
            );
        }
    }

    fn tcp_of(linktype: u32, data: &[u8]) -> TcpSegment<'_> {
        let ip = ip_packet(linktype, data, data.len() as u32).unwrap();
        match transport(&ip, 0).unwrap() {
            Transport::Tcp(t) => t,
            Transport::Inner(_) => panic!("tunnel"),
        }
    }

    #[test]
    fn ethernet_vlan_qinq_and_raw() {
        let b = etherparse::PacketBuilder::ethernet2([1; 6], [2; 6])
            .double_vlan(
                etherparse::VlanId::try_new(10).unwrap(),
                etherparse::VlanId::try_new(20).unwrap(),
            )
            .ipv4([10, 0, 0, 1], [10, 0, 0, 2], 64)
            .tcp(1234, 80, 77, 1000);
        let f = tcp_frame(b, b"GET / HTTP/1.1\r\n\r\n");
        let t = tcp_of(LINKTYPE_ETHERNET, &f);
        assert_eq!((t.sport, t.dport, t.seq), (1234, 80, 77));
        assert_eq!(t.payload, b"GET / HTTP/1.1\r\n\r\n");
        let raw = tcp_frame(
            etherparse::PacketBuilder::ipv6([1; 16], [2; 16], 64).tcp(5, 6, 1, 1),
            b"x",
        );
        assert_eq!(tcp_of(LINKTYPE_RAW, &raw).payload, b"x");
    }

    #[test]
    fn mpls_pppoe_sll_null_and_vxlan() {
        let inner = tcp_frame(
            etherparse::PacketBuilder::ipv4([1, 1, 1, 1], [2, 2, 2, 2], 9).tcp(1, 2, 3, 4),
            b"hi",
        );
        // MPLS: two labels, the second with bottom-of-stack.
        let mut mpls = vec![0; 12];
        mpls.extend_from_slice(&[0x88, 0x47, 0, 0, 0x10, 0x40, 0, 0, 0x21, 0x40]);
        mpls.extend_from_slice(&inner);
        assert_eq!(tcp_of(LINKTYPE_ETHERNET, &mpls).payload, b"hi");
        // PPPoE session carrying IPv4.
        let mut pppoe = vec![0; 12];
        pppoe.extend_from_slice(&[0x88, 0x64, 0x11, 0, 0, 1, 0, 0, 0x00, 0x21]);
        pppoe.extend_from_slice(&inner);
        assert_eq!(tcp_of(LINKTYPE_ETHERNET, &pppoe).payload, b"hi");
        // Linux SLL.
        let mut sll = vec![0; 14];
        sll.extend_from_slice(&[0x08, 0x00]);
        sll.extend_from_slice(&inner);
        assert_eq!(tcp_of(LINKTYPE_LINUX_SLL, &sll).payload, b"hi");
        // SLL2.
        let mut sll2 = vec![0x08, 0x00];
        sll2.extend_from_slice(&[0; 18]);
        sll2.extend_from_slice(&inner);
        assert_eq!(tcp_of(LINKTYPE_LINUX_SLL2, &sll2).payload, b"hi");
        // BSD loopback (AF_INET in host order).
        let mut null = 2u32.to_le_bytes().to_vec();
        null.extend_from_slice(&inner);
        assert_eq!(tcp_of(LINKTYPE_NULL, &null).payload, b"hi");
        // VXLAN: outer UDP to 4789 carrying an Ethernet frame.
        let mut eth = vec![0; 12];
        eth.extend_from_slice(&[0x08, 0x00]);
        eth.extend_from_slice(&inner);
        let mut vx = vec![0x08, 0, 0, 0, 0, 0, 0x2a, 0];
        vx.extend_from_slice(&eth);
        let mut outer = Vec::new();
        etherparse::PacketBuilder::ipv4([9, 9, 9, 9], [8, 8, 8, 8], 9)
            .udp(5555, 4789)
            .write(&mut outer, &vx)
            .unwrap();
        let ip = ip_packet(LINKTYPE_RAW, &outer, outer.len() as u32).unwrap();
        let Ok(Transport::Inner(inner_ip)) = transport(&ip, 0) else {
            panic!("vxlan not decapsulated")
        };
        let Ok(Transport::Tcp(t)) = transport(&inner_ip, 1) else {
            panic!("inner not tcp")
        };
        assert_eq!(t.payload, b"hi");
    }

    #[test]
    fn snaplen_cut_is_measured() {
        let f = tcp_frame(
            etherparse::PacketBuilder::ethernet2([1; 6], [2; 6])
                .ipv4([1, 1, 1, 1], [2, 2, 2, 2], 9)
                .tcp(1, 2, 3, 4),
            &[b'a'; 100],
        );
        let cut = &f[..64];
        let ip = ip_packet(LINKTYPE_ETHERNET, cut, f.len() as u32).unwrap();
        let Ok(Transport::Tcp(t)) = transport(&ip, 0) else {
            panic!()
        };
        assert_eq!(t.payload.len(), 64 - 14 - 40);
        assert_eq!(t.missing as usize, 100 - t.payload.len());
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_frames_never_panic(data in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..200), lt in 0u32..300) {
            if let Ok(ip) = ip_packet(lt, &data, data.len() as u32 + 7) {
                let _ = transport(&ip, 0);
            }
        }
    }
}
