use std::{borrow::Cow, io};

use pcap_file::{
    pcap::PcapHeader,
    pcapng::{
        blocks::{
            enhanced_packet::{EnhancedPacketBlock, EnhancedPacketOption},
            interface_description::{InterfaceDescriptionBlock, InterfaceDescriptionOption},
            section_header::SectionHeaderBlock,
        },
        PcapNgWriter,
    },
    DataLink, Endianness, TsResolution,
};

use crate::packet::{CapturedPacket, PacketDirection};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CaptureFormat {
    /// Classic pcap, nanosecond timestamps (magic a1b23c4d), as `tcpdump --nano` writes.
    Pcap,
    /// pcapng with one interface block (name, link type, nanosecond resolution) and the
    /// direction of every packet in its `epb_flags`.
    PcapNg,
}

/// What the file says about the capture point.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InterfaceInfo {
    pub name: String,
    pub linktype: DataLink,
    pub snaplen: u32,
}

/// Turns packets into file bytes, appended to a caller's buffer record by record, so that
/// the caller can write whole records only.
pub struct FrameEncoder {
    format: CaptureFormat,
    iface: InterfaceInfo,
}

fn io_err(e: pcap_file::PcapError) -> io::Error {
    io::Error::other(e.to_string())
}

impl FrameEncoder {
    /// For classic pcap: the snap length, up to which a record of the kernel's pcap layout
    /// (16-byte header in host order, nanoseconds, then the data) is a valid record of this
    /// file as it is. None for pcapng.
    pub fn pcap_snaplen(&self) -> Option<u32> {
        (self.format == CaptureFormat::Pcap).then_some(self.iface.snaplen)
    }

    pub fn new(format: CaptureFormat, iface: InterfaceInfo) -> Self {
        Self { format, iface }
    }

    /// The bytes a new file starts with.
    pub fn file_header(&self, out: &mut Vec<u8>) -> io::Result<()> {
        match self.format {
            CaptureFormat::Pcap => {
                let header = PcapHeader {
                    snaplen: self.iface.snaplen,
                    datalink: self.iface.linktype,
                    ts_resolution: TsResolution::NanoSecond,
                    endianness: Endianness::native(),
                    ..Default::default()
                };
                header.write_to(out).map_err(io_err)?;
            }
            CaptureFormat::PcapNg => {
                let section = SectionHeaderBlock {
                    endianness: Endianness::native(),
                    ..Default::default()
                };
                let mut w =
                    PcapNgWriter::with_section_header(Vec::new(), section).map_err(io_err)?;
                let idb = InterfaceDescriptionBlock {
                    linktype: self.iface.linktype,
                    snaplen: self.iface.snaplen,
                    options: vec![
                        InterfaceDescriptionOption::IfName(Cow::Owned(self.iface.name.clone())),
                        // pcap-file writes EPB timestamps in nanoseconds.
                        InterfaceDescriptionOption::IfTsResol(9),
                    ],
                };
                w.write_pcapng_block(idb).map_err(io_err)?;
                out.extend_from_slice(&w.into_inner());
            }
        }
        Ok(())
    }

    /// Appends one whole record for `pkt`.
    pub fn encode(&self, pkt: &CapturedPacket<'_>, out: &mut Vec<u8>) -> io::Result<()> {
        match self.format {
            CaptureFormat::Pcap => {
                // The 16-byte record header in the file's (native) byte order, then the data:
                // one reservation, two copies; this is the hot path of a capture.
                let incl = pkt.data.len().min(self.iface.snaplen as usize);
                let secs = u32::try_from(pkt.ts.as_secs()).map_err(|_| {
                    io::Error::new(io::ErrorKind::InvalidInput, "timestamp after 2106")
                })?;
                out.reserve(16 + incl);
                out.extend_from_slice(&secs.to_ne_bytes());
                out.extend_from_slice(&pkt.ts.subsec_nanos().to_ne_bytes());
                out.extend_from_slice(&(incl as u32).to_ne_bytes());
                out.extend_from_slice(&pkt.orig_len.max(incl as u32).to_ne_bytes());
                out.extend_from_slice(&pkt.data[..incl]);
            }
            CaptureFormat::PcapNg => {
                let mut options = Vec::new();
                // epb_flags bits 0-1: 01 inbound, 10 outbound.
                match pkt.direction {
                    Some(PacketDirection::Ingress) => options.push(EnhancedPacketOption::Flags(1)),
                    Some(PacketDirection::Egress) => options.push(EnhancedPacketOption::Flags(2)),
                    None => {}
                }
                let epb = EnhancedPacketBlock {
                    interface_id: 0,
                    timestamp: pkt.ts,
                    original_len: pkt.orig_len,
                    data: Cow::Borrowed(pkt.data),
                    options,
                };
                write_epb(&epb, out)?;
            }
        }
        Ok(())
    }
}

