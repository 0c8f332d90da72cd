//! Which frames of a capture to replay: one side of each connection, and/or the frames the
//! `attach` filter rules accept.
//!
//! A pcap does not say which way a packet went, so rf-tap works it out per flow, as
//! tcpprep's `--auto=client` does: the sender of a TCP SYN is the client (the receiver of a
//! SYN-ACK, when the capture starts there); without a handshake, the endpoint with the
//! lower port is the server (equal ports: the first sender is the client). For the rules,
//! the capture is taken to have been made on the server: client → server packets are
//! `ingress`, server → client packets `egress`. Non-IP frames belong to no side: they are
//! left out when a side is asked for, and only rules without address, protocol or port
//! conditions can accept them.

use std::{collections::HashMap, net::IpAddr};

use rf_tap_common::{rule_matches, FilterRule, PacketKey, DIR_EGRESS, DIR_INGRESS};

use crate::{
    filter::{Action, RuleSet},
    wire::{self, tcp_flags},
};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    /// Packets sent by the client of each connection.
    Client,
    /// Packets sent by the server.
    Server,
}

type Endpoint = (IpAddr, u16);

/// Flows remembered at most; past it, new flows are judged by the port rule alone.
const MAX_FLOWS: usize = 1 << 20;

pub struct Selector {
    rules: Option<Vec<(FilterRule, Action)>>,
    only: Option<Side>,
    /// Canonical flow (lower endpoint first, protocol) → its client.
    clients: HashMap<(Endpoint, Endpoint, u8), Endpoint, foldhash::fast::RandomState>,
}

fn words(a: IpAddr) -> [u32; 4] {
    match a {
        IpAddr::V4(v) => [u32::from_ne_bytes(v.octets()), 0, 0, 0],
        IpAddr::V6(v) => {
            let o = v.octets();
            let mut w = [0u32; 4];
            for (i, x) in w.iter_mut().enumerate() {
                *x = u32::from_ne_bytes([o[4 * i], o[4 * i + 1], o[4 * i + 2], o[4 * i + 3]]);
            }
            w
        }
    }
}

impl Selector {
    /// `rules: None` keeps every frame (as does a set with no rules).
    pub fn new(rules: Option<&RuleSet>, only: Option<Side>) -> Self {
        Self {
            rules: rules
                .filter(|r| !r.is_empty())
                .map(|r| r.rules().iter().map(|x| (x.compile(), x.action)).collect()),
            only,
            clients: HashMap::default(),
        }
    }

    /// Whether anything is selected out (if not, [`Selector::keep`] is always true).
    pub fn is_active(&self) -> bool {
        self.rules.is_some() || self.only.is_some()
    }

    pub fn keep(&mut self, linktype: u32, data: &[u8], orig_len: u32) -> bool {
        if !self.is_active() {
            return true;
        }
        let Ok(ip) = wire::ip_packet(linktype, data, orig_len) else {
            return self.only.is_none() && self.decide(&PacketKey::default(), DIR_INGRESS);
        };
        let first = !ip.is_fragment || ip.frag_offset == 0;
        let ports = match ip.protocol {
            6 | 17 | 132 if first && ip.payload.len() >= 4 => Some((
                u16::from_be_bytes([ip.payload[0], ip.payload[1]]),
                u16::from_be_bytes([ip.payload[2], ip.payload[3]]),
            )),
            _ => None,
        };
        let (sport, dport) = ports.unwrap_or((0, 0));
        let flags = if ip.protocol == 6 && first {
            ip.payload.get(13).copied().unwrap_or(0)
        } else {
            0
        };
        let from_client = self.sent_by_client((ip.src, sport), (ip.dst, dport), ip.protocol, flags);
        if let Some(side) = self.only {
            if from_client != (side == Side::Client) {
                return false;
            }
        }
        let key = PacketKey {
            family: if ip.src.is_ipv4() { 4 } else { 6 },
            protocol: ip.protocol,
            has_ports: ports.is_some(),
            src_port: sport,
            dst_port: dport,
            src_addr: words(ip.src),
            dst_addr: words(ip.dst),
        };
        self.decide(&key, if from_client { DIR_INGRESS } else { DIR_EGRESS })
    }

