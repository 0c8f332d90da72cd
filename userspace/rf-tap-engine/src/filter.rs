//! Filter rules with VPC Traffic Mirroring semantics, and their compilation into the records
//! the kernel evaluates.
//!
//! A rule has a number (evaluated in ascending order, first match wins), a direction
//! (ingress, egress or both), an action (accept or reject), and optionally a protocol, source
//! and destination CIDRs (IPv4 or IPv6) and source and destination port ranges. A packet that
//! matches no rule is not copied. With no rules at all, everything is copied (as tcpdump does
//! without a filter expression).
//!
//! Rules come from the command line (`num=100,dir=ingress,action=accept,proto=tcp,dst-port=80-443`)
//! or from a YAML file (see [`RuleSet::from_yaml`]).

use std::{fmt, net::IpAddr, str::FromStr};

use rf_tap_common::{
    FilterRule, ACTION_ACCEPT, ACTION_REJECT, DIR_EGRESS, DIR_INGRESS, MAX_RULES, RULE_MATCH_PORTS,
    RULE_MATCH_PROTO,
};
use serde::Deserialize;

/// Highest rule number, as in VPC Traffic Mirroring.
pub const MAX_RULE_NUMBER: u32 = 32766;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FilterError {
    #[error("rule `{rule}`: unknown key `{key}` (expected num, dir, action, proto, src-cidr, dst-cidr, src-port, dst-port)")]
    UnknownKey { rule: String, key: String },
    #[error("rule `{rule}`: `{item}` is not of the form key=value")]
    NotKeyValue { rule: String, item: String },
    #[error("rule `{rule}`: missing `{key}`")]
    Missing { rule: String, key: &'static str },
    #[error("rule `{rule}`: bad {what} `{value}`: {why}")]
    BadValue {
        rule: String,
        what: &'static str,
        value: String,
        why: String,
    },
    #[error("rule number {0} is used twice")]
    DuplicateNumber(u32),
    #[error("{count} rules given; at most {max} fit in the kernel")]
    TooMany { count: usize, max: u32 },
    #[error("filter file: {0}")]
    Yaml(String),
}

/// Which way a packet crosses the interface.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    Ingress,
    Egress,
    Both,
}

impl Direction {
    fn mask(self) -> u8 {
        match self {
            Self::Ingress => DIR_INGRESS,
            Self::Egress => DIR_EGRESS,
            Self::Both => DIR_INGRESS | DIR_EGRESS,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    Accept,
    Reject,
}

/// An IP network: address and prefix length.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cidr {
    pub addr: IpAddr,
    pub prefix: u8,
}

impl FromStr for Cidr {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let addr: IpAddr = addr
            .parse()
            .map_err(|_| format!("`{addr}` is not an IPv4 or IPv6 address"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) => p
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= max)
                .ok_or_else(|| format!("prefix `/{p}` must be 0..={max}"))?,
        };
        Ok(Self { addr, prefix })
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

impl Cidr {
    fn family(&self) -> u8 {
        if self.addr.is_ipv4() {
            4
        } else {
            6
        }
    }

    /// Address and mask as four native words in wire byte order, the address pre-masked.
    fn words(&self) -> ([u32; 4], [u32; 4]) {
        let (bytes, bits): ([u8; 16], u32) = match self.addr {
            IpAddr::V4(a) => {
                let mut b = [0u8; 16];
                b[..4].copy_from_slice(&a.octets());
                (b, 32)
            }
            IpAddr::V6(a) => (a.octets(), 128),
        };
        let mut mask_bytes = [0u8; 16];
        for (i, m) in mask_bytes.iter_mut().enumerate().take((bits / 8) as usize) {
            let covered = (self.prefix as i32 - 8 * i as i32).clamp(0, 8);
            *m = if covered == 0 {
                0
            } else {
                0xffu8 << (8 - covered)
            };
        }
        let mut addr = [0u32; 4];
        let mut mask = [0u32; 4];
        for i in 0..4 {
            let m = u32::from_ne_bytes([
                mask_bytes[4 * i],
                mask_bytes[4 * i + 1],
                mask_bytes[4 * i + 2],
                mask_bytes[4 * i + 3],
            ]);
            let a = u32::from_ne_bytes([
                bytes[4 * i],
                bytes[4 * i + 1],
                bytes[4 * i + 2],
                bytes[4 * i + 3],
            ]);
            mask[i] = m;
            addr[i] = a & m;
        }
        (addr, mask)
    }
}

/// An inclusive port range.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PortRange {
    pub lo: u16,
    pub hi: u16,
}

