//! The flow table: frames in, HTTP exchanges out.
//!
//! Each TCP connection gets two reassemblers and an [`HttpConnection`]. Memory is bounded
//! per flow (out-of-order bytes held) and globally (number of flows; the idle ones go first),
//! flows idle longer than the timeout (in capture time) are closed, and everything evicted
//! or lost is counted in [`ExtractStats`].

use std::{
    net::{IpAddr, SocketAddr},
    time::Duration,
};

use serde::Serialize;

mod table;

use table::LruTable;

use crate::{
    analyzer::{self, detect::Detector, Analyzer, AppOut, ProtocolCounts},
    http::{
        anomaly::AnomalyCounts,
        exchange::{ClientBy, Exchange, ExchangeFlags, Paired, Traffic},
        message::{Limits, Request},
    },
    packet::PacketDirection,
    pcap::reader::RawFrame,
    reassembly::{Origin, Reassembler, ReassemblyStats, ReorderWindow, StreamEvent},
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
    /// How long bytes the peer acknowledged may still arrive (reordered copies) before
    /// their hole is a gap.
    pub reorder_window: ReorderWindow,
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
            reorder_window: ReorderWindow::default(),
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
    /// Connections and bytes per detected protocol.
    pub protocols: ProtocolCounts,
    /// The same for what ran inside CONNECT tunnels and upgraded connections.
    pub tunneled: ProtocolCounts,
    /// Anomalies on the exchanges, per kind (each exchange that carried it once).
    pub anomalies: AnomalyCounts,
    /// Anomalies of connections that belong to no exchange (`cruft`, `cruft_answered`).
    pub flow_anomalies: AnomalyCounts,
    /// Frames per link type that is not decoded (`unsupported_link` in all).
    pub unsupported_links: LinkCounts,
}

/// Frames per link type, for the first 8 link types seen (more are counted in the total
/// only).
#[derive(Clone, Copy, Debug, Default)]
pub struct LinkCounts([(u32, u64); 8]);

impl LinkCounts {
    pub fn count(&mut self, linktype: u32, n: u64) {
        if let Some(slot) = self.0.iter_mut().find(|(l, c)| *l == linktype && *c > 0) {
            slot.1 += n;
        } else if let Some(slot) = self.0.iter_mut().find(|(_, c)| *c == 0) {
            *slot = (linktype, n);
        }
    }

    pub fn add(&mut self, o: &LinkCounts) {
        for (l, n) in o.seen() {
            self.count(l, n);
        }
    }

    /// `(link type, frames)`, in the order first seen.
    pub fn seen(&self) -> impl Iterator<Item = (u32, u64)> + '_ {
        self.0.iter().copied().filter(|(_, n)| *n > 0)
    }
}

impl Serialize for LinkCounts {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_map(self.seen().map(|(l, n)| (l.to_string(), n)))
    }
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
        self.protocols.add(&o.protocols);
        self.tunneled.add(&o.tunneled);
        self.anomalies.add(&o.anomalies);
        self.flow_anomalies.add(&o.flow_anomalies);
        self.unsupported_links.add(&o.unsupported_links);
        let (r, x) = (&mut self.reassembly, &o.reassembly);
        r.delivered_bytes += x.delivered_bytes;
        r.gap_bytes += x.gap_bytes;
        r.gaps += x.gaps;
        r.retransmitted_bytes += x.retransmitted_bytes;
        r.conflicting_overlaps += x.conflicting_overlaps;
        r.out_of_order_segments += x.out_of_order_segments;
        r.cut_bytes += x.cut_bytes;
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

/// A request as soon as it is complete, before any response (for live callers such as the
/// shadow sender). Its exchange follows later with the same `conn` and `request.start`.
#[derive(Clone, Debug)]
pub struct RequestEvent {
    pub conn: u64,
    pub client: SocketAddr,
    pub server: SocketAddr,
    pub request: Request,
}

/// Where the flow table's output goes.
pub trait EventSink {
    /// A finished exchange (request and response, or what of them there was).
    fn exchange(&mut self, x: Exchange);
    /// A request, as soon as it is complete. Called only when [`Self::wants_requests`].
    fn request(&mut self, _r: RequestEvent) {}
    /// Whether requests are wanted on their own (they cost a copy each).
    fn wants_requests(&self) -> bool {
        false
    }
}

impl EventSink for Vec<Exchange> {
    fn exchange(&mut self, x: Exchange) {
        self.push(x);
    }
}

/// What a connection's streams go to: protocol detection first, then an analyzer.
enum App {
    Detecting(Detector),
    Active(Box<dyn Analyzer>),
}

struct Flow {
    id: u64,
    client: SocketAddr,
    server: SocketAddr,
    /// [client → server, server → client]
    dirs: [Reassembler; 2],
    app: App,
    /// Detection now runs on the inside of a tunnel (after CONNECT or an upgrade).
    tunneled: bool,
    /// Capture time of the last packet (stream events of a closing flow carry it).
    last_seen: Duration,
    /// The table's clock when the flow was last active (its place in the LRU order).
    touched: Duration,
    gap: [bool; 2],
    truncated: bool,
    /// A RST or both FINs were seen.
    closed: bool,
    client_by: ClientBy,
    /// From the capture direction of the first packet that had one.
    traffic: Option<Traffic>,
}

/// What an exchange takes from its connection.
#[derive(Clone, Copy)]
struct Conn {
    id: u64,
    client: SocketAddr,
    server: SocketAddr,
    gap: [bool; 2],
    truncated: bool,
    client_by: ClientBy,
    traffic: Option<Traffic>,
}

impl Flow {
    fn conn(&self) -> Conn {
        Conn {
            id: self.id,
            client: self.client,
            server: self.server,
            gap: self.gap,
            truncated: self.truncated,
            client_by: self.client_by,
            traffic: self.traffic,
        }
    }
}

