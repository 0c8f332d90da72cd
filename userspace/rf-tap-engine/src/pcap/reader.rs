//! Reading pcap and pcapng from a byte slice (typically a memory map), without copying.
//!
//! Handles both byte orders, microsecond and nanosecond pcap, pcapng sections with several
//! interfaces (each with its own link type and `if_tsresol`), Enhanced, Simple and obsolete
//! Packet Blocks. Written here rather than taken from pcap-file 2.0, whose reader refuses
//! records with `orig_len > snaplen` (every truncated capture) and reads pcapng timestamps
//! as nanoseconds whatever the interface's resolution.
//!
//! Hostile input never panics and never allocates beyond the interface table: every length
//! is checked against the slice, and a record that does not fit ends the iteration with an
//! error naming its offset.

use std::time::Duration;

use crate::packet::PacketDirection;

/// One frame as stored in the file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RawFrame<'a> {
    /// 1-based frame number, as Wireshark counts.
    pub number: u64,
    pub ts: Duration,
    /// LINKTYPE_* value of the frame's interface.
    pub linktype: u32,
    /// Length on the wire (may exceed `data.len()` when the capture was truncated).
    pub orig_len: u32,
    pub data: &'a [u8],
    /// Which way it crossed the capture point, when the capture says (a live capture;
    /// pcapng `epb_flags`).
    pub direction: Option<PacketDirection>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReadError {
    #[error("not a pcap or pcapng file (magic {0:02x?})")]
    UnknownMagic([u8; 4]),
    #[error("file too short for its header ({0} bytes)")]
    ShortHeader(usize),
    #[error("truncated record at byte {offset}: needs {needed} bytes, {available} left")]
    Truncated {
        offset: usize,
        needed: usize,
        available: usize,
    },
    #[error("corrupt {what} at byte {offset}")]
    Corrupt { what: &'static str, offset: usize },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Order {
    Le,
    Be,
}

impl Order {
    fn u16(self, b: &[u8], at: usize) -> Option<u16> {
        let s: [u8; 2] = b.get(at..at + 2)?.try_into().ok()?;
        Some(match self {
            Self::Le => u16::from_le_bytes(s),
            Self::Be => u16::from_be_bytes(s),
        })
    }
    fn u32(self, b: &[u8], at: usize) -> Option<u32> {
        let s: [u8; 4] = b.get(at..at + 4)?.try_into().ok()?;
        Some(match self {
            Self::Le => u32::from_le_bytes(s),
            Self::Be => u32::from_be_bytes(s),
        })
    }
}

/// Ticks per second of an interface (pcapng `if_tsresol`).
#[derive(Clone, Copy, Debug)]
struct Interface {
    linktype: u32,
    ticks_per_sec: u64,
}

enum Kind {
    Pcap {
        order: Order,
        nanos: bool,
        linktype: u32,
    },
    PcapNg {
        order: Order,
        interfaces: Vec<Interface>,
    },
}

/// Iterates over the frames of a capture held in memory.
pub struct CaptureReader<'a> {
    bytes: &'a [u8],
    pos: usize,
    kind: Kind,
    number: u64,
    failed: bool,
}

/// Most interfaces one pcapng section may declare (a bound on hostile files).
const MAX_INTERFACES: usize = 4096;

fn ticks_to_duration(ticks: u64, per_sec: u64) -> Duration {
    let per_sec = per_sec.max(1);
    let secs = ticks / per_sec;
    let frac = ticks % per_sec;
    let nanos = (frac as u128 * 1_000_000_000 / per_sec as u128) as u32;
    Duration::new(secs, nanos)
}