impl FromStr for PortRange {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let port = |p: &str| {
            p.trim()
                .parse::<u16>()
                .map_err(|_| format!("`{p}` is not a port number 0..=65535"))
        };
        let (lo, hi) = match s.split_once('-') {
            Some((a, b)) => (port(a)?, port(b)?),
            None => {
                let p = port(s)?;
                (p, p)
            }
        };
        if lo > hi {
            return Err(format!("range {lo}-{hi} is empty (low end above high end)"));
        }
        Ok(Self { lo, hi })
    }
}

impl fmt::Display for PortRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.lo == self.hi {
            write!(f, "{}", self.lo)
        } else {
            write!(f, "{}-{}", self.lo, self.hi)
        }
    }
}

/// One filter rule as the user wrote it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rule {
    pub number: u32,
    pub direction: Direction,
    pub action: Action,
    /// IP protocol number; `None` for all protocols.
    pub protocol: Option<u8>,
    pub src: Option<Cidr>,
    pub dst: Option<Cidr>,
    pub src_port: Option<PortRange>,
    pub dst_port: Option<PortRange>,
}

fn parse_protocol(s: &str) -> Result<Option<u8>, String> {
    Ok(match s.to_ascii_lowercase().as_str() {
        "all" | "any" | "-1" => None,
        "tcp" => Some(6),
        "udp" => Some(17),
        "icmp" => Some(1),
        "icmpv6" | "icmp6" => Some(58),
        "sctp" => Some(132),
        "gre" => Some(47),
        "esp" => Some(50),
        other => Some(other.parse::<u8>().map_err(|_| {
            "expected tcp, udp, icmp, icmpv6, sctp, gre, esp, all or a protocol number 0..=255"
                .to_string()
        })?),
    })
}

fn protocol_name(p: Option<u8>) -> String {
    match p {
        None => "all".into(),
        Some(6) => "tcp".into(),
        Some(17) => "udp".into(),
        Some(1) => "icmp".into(),
        Some(58) => "icmpv6".into(),
        Some(132) => "sctp".into(),
        Some(n) => n.to_string(),
    }
}

/// Fields of a rule before validation, from either syntax.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRule {
    #[serde(alias = "num", alias = "rule-number", alias = "rule_number")]
    number: Option<u32>,
    #[serde(alias = "dir")]
    direction: Option<String>,
    action: Option<String>,
    #[serde(alias = "proto")]
    protocol: Option<YamlScalar>,
    #[serde(alias = "src-cidr", alias = "source_cidr", alias = "source-cidr")]
    src_cidr: Option<String>,
    #[serde(
        alias = "dst-cidr",
        alias = "destination_cidr",
        alias = "destination-cidr"
    )]
    dst_cidr: Option<String>,
    #[serde(alias = "src-port", alias = "source_port", alias = "source-port")]
    src_port: Option<YamlScalar>,
    #[serde(
        alias = "dst-port",
        alias = "destination_port",
        alias = "destination-port"
    )]
    dst_port: Option<YamlScalar>,
}

/// A YAML value written either as a number (`80`, `6`) or a string (`80-443`, `tcp`).
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum YamlScalar {
    Int(i64),
    Str(String),
}

impl YamlScalar {
    fn text(&self) -> String {
        match self {
            Self::Int(i) => i.to_string(),
            Self::Str(s) => s.clone(),
        }
    }
}