/// The counters and buffers stream events are delivered with.
struct Delivery<'a> {
    limits: Limits,
    out: &'a mut AppOut,
    protocols: &'a mut ProtocolCounts,
    tunneled: &'a mut ProtocolCounts,
}

impl Delivery<'_> {
    fn counts(&mut self, tunneled: bool) -> &mut ProtocolCounts {
        if tunneled {
            self.tunneled
        } else {
            self.protocols
        }
    }

    fn event(
        &mut self,
        app: &mut App,
        tunneled: &mut bool,
        from_client: bool,
        e: StreamEvent<'_>,
        gap: &mut bool,
    ) {
        match e {
            StreamEvent::Data(b, origin) => self.data(app, tunneled, from_client, b, origin),
            StreamEvent::Gap(n, _) => {
                *gap = true;
                if let App::Detecting(d) = app {
                    if d.held.is_empty() {
                        // The start of the stream is lost: this is a mid-stream pickup.
                        d.from_start = *tunneled;
                        return;
                    }
                    self.decide(app, tunneled, true);
                }
                if let App::Active(a) = app {
                    a.gap(from_client, n, self.out);
                    self.switch(app, tunneled);
                }
            }
            StreamEvent::Fin(_) | StreamEvent::Reset(_) => {
                if matches!(app, App::Detecting(d) if !d.held.is_empty()) {
                    self.decide(app, tunneled, true);
                }
                if let App::Active(a) = app {
                    a.end(from_client, self.out);
                    self.switch(app, tunneled);
                }
            }
        }
    }

    fn data(
        &mut self,
        app: &mut App,
        tunneled: &mut bool,
        from_client: bool,
        b: &[u8],
        origin: Origin,
    ) {
        if b.is_empty() {
            return;
        }
        match app {
            App::Detecting(d) => {
                if d.held.is_empty() {
                    // The common case: the first bytes decide at once, and nothing is copied.
                    let verdict = if from_client {
                        analyzer::detect::client(b)
                    } else {
                        analyzer::detect::server(b)
                    };
                    if let analyzer::detect::Verdict::Is(p) = verdict {
                        self.activate(app, p, *tunneled);
                        return self.data(app, tunneled, from_client, b, origin);
                    }
                }
                d.held.push((from_client, b.to_vec(), origin));
                d.held_bytes[usize::from(!from_client)] += b.len();
                self.decide(app, tunneled, false);
            }
            App::Active(a) => {
                let p = a.protocol();
                self.counts(*tunneled).get_mut(p).bytes += b.len() as u64;
                a.data(from_client, b, origin, self.out);
                self.switch(app, tunneled);
            }
        }
    }

    /// Runs detection; once decided, the analyzer gets the held bytes in arrival order.
    fn decide(&mut self, app: &mut App, tunneled: &mut bool, forced: bool) {
        let App::Detecting(d) = app else { return };
        let Some(p) = d.decide(forced) else { return };
        let mid_stream = p == analyzer::Protocol::Http2 && !d.preface_seen();
        let held = std::mem::take(&mut d.held);
        self.counts(*tunneled).get_mut(p).connections += 1;
        *app = App::Active(analyzer::for_protocol(
            p,
            self.limits,
            *tunneled,
            mid_stream,
        ));
        for (from_client, bytes, origin) in held {
            self.data(app, tunneled, from_client, &bytes, origin);
        }
    }

    /// The connection's protocol is known: counted, and its analyzer takes over.
    fn activate(&mut self, app: &mut App, p: analyzer::Protocol, tunneled: bool) {
        self.counts(tunneled).get_mut(p).connections += 1;
        *app = App::Active(analyzer::for_protocol(p, self.limits, tunneled, false));
    }

    /// The analyzer gave the stream up: detection again, on the inside of the tunnel.
    fn switch(&mut self, app: &mut App, tunneled: &mut bool) {
        let Some(sw) = self.out.switch.take() else {
            return;
        };
        if let App::Active(a) = app {
            a.finish(self.out);
        }
        if let Some(request) = sw.h2c {
            // Upgraded to HTTP/2 in the clear: the same connection, parsed on as HTTP/2.
            self.counts(*tunneled).http2.connections += 1;
            *app = App::Active(Box::new(analyzer::Http2(
                crate::http2::conn::H2Connection::upgraded(self.limits, request),
            )));
            self.data(app, tunneled, true, &sw.client, sw.origin);
            self.data(app, tunneled, false, &sw.server, sw.origin);
            return;
        }
        *tunneled = true;
        *app = App::Detecting(Detector::new(true));
        self.data(app, tunneled, true, &sw.client, sw.origin);
        self.data(app, tunneled, false, &sw.server, sw.origin);
    }

    /// The connection is over.
    fn finish(&mut self, app: &mut App, tunneled: &mut bool) {
        if matches!(app, App::Detecting(d) if !d.held.is_empty()) {
            self.decide(app, tunneled, true);
        }
        if let App::Active(a) = app {
            a.finish(self.out);
        }
        self.out.switch = None;
    }
}

