//! VXLAN (RFC 7348) decapsulation: the inner Ethernet frame of a UDP datagram to the VXLAN
//! port, as a mirror target receives it from a VPC Traffic Mirroring or rf-tap session.

use super::{ip_packet, LINKTYPE_ETHERNET};

/// The IANA VXLAN port.
pub const VXLAN_PORT: u16 = 4789;
const UDP_HEADER: usize = 8;
const VXLAN_HEADER: usize = 8;
/// The "I" flag: the VNI field is valid.
const FLAG_VNI: u8 = 0x08;

/// The frame inside a VXLAN packet.
#[derive(Debug, PartialEq, Eq)]
pub struct Inner<'a> {
    pub vni: u32,
    /// The inner Ethernet frame as captured (cut where the outer capture was cut).
    pub frame: &'a [u8],
    /// Its length on the wire.
    pub orig_len: u32,
}

/// Why a frame is not a VXLAN packet rf-tap can open.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NotVxlan {
    /// Not UDP to the VXLAN port (or not IP at all).
    OtherTraffic,
    /// A non-first IP fragment of a VXLAN packet (the outer packet exceeded a path MTU).
    Fragment,
    /// UDP to the port, but without a valid VXLAN header, or cut before the inner frame.
    Malformed,
}

/// Opens one outer frame (link type `linktype`) sent to UDP `port`.
pub fn decapsulate(
    linktype: u32,
    data: &[u8],
    orig_len: u32,
    port: u16,
) -> Result<Inner<'_>, NotVxlan> {
    let ip = ip_packet(linktype, data, orig_len).map_err(|_| NotVxlan::OtherTraffic)?;
    if ip.protocol != 17 {
        return Err(NotVxlan::OtherTraffic);
    }
    if ip.is_fragment && ip.frag_offset != 0 {
        return Err(NotVxlan::Fragment);
    }
    let udp = ip.payload;
    let dport = udp
        .get(2..4)
        .map(|b| u16::from_be_bytes([b[0], b[1]]))
        .ok_or(NotVxlan::OtherTraffic)?;
    if dport != port {
        return Err(NotVxlan::OtherTraffic);
    }
    let vx = udp
        .get(UDP_HEADER..UDP_HEADER + VXLAN_HEADER)
        .ok_or(NotVxlan::Malformed)?;
    if vx[0] & FLAG_VNI == 0 {
        return Err(NotVxlan::Malformed);
    }
    let vni = u32::from_be_bytes([0, vx[4], vx[5], vx[6]]);
    let frame = &udp[UDP_HEADER + VXLAN_HEADER..];
    if frame.len() < 14 {
        return Err(NotVxlan::Malformed);
    }
    // On the wire, the inner frame is the rest of the UDP datagram.
    let wire_udp = udp.len() as u32 + ip.missing;
    let orig = wire_udp
        .saturating_sub((UDP_HEADER + VXLAN_HEADER) as u32)
        .max(frame.len() as u32);
    Ok(Inner {
        vni,
        frame,
        orig_len: orig,
    })
}

/// The link type of decapsulated frames.
pub const INNER_LINKTYPE: u32 = LINKTYPE_ETHERNET;

#[cfg(test)]
mod tests {
    use super::*;

    /// Ethernet + IPv4 + UDP(dport) + VXLAN(vni) + inner.
    fn outer(dport: u16, flags: u8, vni: u32, inner: &[u8]) -> Vec<u8> {
        let mut f = vec![0u8; 12];
        f.extend_from_slice(&[0x08, 0x00]);
        let total = (20 + 8 + 8 + inner.len()) as u16;
        f.extend_from_slice(&[
            0x45,
            0,
            (total >> 8) as u8,
            total as u8,
            0,
            1,
            0x40,
            0,
            64,
            17,
            0,
            0,
        ]);
        f.extend_from_slice(&[10, 0, 0, 1, 10, 0, 0, 2]);
        let ulen = (8 + 8 + inner.len()) as u16;
        f.extend_from_slice(&[0x30, 0x39]);
        f.extend_from_slice(&dport.to_be_bytes());
        f.extend_from_slice(&ulen.to_be_bytes());
        f.extend_from_slice(&[0, 0]);
        let v = vni.to_be_bytes();
        f.extend_from_slice(&[flags, 0, 0, 0, v[1], v[2], v[3], 0]);
        f.extend_from_slice(inner);
        f
    }

    #[test]
    fn opens_a_vxlan_packet() {
        let inner: Vec<u8> = (0..60u8).collect();
        let f = outer(4789, 0x08, 0x123456, &inner);
        let got = decapsulate(LINKTYPE_ETHERNET, &f, f.len() as u32, 4789).unwrap();
        assert_eq!(got.vni, 0x123456);
        assert_eq!(got.frame, &inner[..]);
        assert_eq!(got.orig_len, 60);
    }

    #[test]
    fn a_cut_capture_keeps_the_inner_wire_length() {
        let inner = vec![7u8; 1000];
        let f = outer(4789, 0x08, 5, &inner);
        let cut = &f[..14 + 20 + 16 + 100];
        let got = decapsulate(LINKTYPE_ETHERNET, cut, f.len() as u32, 4789).unwrap();
        assert_eq!(got.frame.len(), 100);
        assert_eq!(got.orig_len, 1000);
    }

    #[test]
    fn refuses_what_is_not_vxlan() {
        let inner = vec![0u8; 60];
        let other_port = outer(53, 0x08, 1, &inner);
        assert_eq!(
            decapsulate(LINKTYPE_ETHERNET, &other_port, 200, 4789),
            Err(NotVxlan::OtherTraffic)
        );
        let no_flag = outer(4789, 0, 1, &inner);
        assert_eq!(
            decapsulate(LINKTYPE_ETHERNET, &no_flag, 200, 4789),
            Err(NotVxlan::Malformed)
        );
        let short = outer(4789, 0x08, 1, &[1, 2, 3]);
        assert_eq!(
            decapsulate(LINKTYPE_ETHERNET, &short, short.len() as u32, 4789),
            Err(NotVxlan::Malformed)
        );
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_frames_never_panic(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..200), len in 0u32..5000) {
            if let Ok(i) = decapsulate(LINKTYPE_ETHERNET, &bytes, len, 4789) {
                proptest::prop_assert!(i.frame.len() as u32 <= i.orig_len);
                proptest::prop_assert!(i.frame.len() < bytes.len());
            }
        }
    }
}
