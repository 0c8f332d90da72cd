//! The flow table: frames in, HTTP exchanges out.
//!
//! Each TCP connection gets two reassemblers and an [`HttpConnection`]. Memory is bounded
//! per flow (out-of-order bytes held) and globally (number of flows; the idle ones go first),
//! flows idle longer than the timeout (in capture time) are closed, and everything evicted
//! or lost is counted in [`ExtractStats`].

use std::{
    collections::HashMap,
    net::{IpAddr, SocketAddr},
    time::Duration,
};

use serde::Serialize;

use crate::{
    http::{
        exchange::{Exchange, ExchangeFlags, HttpConnection, Paired},
        message::Limits,
    },
    pcap::reader::RawFrame,
    reassembly::{Origin, Reassembler, ReassemblyStats, StreamEvent},
    wire::{self, defrag::Defragmenter, tcp_flags, Skip, TcpSegment, Transport},
};

#[derive(Clone, Copy, Debug)]
pub struct ExtractConfig {
    /// Most out-of-order bytes one direction holds before declaring a gap.
    pub flow_buffer: usize,
    /// Most flows tracked at once; beyond it the least recently active is closed.
    pub max_flows: usize,
    /// Most out-of-order bytes held over all flows; beyond it the flow holding the most
    /// gives up on its holes (counted as gaps).
    pub held_budget: usize,
    /// A flow with no packet for this long (capture time) is closed.
    pub idle_timeout: Duration,
    pub http: Limits,
}

impl Default for ExtractConfig {
    fn default() -> Self {
        Self {
            flow_buffer: 1 << 20,
            // About 3.8 KB per idle flow: 100k flows stay well under 512 MiB.
            max_flows: 100_000,
            held_budget: 64 << 20,
            idle_timeout: Duration::from_secs(300),
            http: Limits::default(),
        }
    }
}

#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct ExtractStats {
    pub frames: u64,
    pub bytes: u64,
    pub tcp_segments: u64,
    pub not_tcp: u64,
    pub malformed: u64,
    pub unsupported_link: u64,
    pub fragments_reassembled: u64,
    pub fragments_dropped: u64,
    pub flows: u64,
    pub flows_evicted: u64,
    pub flows_timed_out: u64,
    /// Times the global held-bytes budget forced a flow to give up on its holes.
    pub held_budget_releases: u64,
    pub exchanges: u64,
    pub snaplen_truncated_segments: u64,
    pub reassembly: ReassemblyStats,
}

impl ExtractStats {
    /// Adds another extractor's counters (shards of one capture).
    pub fn add(&mut self, o: &ExtractStats) {
        self.frames += o.frames;
        self.bytes += o.bytes;
        self.tcp_segments += o.tcp_segments;
        self.not_tcp += o.not_tcp;
        self.malformed += o.malformed;
        self.unsupported_link += o.unsupported_link;
        self.fragments_reassembled += o.fragments_reassembled;
        self.fragments_dropped += o.fragments_dropped;
        self.flows += o.flows;
        self.flows_evicted += o.flows_evicted;
        self.flows_timed_out += o.flows_timed_out;
        self.held_budget_releases += o.held_budget_releases;
        self.exchanges += o.exchanges;
        self.snaplen_truncated_segments += o.snaplen_truncated_segments;
        let (r, x) = (&mut self.reassembly, &o.reassembly);
        r.delivered_bytes += x.delivered_bytes;
        r.gap_bytes += x.gap_bytes;
        r.gaps += x.gaps;
        r.retransmitted_bytes += x.retransmitted_bytes;
        r.conflicting_overlaps += x.conflicting_overlaps;
        r.out_of_order_segments += x.out_of_order_segments;
    }
}

/// Every exchange of a capture held in memory, and where reading stopped if the capture
/// is torn or corrupt.
pub fn extract_all(
    capture: &[u8],
    config: ExtractConfig,
) -> Result<(Vec<Exchange>, Option<crate::pcap::reader::ReadError>), crate::pcap::reader::ReadError>
{
    let mut x = Extractor::new(config);
    let mut out = Vec::new();
    let mut stopped = None;
    for f in crate::pcap::reader::CaptureReader::new(capture)? {
        match f {
            Ok(f) => x.frame(&f, &mut out),
            Err(e) => {
                stopped = Some(e);
                break;
            }
        }
    }
    x.finish(&mut out);
    Ok((out, stopped))
}