impl<'a> CaptureReader<'a> {
    pub fn new(bytes: &'a [u8]) -> Result<Self, ReadError> {
        let magic: [u8; 4] = bytes
            .get(..4)
            .and_then(|m| m.try_into().ok())
            .ok_or(ReadError::ShortHeader(bytes.len()))?;
        let pcap = |order, nanos| -> Result<Self, ReadError> {
            if bytes.len() < 24 {
                return Err(ReadError::ShortHeader(bytes.len()));
            }
            let linktype = Order::u32(order, bytes, 20)
                .ok_or(ReadError::ShortHeader(bytes.len()))?
                & 0x0fff_ffff;
            Ok(Self {
                bytes,
                pos: 24,
                kind: Kind::Pcap {
                    order,
                    nanos,
                    linktype,
                },
                number: 0,
                failed: false,
            })
        };
        match magic {
            [0xd4, 0xc3, 0xb2, 0xa1] => pcap(Order::Le, false),
            [0xa1, 0xb2, 0xc3, 0xd4] => pcap(Order::Be, false),
            [0x4d, 0x3c, 0xb2, 0xa1] => pcap(Order::Le, true),
            [0xa1, 0xb2, 0x3c, 0x4d] => pcap(Order::Be, true),
            [0x0a, 0x0d, 0x0d, 0x0a] => {
                let order = match bytes.get(8..12) {
                    Some([0x4d, 0x3c, 0x2b, 0x1a]) => Order::Le,
                    Some([0x1a, 0x2b, 0x3c, 0x4d]) => Order::Be,
                    Some(_) => {
                        return Err(ReadError::Corrupt {
                            what: "pcapng byte-order magic",
                            offset: 8,
                        })
                    }
                    None => return Err(ReadError::ShortHeader(bytes.len())),
                };
                Ok(Self {
                    bytes,
                    pos: 0,
                    kind: Kind::PcapNg {
                        order,
                        interfaces: Vec::new(),
                    },
                    number: 0,
                    failed: false,
                })
            }
            other => Err(ReadError::UnknownMagic(other)),
        }
    }

    /// Byte offset of the next record (for error reports and progress).
    pub fn offset(&self) -> usize {
        self.pos
    }

    /// The link type of the file (pcap) or of its first interface (pcapng, once seen).
    pub fn linktype(&self) -> Option<u32> {
        match &self.kind {
            Kind::Pcap { linktype, .. } => Some(*linktype),
            Kind::PcapNg { interfaces, .. } => interfaces.first().map(|i| i.linktype),
        }
    }

    fn truncated(&mut self, needed: usize) -> ReadError {
        self.failed = true;
        ReadError::Truncated {
            offset: self.pos,
            needed,
            available: self.bytes.len().saturating_sub(self.pos),
        }
    }