impl RawRule {
    fn validate(self, label: &str) -> Result<Rule, FilterError> {
        let bad = |what: &'static str, value: &str, why: String| FilterError::BadValue {
            rule: label.to_string(),
            what,
            value: value.to_string(),
            why,
        };
        let number = self.number.ok_or(FilterError::Missing {
            rule: label.to_string(),
            key: "num",
        })?;
        if number == 0 || number > MAX_RULE_NUMBER {
            return Err(bad(
                "rule number",
                &number.to_string(),
                format!("must be 1..={MAX_RULE_NUMBER}"),
            ));
        }
        let direction = match self.direction.as_deref().map(str::to_ascii_lowercase) {
            None => Direction::Both,
            Some(d) => match d.as_str() {
                "ingress" | "in" => Direction::Ingress,
                "egress" | "out" => Direction::Egress,
                "both" | "any" => Direction::Both,
                _ => {
                    return Err(bad(
                        "direction",
                        &d,
                        "expected ingress, egress or both".into(),
                    ))
                }
            },
        };
        let action = match self.action.as_deref().map(str::to_ascii_lowercase) {
            None => {
                return Err(FilterError::Missing {
                    rule: label.to_string(),
                    key: "action",
                })
            }
            Some(a) => match a.as_str() {
                "accept" => Action::Accept,
                "reject" => Action::Reject,
                _ => return Err(bad("action", &a, "expected accept or reject".into())),
            },
        };
        let protocol = match &self.protocol {
            None => None,
            Some(p) => parse_protocol(&p.text()).map_err(|why| bad("protocol", &p.text(), why))?,
        };
        let cidr = |what, v: &Option<String>| -> Result<Option<Cidr>, FilterError> {
            v.as_ref()
                .map(|s| s.parse::<Cidr>().map_err(|why| bad(what, s, why)))
                .transpose()
        };
        let src = cidr("source CIDR", &self.src_cidr)?;
        let dst = cidr("destination CIDR", &self.dst_cidr)?;
        if let (Some(s), Some(d)) = (src, dst) {
            if s.family() != d.family() {
                return Err(bad(
                    "CIDR pair",
                    &format!("{s} -> {d}"),
                    "source and destination must both be IPv4 or both IPv6".into(),
                ));
            }
        }
        let range = |what, v: &Option<YamlScalar>| -> Result<Option<PortRange>, FilterError> {
            v.as_ref()
                .map(|p| {
                    let t = p.text();
                    t.parse::<PortRange>().map_err(|why| bad(what, &t, why))
                })
                .transpose()
        };
        let src_port = range("source port range", &self.src_port)?;
        let dst_port = range("destination port range", &self.dst_port)?;
        if (src_port.is_some() || dst_port.is_some())
            && !matches!(protocol, None | Some(6) | Some(17) | Some(132))
        {
            return Err(bad(
                "protocol",
                &protocol_name(protocol),
                "port ranges need proto tcp, udp, sctp or all".into(),
            ));
        }
        Ok(Rule {
            number,
            direction,
            action,
            protocol,
            src,
            dst,
            src_port,
            dst_port,
        })
    }
}

impl FromStr for Rule {
    type Err = FilterError;

    /// Parses the command-line form `num=100,dir=ingress,action=accept,proto=tcp,dst-port=80-443`.
    fn from_str(s: &str) -> Result<Self, FilterError> {
        let label = s.to_string();
        let mut raw = RawRule::default();
        for item in s.split(',').map(str::trim).filter(|i| !i.is_empty()) {
            let (k, v) = item
                .split_once('=')
                .ok_or_else(|| FilterError::NotKeyValue {
                    rule: label.clone(),
                    item: item.to_string(),
                })?;
            let v = v.trim().to_string();
            match k.trim().to_ascii_lowercase().replace('_', "-").as_str() {
                "num" | "number" | "rule-number" => {
                    raw.number = Some(v.parse().map_err(|_| FilterError::BadValue {
                        rule: label.clone(),
                        what: "rule number",
                        value: v.clone(),
                        why: format!("must be 1..={MAX_RULE_NUMBER}"),
                    })?)
                }
                "dir" | "direction" => raw.direction = Some(v),
                "action" => raw.action = Some(v),
                "proto" | "protocol" => raw.protocol = Some(YamlScalar::Str(v)),
                "src-cidr" | "source-cidr" | "src" => raw.src_cidr = Some(v),
                "dst-cidr" | "destination-cidr" | "dst" => raw.dst_cidr = Some(v),
                "src-port" | "source-port" | "sport" => raw.src_port = Some(YamlScalar::Str(v)),
                "dst-port" | "destination-port" | "dport" => {
                    raw.dst_port = Some(YamlScalar::Str(v))
                }
                other => {
                    return Err(FilterError::UnknownKey {
                        rule: label,
                        key: other.to_string(),
                    })
                }
            }
        }
        raw.validate(&label)
    }
}

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let dir = match self.direction {
            Direction::Ingress => "ingress",
            Direction::Egress => "egress",
            Direction::Both => "both",
        };
        let action = match self.action {
            Action::Accept => "accept",
            Action::Reject => "reject",
        };
        write!(
            f,
            "num={},dir={dir},action={action},proto={}",
            self.number,
            protocol_name(self.protocol)
        )?;
        if let Some(c) = self.src {
            write!(f, ",src-cidr={c}")?;
        }
        if let Some(c) = self.dst {
            write!(f, ",dst-cidr={c}")?;
        }
        if let Some(p) = self.src_port {
            write!(f, ",src-port={p}")?;
        }
        if let Some(p) = self.dst_port {
            write!(f, ",dst-port={p}")?;
        }
        Ok(())
    }
}