fn write_epb(epb: &EnhancedPacketBlock<'_>, out: &mut Vec<u8>) -> io::Result<()> {
    use pcap_file::pcapng::blocks::PcapNgBlock;
    #[cfg(target_endian = "little")]
    type Order = byteorder_slice::LittleEndian;
    #[cfg(target_endian = "big")]
    type Order = byteorder_slice::BigEndian;
    let block = epb.clone().into_block();
    block.write_to::<Order, _>(out)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use pcap_file::{pcap::PcapReader, pcapng::PcapNgReader};
    use std::time::Duration;

    fn iface() -> InterfaceInfo {
        InterfaceInfo {
            name: "veth0".into(),
            linktype: DataLink::ETHERNET,
            snaplen: 96,
        }
    }

    fn pkt(data: &[u8], orig: u32, dir: PacketDirection) -> CapturedPacket<'_> {
        CapturedPacket {
            ts: Duration::new(1_700_000_000, 123_456_789),
            ifindex: 3,
            direction: Some(dir),
            orig_len: orig,
            data,
        }
    }

    #[test]
    fn pcap_round_trip_keeps_original_length_and_nanoseconds() {
        let enc = FrameEncoder::new(CaptureFormat::Pcap, iface());
        let mut buf = Vec::new();
        enc.file_header(&mut buf).unwrap();
        enc.encode(&pkt(&[0xaa; 96], 1514, PacketDirection::Ingress), &mut buf)
            .unwrap();
        enc.encode(&pkt(&[0xbb; 60], 60, PacketDirection::Egress), &mut buf)
            .unwrap();
        let mut r = PcapReader::new(&buf[..]).unwrap();
        assert_eq!(r.header().snaplen, 96);
        assert_eq!(r.header().ts_resolution, TsResolution::NanoSecond);
        // Raw records: pcap-file 2.0's validating reader wrongly refuses orig_len > snaplen,
        // which is exactly what a truncated capture has (tcpdump and Wireshark accept it).
        let a = r.next_raw_packet().unwrap().unwrap();
        assert_eq!((a.orig_len, a.incl_len, a.data.len()), (1514, 96, 96));
        assert_eq!((a.ts_sec, a.ts_frac), (1_700_000_000, 123_456_789));
        let b = r.next_raw_packet().unwrap().unwrap();
        assert_eq!((b.orig_len, b.data.len()), (60, 60));
        assert!(r.next_raw_packet().is_none());
    }

    #[test]
    fn pcapng_round_trip_with_interface_and_direction() {
        let enc = FrameEncoder::new(CaptureFormat::PcapNg, iface());
        let mut buf = Vec::new();
        enc.file_header(&mut buf).unwrap();
        enc.encode(&pkt(&[1, 2, 3], 1000, PacketDirection::Egress), &mut buf)
            .unwrap();
        let mut r = PcapNgReader::new(&buf[..]).unwrap();
        let mut epbs = Vec::new();
        while let Some(b) = r.next_block() {
            if let Some(e) = b.unwrap().into_enhanced_packet() {
                epbs.push(e.into_owned());
            }
        }
        assert_eq!(epbs.len(), 1);
        let epb = &epbs[0];
        assert_eq!(epb.original_len, 1000);
        assert_eq!(&epb.data[..], &[1, 2, 3]);
        assert_eq!(epb.options, vec![EnhancedPacketOption::Flags(2)]);
        assert_eq!(epb.timestamp, Duration::new(1_700_000_000, 123_456_789));
        let idb = &r.interfaces()[0];
        assert!(idb
            .options
            .contains(&InterfaceDescriptionOption::IfName("veth0".into())));
    }
}