    fn next_pcap(
        &mut self,
        order: Order,
        nanos: bool,
        linktype: u32,
    ) -> Option<Result<RawFrame<'a>, ReadError>> {
        let rest = self.bytes.len() - self.pos;
        if rest == 0 {
            return None;
        }
        if rest < 16 {
            return Some(Err(self.truncated(16)));
        }
        let b = self.bytes;
        let p = self.pos;
        let (Some(sec), Some(frac), Some(incl), Some(orig)) = (
            order.u32(b, p),
            order.u32(b, p + 4),
            order.u32(b, p + 8),
            order.u32(b, p + 12),
        ) else {
            return Some(Err(self.truncated(16)));
        };
        let incl = incl as usize;
        let Some(data) = b.get(p + 16..p + 16 + incl) else {
            return Some(Err(self.truncated(16 + incl)));
        };
        let nanos_part = if nanos {
            frac.min(999_999_999)
        } else {
            frac.min(999_999).saturating_mul(1000)
        };
        self.pos = p + 16 + incl;
        self.number += 1;
        Some(Ok(RawFrame {
            number: self.number,
            ts: Duration::new(sec as u64, nanos_part),
            linktype,
            orig_len: orig.max(incl as u32),
            data,
            direction: None,
        }))
    }

    fn next_pcapng(&mut self) -> Option<Result<RawFrame<'a>, ReadError>> {
        loop {
            let rest = self.bytes.len() - self.pos;
            if rest == 0 {
                return None;
            }
            if rest < 12 {
                return Some(Err(self.truncated(12)));
            }
            let b = self.bytes;
            let p = self.pos;
            // A section header may switch the byte order.
            if b[p..p + 4] == [0x0a, 0x0d, 0x0d, 0x0a] {
                let order = match b.get(p + 8..p + 12) {
                    Some([0x4d, 0x3c, 0x2b, 0x1a]) => Order::Le,
                    Some([0x1a, 0x2b, 0x3c, 0x4d]) => Order::Be,
                    _ => {
                        self.failed = true;
                        return Some(Err(ReadError::Corrupt {
                            what: "section header",
                            offset: p,
                        }));
                    }
                };
                self.kind = Kind::PcapNg {
                    order,
                    interfaces: Vec::new(),
                };
            }
            let Kind::PcapNg { order, interfaces } = &mut self.kind else {
                return None;
            };
            let order = *order;
            let (Some(btype), Some(blen)) = (order.u32(b, p), order.u32(b, p + 4)) else {
                return Some(Err(self.truncated(12)));
            };
            let blen = blen as usize;
            if blen < 12 || !blen.is_multiple_of(4) {
                self.failed = true;
                return Some(Err(ReadError::Corrupt {
                    what: "block length",
                    offset: p,
                }));
            }
            if blen > rest {
                return Some(Err(self.truncated(blen)));
            }
            let body = &b[p + 8..p + blen - 4];
            self.pos = p + blen;
            match btype {
                // Interface Description Block.
                1 => {
                    let linktype = order.u16(body, 0).unwrap_or(1) as u32;
                    let mut ticks_per_sec = 1_000_000u64;
                    let mut o = 8;
                    while let (Some(code), Some(len)) = (order.u16(body, o), order.u16(body, o + 2))
                    {
                        let len = len as usize;
                        if code == 0 {
                            break;
                        }
                        if code == 9 && len >= 1 {
                            if let Some(&r) = body.get(o + 4) {
                                ticks_per_sec = if r & 0x80 != 0 {
                                    1u64.checked_shl((r & 0x7f) as u32).unwrap_or(1_000_000)
                                } else {
                                    10u64.checked_pow((r & 0x7f) as u32).unwrap_or(1_000_000)
                                };
                            }
                        }
                        o += 4 + len.div_ceil(4) * 4;
                    }
                    if interfaces.len() >= MAX_INTERFACES {
                        self.failed = true;
                        return Some(Err(ReadError::Corrupt {
                            what: "interface table (too many interfaces)",
                            offset: p,
                        }));
                    }
                    interfaces.push(Interface {
                        linktype,
                        ticks_per_sec: ticks_per_sec.max(1),
                    });
                }
                // Enhanced Packet Block, obsolete Packet Block.
                6 | 2 => {
                    let (iface, ts_hi, ts_lo, cap, orig) = if btype == 6 {
                        (
                            order.u32(body, 0),
                            order.u32(body, 4),
                            order.u32(body, 8),
                            order.u32(body, 12),
                            order.u32(body, 16),
                        )
                    } else {
                        (
                            order.u16(body, 0).map(u32::from),
                            order.u32(body, 4),
                            order.u32(body, 8),
                            order.u32(body, 12),
                            order.u32(body, 16),
                        )
                    };
                    let (Some(iface), Some(hi), Some(lo), Some(cap), Some(orig)) =
                        (iface, ts_hi, ts_lo, cap, orig)
                    else {
                        self.failed = true;
                        return Some(Err(ReadError::Corrupt {
                            what: "packet block",
                            offset: p,
                        }));
                    };
                    let Some(data) = body.get(20..20 + cap as usize) else {
                        self.failed = true;
                        return Some(Err(ReadError::Corrupt {
                            what: "packet block length",
                            offset: p,
                        }));
                    };
                    let Some(i) = interfaces.get(iface as usize).copied() else {
                        self.failed = true;
                        return Some(Err(ReadError::Corrupt {
                            what: "packet block interface id",
                            offset: p,
                        }));
                    };
                    self.number += 1;
                    let ticks = ((hi as u64) << 32) | lo as u64;
                    let options = 20 + (cap as usize).div_ceil(4) * 4;
                    return Some(Ok(RawFrame {
                        number: self.number,
                        ts: ticks_to_duration(ticks, i.ticks_per_sec),
                        linktype: i.linktype,
                        orig_len: orig.max(cap),
                        data,
                        direction: packet_direction(order, body, options),
                    }));
                }
                // Simple Packet Block: interface 0, no timestamp.
                3 => {
                    let Some(orig) = order.u32(body, 0) else {
                        continue;
                    };
                    let Some(i) = interfaces.first().copied() else {
                        self.failed = true;
                        return Some(Err(ReadError::Corrupt {
                            what: "simple packet block before any interface",
                            offset: p,
                        }));
                    };
                    let cap = (orig as usize).min(body.len().saturating_sub(4));
                    self.number += 1;
                    return Some(Ok(RawFrame {
                        number: self.number,
                        ts: Duration::ZERO,
                        linktype: i.linktype,
                        orig_len: orig,
                        data: &body[4..4 + cap],
                        direction: None,
                    }));
                }
                // Section headers, statistics, name resolution, custom: nothing to deliver.
                _ => {}
            }
        }
    }
}