    fn decide(&self, key: &PacketKey, direction: u8) -> bool {
        match &self.rules {
            None => true,
            Some(rules) => rules
                .iter()
                .find(|(r, _)| rule_matches(r, key, direction))
                .is_some_and(|(_, a)| *a == Action::Accept),
        }
    }

    fn sent_by_client(&mut self, src: Endpoint, dst: Endpoint, proto: u8, flags: u8) -> bool {
        let canon = if src <= dst {
            (src, dst, proto)
        } else {
            (dst, src, proto)
        };
        let syn = flags & tcp_flags::SYN != 0;
        let ack = flags & tcp_flags::ACK != 0;
        let handshake_client = match (syn, ack) {
            (true, false) => Some(src),
            (true, true) => Some(dst),
            _ => None,
        };
        if let Some(c) = handshake_client {
            // A new handshake decides (port reuse may swap the roles).
            if self.clients.len() < MAX_FLOWS || self.clients.contains_key(&canon) {
                self.clients.insert(canon, c);
            }
            return c == src;
        }
        if let Some(c) = self.clients.get(&canon) {
            return *c == src;
        }
        let client = if src.1 >= dst.1 { src } else { dst };
        if self.clients.len() < MAX_FLOWS {
            self.clients.insert(canon, client);
        }
        client == src
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use etherparse::PacketBuilder;

    fn tcp(src: [u8; 4], sport: u16, dst: [u8; 4], dport: u16, syn: bool, ack: bool) -> Vec<u8> {
        let mut b = PacketBuilder::ethernet2([2; 6], [4; 6])
            .ipv4(src, dst, 64)
            .tcp(sport, dport, 1, 1000);
        if syn {
            b = b.syn();
        }
        if ack {
            b = b.ack(5);
        }
        let mut v = Vec::new();
        b.write(&mut v, &[]).unwrap();
        v
    }

    fn keep(s: &mut Selector, f: &[u8]) -> bool {
        s.keep(wire::LINKTYPE_ETHERNET, f, f.len() as u32)
    }

    const C: [u8; 4] = [10, 0, 0, 1];
    const S: [u8; 4] = [10, 0, 0, 2];

    #[test]
    fn handshake_decides_the_client_even_against_port_order() {
        // Client uses port 80 as its source, server listens on 50000: SYN wins over ports.
        let mut s = Selector::new(None, Some(Side::Client));
        assert!(keep(&mut s, &tcp(C, 80, S, 50000, true, false)));
        assert!(!keep(&mut s, &tcp(S, 50000, C, 80, true, true)));
        assert!(keep(&mut s, &tcp(C, 80, S, 50000, false, true)));
        assert!(!keep(&mut s, &tcp(S, 50000, C, 80, false, true)));
    }

    #[test]
    fn mid_stream_uses_the_port_rule() {
        let mut s = Selector::new(None, Some(Side::Server));
        assert!(keep(&mut s, &tcp(S, 443, C, 51000, false, true)));
        assert!(!keep(&mut s, &tcp(C, 51000, S, 443, false, true)));
    }

    #[test]
    fn rules_see_client_to_server_as_ingress() {
        let rules = RuleSet::new(vec![
            "num=10,dir=ingress,action=accept,proto=tcp,dst-port=80"
                .parse()
                .unwrap(),
        ])
        .unwrap();
        let mut s = Selector::new(Some(&rules), None);
        assert!(keep(&mut s, &tcp(C, 40000, S, 80, true, false)));
        assert!(!keep(&mut s, &tcp(S, 80, C, 40000, true, true)));
        assert!(!keep(&mut s, &tcp(C, 40000, S, 81, true, false)));
        // Non-IP frames: no address rule can accept them.
        let arp = [0u8; 42];
        let mut arp = arp.to_vec();
        arp[12] = 0x08;
        arp[13] = 0x06;
        assert!(!keep(&mut s, &arp));
        let mut all = Selector::new(None, None);
        assert!(!all.is_active());
        assert!(keep(&mut all, &arp));
    }
}
