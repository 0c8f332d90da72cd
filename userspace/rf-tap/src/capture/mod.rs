//! Live capture: checks before anything is loaded, the kernel side (`kernel`), and turning
//! ring-buffer records into [`CapturedPacket`]s.

pub mod af_xdp;
pub mod kernel;

pub mod ring;

use std::{ffi::CString, fs, time::Duration};

use pcap_file::DataLink;
use rf_tap_common::{
    PacketRecord, DIR_EGRESS, LINK_ETHERNET, LINK_RAW_IP, PCAP_RECORD_AT, RECORD_HEADER_LEN,
    RECORD_VLAN,
};
use rf_tap_engine::packet::{CapturedPacket, PacketDirection};

#[derive(Debug, thiserror::Error)]
pub enum CaptureError {
    #[error("no such interface `{0}` (list them with `ip link`)")]
    NoSuchInterface(String),
    #[error("interface `{iface}` has link type {kind}, which rf-tap cannot capture (Ethernet, loopback and raw-IP interfaces are supported)")]
    UnsupportedLink { iface: String, kind: u32 },
    #[error("attaching eBPF programs needs root or CAP_BPF, CAP_NET_ADMIN and CAP_PERFMON: run it with sudo")]
    Permission,
    #[error("kernel {found} is too old: {feature} needs Linux {needs} or newer{hint}")]
    KernelTooOld {
        found: String,
        feature: &'static str,
        needs: String,
        hint: &'static str,
    },
    #[error("the embedded eBPF object has no `{0}` (a build problem: rebuild rf-tap)")]
    MissingObject(&'static str),
    #[error("cannot {what}: {detail}")]
    Kernel { what: &'static str, detail: String },
    #[error("cannot attach {program} to `{iface}`: {detail}")]
    Attach {
        iface: String,
        program: &'static str,
        detail: String,
    },
}

/// What rf-tap knows about the interface before attaching.
#[derive(Clone, Debug)]
pub struct InterfaceFacts {
    pub name: String,
    pub ifindex: u32,
    /// `LINK_ETHERNET` or `LINK_RAW_IP` for the kernel program.
    pub link_kind: u32,
    /// The pcap link type of the frames.
    pub datalink: DataLink,
    /// A loopback device, which every packet crosses twice (out, then back in).
    pub loopback: bool,
}

/// The index of the interface of this name in this network namespace, if there is one.
pub fn ifindex(name: &str) -> Option<u32> {
    let c = CString::new(name).ok()?;
    // SAFETY: c is a valid NUL-terminated string.
    let i = unsafe { libc::if_nametoindex(c.as_ptr()) };
    (i != 0).then_some(i)
}

/// Looks the interface up and classifies its frames.
pub fn interface_facts(name: &str) -> Result<InterfaceFacts, CaptureError> {
    let ifindex = ifindex(name)
        .filter(|_| !name.contains('/'))
        .ok_or_else(|| CaptureError::NoSuchInterface(name.to_string()))?;
    let read = |f: &str| -> Option<u32> {
        fs::read_to_string(format!("/sys/class/net/{name}/{f}"))
            .ok()?
            .trim()
            .parse()
            .ok()
    };
    let kind = read("type").unwrap_or(1);
    let (link_kind, datalink) = match kind {
        // ARPHRD_ETHER, ARPHRD_LOOPBACK (an all-zero Ethernet header).
        1 | 772 => (LINK_ETHERNET, DataLink::ETHERNET),
        // ARPHRD_NONE (tun, wireguard), ARPHRD_RAWIP.
        65534 | 519 => (LINK_RAW_IP, DataLink::RAW),
        other => {
            return Err(CaptureError::UnsupportedLink {
                iface: name.to_string(),
                kind: other,
            })
        }
    };
    Ok(InterfaceFacts {
        name: name.to_string(),
        ifindex,
        link_kind,
        datalink,
        loopback: kind == 772,
    })
}

/// Capabilities the process has in effect, from /proc/self/status.
fn effective_caps() -> u64 {
    fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("CapEff:"))
                .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        })
        .unwrap_or(0)
}

