//! Mirror sessions end to end: `rf-tap session` on the source host's interface, real HTTP
//! between a client namespace and nginx, and on a separate target namespace both a plain
//! Linux VXLAN device (proof of standard RFC 7348 encapsulation) and `rf-tap attach --vxlan`
//! receiving the copies. Each test makes its own namespaces and removes them (sessions first).
#![allow(clippy::unwrap_used)]

use std::{
    process::Command,
    sync::atomic::{AtomicU32, Ordering},
};

use rf_tap_tests::*;

static NEXT: AtomicU32 = AtomicU32::new(0);

/// client ns --(capp/sapp)-- source ns (nginx, the mirrored host) --(smir/tmir)-- target ns.
struct Lab {
    cli: String,
    src: String,
    tgt: String,
    client_ip: String,
    server_ip: String,
    src_mir_ip: String,
    target_ip: String,
}

impl Lab {
    fn new() -> Self {
        let id = NEXT.fetch_add(1, Ordering::Relaxed);
        let pid = std::process::id();
        let tag = format!("{:x}{id}", pid % 0xfffff);
        let b = (pid % 100) as u8 + 100 + id as u8;
        let lab = Self {
            cli: format!("rfmc-{tag}"),
            src: format!("rfms-{tag}"),
            tgt: format!("rfmt-{tag}"),
            client_ip: format!("10.{b}.1.1"),
            server_ip: format!("10.{b}.1.2"),
            src_mir_ip: format!("10.{b}.2.1"),
            target_ip: format!("10.{b}.2.2"),
        };
        for ns in [&lab.cli, &lab.src, &lab.tgt] {
            sh(&["ip", "netns", "add", ns]);
            sh(&["ip", "-n", ns, "link", "set", "lo", "up"]);
        }
        sh(&[
            "ip", "-n", &lab.cli, "link", "add", "capp", "type", "veth", "peer", "name", "sapp",
            "netns", &lab.src,
        ]);
        sh(&[
            "ip", "-n", &lab.src, "link", "add", "smir", "type", "veth", "peer", "name", "tmir",
            "netns", &lab.tgt,
        ]);
        for (ns, dev, ip) in [
            (&lab.cli, "capp", &lab.client_ip),
            (&lab.src, "sapp", &lab.server_ip),
            (&lab.src, "smir", &lab.src_mir_ip),
            (&lab.tgt, "tmir", &lab.target_ip),
        ] {
            sh(&[
                "ip",
                "-n",
                ns,
                "addr",
                "add",
                &format!("{ip}/24"),
                "dev",
                dev,
            ]);
            sh(&["ip", "-n", ns, "link", "set", dev, "up"]);
        }
        lab
    }

    /// A plain Linux VXLAN device for one VNI on the target.
    fn target_vxlan(&self, name: &str, vni: u32) {
        let vni = vni.to_string();
        sh(&[
            "ip",
            "-n",
            &self.tgt,
            "link",
            "add",
            name,
            "type",
            "vxlan",
            "id",
            &vni,
            "dstport",
            "4789",
            "local",
            &self.target_ip,
            "nolearning",
        ]);
        sh(&["ip", "-n", &self.tgt, "link", "set", name, "up"]);
    }

    fn session(&self, args: &[&str]) -> Finished {
        let mut a = vec!["session"];
        a.extend_from_slice(args);
        rf_tap_run(Some(&self.src), &a)
    }

    /// `session create --iface sapp --target <target>` plus `extra`.
    fn create(&self, extra: &[&str]) -> Finished {
        let mut a = vec!["create", "--iface", "sapp", "--target", &self.target_ip];
        a.extend_from_slice(extra);
        self.session(&a)
    }

    fn list(&self) -> serde_json::Value {
        let out = self.session(&["list", "--json"]);
        assert!(out.status.success(), "{}", out.stderr);
        out.json()
    }

    fn curl(&self, url: &str) -> (u32, usize) {
        let out = Command::new("ip")
            .args(["netns", "exec", &self.cli, "curl", "-s", "--max-time", "5"])
            .args(["-w", "\n%{http_code}", url])
            .output()
            .unwrap();
        let text = out.stdout;
        let cut = text.iter().rposition(|&b| b == b'\n').unwrap_or(0);
        let code = String::from_utf8_lossy(&text[cut..])
            .trim()
            .parse()
            .unwrap_or(0);
        (code, cut)
    }