pub struct Extractor {
    config: ExtractConfig,
    /// Boxed: a flow is about 1.3 KB, and a table of inline flows (sized to a power of two,
    /// doubled while growing) would hold that for every empty slot too.
    flows: LruTable<FlowKey, Box<Flow>>,
    defrag: Defragmenter,
    next_flow: u64,
    next_exchange: u64,
    held_total: usize,
    now: Duration,
    /// Capture direction of the frame being processed.
    direction: Option<PacketDirection>,
    app_out: AppOut,
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
            flows: LruTable::default(),
            defrag: Defragmenter::default(),
            next_flow: 1,
            next_exchange: 1,
            held_total: 0,
            now: Duration::ZERO,
            direction: None,
            app_out: AppOut::default(),
            stats: ExtractStats::default(),
        }
    }

    pub fn active_flows(&self) -> usize {
        self.flows.len()
    }

    /// Processes one captured frame; what completes goes to `out`.
    pub fn frame(&mut self, f: &RawFrame<'_>, out: &mut dyn EventSink) {
        self.stats.frames += 1;
        self.stats.bytes += f.data.len() as u64;
        self.now = self.now.max(f.ts);
        self.direction = f.direction;
        let origin = Origin {
            ts: f.ts,
            frame: f.number,
        };
        match wire::ip_packet(f.linktype, f.data, f.orig_len) {
            Ok(ip) => self.ip(ip, origin, 0, out),
            Err(Skip::NotTcp) => self.stats.not_tcp += 1,
            Err(Skip::Malformed(_)) => self.stats.malformed += 1,
            Err(Skip::UnsupportedLink(l)) => {
                self.stats.unsupported_link += 1;
                self.stats.unsupported_links.count(l, 1);
            }
        }
        self.expire(out);
    }

    /// Time passes without a frame (a live capture's clock, in the same timebase as frame
    /// timestamps): flows idle past the timeout are closed.
    pub fn advance(&mut self, now: Duration, out: &mut dyn EventSink) {
        self.now = self.now.max(now);
        self.expire(out);
    }

    /// When [`Self::advance`] next has something to do, if ever.
    pub fn next_deadline(&self) -> Option<Duration> {
        self.flows
            .oldest()
            .map(|(_, f)| f.touched + self.config.idle_timeout)
    }

    fn ip(&mut self, ip: wire::IpPacket<'_>, origin: Origin, depth: u8, out: &mut dyn EventSink) {
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
        out: &mut dyn EventSink,
    ) {
        match wire::transport(&ip, depth) {
            // A packet decapsulated from a tunnel (a VXLAN mirror session, GRE) was copied
            // elsewhere: which way it crossed this capture point says nothing about it.
            Ok(Transport::Tcp(seg)) => {
                let direction = if depth == 0 { self.direction } else { None };
                self.segment(&seg, origin, direction, out)
            }
            Ok(Transport::Inner(inner)) => self.ip(inner, origin, depth + 1, out),
            Err(Skip::NotTcp) => self.stats.not_tcp += 1,
            Err(_) => self.stats.malformed += 1,
        }
    }

    fn segment(
        &mut self,
        seg: &TcpSegment<'_>,
        origin: Origin,
        direction: Option<PacketDirection>,
        out: &mut dyn EventSink,
    ) {
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
        if !self.flows.contains(&key) {
            // A bare ACK/FIN/RST (the tail of a closed connection, or a scan) opens nothing.
            if seg.payload.is_empty() && !seg.has(tcp_flags::SYN) {
                return;
            }
            if self.flows.len() >= self.config.max_flows {
                self.evict_oldest(out);
            }
            let syn = seg.has(tcp_flags::SYN);
            let client_by = if syn {
                if seg.has(tcp_flags::ACK) {
                    ClientBy::SynAck
                } else {
                    ClientBy::Syn
                }
            } else if seg.payload.starts_with(b"HTTP/") {
                ClientBy::Response
            } else if looks_like_request(seg.payload) {
                ClientBy::Request
            } else {
                ClientBy::Port
            };
            let src_is_client = match client_by {
                ClientBy::Syn | ClientBy::Request => true,
                ClientBy::SynAck | ClientBy::Response => false,
                ClientBy::Port => seg.sport > seg.dport,
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
                    Reassembler::with_window(self.config.flow_buffer, self.config.reorder_window),
                    Reassembler::with_window(self.config.flow_buffer, self.config.reorder_window),
                ],
                app: App::Detecting(Detector::new(syn)),
                tunneled: false,
                last_seen: origin.ts,
                touched: self.now,
                gap: [false; 2],
                truncated: false,
                closed: false,
                client_by,
                traffic: None,
            });
            self.next_flow += 1;
            self.flows.insert(key, flow);
        }
        let now = self.now;
        let Some(flow) = self.flows.touch(&key) else {
            return;
        };
        flow.last_seen = origin.ts;
        flow.touched = now;
        let held_before = flow.dirs[0].held_bytes() + flow.dirs[1].held_bytes();
        let d = if SocketAddr::new(src.0, src.1) == flow.client {
            0
        } else {
            1
        };
        if flow.traffic.is_none() {
            // A server's packet going out means the client's come in, and the reverse.
            flow.traffic = direction.map(|dir| match (d, dir) {
                (0, dir) => Traffic::of_requests(dir),
                (_, PacketDirection::Ingress) => Traffic::Outbound,
                (_, PacketDirection::Egress) => Traffic::Inbound,
            });
        }
        if seg.missing > 0 {
            flow.truncated = true;
            self.stats.snaplen_truncated_segments += 1;
        }
        if seg.has(tcp_flags::RST) {
            flow.closed = true;
        }
        self.app_out.want_requests = out.wants_requests();
        let Flow {
            dirs,
            app,
            gap,
            tunneled,
            ..
        } = &mut **flow;
        let mut dl = Delivery {
            limits: self.config.http,
            out: &mut self.app_out,
            protocols: &mut self.stats.protocols,
            tunneled: &mut self.stats.tunneled,
        };
        let from_client = d == 0;
        let (this, other) = if d == 0 {
            let (a, b) = dirs.split_at_mut(1);
            (&mut a[0], &mut b[0])
        } else {
            let (a, b) = dirs.split_at_mut(1);
            (&mut b[0], &mut a[0])
        };
        {
            let mut emit =
                |e: StreamEvent<'_>| dl.event(app, tunneled, from_client, e, &mut gap[d]);
            this.segment_cut(
                seg.seq,
                seg.has(tcp_flags::SYN),
                seg.has(tcp_flags::FIN),
                seg.has(tcp_flags::RST),
                seg.payload,
                seg.missing,
                origin,
                &mut emit,
            );
        }
        let od = 1 - d;
        if seg.has(tcp_flags::ACK) {
            let mut emit =
                |e: StreamEvent<'_>| dl.event(app, tunneled, !from_client, e, &mut gap[od]);
            other.acknowledged(seg.ack, origin, &mut emit);
        }
        if seg.has(tcp_flags::RST) {
            let mut emit =
                |e: StreamEvent<'_>| dl.event(app, tunneled, !from_client, e, &mut gap[od]);
            other.close(origin, &mut emit, true);
        }
        let finished = flow.dirs[0].finished() && flow.dirs[1].finished();
        let held_after = flow.dirs[0].held_bytes() + flow.dirs[1].held_bytes();
        self.held_total = (self.held_total + held_after).saturating_sub(held_before);
        self.emit(&key, out);
        if self.held_total > self.config.held_budget {
            self.relieve_memory(out);
        }
        if finished {
            if let Some(f) = self.flows.remove(&key) {
                self.close_flow(f, out);
            }
        }
    }

    /// Hands what a flow's analyzer produced to the sink: requests, then exchanges.
    fn emit(&mut self, key: &FlowKey, out: &mut dyn EventSink) {
        for a in self.app_out.flow_anomalies.drain(..) {
            self.stats.flow_anomalies.count(a);
        }
        if self.app_out.paired.is_empty() && self.app_out.requests.is_empty() {
            return;
        }
        let Some(flow) = self.flows.get(key) else {
            self.app_out.paired.clear();
            self.app_out.requests.clear();
            return;
        };
        let conn = flow.conn();
        self.emit_for(conn, out);
    }

    fn emit_for(&mut self, conn: Conn, out: &mut dyn EventSink) {
        for a in self.app_out.flow_anomalies.drain(..) {
            self.stats.flow_anomalies.count(a);
        }
        for request in self.app_out.requests.drain(..) {
            out.request(RequestEvent {
                conn: conn.id,
                client: conn.client,
                server: conn.server,
                request,
            });
        }
        for p in self.app_out.paired.drain(..) {
            let x = make_exchange(&mut self.next_exchange, conn, p);
            for a in &x.anomalies {
                self.stats.anomalies.count(*a);
            }
            out.exchange(x);
            self.stats.exchanges += 1;
        }
    }

    /// Over the global budget: the flow holding the most out-of-order bytes gives up on
    /// its holes. (A scan of the flows, but only while over budget.)
    fn relieve_memory(&mut self, out: &mut dyn EventSink) {
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
        self.app_out.want_requests = out.wants_requests();
        let Flow {
            dirs,
            app,
            gap,
            tunneled,
            ..
        } = &mut **flow;
        let mut dl = Delivery {
            limits: self.config.http,
            out: &mut self.app_out,
            protocols: &mut self.stats.protocols,
            tunneled: &mut self.stats.tunneled,
        };
        for (d, r) in dirs.iter_mut().enumerate() {
            let mut emit = |e: StreamEvent<'_>| dl.event(app, tunneled, d == 0, e, &mut gap[d]);
            r.release_held(&mut emit);
        }
        self.held_total = self.held_total.saturating_sub(before);
        self.stats.held_budget_releases += 1;
        self.emit(&key, out);
    }

    fn close_flow(&mut self, mut flow: Box<Flow>, out: &mut dyn EventSink) {
        self.held_total = self
            .held_total
            .saturating_sub(flow.dirs[0].held_bytes() + flow.dirs[1].held_bytes());
        let origin = Origin {
            ts: flow.last_seen,
            frame: 0,
        };
        self.app_out.want_requests = out.wants_requests();
        let Flow {
            dirs,
            app,
            gap,
            tunneled,
            ..
        } = &mut *flow;
        let mut dl = Delivery {
            limits: self.config.http,
            out: &mut self.app_out,
            protocols: &mut self.stats.protocols,
            tunneled: &mut self.stats.tunneled,
        };
        for (d, r) in dirs.iter_mut().enumerate() {
            let mut emit = |e: StreamEvent<'_>| dl.event(app, tunneled, d == 0, e, &mut gap[d]);
            r.close(origin, &mut emit, false);
        }
        dl.finish(app, tunneled);
        for r in &flow.dirs {
            add_stats(&mut self.stats.reassembly, &r.stats);
        }
        self.emit_for(flow.conn(), out);
    }

    fn evict_oldest(&mut self, out: &mut dyn EventSink) {
        if let Some((_, f)) = self.flows.pop_oldest() {
            self.stats.flows_evicted += 1;
            self.close_flow(f, out);
        }
    }

    /// Closes the flows idle past the timeout: the oldest first, stopping at the first that
    /// is not.
    fn expire(&mut self, out: &mut dyn EventSink) {
        let timeout = self.config.idle_timeout;
        while let Some((_, f)) = self.flows.oldest() {
            if self.now.saturating_sub(f.touched) <= timeout {
                break;
            }
            if let Some((_, f)) = self.flows.pop_oldest() {
                self.stats.flows_timed_out += 1;
                self.close_flow(f, out);
            }
        }
    }

    /// End of input: every flow is closed, in order of first activity.
    pub fn finish(&mut self, out: &mut dyn EventSink) {
        let mut flows: Vec<Box<Flow>> = self.flows.drain();
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
    total.cut_bytes += s.cut_bytes;
    total.after_ack_segments += s.after_ack_segments;
    total.window_expired += s.window_expired;
}