#[derive(Hash, PartialEq, Eq, Clone, Copy, Debug)]
struct FlowKey {
    lo: (IpAddr, u16),
    hi: (IpAddr, u16),
}

impl FlowKey {
    fn of(a: (IpAddr, u16), b: (IpAddr, u16)) -> Self {
        if a <= b {
            Self { lo: a, hi: b }
        } else {
            Self { lo: b, hi: a }
        }
    }
}

struct Flow {
    id: u64,
    client: SocketAddr,
    server: SocketAddr,
    /// [client → server, server → client]
    dirs: [Reassembler; 2],
    http: HttpConnection,
    last_seen: Duration,
    gap: [bool; 2],
    truncated: bool,
    /// A RST or both FINs were seen.
    closed: bool,
}

pub struct Extractor {
    config: ExtractConfig,
    /// foldhash: fast, and seeded per process so hostile flow keys cannot force collisions.
    /// Boxed: a flow is about 1.3 KB, and a table of inline flows (sized to a power of two,
    /// doubled while growing) would hold that for every empty slot too.
    flows: HashMap<FlowKey, Box<Flow>, foldhash::fast::RandomState>,
    defrag: Defragmenter,
    next_flow: u64,
    next_exchange: u64,
    last_sweep: Duration,
    held_total: usize,
    now: Duration,
    paired: Vec<Paired>,
    pub stats: ExtractStats,
}

fn looks_like_request(p: &[u8]) -> bool {
    let n = p
        .iter()
        .take(16)
        .take_while(|c| c.is_ascii_alphabetic())
        .count();
    n >= 3 && p.get(n) == Some(&b' ')
}

impl Extractor {
    pub fn new(config: ExtractConfig) -> Self {
        Self {
            config,
            flows: HashMap::default(),
            defrag: Defragmenter::default(),
            next_flow: 1,
            next_exchange: 1,
            last_sweep: Duration::ZERO,
            held_total: 0,
            now: Duration::ZERO,
            paired: Vec::new(),
            stats: ExtractStats::default(),
        }
    }

    pub fn active_flows(&self) -> usize {
        self.flows.len()
    }

    /// Processes one captured frame; completed exchanges are appended to `out`.
    pub fn frame(&mut self, f: &RawFrame<'_>, out: &mut Vec<Exchange>) {
        self.stats.frames += 1;
        self.stats.bytes += f.data.len() as u64;
        self.now = self.now.max(f.ts);
        let origin = Origin {
            ts: f.ts,
            frame: f.number,
        };
        match wire::ip_packet(f.linktype, f.data, f.orig_len) {
            Ok(ip) => self.ip(ip, origin, 0, out),
            Err(Skip::NotTcp) => self.stats.not_tcp += 1,
            Err(Skip::Malformed(_)) => self.stats.malformed += 1,
            Err(Skip::UnsupportedLink(_)) => self.stats.unsupported_link += 1,
        }
        if self.now.saturating_sub(self.last_sweep) >= Duration::from_secs(10) {
            self.last_sweep = self.now;
            self.sweep(out);
        }
    }

    fn ip(&mut self, ip: wire::IpPacket<'_>, origin: Origin, depth: u8, out: &mut Vec<Exchange>) {
        if ip.is_fragment {
            let before = self.defrag.stats;
            let whole = self.defrag.push(&ip, origin.ts);
            self.stats.fragments_dropped += self.defrag.stats.dropped - before.dropped;
            if let Some(payload) = whole {
                self.stats.fragments_reassembled += 1;
                let mut full = ip;
                full.is_fragment = false;
                full.payload = &payload;
                self.transport(full, origin, depth, out);
            }
            return;
        }
        self.transport(ip, origin, depth, out);
    }

    fn transport(
        &mut self,
        ip: wire::IpPacket<'_>,
        origin: Origin,
        depth: u8,
        out: &mut Vec<Exchange>,
    ) {
        match wire::transport(&ip, depth) {
            Ok(Transport::Tcp(seg)) => self.segment(&seg, origin, out),
            Ok(Transport::Inner(inner)) => self.ip(inner, origin, depth + 1, out),
            Err(Skip::NotTcp) => self.stats.not_tcp += 1,
            Err(_) => self.stats.malformed += 1,
        }
    }