    /// Nothing of rf-tap is left in the source namespace.
    fn assert_clean(&self) {
        assert_eq!(
            tcx_program_count(&self.src, "sapp"),
            0,
            "programs left on sapp"
        );
        let links = sh(&["ip", "-n", &self.src, "link", "show"]);
        assert!(!links.contains("rftvx"), "VXLAN device left: {links}");
        let list = self.list();
        assert_eq!(list["sessions"].as_array().unwrap().len(), 0, "{list}");
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        let _ = rf_tap_run(Some(&self.src), &["session", "delete", "--all"]);
        for ns in [&self.cli, &self.src, &self.tgt] {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}

/// (src port, dst port, captured length) of each IPv4 TCP frame of a pcap, read by hand:
/// mirror copies may be cut, which strict parsers refuse.
fn tcp_ports(path: &std::path::Path) -> Vec<(u16, u16, usize)> {
    read_pcap(path)
        .0
        .iter()
        .filter_map(|r| {
            let f = &r.data;
            if f.len() < 14 + 20 + 4 || f[12..14] != [0x08, 0x00] || f[14 + 9] != 6 {
                return None;
            }
            let l4 = 14 + ((f[14] & 0x0f) as usize) * 4;
            let port = |at: usize| Some(u16::from_be_bytes([*f.get(at)?, *f.get(at + 1)?]));
            Some((port(l4)?, port(l4 + 2)?, f.len()))
        })
        .collect()
}

fn session_of(list: &serde_json::Value, number: u64) -> serde_json::Value {
    list["sessions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["number"] == number)
        .cloned()
        .unwrap_or_else(|| panic!("no session {number}: {list}"))
}

fn www(dir: &TempDir) {
    let root = dir.path("www");
    std::fs::create_dir_all(&root).unwrap();
    std::fs::write(root.join("index.html"), "hello\n").unwrap();
    std::fs::write(root.join("big.bin"), vec![b'x'; 6000]).unwrap();
}

/// A lab with nginx on the source serving `www` on ports 80 and 8080.
fn web_lab(tag: &str) -> (Lab, TempDir, Proc) {
    let lab = Lab::new();
    let dir = TempDir::new(tag);
    www(&dir);
    let server = nginx(
        &lab.src,
        &dir,
        &[
            format!("{}:80", lab.server_ip),
            format!("{}:8080", lab.server_ip),
        ],
    );
    (lab, dir, server)
}

#[test]
fn a_session_mirrors_matching_http_once_in_standard_vxlan() {
    if !privileged("a_session_mirrors_matching_http_once_in_standard_vxlan") {
        return;
    }
    let (lab, dir, _nginx) = web_lab("mirror");
    lab.target_vxlan("vx42", 4242);

    // The truth: what crossed the mirrored interface on port 80.
    let truth = tcpdump(
        &lab.src,
        "sapp",
        &dir.path("src.pcap"),
        &["tcp", "port", "80"],
    );
    let standard = tcpdump(&lab.tgt, "vx42", &dir.path("vx.pcap"), &[]);
    let mut receiver = RfTap::spawn(
        &lab.tgt,
        &[
            "attach",
            "tmir",
            "--vxlan",
            "--vni",
            "4242",
            "-w",
            dir.path("inner.pcap").to_str().unwrap(),
            "--json",
            "-q",
        ],
    );
    receiver.wait_attached();

    let made = lab.create(&[
        "--vni",
        "4242",
        "--port",
        "80",
        "--packet-length",
        "200",
        "--json",
    ]);
    assert!(made.status.success(), "create failed: {}", made.stderr);
    let record = made.json();
    assert_eq!(record["vni"], 4242);
    // The command has ended; the session runs on without it.
    for _ in 0..8 {
        assert_eq!(lab.curl(&format!("http://{}/", lab.server_ip)), (200, 6));
        assert_eq!(
            lab.curl(&format!("http://{}/big.bin", lab.server_ip)),
            (200, 6000)
        );
        // Not matched by the session's filter: never mirrored.
        assert_eq!(
            lab.curl(&format!("http://{}:8080/", lab.server_ip)),
            (200, 6)
        );
    }
    stop_tcpdump(truth);
    stop_tcpdump(standard);
    let received = receiver.stop();
    assert!(received.status.success(), "{}", received.stderr);

    let truth = tcp_ports(&dir.path("src.pcap"));
    let standard = tcp_ports(&dir.path("vx.pcap"));
    let inner = tcp_ports(&dir.path("inner.pcap"));
    assert!(truth.len() >= 8 * 12, "too little traffic: {}", truth.len());
    assert!(
        standard.iter().all(|(s, d, _)| *s == 80 || *d == 80),
        "port 8080 traffic was mirrored"
    );
    // Every matching packet, once, cut to the packet length.
    assert_eq!(
        standard.len(),
        truth.len(),
        "standard VXLAN device: {}",
        lab.list()
    );
    assert_eq!(inner.len(), truth.len(), "rf-tap attach --vxlan");
    assert!(standard.iter().all(|(_, _, len)| *len <= 200));
    let long = truth.iter().filter(|(_, _, len)| *len > 200).count();
    assert!(long >= 8, "the big responses should need cutting");
    assert_eq!(
        standard.iter().filter(|(_, _, len)| *len == 200).count(),
        long
    );
    let mut a: Vec<(u16, u16)> = truth.iter().map(|(s, d, _)| (*s, *d)).collect();
    let mut b: Vec<(u16, u16)> = inner.iter().map(|(s, d, _)| (*s, *d)).collect();
    a.sort_unstable();
    b.sort_unstable();
    assert_eq!(a, b, "the same packets, flow by flow");

    let summary = received.json();
    check_accounting(&summary);
    assert_eq!(summary["vxlan"]["decapsulated"], truth.len() as u64);

    let listed = session_of(&lab.list(), 1);
    let c = &listed["counters"];
    assert_eq!(c["mirrored"], truth.len() as u64, "{listed}");
    assert_eq!(c["truncated"], long as u64, "{listed}");
    assert_eq!(c["dropped"], 0, "{listed}");
    // An IPv4 target on an Ethernet route: rf-tap's program encapsulated every copy itself.
    assert_eq!(c["direct"], truth.len() as u64, "{listed}");
    assert_eq!(listed["route_changed"], false, "{listed}");
    assert_eq!(listed["iface"], "sapp");

    let del = lab.session(&["delete", "1"]);
    assert!(del.status.success(), "{}", del.stderr);
    lab.assert_clean();
    // And the production traffic still flows.
    assert_eq!(lab.curl(&format!("http://{}/", lab.server_ip)), (200, 6));
}

#[test]
fn overlapping_sessions_mirror_each_packet_once_to_the_lowest_number() {
    if !privileged("overlapping_sessions_mirror_each_packet_once_to_the_lowest_number") {
        return;
    }
    let (lab, dir, _nginx) = web_lab("mirror2");
    lab.target_vxlan("vx10", 10);
    lab.target_vxlan("vx20", 20);
    // Created out of order: the number decides, not the order of creation.
    let all_tcp = lab.create(&[
        "--vni",
        "20",
        "--session-number",
        "20",
        "--rule",
        "num=1,action=accept,proto=tcp",
    ]);
    assert!(all_tcp.status.success(), "{}", all_tcp.stderr);
    let web = lab.create(&["--vni", "10", "--session-number", "10", "--port", "80"]);
    assert!(web.status.success(), "{}", web.stderr);
    let dup = lab.create(&["--session-number", "10"]);
    assert!(
        !dup.status.success() && dup.stderr.contains("session 10 exists"),
        "{}",
        dup.stderr
    );

    let truth = tcpdump(&lab.src, "sapp", &dir.path("src.pcap"), &["tcp"]);
    let v10 = tcpdump(&lab.tgt, "vx10", &dir.path("v10.pcap"), &[]);
    let v20 = tcpdump(&lab.tgt, "vx20", &dir.path("v20.pcap"), &[]);
    for _ in 0..5 {
        assert_eq!(lab.curl(&format!("http://{}/", lab.server_ip)).0, 200);
        assert_eq!(lab.curl(&format!("http://{}:8080/", lab.server_ip)).0, 200);
    }
    stop_tcpdump(truth);
    stop_tcpdump(v10);
    stop_tcpdump(v20);
    let truth = tcp_ports(&dir.path("src.pcap"));
    let v10 = tcp_ports(&dir.path("v10.pcap"));
    let v20 = tcp_ports(&dir.path("v20.pcap"));
    let web_packets = truth
        .iter()
        .filter(|(s, d, _)| *s == 80 || *d == 80)
        .count();
    assert!(web_packets >= 5 * 7, "{truth:?}");
    assert_eq!(v10.len(), web_packets, "port 80 goes to session 10");
    assert!(v10.iter().all(|(s, d, _)| *s == 80 || *d == 80));
    assert_eq!(
        v20.len(),
        truth.len() - web_packets,
        "the rest goes to session 20"
    );
    assert!(v20.iter().all(|(s, d, _)| *s == 8080 || *d == 8080));

    let list = lab.list();
    let (s10, s20) = (session_of(&list, 10), session_of(&list, 20));
    assert_eq!(s10["counters"]["mirrored"], web_packets as u64);
    assert_eq!(
        s20["counters"]["mirrored"],
        (truth.len() - web_packets) as u64
    );
    let text = lab.session(&["list"]);
    let table = String::from_utf8_lossy(&text.stdout);
    assert!(
        table.contains("NUM") && table.contains(&lab.target_ip),
        "{table}"
    );

    let del = lab.session(&["delete", "--all"]);
    assert!(del.status.success(), "{}", del.stderr);
    lab.assert_clean();
}

#[test]
fn bad_sessions_are_refused_and_leave_nothing_behind() {
    if !privileged("bad_sessions_are_refused_and_leave_nothing_behind") {
        return;
    }
    let lab = Lab::new();
    let refused = |args: &[&str], says: &str| {
        let out = lab.session(args);
        assert!(!out.status.success(), "{args:?} should fail");
        assert!(out.stderr.contains(says), "{args:?}: {}", out.stderr);
        assert!(!out.stderr.contains("panicked"), "{}", out.stderr);
        lab.assert_clean();
    };
    refused(
        &["create", "--iface", "sapp", "--target", "192.0.2.55"],
        "no route to the target",
    );
    // An on-link address nobody answers ARP for: refused within a few seconds.
    let silent = lab.target_ip.replace(".2.2", ".2.77");
    let asked = std::time::Instant::now();
    refused(
        &["create", "--iface", "sapp", "--target", &silent],
        "does not answer ARP",
    );
    assert!(asked.elapsed() < std::time::Duration::from_secs(8));
    refused(
        &["create", "--iface", "sapp", "--target", &lab.server_ip],
        "mirror loop",
    );
    refused(
        &["create", "--iface", "nope0", "--target", &lab.target_ip],
        "no such interface",
    );
    refused(
        &[
            "create",
            "--iface",
            "sapp",
            "--target",
            &lab.target_ip,
            "--vni",
            "16777216",
        ],
        "--vni",
    );
    refused(
        &[
            "create",
            "--iface",
            "sapp",
            "--target",
            &lab.target_ip,
            "--packet-length",
            "4",
        ],
        "--packet-length",
    );
    refused(&["delete", "7"], "no session 7");

    // What a create killed half way would leave (its VXLAN device) goes with the next command.
    sh(&[
        "ip",
        "-n",
        &lab.src,
        "link",
        "add",
        "rftvx4789",
        "type",
        "vxlan",
        "external",
        "dstport",
        "4789",
    ]);
    let out = lab.session(&["delete", "--all"]);
    assert!(out.status.success(), "{}", out.stderr);
    lab.assert_clean();

    // A path MTU too small for a copy: cut to fit and counted, never lost silently.
    let dir = TempDir::new("mirror3");
    www(&dir);
    let _nginx = nginx(&lab.src, &dir, &[format!("{}:80", lab.server_ip)]);
    sh(&["ip", "-n", &lab.src, "link", "set", "smir", "mtu", "600"]);
    sh(&["ip", "-n", &lab.tgt, "link", "set", "tmir", "mtu", "600"]);
    lab.target_vxlan("vx7", 7);
    let made = lab.create(&["--vni", "7", "--port", "80", "--json"]);
    assert!(made.status.success(), "{}", made.stderr);
    assert_eq!(made.json()["mtu_limit"], 600 - 36);
    let seen = tcpdump(&lab.tgt, "vx7", &dir.path("v7.pcap"), &[]);
    for _ in 0..3 {
        assert_eq!(
            lab.curl(&format!("http://{}/big.bin", lab.server_ip)),
            (200, 6000)
        );
    }
    stop_tcpdump(seen);
    let got = tcp_ports(&dir.path("v7.pcap"));
    assert!(!got.is_empty(), "{}", lab.list());
    assert!(got.iter().all(|(_, _, len)| *len <= 564), "{got:?}");
    let s = session_of(&lab.list(), 1);
    assert!(s["counters"]["mtu_truncated"].as_u64().unwrap() >= 3, "{s}");
    assert_eq!(s["counters"]["mirrored"], got.len() as u64, "{s}");
    assert!(s["next_hop_failed"].is_null(), "{s}");

    // The target goes away: once its address stops answering ARP, `list` says so.
    let addr = format!("{}/24", lab.target_ip);
    sh(&["ip", "-n", &lab.tgt, "addr", "del", &addr, "dev", "tmir"]);
    sh(&["ip", "-n", &lab.src, "neigh", "flush", "dev", "smir"]);
    // One datagram makes the kernel ask ARP again.
    let poke = format!("echo x > /dev/udp/{}/9", lab.target_ip);
    let _ = std::process::Command::new("ip")
        .args(["netns", "exec", &lab.src, "bash", "-c", &poke])
        .output();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let mut text = String::new();
    while std::time::Instant::now() < deadline {
        text = String::from_utf8_lossy(&lab.session(&["list"]).stdout).into_owned();
        if text.contains("no longer answers ARP") {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(250));
    }
    assert!(text.contains("no longer answers ARP"), "{text}");
    assert_eq!(
        session_of(&lab.list(), 1)["next_hop_failed"],
        lab.target_ip.as_str()
    );
    sh(&["ip", "-n", &lab.tgt, "link", "set", "tmir", "up"]);

    // State files are named by the namespace's inode, which a new namespace reuses once the
    // old one is gone. A state whose namespace cookie is not ours is such a dead namespace's:
    // its sessions, pinned links and device go, and never pass for this namespace's.
    use std::os::unix::fs::MetadataExt as _;
    let ino = std::fs::metadata(format!("/run/netns/{}", lab.src))
        .unwrap()
        .ino();
    let state = format!("/run/rf-tap/net-{ino}.json");
    let mut json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&state).unwrap()).unwrap();
    assert!(json["netns_cookie"].is_u64(), "{json}");
    json["netns_cookie"] = serde_json::json!(1u64);
    std::fs::write(&state, json.to_string()).unwrap();
    let out = lab.session(&["list"]);
    assert!(out.status.success(), "{}", out.stderr);
    assert!(out.stderr.contains("no longer exists"), "{}", out.stderr);
    lab.assert_clean();
}

#[test]
fn ipv6_targets_go_through_the_vxlan_device_and_moved_routes_are_reported() {
    if !privileged("ipv6_targets_go_through_the_vxlan_device_and_moved_routes_are_reported") {
        return;
    }
    let (lab, dir, _nginx) = web_lab("mirror6");
    let b = lab.target_ip.split('.').nth(1).unwrap().to_string();
    let (src6, tgt6) = (format!("fd00:{b}::1"), format!("fd00:{b}::2"));
    for (ns, dev, ip) in [(&lab.src, "smir", &src6), (&lab.tgt, "tmir", &tgt6)] {
        sh(&[
            "ip",
            "-n",
            ns,
            "addr",
            "add",
            &format!("{ip}/64"),
            "dev",
            dev,
            "nodad",
        ]);
    }
    // A jumbo mirror link: whole segments fit once encapsulated, so super-packets travel whole.
    sh(&["ip", "-n", &lab.src, "link", "set", "smir", "mtu", "9000"]);
    sh(&["ip", "-n", &lab.tgt, "link", "set", "tmir", "mtu", "9000"]);
    sh(&[
        "ip",
        "-n",
        &lab.tgt,
        "link",
        "add",
        "vx6",
        "type",
        "vxlan",
        "id",
        "66",
        "dstport",
        "4789",
        "local",
        &tgt6,
        "nolearning",
    ]);
    sh(&["ip", "-n", &lab.tgt, "link", "set", "vx6", "up"]);
    lab.target_vxlan("vx4", 44);

    let v6 = lab.session(&[
        "create",
        "--iface",
        "sapp",
        "--target",
        &tgt6,
        "--vni",
        "66",
        "--session-number",
        "6",
        "--port",
        "80",
    ]);
    assert!(v6.status.success(), "{}", v6.stderr);
    let v4 = lab.create(&["--vni", "44", "--session-number", "4", "--port", "8080"]);
    assert!(v4.status.success(), "{}", v4.stderr);

    let truth = tcpdump(&lab.src, "sapp", &dir.path("src.pcap"), &["tcp"]);
    let got6 = tcpdump(&lab.tgt, "vx6", &dir.path("v6.pcap"), &[]);
    let got4 = tcpdump(&lab.tgt, "vx4", &dir.path("v4.pcap"), &[]);
    for port in [80, 8080] {
        for _ in 0..4 {
            assert_eq!(
                lab.curl(&format!("http://{}:{port}/big.bin", lab.server_ip)),
                (200, 6000)
            );
        }
    }
    stop_tcpdump(truth);
    stop_tcpdump(got6);
    stop_tcpdump(got4);
    let truth = tcp_ports(&dir.path("src.pcap"));
    let web = truth
        .iter()
        .filter(|(s, d, _)| *s == 80 || *d == 80)
        .count();
    let got6 = tcp_ports(&dir.path("v6.pcap"));
    let got4 = tcp_ports(&dir.path("v4.pcap"));
    assert!(web >= 4 * 7, "{truth:?}");
    assert_eq!(got6.len(), web, "IPv6 target: {}", lab.list());
    // rf-tap's own encapsulation carries every packet whole, super-packets (GSO) included.
    let mut want4: Vec<_> = truth
        .iter()
        .filter(|(s, d, _)| *s == 8080 || *d == 8080)
        .collect();
    let mut got4: Vec<_> = got4.iter().collect();
    want4.sort_unstable();
    got4.sort_unstable();
    assert_eq!(got4, want4, "IPv4 target, packet by packet");
    let list = lab.list();
    let (s6, s4) = (session_of(&list, 6), session_of(&list, 4));
    assert_eq!(s6["counters"]["mirrored"], web as u64, "{s6}");
    // IPv6 copies are the kernel VXLAN device's; IPv4 ones rf-tap's own.
    assert_eq!(s6["counters"]["direct"], 0, "{s6}");
    assert_eq!(
        s4["counters"]["mirrored"],
        (truth.len() - web) as u64,
        "{s4}"
    );
    assert_eq!(s4["counters"]["direct"], (truth.len() - web) as u64, "{s4}");

    // The route to the IPv4 target moves (through a gateway): `list` says the session's
    // copies still go the old way, until the route comes back.
    let gw = format!("{}.9", lab.target_ip.rsplit_once('.').unwrap().0);
    let host_route = format!("{}/32", lab.target_ip);
    sh(&[
        "ip",
        "-n",
        &lab.src,
        "route",
        "add",
        &host_route,
        "via",
        &gw,
        "dev",
        "smir",
    ]);
    assert_eq!(session_of(&lab.list(), 4)["route_changed"], true);
    assert_eq!(session_of(&lab.list(), 6)["route_changed"], false);
    let text = lab.session(&["list"]);
    let table = String::from_utf8_lossy(&text.stdout);
    assert!(
        table.contains("session 4: the route to") && table.contains("re-create"),
        "{table}"
    );
    sh(&["ip", "-n", &lab.src, "route", "del", &host_route]);
    assert_eq!(session_of(&lab.list(), 4)["route_changed"], false);

    let del = lab.session(&["delete", "--all"]);
    assert!(del.status.success(), "{}", del.stderr);
    lab.assert_clean();
}