impl Rule {
    /// The record the kernel evaluates.
    pub fn compile(&self) -> FilterRule {
        // A missing CIDR is "any address" of the family the other one fixes (mask 0).
        let words = |c: Option<Cidr>| c.map(|c| c.words()).unwrap_or(([0; 4], [0; 4]));
        let family = self.src.or(self.dst).map(|c| c.family()).unwrap_or(0);
        let (src_addr, src_mask) = words(self.src);
        let (dst_addr, dst_mask) = words(self.dst);
        let mut flags = 0;
        if self.protocol.is_some() {
            flags |= RULE_MATCH_PROTO;
        }
        if self.src_port.is_some() || self.dst_port.is_some() {
            flags |= RULE_MATCH_PORTS;
        }
        let full = PortRange { lo: 0, hi: 65535 };
        let sp = self.src_port.unwrap_or(full);
        let dp = self.dst_port.unwrap_or(full);
        FilterRule {
            number: self.number,
            action: match self.action {
                Action::Accept => ACTION_ACCEPT,
                Action::Reject => ACTION_REJECT,
            },
            directions: self.direction.mask(),
            protocol: self.protocol.unwrap_or(0),
            family,
            flags,
            _pad: [0; 3],
            src_port: [sp.lo, sp.hi],
            dst_port: [dp.lo, dp.hi],
            src_addr,
            src_mask,
            dst_addr,
            dst_mask,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct YamlFile {
    rules: Vec<RawRule>,
}

/// An ordered, validated set of rules.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RuleSet {
    rules: Vec<Rule>,
}

impl RuleSet {
    /// Validates numbering and size; sorts by rule number.
    pub fn new(mut rules: Vec<Rule>) -> Result<Self, FilterError> {
        rules.sort_by_key(|r| r.number);
        if let Some(w) = rules.windows(2).find(|w| w[0].number == w[1].number) {
            return Err(FilterError::DuplicateNumber(w[0].number));
        }
        if rules.len() > MAX_RULES as usize {
            return Err(FilterError::TooMany {
                count: rules.len(),
                max: MAX_RULES,
            });
        }
        Ok(Self { rules })
    }

    /// Reads rules from YAML:
    ///
    /// ```yaml
    /// rules:
    ///   - number: 100
    ///     direction: ingress
    ///     action: accept
    ///     protocol: tcp
    ///     destination_cidr: 10.0.0.0/8
    ///     destination_port: 80-443
    /// ```
    /// The command-line key names (`num`, `dir`, `proto`, `dst-port`, ...) are accepted too.
    pub fn from_yaml(text: &str) -> Result<Vec<Rule>, FilterError> {
        let file: YamlFile =
            serde_yaml::from_str(text).map_err(|e| FilterError::Yaml(e.to_string()))?;
        file.rules
            .into_iter()
            .enumerate()
            .map(|(i, r)| {
                let label = match r.number {
                    Some(n) => format!("#{} (number {n})", i + 1),
                    None => format!("#{}", i + 1),
                };
                r.validate(&label)
            })
            .collect()
    }

    /// The rules `--port LO-HI` stands for: accept TCP with either port in range, both
    /// directions. They are numbered after `after` so that explicit rules come first.
    pub fn port_shorthand(range: PortRange, after: u32) -> Result<Vec<Rule>, FilterError> {
        let base = after + 1;
        if base + 1 > MAX_RULE_NUMBER {
            return Err(FilterError::TooMany {
                count: 2,
                max: MAX_RULE_NUMBER - after,
            });
        }
        let rule = |number, src_port, dst_port| Rule {
            number,
            direction: Direction::Both,
            action: Action::Accept,
            protocol: Some(6),
            src: None,
            dst: None,
            src_port,
            dst_port,
        };
        Ok(vec![
            rule(base, Some(range), None),
            rule(base + 1, None, Some(range)),
        ])
    }

    /// The single catch-all rule used when no filter is given.
    pub fn accept_all() -> Self {
        Self {
            rules: vec![Rule {
                number: 1,
                direction: Direction::Both,
                action: Action::Accept,
                protocol: None,
                src: None,
                dst: None,
                src_port: None,
                dst_port: None,
            }],
        }
    }

    pub fn rules(&self) -> &[Rule] {
        &self.rules
    }

    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    pub fn compile(&self) -> Vec<FilterRule> {
        self.rules.iter().map(Rule::compile).collect()
    }

    /// What the kernel would decide for a packet: `Some(action)` of the first matching rule.
    pub fn evaluate(&self, key: &rf_tap_common::PacketKey, direction: u8) -> Option<Action> {
        self.rules
            .iter()
            .find(|r| rf_tap_common::rule_matches(&r.compile(), key, direction))
            .map(|r| r.action)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rf_tap_common::PacketKey;
    use std::net::{Ipv4Addr, Ipv6Addr};

    fn v4(a: Ipv4Addr) -> [u32; 4] {
        [u32::from_ne_bytes(a.octets()), 0, 0, 0]
    }
    fn v6(a: Ipv6Addr) -> [u32; 4] {
        let o = a.octets();
        let mut w = [0u32; 4];
        for (i, x) in w.iter_mut().enumerate() {
            *x = u32::from_ne_bytes([o[4 * i], o[4 * i + 1], o[4 * i + 2], o[4 * i + 3]]);
        }
        w
    }
    fn tcp4(src: &str, sport: u16, dst: &str, dport: u16) -> PacketKey {
        PacketKey {
            family: 4,
            protocol: 6,
            has_ports: true,
            src_port: sport,
            dst_port: dport,
            src_addr: v4(src.parse().unwrap()),
            dst_addr: v4(dst.parse().unwrap()),
        }
    }
    fn set(rules: &[&str]) -> RuleSet {
        RuleSet::new(rules.iter().map(|r| r.parse().unwrap()).collect()).unwrap()
    }

    #[test]
    fn parses_the_documented_example() {
        let r: Rule = "num=100,dir=ingress,action=accept,proto=tcp,dst-port=80-443"
            .parse()
            .unwrap();
        assert_eq!(r.number, 100);
        assert_eq!(r.direction, Direction::Ingress);
        assert_eq!(r.action, Action::Accept);
        assert_eq!(r.protocol, Some(6));
        assert_eq!(r.dst_port, Some(PortRange { lo: 80, hi: 443 }));
        assert_eq!(
            r.to_string().parse::<Rule>().unwrap(),
            r,
            "display round-trips"
        );
    }

    #[test]
    fn rejects_bad_rules_with_the_cause() {
        let err = |s: &str| s.parse::<Rule>().unwrap_err().to_string();
        assert!(err("dir=ingress,action=accept").contains("missing `num`"));
        assert!(err("num=1,dir=ingress").contains("missing `action`"));
        assert!(err("num=1,action=allow").contains("expected accept or reject"));
        assert!(err("num=1,action=accept,dst-port=443-80").contains("empty"));
        assert!(err("num=1,action=accept,dst-port=70000").contains("not a port"));
        assert!(err("num=1,action=accept,src-cidr=10.0.0.0/33").contains("prefix"));
        assert!(err("num=1,action=accept,src-cidr=10.0.0.0/8,dst-cidr=::/0").contains("both"));
        assert!(err("num=1,action=accept,proto=icmp,dst-port=80").contains("port ranges"));
        assert!(err("num=1,action=accept,colour=red").contains("unknown key `colour`"));
        assert!(err("num=0,action=accept").contains("1..=32766"));
        assert!(err("num=1,action=accept,proto=tcpx").contains("protocol"));
        assert!(err("num=1,action").contains("key=value"));
        let dup = RuleSet::new(vec![
            "num=5,action=accept".parse().unwrap(),
            "num=5,action=reject".parse().unwrap(),
        ]);
        assert_eq!(dup.unwrap_err(), FilterError::DuplicateNumber(5));
    }

    #[test]
    fn first_match_wins_in_number_order_not_input_order() {
        // Given out of order: the reject (10) must be evaluated before the accept (20).
        let s = set(&[
            "num=20,action=accept,proto=tcp",
            "num=10,action=reject,proto=tcp,dst-port=22",
        ]);
        let ssh = tcp4("10.0.0.1", 40000, "10.0.0.2", 22);
        let web = tcp4("10.0.0.1", 40000, "10.0.0.2", 80);
        assert_eq!(s.evaluate(&ssh, DIR_INGRESS), Some(Action::Reject));
        assert_eq!(s.evaluate(&web, DIR_INGRESS), Some(Action::Accept));
        let compiled = s.compile();
        assert_eq!(compiled[0].number, 10);
        assert_eq!(compiled[1].number, 20);
    }

    #[test]
    fn unmatched_packets_are_not_copied() {
        let s = set(&["num=1,action=accept,proto=udp"]);
        assert_eq!(
            s.evaluate(&tcp4("1.1.1.1", 1, "2.2.2.2", 2), DIR_EGRESS),
            None
        );
    }

    #[test]
    fn direction_is_respected() {
        let s = set(&["num=1,dir=ingress,action=accept"]);
        let k = tcp4("1.1.1.1", 1, "2.2.2.2", 2);
        assert_eq!(s.evaluate(&k, DIR_INGRESS), Some(Action::Accept));
        assert_eq!(s.evaluate(&k, DIR_EGRESS), None);
    }

    #[test]
    fn ipv4_cidrs_match_by_prefix() {
        let s = set(&["num=1,action=accept,src-cidr=10.1.0.0/16,dst-cidr=192.168.7.9/32"]);
        assert_eq!(
            s.evaluate(&tcp4("10.1.200.3", 1, "192.168.7.9", 2), DIR_INGRESS),
            Some(Action::Accept)
        );
        assert_eq!(
            s.evaluate(&tcp4("10.2.0.1", 1, "192.168.7.9", 2), DIR_INGRESS),
            None
        );
        assert_eq!(
            s.evaluate(&tcp4("10.1.0.1", 1, "192.168.7.8", 2), DIR_INGRESS),
            None
        );
        // An odd prefix (/13) splits inside a byte.
        let s = set(&["num=1,action=accept,dst-cidr=172.16.0.0/13"]);
        assert!(s
            .evaluate(&tcp4("1.1.1.1", 1, "172.23.255.255", 2), DIR_INGRESS)
            .is_some());
        assert!(s
            .evaluate(&tcp4("1.1.1.1", 1, "172.24.0.0", 2), DIR_INGRESS)
            .is_none());
    }

    #[test]
    fn ipv6_cidrs_match_and_never_match_ipv4() {
        let s = set(&["num=1,action=accept,dst-cidr=fd00:1::/36"]);
        let mut k = tcp4("1.1.1.1", 1, "2.2.2.2", 2);
        assert_eq!(s.evaluate(&k, DIR_INGRESS), None, "IPv4 packet, IPv6 rule");
        k.family = 6;
        k.src_addr = v6("fd00::1".parse().unwrap());
        k.dst_addr = v6("fd00:1:fff::5".parse().unwrap());
        assert_eq!(s.evaluate(&k, DIR_INGRESS), Some(Action::Accept));
        k.dst_addr = v6("fd00:1:1000::5".parse().unwrap());
        assert_eq!(s.evaluate(&k, DIR_INGRESS), None);
        let all6 = set(&["num=1,action=accept,src-cidr=::/0"]);
        assert_eq!(all6.evaluate(&k, DIR_INGRESS), Some(Action::Accept));
    }

    #[test]
    fn port_rules_need_ports() {
        let s = set(&["num=1,action=accept,dst-port=53"]);
        let mut udp = tcp4("1.1.1.1", 5000, "2.2.2.2", 53);
        udp.protocol = 17;
        assert_eq!(s.evaluate(&udp, DIR_INGRESS), Some(Action::Accept));
        // A later IP fragment has no ports: a port rule cannot match it.
        udp.has_ports = false;
        assert_eq!(s.evaluate(&udp, DIR_INGRESS), None);
        // Non-IP frames only match catch-all rules.
        let arp = PacketKey::default();
        assert_eq!(s.evaluate(&arp, DIR_INGRESS), None);
        assert_eq!(
            RuleSet::accept_all().evaluate(&arp, DIR_INGRESS),
            Some(Action::Accept)
        );
    }

    #[test]
    fn port_shorthand_takes_either_port_both_ways() {
        let range: PortRange = "80-443".parse().unwrap();
        let s = RuleSet::new(RuleSet::port_shorthand(range, 0).unwrap()).unwrap();
        for (sp, dp, want) in [
            (40000, 80, true),
            (443, 40000, true),
            (40000, 444, false),
            (79, 40000, false),
        ] {
            let k = tcp4("1.1.1.1", sp, "2.2.2.2", dp);
            for dir in [DIR_INGRESS, DIR_EGRESS] {
                assert_eq!(s.evaluate(&k, dir).is_some(), want, "{sp}->{dp}");
            }
        }
        let mut udp = tcp4("1.1.1.1", 40000, "2.2.2.2", 80);
        udp.protocol = 17;
        assert_eq!(s.evaluate(&udp, DIR_INGRESS), None, "--port is TCP only");
    }

    #[test]
    fn yaml_file_with_both_key_styles() {
        let text = r#"
rules:
  - number: 200
    direction: egress
    action: accept
    protocol: tcp
    destination_cidr: 10.0.0.0/8
    destination_port: 8080
  - num: 100
    dir: both
    action: reject
    proto: 6
    src-port: 22
"#;
        let s = RuleSet::new(RuleSet::from_yaml(text).unwrap()).unwrap();
        assert_eq!(s.rules()[0].number, 100);
        assert_eq!(
            s.rules()[1].dst_port,
            Some(PortRange { lo: 8080, hi: 8080 })
        );
        let err = RuleSet::from_yaml("rules:\n  - number: 1\n    action: maybe\n").unwrap_err();
        assert!(
            err.to_string().contains("expected accept or reject"),
            "{err}"
        );
        let err = RuleSet::from_yaml("rulez: []").unwrap_err();
        assert!(matches!(err, FilterError::Yaml(_)));
    }

    #[test]
    fn compiled_layout_is_what_the_kernel_reads() {
        let r: Rule =
            "num=7,dir=egress,action=reject,proto=udp,src-cidr=10.1.2.3/24,src-port=1000-2000"
                .parse()
                .unwrap();
        let c = r.compile();
        assert_eq!(c.number, 7);
        assert_eq!(c.action, ACTION_REJECT);
        assert_eq!(c.directions, DIR_EGRESS);
        assert_eq!(c.family, 4);
        assert_eq!(c.protocol, 17);
        assert_eq!(c.flags, RULE_MATCH_PROTO | RULE_MATCH_PORTS);
        assert_eq!(c.src_port, [1000, 2000]);
        assert_eq!(c.dst_port, [0, 65535]);
        assert_eq!(
            c.src_addr[0].to_ne_bytes(),
            [10, 1, 2, 0],
            "address pre-masked"
        );
        assert_eq!(c.src_mask[0].to_ne_bytes(), [255, 255, 255, 0]);
        assert_eq!(
            c.dst_mask, [0; 4],
            "no destination CIDR: any address of the family"
        );
        assert_eq!(std::mem::size_of::<FilterRule>(), 84);
        assert_eq!(std::mem::size_of::<rf_tap_common::PacketRecord>(), 40);
        assert_eq!(
            std::mem::offset_of!(rf_tap_common::PacketRecord, pcap_sec),
            rf_tap_common::PCAP_RECORD_AT
        );
    }
}

/// The kernel's matching (shared `rule_matches` over compiled records) against a naive model
/// written from the rule definitions with std's address types, on random rules and packets.
#[cfg(test)]
mod model {
    use super::*;
    use proptest::prelude::*;
    use rf_tap_common::PacketKey;
    use std::net::{Ipv4Addr, Ipv6Addr};

    #[derive(Clone, Debug)]
    struct Pkt {
        src: Option<IpAddr>,
        dst: Option<IpAddr>,
        proto: u8,
        ports: Option<(u16, u16)>,
        dir: u8,
    }

    fn in_prefix(c: &Cidr, a: &IpAddr) -> bool {
        match (c.addr, a) {
            (IpAddr::V4(n), IpAddr::V4(a)) => {
                let m = if c.prefix == 0 {
                    0
                } else {
                    u32::MAX << (32 - c.prefix as u32)
                };
                u32::from(n) & m == u32::from(*a) & m
            }
            (IpAddr::V6(n), IpAddr::V6(a)) => {
                let m = if c.prefix == 0 {
                    0
                } else {
                    u128::MAX << (128 - c.prefix as u32)
                };
                u128::from(n) & m == u128::from(*a) & m
            }
            _ => false,
        }
    }

    fn reference(rules: &[Rule], p: &Pkt) -> Option<Action> {
        let mut sorted = rules.to_vec();
        sorted.sort_by_key(|r| r.number);
        sorted
            .iter()
            .find(|r| {
                let dir_ok = match r.direction {
                    Direction::Both => true,
                    Direction::Ingress => p.dir == DIR_INGRESS,
                    Direction::Egress => p.dir == DIR_EGRESS,
                };
                let addr_ok = |c: &Option<Cidr>, a: &Option<IpAddr>| match (c, a) {
                    (None, _) => true,
                    (Some(c), Some(a)) => in_prefix(c, a),
                    (Some(_), None) => false,
                };
                // A rule with a CIDR only takes packets of that family, on both sides.
                let fam_ok = match r.src.or(r.dst) {
                    None => true,
                    Some(c) => p.src.is_some_and(|s| s.is_ipv4() == c.addr.is_ipv4()),
                };
                let proto_ok = r.protocol.is_none_or(|x| p.src.is_some() && x == p.proto);
                let ports_ok = (r.src_port.is_none() && r.dst_port.is_none())
                    || p.ports.is_some_and(|(s, d)| {
                        r.src_port.is_none_or(|x| x.lo <= s && s <= x.hi)
                            && r.dst_port.is_none_or(|x| x.lo <= d && d <= x.hi)
                    });
                dir_ok
                    && fam_ok
                    && addr_ok(&r.src, &p.src)
                    && addr_ok(&r.dst, &p.dst)
                    && proto_ok
                    && ports_ok
            })
            .map(|r| r.action)
    }

    fn key(p: &Pkt) -> PacketKey {
        let words = |a: &IpAddr| -> [u32; 4] {
            let b: Vec<u8> = match a {
                IpAddr::V4(a) => a.octets().to_vec(),
                IpAddr::V6(a) => a.octets().to_vec(),
            };
            let mut w = [0u32; 4];
            for (i, c) in b.chunks(4).enumerate() {
                w[i] = u32::from_ne_bytes([c[0], c[1], c[2], c[3]]);
            }
            w
        };
        PacketKey {
            family: match p.src {
                None => 0,
                Some(IpAddr::V4(_)) => 4,
                Some(IpAddr::V6(_)) => 6,
            },
            protocol: if p.src.is_some() { p.proto } else { 0 },
            has_ports: p.ports.is_some(),
            src_port: p.ports.map(|x| x.0).unwrap_or(0),
            dst_port: p.ports.map(|x| x.1).unwrap_or(0),
            src_addr: p.src.as_ref().map(words).unwrap_or([0; 4]),
            dst_addr: p.dst.as_ref().map(words).unwrap_or([0; 4]),
        }
    }

    // Small value spaces so that random rules and packets often meet.
    fn v4() -> impl Strategy<Value = IpAddr> {
        (0u8..4, 0u8..4).prop_map(|(a, b)| IpAddr::V4(Ipv4Addr::new(10, a, 0, b)))
    }
    fn v6() -> impl Strategy<Value = IpAddr> {
        (0u16..4, 0u16..4).prop_map(|(a, b)| IpAddr::V6(Ipv6Addr::new(0xfd00, a, 0, 0, 0, 0, 0, b)))
    }
    fn port() -> impl Strategy<Value = u16> {
        prop_oneof![0u16..4, 78u16..84, Just(65535)]
    }
    fn range() -> impl Strategy<Value = Option<PortRange>> {
        proptest::option::of((port(), port()).prop_map(|(a, b)| PortRange {
            lo: a.min(b),
            hi: a.max(b),
        }))
    }
    fn pkt() -> impl Strategy<Value = Pkt> {
        let addrs = prop_oneof![
            Just((None, None)),
            (v4(), v4()).prop_map(|(a, b)| (Some(a), Some(b))),
            (v6(), v6()).prop_map(|(a, b)| (Some(a), Some(b))),
        ];
        (
            addrs,
            prop_oneof![Just(6u8), Just(17), Just(1)],
            proptest::option::of((port(), port())),
            prop_oneof![Just(DIR_INGRESS), Just(DIR_EGRESS)],
        )
            .prop_map(|((src, dst), proto, ports, dir)| {
                let ports = if src.is_some() && proto != 1 {
                    ports
                } else {
                    None
                };
                Pkt {
                    src,
                    dst,
                    proto,
                    ports,
                    dir,
                }
            })
    }
    fn rule(number: u32) -> impl Strategy<Value = Rule> {
        let fam_v4 = any::<bool>();
        let cidr = move |is_v4: bool| {
            let a = if is_v4 { v4().boxed() } else { v6().boxed() };
            proptest::option::of((a, 0u8..=128).prop_map(|(addr, p)| Cidr {
                addr,
                prefix: if addr.is_ipv4() { p.min(32) } else { p },
            }))
        };
        fam_v4
            .prop_flat_map(move |f| {
                (
                    cidr(f),
                    cidr(f),
                    prop_oneof![Just(None), Just(Some(6u8)), Just(Some(17)), Just(Some(1))],
                    range(),
                    range(),
                    prop_oneof![
                        Just(Direction::Ingress),
                        Just(Direction::Egress),
                        Just(Direction::Both)
                    ],
                    any::<bool>(),
                )
            })
            .prop_map(move |(src, dst, protocol, sp, dp, direction, accept)| {
                let ports_allowed = matches!(protocol, None | Some(6) | Some(17));
                Rule {
                    number,
                    direction,
                    action: if accept {
                        Action::Accept
                    } else {
                        Action::Reject
                    },
                    protocol,
                    src,
                    dst,
                    src_port: sp.filter(|_| ports_allowed),
                    dst_port: dp.filter(|_| ports_allowed),
                }
            })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]
        #[test]
        fn kernel_matching_agrees_with_the_reference(
            rules in (rule(30), rule(10), rule(20)).prop_map(|(a, b, c)| vec![a, b, c]),
            pkts in proptest::collection::vec(pkt(), 8),
        ) {
            let set = RuleSet::new(rules.clone()).unwrap();
            for p in &pkts {
                prop_assert_eq!(set.evaluate(&key(p), p.dir), reference(&rules, p), "{:?}", p);
            }
        }

        #[test]
        fn rule_text_never_panics(s in "\\PC{0,80}") {
            let _ = s.parse::<Rule>();
        }

        #[test]
        fn rule_like_text_never_panics(
            parts in proptest::collection::vec(
                ("(num|dir|action|proto|src-cidr|dst-cidr|src-port|dst-port|x)", "[-0-9a-z:./]{0,12}"),
                0..8,
            )
        ) {
            let s: Vec<String> = parts.iter().map(|(k, v)| format!("{k}={v}")).collect();
            if let Ok(r) = s.join(",").parse::<Rule>() {
                // Whatever parses, displays as text that parses to the same rule.
                prop_assert_eq!(r.to_string().parse::<Rule>().unwrap(), r);
            }
        }

        #[test]
        fn yaml_never_panics(s in "\\PC{0,200}") {
            let _ = RuleSet::from_yaml(&s);
        }
    }
}
