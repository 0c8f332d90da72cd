//! IPv4/IPv6 fragment reassembly with bounded memory.
//!
//! Fragments are kept per (source, destination, protocol, id) until the datagram is whole;
//! overlapping fragments keep the bytes that arrived first. A datagram larger than 64 KiB,
//! older than the timeout, or pushed out by the global byte limit is dropped and counted.

use std::{collections::HashMap, net::IpAddr, time::Duration};

use super::IpPacket;

const MAX_DATAGRAM: u32 = 65_535;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct DefragStats {
    pub reassembled: u64,
    pub dropped: u64,
}

#[derive(Hash, PartialEq, Eq, Clone, Copy)]
struct Key {
    src: IpAddr,
    dst: IpAddr,
    protocol: u8,
    id: u32,
}

struct Pending {
    first_seen: Duration,
    pieces: Vec<(u32, Vec<u8>)>,
    total: Option<u32>,
    bytes: usize,
    missing: u32,
}

pub struct Defragmenter {
    pending: HashMap<Key, Pending>,
    bytes: usize,
    limit_bytes: usize,
    timeout: Duration,
    pub stats: DefragStats,
}

impl Default for Defragmenter {
    fn default() -> Self {
        Self::new(8 << 20, Duration::from_secs(30))
    }
}

impl Defragmenter {
    pub fn new(limit_bytes: usize, timeout: Duration) -> Self {
        Self {
            pending: HashMap::new(),
            bytes: 0,
            limit_bytes,
            timeout,
            stats: DefragStats::default(),
        }
    }

    /// Adds a fragment; returns the whole datagram's payload once every byte is there.
    pub fn push(&mut self, frag: &IpPacket<'_>, now: Duration) -> Option<Vec<u8>> {
        self.expire(now);
        let key = Key {
            src: frag.src,
            dst: frag.dst,
            protocol: frag.protocol,
            id: frag.frag_id,
        };
        let end = frag.frag_offset.saturating_add(frag.payload.len() as u32);
        if end > MAX_DATAGRAM {
            self.stats.dropped += 1;
            if let Some(p) = self.pending.remove(&key) {
                self.bytes -= p.bytes;
            }
            return None;
        }
        while self.bytes + frag.payload.len() > self.limit_bytes {
            let Some(oldest) = self
                .pending
                .iter()
                .min_by_key(|(_, p)| p.first_seen)
                .map(|(k, _)| *k)
            else {
                break;
            };
            if let Some(p) = self.pending.remove(&oldest) {
                self.bytes -= p.bytes;
                self.stats.dropped += 1;
            }
        }
        let entry = self.pending.entry(key).or_insert_with(|| Pending {
            first_seen: now,
            pieces: Vec::new(),
            total: None,
            bytes: 0,
            missing: 0,
        });
        if !frag.more_fragments {
            entry.total = Some(end);
        }
        entry.missing += frag.missing;
        entry.pieces.push((frag.frag_offset, frag.payload.to_vec()));
        entry.bytes += frag.payload.len();
        self.bytes += frag.payload.len();

        let total = entry.total?;
        // Whole when the pieces, in arrival order (first wins), cover 0..total.
        let mut covered = vec![false; total as usize];
        for (off, data) in &entry.pieces {
            let s = (*off as usize).min(total as usize);
            let e = (s + data.len()).min(total as usize);
            covered[s..e].iter_mut().for_each(|c| *c = true);
        }
        if !covered.iter().all(|c| *c) {
            return None;
        }
        let p = self.pending.remove(&key)?;
        self.bytes -= p.bytes;
        let mut out = vec![0u8; total as usize];
        let mut written = vec![false; total as usize];
        for (off, data) in &p.pieces {
            for (i, b) in data.iter().enumerate() {
                let at = *off as usize + i;
                if at < out.len() && !written[at] {
                    out[at] = *b;
                    written[at] = true;
                }
            }
        }
        self.stats.reassembled += 1;
        Some(out)
    }

    fn expire(&mut self, now: Duration) {
        let timeout = self.timeout;
        let before = self.pending.len();
        let mut freed = 0;
        self.pending.retain(|_, p| {
            let keep = now.saturating_sub(p.first_seen) < timeout;
            if !keep {
                freed += p.bytes;
            }
            keep
        });
        self.bytes -= freed;
        self.stats.dropped += (before - self.pending.len()) as u64;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    fn frag(off: u32, more: bool, data: &[u8]) -> IpPacket<'_> {
        IpPacket {
            src: IpAddr::V4(Ipv4Addr::new(1, 1, 1, 1)),
            dst: IpAddr::V4(Ipv4Addr::new(2, 2, 2, 2)),
            protocol: 6,
            frag_id: 7,
            frag_offset: off,
            more_fragments: more,
            is_fragment: true,
            payload: data,
            missing: 0,
        }
    }

    #[test]
    fn reassembles_out_of_order_with_overlap_first_wins() {
        let t = Duration::from_secs(1);
        let mut d = Defragmenter::default();
        assert!(d.push(&frag(8, true, b"bbbbbbbb"), t).is_none());
        assert!(d.push(&frag(16, false, b"cccc"), t).is_none());
        let whole = d.push(&frag(0, true, b"aaaaaaaaXXXXXXXX"), t).unwrap();
        assert_eq!(whole, b"aaaaaaaabbbbbbbbcccc");
        assert_eq!(d.stats.reassembled, 1);
    }

    #[test]
    fn limits_and_timeouts_drop_and_count() {
        let mut d = Defragmenter::new(32, Duration::from_secs(5));
        d.push(&frag(0, true, &[0; 24]), Duration::from_secs(1));
        let mut f = frag(0, true, &[0; 24]);
        f.frag_id = 8;
        d.push(&f, Duration::from_secs(2));
        assert_eq!(d.stats.dropped, 1, "oldest evicted for room");
        f.frag_id = 9;
        d.push(&f, Duration::from_secs(20));
        assert!(d.stats.dropped >= 2, "timed out");
        assert!(d
            .push(&frag(65_530, false, &[0; 10]), Duration::from_secs(20))
            .is_none());
    }
}