    fn segment(&mut self, seg: &TcpSegment<'_>, origin: Origin, out: &mut Vec<Exchange>) {
        self.stats.tcp_segments += 1;
        let src = (seg.src, seg.sport);
        let dst = (seg.dst, seg.dport);
        let key = FlowKey::of(src, dst);
        let syn_only = seg.has(tcp_flags::SYN) && !seg.has(tcp_flags::ACK);

        // Port reuse: a new SYN on a connection that has ended starts a new flow.
        if syn_only {
            if let Some(f) = self.flows.get(&key) {
                if f.closed || (f.dirs[0].finished() && f.dirs[1].finished()) {
                    if let Some(old) = self.flows.remove(&key) {
                        self.close_flow(old, out);
                    }
                }
            }
        }
        if !self.flows.contains_key(&key) {
            // A bare ACK/FIN/RST (the tail of a closed connection, or a scan) opens nothing.
            if seg.payload.is_empty() && !seg.has(tcp_flags::SYN) {
                return;
            }
            if self.flows.len() >= self.config.max_flows {
                self.evict_oldest(out);
            }
            let src_is_client = if seg.has(tcp_flags::SYN) {
                !seg.has(tcp_flags::ACK)
            } else if seg.payload.starts_with(b"HTTP/") {
                false
            } else if looks_like_request(seg.payload) {
                true
            } else {
                seg.sport > seg.dport
            };
            let (client, server) = if src_is_client {
                (src, dst)
            } else {
                (dst, src)
            };
            self.stats.flows += 1;
            let flow = Box::new(Flow {
                id: self.next_flow,
                client: SocketAddr::new(client.0, client.1),
                server: SocketAddr::new(server.0, server.1),
                dirs: [
                    Reassembler::new(self.config.flow_buffer),
                    Reassembler::new(self.config.flow_buffer),
                ],
                http: HttpConnection::new(self.config.http),
                last_seen: origin.ts,
                gap: [false; 2],
                truncated: false,
                closed: false,
            });
            self.next_flow += 1;
            self.flows.insert(key, flow);
        }
        let Some(flow) = self.flows.get_mut(&key) else {
            return;
        };
        flow.last_seen = origin.ts;
        let held_before = flow.dirs[0].held_bytes() + flow.dirs[1].held_bytes();
        let d = if SocketAddr::new(src.0, src.1) == flow.client {
            0
        } else {
            1
        };
        if seg.missing > 0 {
            flow.truncated = true;
            self.stats.snaplen_truncated_segments += 1;
        }
        if seg.has(tcp_flags::RST) {
            flow.closed = true;
        }
        let Flow {
            dirs, http, gap, ..
        } = &mut **flow;
        let paired = &mut self.paired;
        let from_client = d == 0;
        let (this, other) = if d == 0 {
            let (a, b) = dirs.split_at_mut(1);
            (&mut a[0], &mut b[0])
        } else {
            let (a, b) = dirs.split_at_mut(1);
            (&mut b[0], &mut a[0])
        };
        {
            let mut emit = |e: StreamEvent<'_>| deliver(http, from_client, e, &mut gap[d], paired);
            this.segment(
                seg.seq,
                seg.has(tcp_flags::SYN),
                seg.has(tcp_flags::FIN),
                seg.has(tcp_flags::RST),
                seg.payload,
                origin,
                &mut emit,
            );
        }
        if seg.has(tcp_flags::ACK) {
            let od = 1 - d;
            let mut emit =
                |e: StreamEvent<'_>| deliver(http, !from_client, e, &mut gap[od], paired);
            other.acknowledged(seg.ack, &mut emit);
        }
        if seg.has(tcp_flags::RST) {
            let od = 1 - d;
            let mut emit =
                |e: StreamEvent<'_>| deliver(http, !from_client, e, &mut gap[od], paired);
            other.close(origin, &mut emit, true);
        }
        let finished = flow.dirs[0].finished() && flow.dirs[1].finished();
        let held_after = flow.dirs[0].held_bytes() + flow.dirs[1].held_bytes();
        self.held_total = (self.held_total + held_after).saturating_sub(held_before);
        self.emit_paired(&key, out);
        if self.held_total > self.config.held_budget {
            self.relieve_memory(out);
        }
        if finished {
            if let Some(f) = self.flows.remove(&key) {
                self.close_flow(f, out);
            }
        }
    }

