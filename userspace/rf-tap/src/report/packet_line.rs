//! One tcpdump-like text line per packet, for `rf-tap attach` without `-w`.

use std::fmt::Write as _;

use etherparse::{NetSlice, SlicedPacket, TransportSlice};
use rf_tap_engine::packet::{CapturedPacket, PacketDirection};

pub fn packet_line(p: &CapturedPacket<'_>) -> String {
    let secs = p.ts.as_secs();
    let (h, m, s) = ((secs / 3600) % 24, (secs / 60) % 60, secs % 60);
    let mut line = format!("{h:02}:{m:02}:{s:02}.{:06} ", p.ts.subsec_micros());
    line.push_str(match p.direction {
        Some(PacketDirection::Ingress) => "In  ",
        Some(PacketDirection::Egress) => "Out ",
        None => "",
    });
    let sliced = SlicedPacket::from_ethernet(p.data);
    let Ok(sliced) = sliced else {
        let _ = write!(line, "frame, length {}", p.orig_len);
        return line;
    };
    let (src, dst, proto) = match &sliced.net {
        Some(NetSlice::Ipv4(ip)) => (
            ip.header().source_addr().to_string(),
            ip.header().destination_addr().to_string(),
            "IP",
        ),
        Some(NetSlice::Ipv6(ip)) => (
            ip.header().source_addr().to_string(),
            ip.header().destination_addr().to_string(),
            "IP6",
        ),
        _ => {
            let _ = write!(line, "non-IP frame, length {}", p.orig_len);
            return line;
        }
    };
    match &sliced.transport {
        Some(TransportSlice::Tcp(t)) => {
            let mut flags = String::new();
            for (set, c) in [
                (t.syn(), 'S'),
                (t.fin(), 'F'),
                (t.rst(), 'R'),
                (t.psh(), 'P'),
                (t.ack(), '.'),
            ] {
                if set {
                    flags.push(c);
                }
            }
            let _ = write!(
                line,
                "{proto} {src}.{} > {dst}.{}: Flags [{flags}], seq {}, length {}",
                t.source_port(),
                t.destination_port(),
                t.sequence_number(),
                t.payload().len()
            );
        }
        Some(TransportSlice::Udp(u)) => {
            let _ = write!(
                line,
                "{proto} {src}.{} > {dst}.{}: UDP, length {}",
                u.source_port(),
                u.destination_port(),
                u.payload().len()
            );
        }
        _ => {
            let _ = write!(line, "{proto} {src} > {dst}: length {}", p.orig_len);
        }
    }
    line
}