fn make_exchange(next: &mut u64, conn: Conn, p: Paired) -> Exchange {
    let id = *next;
    *next += 1;
    let mut anomalies = p.anomalies;
    if let Some(q) = &p.request {
        anomalies.extend(q.anomalies.iter().cloned());
    }
    if let Some(r) = &p.response {
        anomalies.extend(r.anomalies.iter().cloned());
    }
    let Conn { gap, truncated, .. } = conn;
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
        conn: conn.id,
        client: conn.client,
        server: conn.server,
        request: p.request,
        response: p.response,
        flags,
        anomalies,
        client_by: Some(conn.client_by),
        traffic: conn.traffic,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{http::anomaly::Anomaly, redact::Redaction};

    fn frame(data: &[u8], n: u64) -> RawFrame<'_> {
        RawFrame {
            number: n,
            ts: Duration::from_secs(n),
            linktype: wire::LINKTYPE_RAW,
            orig_len: data.len() as u32,
            data,
            direction: None,
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

    /// One GET and its 200 on a connection with a handshake, as raw IP packets, each with
    /// whether the client sent it.
    fn conversation() -> Vec<(bool, Vec<u8>)> {
        packets(&[
            (true, b"GET /x HTTP/1.1\r\nHost: a\r\n\r\n"),
            (false, b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"),
        ])
    }

    /// A connection from its handshake on, as raw IP packets with whether the client sent
    /// each: every part is sent by the client (`true`) or the server, acknowledging
    /// everything before it.
    fn packets(parts: &[(bool, &[u8])]) -> Vec<(bool, Vec<u8>)> {
        let (c, s) = ([10, 0, 0, 1], [10, 0, 0, 2]);
        let (mut cseq, mut sseq) = (101u32, 501u32);
        let mut frames = Vec::new();
        let mut pkt = |from_client: bool, seq: u32, ack: u32, syn: bool, payload: &[u8]| {
            let (src, dst, sp, dp) = if from_client {
                (c, s, 41_000, 80)
            } else {
                (s, c, 80, 41_000)
            };
            let mut b = etherparse::PacketBuilder::ipv4(src, dst, 64).tcp(sp, dp, seq, 1000);
            b = if syn { b.syn() } else { b };
            b = if ack > 0 { b.ack(ack) } else { b };
            let mut v = Vec::new();
            b.write(&mut v, payload).unwrap();
            frames.push((from_client, v));
        };
        pkt(true, 100, 0, true, b"");
        pkt(false, 500, 101, true, b"");
        for (from_client, data) in parts {
            if *from_client {
                pkt(true, cseq, sseq, false, data);
                cseq += data.len() as u32;
            } else {
                pkt(false, sseq, cseq, false, data);
                sseq += data.len() as u32;
            }
        }
        frames
    }

    fn exchanges_seen(frames: &[(Vec<u8>, Option<PacketDirection>)]) -> Vec<Exchange> {
        let mut x = Extractor::new(ExtractConfig::default());
        let mut out: Vec<Exchange> = Vec::new();
        for (n, (data, direction)) in frames.iter().enumerate() {
            let mut f = frame(data, n as u64 + 1);
            f.direction = *direction;
            x.frame(&f, &mut out);
        }
        x.finish(&mut out);
        out
    }

    #[test]
    fn each_exchange_says_how_its_client_was_found_and_which_way_it_went() {
        use PacketDirection::{Egress, Ingress};
        let conv = conversation();
        // Captured on the client's host: its packets leave (egress), the answers arrive.
        let at_client: Vec<_> = conv
            .iter()
            .map(|(c, v)| (v.clone(), Some(if *c { Egress } else { Ingress })))
            .collect();
        let x = exchanges_seen(&at_client);
        assert_eq!(x.len(), 1);
        assert_eq!(x[0].client_by, Some(ClientBy::Syn));
        assert_eq!(x[0].traffic, Some(Traffic::Outbound));
        let json = serde_json::to_value(x[0].to_json(&Redaction::default())).unwrap();
        assert_eq!(json["direction"], "outbound");
        assert_eq!(json["client_by"], "syn");
        // On the server's host, and seen from the server's first packet on.
        let at_server: Vec<_> = conv[1..]
            .iter()
            .map(|(c, v)| (v.clone(), Some(if *c { Ingress } else { Egress })))
            .collect();
        let x = exchanges_seen(&at_server);
        assert_eq!(x[0].client_by, Some(ClientBy::SynAck));
        assert_eq!(x[0].traffic, Some(Traffic::Inbound));
        // Mid-stream, from the request on.
        let x = exchanges_seen(&at_server[1..]);
        assert_eq!(x[0].client_by, Some(ClientBy::Request));
        assert_eq!(x[0].traffic, Some(Traffic::Inbound));
        // A classic pcap does not say.
        let plain: Vec<_> = conv.iter().map(|(_, v)| (v.clone(), None)).collect();
        let x = exchanges_seen(&plain);
        assert_eq!(x[0].traffic, None);
        assert_eq!(
            serde_json::to_value(x[0].to_json(&Redaction::default())).unwrap()["direction"],
            serde_json::Value::Null
        );
        // Copies inside a VXLAN mirror session all arrive on ingress: that is the
        // session's direction, not the exchange's.
        let vxlan: Vec<_> = conv
            .iter()
            .map(|(_, v)| {
                let mut inner = vec![0; 12];
                inner.extend_from_slice(&[0x08, 0x00]);
                inner.extend_from_slice(v);
                let mut vx = vec![0x08, 0, 0, 0, 0, 0, 0x2a, 0];
                vx.extend_from_slice(&inner);
                let mut outer = Vec::new();
                etherparse::PacketBuilder::ipv4([9, 9, 9, 9], [8, 8, 8, 8], 9)
                    .udp(5555, 4789)
                    .write(&mut outer, &vx)
                    .unwrap();
                (outer, Some(Ingress))
            })
            .collect();
        let x = exchanges_seen(&vxlan);
        assert_eq!(x.len(), 1);
        assert_eq!(x[0].traffic, None);
    }

    /// [`packets`] through an extractor: its exchanges and counters.
    fn talk(parts: &[(bool, &[u8])]) -> (Vec<Exchange>, ExtractStats) {
        let mut x = Extractor::new(ExtractConfig::default());
        let mut out: Vec<Exchange> = Vec::new();
        for (n, (_, f)) in packets(parts).iter().enumerate() {
            x.frame(&frame(f, n as u64 + 1), &mut out);
        }
        x.finish(&mut out);
        (out, x.stats)
    }

    fn h2_frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let n = payload.len();
        let mut f = vec![(n >> 16) as u8, (n >> 8) as u8, n as u8, kind, flags];
        f.extend_from_slice(&stream.to_be_bytes());
        f.extend_from_slice(payload);
        f
    }

    /// HEADERS with `:status` 200 (static index 8), ending the stream unless data follows.
    fn h2_ok(stream: u32, end: bool) -> Vec<u8> {
        h2_frame(1, 0x4 | u8::from(end), stream, &[0x88])
    }

    /// HEADERS of a GET (static `:method GET`) with a literal `:path`.
    fn h2_get(stream: u32, path: &str) -> Vec<u8> {
        let mut b = vec![0x82, 0x04, path.len() as u8];
        b.extend_from_slice(path.as_bytes());
        h2_frame(1, 0x5, stream, &b)
    }

    #[test]
    fn upgrade_h2c_goes_on_as_http2_with_the_upgraded_request_as_stream_1() {
        let req = b"GET /up HTTP/1.1\r\nHost: a\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQCAAAAAAIAAAAA\r\n\r\n";
        let mut switched =
            b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\n"
                .to_vec();
        switched.extend(h2_frame(4, 0, 0, &[]));
        switched.extend(h2_ok(1, false));
        switched.extend(h2_frame(0, 1, 1, b"hi"));
        let mut preface = analyzer::detect::H2_PREFACE.to_vec();
        preface.extend(h2_frame(4, 0, 0, &[]));
        preface.extend(h2_get(3, "/two"));
        let (x, stats) = talk(&[
            (true, req),
            (false, &switched),
            (true, &preface),
            (false, &h2_ok(3, true)),
        ]);
        let got: Vec<_> = x
            .iter()
            .map(|x| {
                let (q, r) = (x.request.as_ref().unwrap(), x.response.as_ref().unwrap());
                (
                    q.target.clone(),
                    q.version.clone(),
                    r.version.clone(),
                    r.status,
                    r.interim.clone(),
                    String::from_utf8_lossy(&r.body.data).into_owned(),
                    x.flags.tunnel,
                )
            })
            .collect();
        assert_eq!(
            got,
            [
                (
                    "/up".into(),
                    "1.1".into(),
                    "2".into(),
                    200,
                    vec![101],
                    "hi".into(),
                    false
                ),
                (
                    "/two".into(),
                    "2".into(),
                    "2".into(),
                    200,
                    vec![],
                    "".into(),
                    false
                ),
            ]
        );
        assert_eq!(stats.protocols.http1.connections, 1);
        assert_eq!(stats.protocols.http2.connections, 1);
        assert_eq!(stats.tunneled.http2.connections, 0);
    }

    #[test]
    fn http2_joined_mid_connection_is_found_by_its_frames() {
        let mut client = analyzer::detect::H2_PREFACE.to_vec();
        client.extend(h2_frame(4, 0, 0, &[]));
        client.extend(h2_get(1, "/first"));
        let mut answers = h2_ok(1, true);
        answers.extend(h2_ok(3, false));
        answers.extend(h2_frame(0, 1, 3, b"body"));
        let all = packets(&[
            (true, &client),
            (true, &h2_get(3, "/second")),
            (false, &answers),
        ]);
        // Joined after the handshake and the preface: no SYN, no preface.
        let mut x = Extractor::new(ExtractConfig::default());
        let mut out: Vec<Exchange> = Vec::new();
        for (n, (_, f)) in all[3..].iter().enumerate() {
            x.frame(&frame(f, n as u64 + 1), &mut out);
        }
        x.finish(&mut out);
        assert_eq!(
            x.stats.protocols.http2.connections, 1,
            "{:?}",
            x.stats.protocols
        );
        assert_eq!(
            x.stats.flow_anomalies.get(Anomaly::FrameResync),
            2,
            "both directions"
        );
        let second = out
            .iter()
            .find(|x| x.request.as_ref().is_some_and(|q| q.target == "/second"))
            .expect("stream 3 as an exchange");
        let r = second.response.as_ref().unwrap();
        assert_eq!((r.status, &r.body.data[..]), (200, &b"body"[..]));
        assert_eq!(second.request.as_ref().unwrap().version, "2");
    }

    #[test]
    fn cruft_after_a_message_is_an_anomaly_of_the_flow_not_an_exchange() {
        let ok = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";
        let bad = b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n";
        // Answered by a 400, as nginx, Go and Python servers do.
        let (x, stats) = talk(&[
            (true, b"GET /a HTTP/1.1\r\nHost: h\r\n\r\n"),
            (false, ok),
            (true, b"\x16\x03junk that is no request\r\n\r\n"),
            (false, bad),
        ]);
        assert_eq!(x.len(), 1, "{x:?}");
        assert_eq!(x[0].response.as_ref().unwrap().status, 200);
        assert!(x[0].anomalies.is_empty());
        assert_eq!(stats.flow_anomalies.get(Anomaly::Cruft), 1);
        assert_eq!(stats.flow_anomalies.get(Anomaly::CruftAnswered), 1);
        assert_eq!(stats.anomalies.get(Anomaly::BadRequestLine), 0);

        // Skipped by the server: the next request gets its own answer.
        let (x, stats) = talk(&[
            (
                true,
                b"GET /a HTTP/1.1\r\nHost: h\r\n\r\nxyz\r\nGET /b HTTP/1.1\r\nHost: h\r\n\r\n",
            ),
            (false, ok),
            (false, ok),
        ]);
        let uris: Vec<_> = x
            .iter()
            .map(|e| {
                (
                    e.request.as_ref().unwrap().target.clone(),
                    e.response.as_ref().unwrap().status,
                )
            })
            .collect();
        assert_eq!(uris, [("/a".to_string(), 200), ("/b".to_string(), 200)]);
        assert_eq!(stats.flow_anomalies.get(Anomaly::Cruft), 1);
        assert_eq!(stats.flow_anomalies.get(Anomaly::CruftAnswered), 0);

        // Bytes past a response's body.
        let (x, stats) = talk(&[
            (true, b"GET /a HTTP/1.1\r\nHost: h\r\n\r\n"),
            (
                false,
                b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokEXTRA\r\n",
            ),
            (true, b"GET /b HTTP/1.1\r\nHost: h\r\n\r\n"),
            (false, ok),
        ]);
        assert_eq!(x.len(), 2);
        assert!(x.iter().all(|e| e.anomalies.is_empty()), "{x:?}");
        assert_eq!(stats.flow_anomalies.get(Anomaly::Cruft), 1);

        // A malformed request (it starts like one) answered by a 400 is still an
        // exchange, with its anomaly.
        let (x, _) = talk(&[
            (true, b"GET /a HTTP/1.1\r\nHost: h\r\n\r\n"),
            (false, ok),
            (true, b"GET \r\n\r\n"),
            (false, bad),
        ]);
        assert_eq!(x.len(), 2, "{x:?}");
        assert_eq!(x[1].response.as_ref().unwrap().status, 400);
        assert!(
            x[1].anomalies.contains(&Anomaly::BadRequestLine),
            "{:?}",
            x[1].anomalies
        );
    }

    #[test]
    fn anomalies_are_counted_per_kind() {
        let q = b"POST /a HTTP/1.1\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabc";
        let mut x = Extractor::new(ExtractConfig::default());
        let mut out: Vec<Exchange> = Vec::new();
        x.frame(&frame(&seg(1, 1, q), 1), &mut out);
        x.finish(&mut out);
        // The conflicting lengths frame no body, so `abc` is left over where the next
        // head should start, and the stream ends inside it.
        assert_eq!(out.len(), 1);
        assert_eq!(
            out[0].anomalies,
            [
                Anomaly::IncompleteMessageAtEnd,
                Anomaly::ConflictingContentLength
            ]
        );
        assert_eq!(x.stats.anomalies.get(Anomaly::ConflictingContentLength), 1);
        assert_eq!(
            serde_json::to_value(x.stats).unwrap()["anomalies"],
            serde_json::json!({"conflicting_content_length": 1, "incomplete_message_at_end": 1})
        );
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

    use crate::pcap::{reader::CaptureReader, synth::SynthWriter};
    use std::net::SocketAddrV4;

    fn addr(host: u8, port: u16) -> SocketAddrV4 {
        SocketAddrV4::new(std::net::Ipv4Addr::new(10, 0, 0, host), port)
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    /// Records what the sink gets, in order.
    #[derive(Default)]
    struct Recorder {
        log: Vec<String>,
        exchanges: Vec<Exchange>,
    }

    impl EventSink for Recorder {
        fn exchange(&mut self, x: Exchange) {
            self.log.push(format!(
                "exchange {} {}",
                x.request.as_ref().map_or("-", |q| q.target.as_str()),
                x.response.as_ref().map_or(0, |r| r.status)
            ));
            self.exchanges.push(x);
        }
        fn request(&mut self, r: RequestEvent) {
            self.log.push(format!("request {}", r.request.target));
        }
        fn wants_requests(&self) -> bool {
            true
        }
    }

    fn run(capture: &[u8], config: ExtractConfig) -> (Recorder, ExtractStats) {
        let mut x = Extractor::new(config);
        let mut r = Recorder::default();
        for f in CaptureReader::new(capture).unwrap() {
            x.frame(&f.unwrap(), &mut r);
        }
        x.finish(&mut r);
        (r, x.stats)
    }

    #[test]
    fn protocols_are_detected_and_only_http_becomes_exchanges() {
        let mut w = SynthWriter::new(Vec::new()).unwrap();
        let (c, s) = (addr(1, 40_000), addr(2, 80));
        let mut http = w.open(ms(0), c, s).unwrap();
        w.exchange(
            &mut http,
            ms(1),
            b"GET /plain HTTP/1.1\r\nHost: a\r\n\r\n",
            ms(1),
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
        )
        .unwrap();
        w.close(&mut http, ms(5)).unwrap();
        // HTTP/2 with prior knowledge: the preface and a SETTINGS frame.
        let mut h2 = w.open(ms(10), addr(1, 40_001), s).unwrap();
        let mut preface = crate::analyzer::detect::H2_PREFACE.to_vec();
        preface.extend_from_slice(&[0, 0, 0, 4, 0, 0, 0, 0, 0]);
        w.send(&mut h2, ms(11), true, &preface).unwrap();
        w.send(&mut h2, ms(12), false, &[0, 0, 0, 4, 0, 0, 0, 0, 0])
            .unwrap();
        w.close(&mut h2, ms(13)).unwrap();
        // TLS: a ClientHello record header and some of its body.
        let mut tls = w.open(ms(20), addr(1, 40_002), addr(2, 443)).unwrap();
        w.send(
            &mut tls,
            ms(21),
            true,
            &[0x16, 0x03, 0x01, 0x00, 0x05, 1, 0, 0, 1, 0],
        )
        .unwrap();
        w.close(&mut tls, ms(22)).unwrap();
        // SMTP through an HTTP proxy's CONNECT tunnel.
        let mut tunnel = w.open(ms(30), addr(1, 40_003), addr(2, 3128)).unwrap();
        w.exchange(
            &mut tunnel,
            ms(31),
            b"CONNECT mail.example:25 HTTP/1.1\r\nHost: mail.example:25\r\n\r\n",
            ms(1),
            b"HTTP/1.1 200 Connection established\r\n\r\n220 mail.example ESMTP\r\n",
        )
        .unwrap();
        let smtp_client: &[&[u8]] = &[
            b"HELO me\r\n",
            b"MAIL FROM:<a@example>\r\n",
            b"RCPT TO:<b@example>\r\n",
        ];
        for (i, line) in smtp_client.iter().enumerate() {
            w.exchange(
                &mut tunnel,
                ms(40 + 2 * i as u64),
                line,
                ms(1),
                b"250 ok\r\n",
            )
            .unwrap();
        }
        w.close(&mut tunnel, ms(50)).unwrap();
        // Binary junk from a connection seen from its SYN.
        let mut junk = w.open(ms(60), addr(1, 40_004), addr(2, 9000)).unwrap();
        w.exchange(
            &mut junk,
            ms(61),
            &[0, 0xff, 0x13, 0x37, 7, 7],
            ms(1),
            &[1, 2, 3],
        )
        .unwrap();
        w.close(&mut junk, ms(65)).unwrap();
        let capture = w.finish().unwrap();

        let (r, stats) = run(&capture, ExtractConfig::default());
        let methods: Vec<&str> = r
            .exchanges
            .iter()
            .filter_map(|x| x.request.as_ref().map(|q| q.method.as_str()))
            .collect();
        assert_eq!(methods, ["GET", "CONNECT"], "{:?}", r.log);
        assert!(r.exchanges[1].flags.tunnel);
        let p = stats.protocols;
        assert_eq!(p.http1.connections, 2);
        assert_eq!(p.http2.connections, 1);
        assert_eq!(p.http2.bytes, 24 + 9 + 9);
        assert_eq!(p.tls.connections, 1);
        assert_eq!(p.tls.bytes, 10);
        assert_eq!(p.opaque.connections, 1);
        assert_eq!(p.opaque.bytes, 9);
        let t = stats.tunneled;
        assert_eq!(t.opaque.connections, 1, "SMTP inside the tunnel");
        let smtp: usize = smtp_client.iter().map(|l| l.len()).sum::<usize>()
            + b"220 mail.example ESMTP\r\n".len()
            + 3 * b"250 ok\r\n".len();
        assert_eq!(t.opaque.bytes, smtp as u64);
        assert_eq!(t.http1.connections + p.http2.connections, 1);
    }

    #[test]
    fn a_request_comes_out_before_its_response() {
        let mut w = SynthWriter::new(Vec::new()).unwrap();
        let mut c = w.open(ms(0), addr(1, 40_000), addr(2, 80)).unwrap();
        w.send(
            &mut c,
            ms(1),
            true,
            b"GET /slow HTTP/1.1\r\nHost: a\r\n\r\n",
        )
        .unwrap();
        w.send(
            &mut c,
            ms(2_001),
            false,
            b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
        )
        .unwrap();
        let capture = w.finish().unwrap();
        let mut x = Extractor::new(ExtractConfig::default());
        let mut r = Recorder::default();
        let mut request_seen_at = None;
        for f in CaptureReader::new(&capture).unwrap() {
            let f = f.unwrap();
            x.frame(&f, &mut r);
            if request_seen_at.is_none() && r.log.iter().any(|l| l == "request /slow") {
                request_seen_at = Some(f.ts);
            }
        }
        assert_eq!(request_seen_at, Some(ms(1)), "{:?}", r.log);
        assert_eq!(r.log, ["request /slow", "exchange /slow 200"]);
    }

    #[test]
    fn idle_flows_time_out_without_new_frames() {
        let mut w = SynthWriter::new(Vec::new()).unwrap();
        let mut c = w.open(ms(1_000), addr(1, 40_000), addr(2, 80)).unwrap();
        w.send(
            &mut c,
            ms(1_001),
            true,
            b"GET /never HTTP/1.1\r\nHost: a\r\n\r\n",
        )
        .unwrap();
        let capture = w.finish().unwrap();
        let config = ExtractConfig {
            idle_timeout: Duration::from_secs(30),
            ..Default::default()
        };
        let mut x = Extractor::new(config);
        let mut r = Recorder::default();
        for f in CaptureReader::new(&capture).unwrap() {
            x.frame(&f.unwrap(), &mut r);
        }
        assert_eq!(r.log, ["request /never"]);
        let deadline = x.next_deadline().unwrap();
        assert!(
            deadline > ms(31_000) && deadline < ms(31_100),
            "{deadline:?}"
        );
        x.advance(deadline - ms(1), &mut r);
        assert_eq!(x.active_flows(), 1, "not yet");
        x.advance(deadline + ms(1), &mut r);
        assert_eq!(x.active_flows(), 0);
        assert_eq!(x.stats.flows_timed_out, 1);
        assert_eq!(r.log, ["request /never", "exchange /never 0"]);
        assert!(r.exchanges[0].flags.no_response);
        assert_eq!(x.next_deadline(), None);
    }

    #[test]
    fn eviction_of_many_one_syn_flows_is_linear() {
        // 200,000 flows through a table of 100,000: each eviction takes the oldest at once.
        let mut x = Extractor::new(ExtractConfig::default());
        let mut out = Vec::new();
        let mut v = Vec::new();
        for i in 0..200_000u32 {
            v.clear();
            etherparse::PacketBuilder::ipv4(
                [10, (i >> 16) as u8, (i >> 8) as u8, i as u8],
                [10, 9, 9, 9],
                64,
            )
            .tcp(40_000, 80, i, 1000)
            .syn()
            .write(&mut v, &[])
            .unwrap();
            let mut f = frame(&v, u64::from(i) + 1);
            f.ts = Duration::from_micros(u64::from(i));
            x.frame(&f, &mut out);
        }
        assert_eq!(x.active_flows(), 100_000);
        assert_eq!(x.stats.flows_evicted, 100_000);
        assert_eq!(
            x.stats.protocols,
            ProtocolCounts::default(),
            "no data, no protocol"
        );
        assert!(out.is_empty());
    }
}