    /// Turns paired messages of a flow into numbered exchanges.
    fn emit_paired(&mut self, key: &FlowKey, out: &mut Vec<Exchange>) {
        if self.paired.is_empty() {
            return;
        }
        let Some(flow) = self.flows.get(key) else {
            self.paired.clear();
            return;
        };
        let (id, client, server, gap, truncated) =
            (flow.id, flow.client, flow.server, flow.gap, flow.truncated);
        for p in self.paired.drain(..) {
            out.push(make_exchange(
                &mut self.next_exchange,
                id,
                client,
                server,
                gap,
                truncated,
                p,
            ));
            self.stats.exchanges += 1;
        }
    }

    /// Over the global budget: the flow holding the most out-of-order bytes gives up on
    /// its holes.
    fn relieve_memory(&mut self, out: &mut Vec<Exchange>) {
        let Some(key) = self
            .flows
            .iter()
            .max_by_key(|(_, f)| f.dirs[0].held_bytes() + f.dirs[1].held_bytes())
            .map(|(k, _)| *k)
        else {
            return;
        };
        let Some(flow) = self.flows.get_mut(&key) else {
            return;
        };
        let before = flow.dirs[0].held_bytes() + flow.dirs[1].held_bytes();
        let Flow {
            dirs, http, gap, ..
        } = &mut **flow;
        for (d, r) in dirs.iter_mut().enumerate() {
            let mut emit =
                |e: StreamEvent<'_>| deliver(http, d == 0, e, &mut gap[d], &mut self.paired);
            r.release_held(&mut emit);
        }
        self.held_total = self.held_total.saturating_sub(before);
        self.stats.held_budget_releases += 1;
        self.emit_paired(&key, out);
    }

    fn close_flow(&mut self, mut flow: Box<Flow>, out: &mut Vec<Exchange>) {
        self.held_total = self
            .held_total
            .saturating_sub(flow.dirs[0].held_bytes() + flow.dirs[1].held_bytes());
        let origin = Origin {
            ts: flow.last_seen,
            frame: 0,
        };
        let Flow {
            dirs, http, gap, ..
        } = &mut *flow;
        for (d, r) in dirs.iter_mut().enumerate() {
            let mut emit =
                |e: StreamEvent<'_>| deliver(http, d == 0, e, &mut gap[d], &mut self.paired);
            r.close(origin, &mut emit, false);
        }
        http.finish(&mut self.paired);
        for r in &flow.dirs {
            add_stats(&mut self.stats.reassembly, &r.stats);
        }
        for p in self.paired.drain(..) {
            out.push(make_exchange(
                &mut self.next_exchange,
                flow.id,
                flow.client,
                flow.server,
                flow.gap,
                flow.truncated,
                p,
            ));
            self.stats.exchanges += 1;
        }
    }

    fn evict_oldest(&mut self, out: &mut Vec<Exchange>) {
        let Some(key) = self
            .flows
            .iter()
            .min_by_key(|(_, f)| f.last_seen)
            .map(|(k, _)| *k)
        else {
            return;
        };
        if let Some(f) = self.flows.remove(&key) {
            self.stats.flows_evicted += 1;
            self.close_flow(f, out);
        }
    }

    fn sweep(&mut self, out: &mut Vec<Exchange>) {
        let now = self.now;
        let timeout = self.config.idle_timeout;
        let idle: Vec<FlowKey> = self
            .flows
            .iter()
            .filter(|(_, f)| now.saturating_sub(f.last_seen) > timeout)
            .map(|(k, _)| *k)
            .collect();
        for k in idle {
            if let Some(f) = self.flows.remove(&k) {
                self.stats.flows_timed_out += 1;
                self.close_flow(f, out);
            }
        }
    }

    /// End of input: every flow is closed, in order of first activity.
    pub fn finish(&mut self, out: &mut Vec<Exchange>) {
        let mut flows: Vec<Box<Flow>> = self.flows.drain().map(|(_, f)| f).collect();
        flows.sort_by_key(|f| f.id);
        for f in flows {
            self.close_flow(f, out);
        }
        self.stats.fragments_dropped = self.defrag.stats.dropped;
    }
}