/// The direction bits of a packet block's `epb_flags` option (code 2; bits 0-1: 1 inbound,
/// 2 outbound), if it has one.
fn packet_direction(order: Order, body: &[u8], mut o: usize) -> Option<PacketDirection> {
    while let (Some(code), Some(len)) = (order.u16(body, o), order.u16(body, o + 2)) {
        match code {
            0 => break,
            2 if len == 4 => {
                return match order.u32(body, o + 4)? & 3 {
                    1 => Some(PacketDirection::Ingress),
                    2 => Some(PacketDirection::Egress),
                    _ => None,
                };
            }
            _ => {}
        }
        o += 4 + (len as usize).div_ceil(4) * 4;
    }
    None
}

impl<'a> Iterator for CaptureReader<'a> {
    type Item = Result<RawFrame<'a>, ReadError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed {
            return None;
        }
        match self.kind {
            Kind::Pcap {
                order,
                nanos,
                linktype,
            } => self.next_pcap(order, nanos, linktype),
            Kind::PcapNg { .. } => self.next_pcapng(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        packet::{CapturedPacket, PacketDirection},
        pcap::{CaptureFormat, FrameEncoder, InterfaceInfo},
    };
    use pcap_file::DataLink;

    fn encoded(format: CaptureFormat) -> Vec<u8> {
        let enc = FrameEncoder::new(
            format,
            InterfaceInfo {
                name: "x".into(),
                linktype: DataLink::ETHERNET,
                snaplen: 8,
            },
        );
        let mut buf = Vec::new();
        enc.file_header(&mut buf).unwrap();
        for (i, len) in [(0u8, 3usize), (1, 8), (2, 8)] {
            let data = vec![i; len];
            enc.encode(
                &CapturedPacket {
                    ts: Duration::new(100 + i as u64, 5_000 + i as u32),
                    ifindex: 1,
                    direction: [
                        Some(PacketDirection::Ingress),
                        Some(PacketDirection::Egress),
                        None,
                    ][i as usize],
                    orig_len: if i == 2 { 1500 } else { len as u32 },
                    data: &data,
                },
                &mut buf,
            )
            .unwrap();
        }
        buf
    }

    #[test]
    fn reads_what_the_encoder_writes_in_both_formats() {
        for format in [CaptureFormat::Pcap, CaptureFormat::PcapNg] {
            let buf = encoded(format);
            let frames: Vec<_> = CaptureReader::new(&buf)
                .unwrap()
                .map(|f| f.unwrap())
                .collect();
            assert_eq!(frames.len(), 3, "{format:?}");
            assert_eq!(frames[0].data, &[0, 0, 0]);
            assert_eq!(
                frames[2].orig_len, 1500,
                "truncated record keeps its wire length"
            );
            assert_eq!(frames[2].data.len(), 8);
            assert_eq!(frames[1].ts, Duration::new(101, 5_001));
            assert_eq!(frames[2].number, 3);
            assert_eq!(frames[0].linktype, 1);
            let directions: Vec<_> = frames.iter().map(|f| f.direction).collect();
            if format == CaptureFormat::PcapNg {
                assert_eq!(
                    directions,
                    [
                        Some(PacketDirection::Ingress),
                        Some(PacketDirection::Egress),
                        None
                    ],
                    "pcapng keeps each packet's direction (epb_flags)"
                );
            } else {
                assert_eq!(directions, [None, None, None]);
            }
        }
    }

    #[test]
    fn microsecond_big_endian_pcap() {
        let mut b = vec![0xa1, 0xb2, 0xc3, 0xd4, 0, 2, 0, 4];
        b.extend_from_slice(&[0; 8]);
        b.extend_from_slice(&65535u32.to_be_bytes());
        b.extend_from_slice(&101u32.to_be_bytes()); // raw IP
        b.extend_from_slice(&7u32.to_be_bytes());
        b.extend_from_slice(&250_000u32.to_be_bytes());
        b.extend_from_slice(&2u32.to_be_bytes());
        b.extend_from_slice(&60u32.to_be_bytes());
        b.extend_from_slice(&[0x45, 0]);
        let f: Vec<_> = CaptureReader::new(&b).unwrap().collect();
        let f = f[0].as_ref().unwrap();
        assert_eq!(f.ts, Duration::new(7, 250_000_000));
        assert_eq!(f.linktype, 101);
        assert_eq!(f.orig_len, 60);
    }

    #[test]
    fn pcapng_honours_if_tsresol() {
        // SHB, IDB with if_tsresol=3 (milliseconds), EPB with ts 1500 ticks.
        let mut b = Vec::new();
        let block = |t: u32, body: &[u8]| {
            let mut v = t.to_le_bytes().to_vec();
            let len = 12 + body.len() as u32;
            v.extend_from_slice(&len.to_le_bytes());
            v.extend_from_slice(body);
            v.extend_from_slice(&len.to_le_bytes());
            v
        };
        let mut shb = vec![0x4d, 0x3c, 0x2b, 0x1a, 1, 0, 0, 0];
        shb.extend_from_slice(&u64::MAX.to_le_bytes());
        b.extend(block(0x0a0d0d0a, &shb));
        let mut idb = vec![1, 0, 0, 0, 0, 0, 0, 0];
        idb.extend_from_slice(&[9, 0, 1, 0, 3, 0, 0, 0, 0, 0, 0, 0]);
        b.extend(block(1, &idb));
        let mut epb = Vec::new();
        epb.extend_from_slice(&0u32.to_le_bytes());
        epb.extend_from_slice(&0u32.to_le_bytes());
        epb.extend_from_slice(&1500u32.to_le_bytes());
        epb.extend_from_slice(&4u32.to_le_bytes());
        epb.extend_from_slice(&4u32.to_le_bytes());
        epb.extend_from_slice(&[1, 2, 3, 4]);
        b.extend(block(6, &epb));
        let f: Vec<_> = CaptureReader::new(&b)
            .unwrap()
            .map(|f| f.unwrap())
            .collect();
        assert_eq!(f[0].ts, Duration::new(1, 500_000_000));
        assert_eq!(f[0].data, &[1, 2, 3, 4]);
    }

    #[test]
    fn torn_tail_reads_every_whole_record_then_reports_where() {
        let buf = encoded(CaptureFormat::Pcap);
        // Record boundaries: a cut exactly there is a shorter valid file, not a torn one.
        let boundaries = [24usize, 24 + 16 + 3, 24 + 16 + 3 + 16 + 8];
        for cut in 25..buf.len() {
            let mut r = CaptureReader::new(&buf[..cut]).unwrap();
            let mut whole = 0;
            let mut error = None;
            for f in r.by_ref() {
                match f {
                    Ok(_) => whole += 1,
                    Err(e) => error = Some(e),
                }
            }
            assert!(whole <= 3);
            if !boundaries.contains(&cut) {
                assert!(
                    matches!(error, Some(ReadError::Truncated { .. })),
                    "cut {cut}"
                );
            }
        }
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        assert!(matches!(
            CaptureReader::new(b"GIF89a"),
            Err(ReadError::UnknownMagic(_))
        ));
        assert!(matches!(
            CaptureReader::new(b"\xd4\xc3"),
            Err(ReadError::ShortHeader(2))
        ));
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(tail in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..512), ng in proptest::prelude::any::<bool>()) {
            let mut b = encoded(if ng { CaptureFormat::PcapNg } else { CaptureFormat::Pcap });
            let keep = b.len() / 2;
            b.truncate(keep);
            b.extend_from_slice(&tail);
            if let Ok(r) = CaptureReader::new(&b) {
                for f in r.take(10_000).flatten() {
                    proptest::prop_assert!(f.data.len() <= b.len());
                }
            }
        }
    }
}