/// Refuses early, with the fix, when the process cannot load and attach programs.
pub fn check_privileges() -> Result<(), CaptureError> {
    const CAP_NET_ADMIN: u64 = 12;
    const CAP_SYS_ADMIN: u64 = 21;
    const CAP_PERFMON: u64 = 38;
    const CAP_BPF: u64 = 39;
    let caps = effective_caps();
    let has = |c: u64| caps & (1 << c) != 0;
    let bpf_ok = has(CAP_SYS_ADMIN) || (has(CAP_BPF) && has(CAP_PERFMON));
    if bpf_ok && has(CAP_NET_ADMIN) {
        Ok(())
    } else {
        Err(CaptureError::Permission)
    }
}

/// Kernel features each hook mode needs.
pub fn check_kernel(mode: kernel::HookMode) -> Result<(), CaptureError> {
    let Ok(v) = aya::util::KernelVersion::current() else {
        return Ok(()); // unknown: let the syscalls decide
    };
    // (needed for this mode, minimum version, feature, hint)
    let needs: [(bool, (u8, u8), &'static str, &'static str); 4] = [
        (true, (5, 8), "the BPF ring buffer", ""),
        (
            mode == kernel::HookMode::Tc,
            (6, 6),
            "TCX links (tc attach that detaches on exit)",
            "; try --mode xdp",
        ),
        (
            mode == kernel::HookMode::Xdp,
            (5, 18),
            "multi-buffer XDP (bpf_xdp_load_bytes)",
            "",
        ),
        (
            mode == kernel::HookMode::Afxdp,
            (5, 18),
            "AF_XDP with socket statistics and XDP helpers rf-tap uses",
            "; try --mode tc",
        ),
    ];
    for (applies, (maj, min), feature, hint) in needs {
        if applies && v < aya::util::KernelVersion::new(maj, min, 0) {
            return Err(CaptureError::KernelTooOld {
                found: v.to_string(),
                feature,
                needs: format!("{maj}.{min}"),
                hint,
            });
        }
    }
    Ok(())
}

/// Converts `bpf_ktime_get_ns()` (CLOCK_MONOTONIC) to wall-clock time.
#[derive(Clone, Copy, Debug)]
pub struct ClockMap {
    /// realtime - monotonic, in nanoseconds.
    offset_ns: i128,
}

fn clock_ns(clock: libc::clockid_t) -> i128 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: ts is a valid out-pointer.
    unsafe { libc::clock_gettime(clock, &mut ts) };
    ts.tv_sec as i128 * 1_000_000_000 + ts.tv_nsec as i128
}

impl ClockMap {
    pub fn now() -> Self {
        // Bracket the realtime read with two monotonic reads to halve the error.
        let m1 = clock_ns(libc::CLOCK_MONOTONIC);
        let r = clock_ns(libc::CLOCK_REALTIME);
        let m2 = clock_ns(libc::CLOCK_MONOTONIC);
        Self {
            offset_ns: r - (m1 + m2) / 2,
        }
    }

    /// realtime - monotonic, for the kernel to stamp records with.
    pub fn offset_ns(&self) -> i64 {
        self.offset_ns.clamp(i64::MIN as i128, i64::MAX as i128) as i64
    }

    /// Called once per packet: plain 64-bit arithmetic (no 128-bit division).
    pub fn wall(&self, mono_ns: u64) -> Duration {
        let ns = (mono_ns as i64)
            .saturating_add(self.offset_ns as i64)
            .max(0) as u64;
        Duration::new(ns / 1_000_000_000, (ns % 1_000_000_000) as u32)
    }
}

/// Why a ring record could not be turned into a packet.
#[derive(Debug, PartialEq, Eq)]
pub struct BadRecord;

/// The pcap record inside a ring-buffer record (its header's tail and the data), when it can
/// go to a pcap file of this snap length as it is: no VLAN tag to put back, and consistent
/// lengths. Otherwise None, and the record takes [`decode_record`].
pub fn pcap_record(bytes: &[u8], snaplen: u32) -> Option<&[u8]> {
    let header = bytes.get(..RECORD_HEADER_LEN)?;
    // SAFETY: as in decode_record.
    let rec: PacketRecord = unsafe { std::ptr::read_unaligned(header.as_ptr().cast()) };
    if rec.flags & RECORD_VLAN != 0
        || rec.cap_len > rec.orig_len
        || rec.cap_len > snaplen
        || rec.pcap_nsec > 999_999_999
    {
        return None;
    }
    bytes.get(PCAP_RECORD_AT..RECORD_HEADER_LEN + rec.cap_len as usize)
}