fn add_stats(total: &mut ReassemblyStats, s: &ReassemblyStats) {
    total.delivered_bytes += s.delivered_bytes;
    total.gap_bytes += s.gap_bytes;
    total.gaps += s.gaps;
    total.retransmitted_bytes += s.retransmitted_bytes;
    total.conflicting_overlaps += s.conflicting_overlaps;
    total.out_of_order_segments += s.out_of_order_segments;
}

fn deliver(
    http: &mut HttpConnection,
    from_client: bool,
    e: StreamEvent<'_>,
    gap: &mut bool,
    out: &mut Vec<Paired>,
) {
    match e {
        StreamEvent::Data(b, origin) => http.data(from_client, b, origin, out),
        StreamEvent::Gap(n, _) => {
            *gap = true;
            http.gap(from_client, n, out);
        }
        StreamEvent::Fin(_) | StreamEvent::Reset(_) => http.end(from_client, out),
    }
}

fn make_exchange(
    next: &mut u64,
    conn: u64,
    client: SocketAddr,
    server: SocketAddr,
    gap: [bool; 2],
    truncated: bool,
    p: Paired,
) -> Exchange {
    let id = *next;
    *next += 1;
    let mut anomalies = p.anomalies;
    if let Some(q) = &p.request {
        anomalies.extend(q.anomalies.iter().cloned());
    }
    if let Some(r) = &p.response {
        anomalies.extend(r.anomalies.iter().cloned());
    }
    let flags = ExchangeFlags {
        gap_request: p.request.as_ref().is_some_and(|q| q.body.gap)
            || (gap[0] && p.request.as_ref().is_some_and(|q| q.incomplete)),
        gap_response: p.response.as_ref().is_some_and(|r| r.body.gap)
            || (gap[1] && p.response.as_ref().is_some_and(|r| r.incomplete)),
        truncated,
        no_response: p.request.is_some() && p.response.is_none(),
        no_request: p.request.is_none(),
        tunnel: p.tunnel,
        anomaly: !anomalies.is_empty(),
        incomplete: p.request.as_ref().is_some_and(|q| q.incomplete)
            || p.response.as_ref().is_some_and(|r| r.incomplete),
    };
    Exchange {
        id,
        conn,
        client,
        server,
        request: p.request,
        response: p.response,
        flags,
        anomalies,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(data: &[u8], n: u64) -> RawFrame<'_> {
        RawFrame {
            number: n,
            ts: Duration::from_secs(n),
            linktype: wire::LINKTYPE_RAW,
            orig_len: data.len() as u32,
            data,
        }
    }

    fn seg(i: u16, seq: u32, payload: &[u8]) -> Vec<u8> {
        let mut v = Vec::new();
        etherparse::PacketBuilder::ipv4([10, 0, (i >> 8) as u8, i as u8], [10, 9, 9, 9], 64)
            .tcp(20_000 + i, 80, seq, 1000)
            .write(&mut v, payload)
            .unwrap();
        v
    }

    #[test]
    fn flow_count_is_bounded_and_evictions_counted() {
        let mut x = Extractor::new(ExtractConfig {
            max_flows: 10,
            ..Default::default()
        });
        let mut out = Vec::new();
        for i in 0..25u16 {
            let f = seg(i, 1, b"GET /a HTTP/1.1\r\nHost: h\r\n\r\n");
            x.frame(&frame(&f, i as u64 + 1), &mut out);
        }
        assert!(x.active_flows() <= 10);
        assert_eq!(x.stats.flows_evicted, 15);
        assert_eq!(out.len(), 15, "evicted flows hand over their requests");
        assert!(out.iter().all(|e| e.flags.no_response));
    }

    #[test]
    fn held_bytes_are_bounded_over_all_flows() {
        let mut x = Extractor::new(ExtractConfig {
            held_budget: 4096,
            ..Default::default()
        });
        let mut out = Vec::new();
        let mut n = 1;
        for i in 0..8u16 {
            // Each flow starts, then sends 1 KiB far ahead of a hole.
            x.frame(&frame(&seg(i, 1, b"GET / HTTP/1.1\r\n"), n), &mut out);
            n += 1;
            x.frame(&frame(&seg(i, 5000, &[b'x'; 1024]), n), &mut out);
            n += 1;
            assert!(x.held_total <= 4096 + 1024, "{}", x.held_total);
        }
        assert!(x.stats.held_budget_releases > 0);
    }
}