/// Decodes one ring-buffer record (header + bytes). A VLAN tag the kernel held as metadata
/// is put back after the MAC addresses (in `rebuilt`, reused across calls), so the file shows
/// the frame as it was on the wire, as libpcap does.
pub fn decode_record<'a>(
    bytes: &'a [u8],
    rebuilt: &'a mut Vec<u8>,
) -> Result<CapturedPacket<'a>, BadRecord> {
    let header = bytes.get(..RECORD_HEADER_LEN).ok_or(BadRecord)?;
    // SAFETY: PacketRecord is plain #[repr(C)] data of RECORD_HEADER_LEN bytes; read_unaligned
    // makes no alignment assumption.
    let rec: PacketRecord = unsafe { std::ptr::read_unaligned(header.as_ptr().cast()) };
    let mut data = bytes
        .get(RECORD_HEADER_LEN..RECORD_HEADER_LEN + rec.cap_len as usize)
        .ok_or(BadRecord)?;
    if rec.cap_len > rec.orig_len {
        return Err(BadRecord);
    }
    let mut orig_len = rec.orig_len;
    if rec.flags & RECORD_VLAN != 0 && data.len() >= 12 {
        rebuilt.clear();
        rebuilt.extend_from_slice(&data[..12]);
        rebuilt.extend_from_slice(&rec.vlan_proto.to_be_bytes());
        rebuilt.extend_from_slice(&rec.vlan_tci.to_be_bytes());
        rebuilt.extend_from_slice(&data[12..]);
        data = rebuilt;
        orig_len += 4;
    }
    Ok(CapturedPacket {
        // The kernel's wall-clock stamp (the same offset as `clock`, applied there).
        ts: Duration::new(u64::from(rec.pcap_sec), rec.pcap_nsec.min(999_999_999)),
        ifindex: rec.ifindex,
        direction: Some(if rec.direction == DIR_EGRESS {
            PacketDirection::Egress
        } else {
            PacketDirection::Ingress
        }),
        orig_len,
        data,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(cap: u32, orig: u32, dir: u8, payload: &[u8]) -> Vec<u8> {
        record_vlan(cap, orig, dir, payload, None)
    }

    fn record_vlan(
        cap: u32,
        orig: u32,
        dir: u8,
        payload: &[u8],
        vlan: Option<(u16, u16)>,
    ) -> Vec<u8> {
        let r = PacketRecord {
            ts_ns: 5_000_000_123,
            orig_len: orig,
            cap_len: cap,
            ifindex: 7,
            direction: dir,
            flags: if vlan.is_some() { RECORD_VLAN } else { 0 },
            vlan_proto: vlan.map(|v| v.0).unwrap_or(0),
            vlan_tci: vlan.map(|v| v.1).unwrap_or(0),
            _pad: [0; 6],
            pcap_sec: 5,
            pcap_nsec: 1_123,
        };
        // SAFETY: reading the bytes of a plain #[repr(C)] value.
        let head: [u8; RECORD_HEADER_LEN] = unsafe { std::mem::transmute(r) };
        let mut v = head.to_vec();
        v.extend_from_slice(payload);
        v
    }

    /// The writev fast path writes the record's own pcap part; it must be byte for byte what
    /// the encoder writes for the decoded packet, and refuse what needs the encoder.
    #[test]
    fn the_pcap_part_of_a_record_is_what_the_encoder_writes() {
        use rf_tap_engine::pcap::{CaptureFormat, FrameEncoder, InterfaceInfo};
        let enc = FrameEncoder::new(
            CaptureFormat::Pcap,
            InterfaceInfo {
                name: "t0".into(),
                linktype: pcap_file::DataLink::ETHERNET,
                snaplen: 64,
            },
        );
        let payload: Vec<u8> = (0..40u8).collect();
        let bytes = record(40, 1500, DIR_EGRESS, &payload);
        let mut re = Vec::new();
        let mut encoded = Vec::new();
        enc.encode(&decode_record(&bytes, &mut re).unwrap(), &mut encoded)
            .unwrap();
        assert_eq!(pcap_record(&bytes, 64), Some(&encoded[..]));
        // Longer than the file's snap length, or a VLAN tag to put back: the encoder's job.
        assert_eq!(pcap_record(&bytes, 39), None);
        let tagged = record_vlan(40, 40, DIR_EGRESS, &payload, Some((0x8100, 5)));
        assert_eq!(pcap_record(&tagged, 64), None);
        // Torn or inconsistent records are refused, never read past their end.
        assert_eq!(pcap_record(&bytes[..50], 64), None);
        assert_eq!(pcap_record(&record(41, 40, 0, &payload), 64), None);
    }

    #[test]
    fn decodes_header_and_truncated_payload() {
        let bytes = record(3, 1500, DIR_EGRESS, &[1, 2, 3]);
        let mut re = Vec::new();
        let p = decode_record(&bytes, &mut re).unwrap();
        assert_eq!(p.data, &[1, 2, 3]);
        assert_eq!(p.orig_len, 1500);
        assert_eq!(p.ifindex, 7);
        assert_eq!(p.direction, Some(PacketDirection::Egress));
        assert_eq!(p.ts, Duration::new(5, 1_123));
    }

    /// The kernel reserves power-of-two slots, so a record is usually longer than its header
    /// and `cap_len` bytes: both readers must stop at `cap_len` and ignore the rest.
    #[test]
    fn slot_padding_after_the_packet_is_not_part_of_it() {
        let payload: Vec<u8> = (0..100u8).collect();
        let mut slot = record(100, 1500, DIR_EGRESS, &payload);
        slot.resize(RECORD_HEADER_LEN + 128, 0xee);
        let mut re = Vec::new();
        let p = decode_record(&slot, &mut re).unwrap();
        assert_eq!(p.data, &payload[..]);
        let pcap = pcap_record(&slot, 65535).unwrap();
        assert_eq!(pcap.len(), 16 + 100);
        assert_eq!(&pcap[16..], &payload[..]);
    }

    #[test]
    fn refuses_records_that_lie_about_their_length() {
        let mut re = Vec::new();
        assert_eq!(decode_record(&[0; 10], &mut re), Err(BadRecord));
        let short = record(100, 100, 1, &[0; 10]);
        assert_eq!(decode_record(&short, &mut re), Err(BadRecord));
        let longer_than_wire = record(4, 2, 1, &[0; 4]);
        assert_eq!(decode_record(&longer_than_wire, &mut re), Err(BadRecord));
    }

    #[test]
    fn reinserts_an_offloaded_vlan_tag_after_the_macs() {
        let mut frame = vec![0xaa; 12];
        frame.extend_from_slice(&[0x08, 0x00, 0x45]);
        let bytes = record_vlan(15, 60, 1, &frame, Some((0x8100, 100)));
        let mut re = Vec::new();
        let p = decode_record(&bytes, &mut re).unwrap();
        assert_eq!(&p.data[12..18], &[0x81, 0x00, 0x00, 100, 0x08, 0x00]);
        assert_eq!(p.data.len(), 19);
        assert_eq!(p.orig_len, 64);
    }

    #[test]
    fn clock_map_tracks_realtime() {
        let m = ClockMap::now();
        let wall = m.wall(clock_ns(libc::CLOCK_MONOTONIC) as u64);
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap();
        let diff = now.abs_diff(wall);
        assert!(diff < Duration::from_millis(50), "{diff:?}");
    }

    #[test]
    fn missing_interface_is_named() {
        let e = interface_facts("rf-no-such0").unwrap_err();
        assert_eq!(
            e.to_string(),
            "no such interface `rf-no-such0` (list them with `ip link`)"
        );
        assert!(interface_facts("lo").is_ok());
    }

    proptest::proptest! {
        /// Ring records come from the kernel, but the decoder still never trusts their
        /// lengths: arbitrary bytes never panic and never read past the record.
        #[test]
        fn arbitrary_records_never_panic(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..96)) {
            let mut re = Vec::new();
            if let Ok(p) = decode_record(&bytes, &mut re) {
                proptest::prop_assert!(p.data.len() <= bytes.len().saturating_sub(RECORD_HEADER_LEN) + 4);
                proptest::prop_assert!(p.data.len() as u32 <= p.orig_len);
            }
        }
    }
}
