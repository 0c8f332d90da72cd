//! `rf-tap attach --mode afxdp`: a dedicated sink interface captured through AF_XDP sockets.
//! Real veth pairs in namespaces the tests make, real UDP sockets and real floods; every
//! flood is bounded in packets.
#![allow(clippy::unwrap_used)]

use std::{
    net::UdpSocket,
    time::{Duration, Instant},
};

use rf_tap_tests::*;

use rf_tap_tests::json_u64 as n;

/// The UDP destination port and the 4-byte id at the start of the payload.
fn udp_port_and_id(frame: &[u8]) -> Option<(u16, u32)> {
    let s = etherparse::SlicedPacket::from_ethernet(frame).ok()?;
    match s.transport? {
        etherparse::TransportSlice::Udp(u) => {
            let p = u.payload();
            Some((
                u.destination_port(),
                u32::from_be_bytes(p.get(..4)?.try_into().ok()?),
            ))
        }
        _ => None,
    }
}

/// Counts datagrams arriving on `addr` inside `ns` until `quiet` passes without one (or a
/// hard limit), on a thread of its own.
fn udp_counter(ns: &str, addr: String, quiet: Duration) -> std::thread::JoinHandle<u64> {
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let h = spawn_in_netns(ns, move || {
        let sock = UdpSocket::bind(&addr).unwrap();
        sock.set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        ready_tx.send(()).unwrap();
        let mut buf = [0u8; 2048];
        let (mut got, mut last) = (0u64, Instant::now());
        let hard = Instant::now() + Duration::from_secs(30);
        while last.elapsed() < quiet && Instant::now() < hard {
            if sock.recv(&mut buf).is_ok() {
                got += 1;
                last = Instant::now();
            }
        }
        got
    });
    ready_rx.recv_timeout(Duration::from_secs(5)).unwrap();
    h
}

#[test]
fn afxdp_sink_takes_every_accepted_packet_and_leaves_the_rest_to_the_stack() {
    if !privileged("afxdp_sink_takes_every_accepted_packet_and_leaves_the_rest_to_the_stack") {
        return;
    }
    let pair = NetPair::new();
    let dir = TempDir::new("sink");
    let out = dir.path("sink.pcap");
    let rule = "num=10,action=accept,proto=udp,dst-port=7777";

    // The server end has addresses: AF_XDP would take its packets, so rf-tap refuses.
    let refused = rf_tap_run(
        Some(&pair.server_ns),
        &["attach", &pair.server_if, "--mode", "afxdp", "--rule", rule],
    );
    assert!(!refused.status.success());
    assert!(
        refused.stderr.contains("has addresses of its own") && refused.stderr.contains("--force"),
        "{}",
        refused.stderr
    );
    assert!(!refused.stderr.contains("panicked"), "{}", refused.stderr);
    assert!(!xdp_attached(&pair.server_ns, &pair.server_if));

    let mut tap = RfTap::spawn(
        &pair.server_ns,
        &[
            "attach",
            &pair.server_if,
            "--mode",
            "afxdp",
            "--force",
            "--rule",
            rule,
            "-w",
            out.to_str().unwrap(),
            "--json",
        ],
    );
    tap.wait_attached();
    assert!(xdp_attached(&pair.server_ns, &pair.server_if));
    let taken = udp_counter(
        &pair.server_ns,
        format!("{}:7777", pair.server_ip),
        Duration::from_secs(1),
    );
    let passed = udp_counter(
        &pair.server_ns,
        format!("{}:7778", pair.server_ip),
        Duration::from_secs(1),
    );

    // 20,000 accepted datagrams, with 1,000 the rules do not take among them, paced in
    // bursts of 100 (a real socket, so ARP goes through the stack first).
    const ACCEPTED: u32 = 20_000;
    const OTHER: u32 = 1_000;
    let started = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    let server = pair.server_ip.clone();
    in_netns(&pair.client_ns, move || {
        let s = UdpSocket::bind("0.0.0.0:0").unwrap();
        for i in 0..ACCEPTED {
            let mut p = [0u8; 32];
            p[..4].copy_from_slice(&i.to_be_bytes());
            s.send_to(&p, format!("{server}:7777")).unwrap();
            if i % (ACCEPTED / OTHER) == 0 {
                s.send_to(&p, format!("{server}:7778")).unwrap();
            }
            if i % 100 == 99 {
                std::thread::sleep(Duration::from_micros(300));
            }
        }
    });
    let (taken, passed) = (taken.join().unwrap(), passed.join().unwrap());
    let fin = tap.stop();
    let ended = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    assert!(fin.status.success(), "{}", fin.stderr);
    let s = fin.json();
    check_accounting(&s);

    assert_eq!(taken, 0, "accepted packets never reach the stack");
    assert_eq!(
        passed,
        u64::from(OTHER),
        "the rest goes to the stack as usual"
    );
    assert_eq!(n(&s, "matched"), u64::from(ACCEPTED), "{s}");
    assert_eq!(n(&s, "captured"), u64::from(ACCEPTED), "{s}");
    assert_eq!(n(&s, "dropped_kernel"), 0, "{s}");
    assert_eq!(n(&s, "written"), u64::from(ACCEPTED), "{s}");
    assert_eq!(
        s["af_xdp"]["unstamped"], 0,
        "the kernel stamps every frame: {s}"
    );
    assert!(s["attach"].as_str().unwrap().contains("AF_XDP"), "{s}");

    let (records, torn) = read_pcap(&out);
    assert!(!torn);
    let ids: Vec<u32> = records
        .iter()
        .map(|r| {
            let (port, id) = udp_port_and_id(&r.data).expect("a UDP frame");
            assert_eq!(port, 7777);
            id
        })
        .collect();
    assert_eq!(
        ids,
        (0..ACCEPTED).collect::<Vec<_>>(),
        "every datagram once, in order"
    );
    assert!(
        records.windows(2).all(|w| w[0].ts_ns <= w[1].ts_ns),
        "timestamps never go back"
    );
    assert!(
        records[0].ts_ns >= started && records[records.len() - 1].ts_ns <= ended,
        "timestamps fall inside the run"
    );
    assert!(
        !xdp_attached(&pair.server_ns, &pair.server_if),
        "detached at exit"
    );
}

#[test]
fn afxdp_sink_accounts_for_every_packet_of_a_flood_on_two_queues() {
    if !privileged("afxdp_sink_accounts_for_every_packet_of_a_flood_on_two_queues") {
        return;
    }
    // A sink with two receive queues and no addresses (a dedicated interface: no --force).
    let pair = NetPair::new();
    sh(&[
        "ip",
        "-n",
        &pair.client_ns,
        "link",
        "add",
        "rfq0",
        "numtxqueues",
        "2",
        "numrxqueues",
        "2",
        "type",
        "veth",
        "peer",
        "name",
        "rfq1",
        "numtxqueues",
        "2",
        "numrxqueues",
        "2",
        "netns",
        &pair.server_ns,
    ]);
    // No IPv6 autoconfiguration: nothing but the flood crosses the pair.
    for (ns, dev) in [(&pair.client_ns, "rfq0"), (&pair.server_ns, "rfq1")] {
        sh(&["ip", "-n", ns, "link", "set", dev, "addrgenmode", "none"]);
    }
    sh(&["ip", "-n", &pair.client_ns, "link", "set", "rfq0", "up"]);
    sh(&["ip", "-n", &pair.server_ns, "link", "set", "rfq1", "up"]);
    let dir = TempDir::new("flood");

    // 40,000 frames of 400 flows (so the sender spreads them over both queues), every tenth
    // to a port the rules leave alone.
    const FRAMES: u32 = 40_000;
    let flood = dir.path("flood.pcap");
    write_udp_flood(&flood, FRAMES, 400, |i| if i % 10 == 0 { 9 } else { 7777 });
    let out = dir.path("sink.pcap");

    // A small UMEM (64 buffers per queue) against a top-speed flood: whatever the socket
    // cannot take must show up as a drop, exactly.
    let mut tap = RfTap::spawn(
        &pair.server_ns,
        &[
            "attach",
            "rfq1",
            "--mode",
            "afxdp",
            "--ring-size",
            "512KiB",
            "--rule",
            "num=1,action=accept,proto=udp,dst-port=7777",
            "-w",
            out.to_str().unwrap(),
            "--json",
            "-s",
            "46",
        ],
    );
    tap.wait_attached();
    let sent = rf_tap_run(
        Some(&pair.client_ns),
        &[
            "replay",
            "-q",
            "--json",
            "--topspeed",
            "-i",
            "rfq0",
            flood.to_str().unwrap(),
        ],
    );
    assert!(sent.status.success(), "{}", sent.stderr);
    std::thread::sleep(Duration::from_millis(300));
    let fin = tap.stop();
    assert!(fin.status.success(), "{}", fin.stderr);
    let s = fin.json();
    check_accounting(&s);
    assert!(s["attach"].as_str().unwrap().contains("on 2 queues"), "{s}");

    // Everything the wire carried reached the program (veth drops nothing it counts).
    let wire_drops: u64 = sh(&[
        "ip",
        "netns",
        "exec",
        &pair.client_ns,
        "cat",
        "/sys/class/net/rfq0/statistics/tx_dropped",
    ])
    .trim()
    .parse()
    .unwrap();
    assert_eq!(n(&s, "seen") + wire_drops, u64::from(FRAMES), "{s}");
    let expected = u64::from(FRAMES - FRAMES / 10);
    assert_eq!(n(&s, "matched") + wire_drops, expected, "{s}");
    // Every accepted packet was either handed over or counted as dropped by the socket.
    assert_eq!(
        n(&s, "captured") + n(&s, "dropped_kernel"),
        n(&s, "matched"),
        "{s}"
    );
    let x = &s["af_xdp"];
    assert_eq!(
        n(x, "dropped") + n(x, "rx_ring_full") + n(x, "invalid_descs"),
        n(&s, "dropped_kernel"),
        "{s}"
    );
    assert_eq!(n(&s, "written"), n(&s, "captured"), "{s}");
    assert_eq!(
        n(&s, "truncated"),
        n(&s, "written"),
        "-s 46 cuts every 60-byte frame: {s}"
    );

    // The file holds exactly the captured frames, each once, cut to 46 bytes (headers and
    // the id).
    let (recs, torn) = read_pcap(&out);
    assert!(!torn);
    assert_eq!(recs.len() as u64, n(&s, "written"));
    assert!(recs.iter().all(|r| r.data.len() == 46 && r.orig_len == 60));
    let mut ids: Vec<u32> = recs
        .iter()
        .map(|r| u32::from_be_bytes(r.data[42..46].try_into().unwrap()))
        .collect();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), recs.len(), "no frame twice");
    eprintln!(
        "flood: {} matched, {} captured, {} dropped by the sockets",
        n(&s, "matched"),
        n(&s, "captured"),
        n(&s, "dropped_kernel")
    );
}

#[test]
fn afxdp_sink_decapsulates_vxlan_from_a_standard_vxlan_device() {
    if !privileged("afxdp_sink_decapsulates_vxlan_from_a_standard_vxlan_device") {
        return;
    }
    // The client end sends through a plain Linux VXLAN device (VNI 42) to the server end,
    // which has an address (a mirror target): --force, and --vxlan takes only UDP 4789.
    let pair = NetPair::new();
    let c = pair.client_ns.as_str();
    sh(&[
        "ip",
        "-n",
        c,
        "link",
        "add",
        "rfvx42",
        "type",
        "vxlan",
        "id",
        "42",
        "remote",
        &pair.server_ip,
        "dstport",
        "4789",
        "dev",
        &pair.client_if,
    ]);
    sh(&[
        "ip",
        "-n",
        c,
        "addr",
        "add",
        "192.168.42.2/24",
        "dev",
        "rfvx42",
    ]);
    sh(&["ip", "-n", c, "link", "set", "rfvx42", "up"]);
    sh(&[
        "ip",
        "-n",
        c,
        "neigh",
        "add",
        "192.168.42.1",
        "lladdr",
        "02:00:00:00:00:42",
        "dev",
        "rfvx42",
    ]);
    let dir = TempDir::new("sink-vxlan");
    let out = dir.path("inner.pcap");
    let mut tap = RfTap::spawn(
        &pair.server_ns,
        &[
            "attach",
            &pair.server_if,
            "--mode",
            "afxdp",
            "--force",
            "--vxlan",
            "--vni",
            "42",
            "--rule",
            "num=1,action=accept,proto=udp,dst-port=7777",
            "-w",
            out.to_str().unwrap(),
            "--json",
        ],
    );
    tap.wait_attached();
    const SENT: u32 = 200;
    in_netns(c, move || {
        let s = UdpSocket::bind("192.168.42.2:0").unwrap();
        for i in 0..SENT {
            s.send_to(&i.to_be_bytes(), "192.168.42.1:7777").unwrap();
        }
    });
    std::thread::sleep(Duration::from_millis(300));
    let fin = tap.stop();
    assert!(fin.status.success(), "{}", fin.stderr);
    let s = fin.json();
    check_accounting(&s);
    assert_eq!(n(&s["vxlan"], "decapsulated"), u64::from(SENT), "{s}");
    assert_eq!(n(&s, "written"), u64::from(SENT), "{s}");
    let (records, _) = read_pcap(&out);
    let ids: Vec<u32> = records
        .iter()
        .map(|r| {
            let (port, id) = udp_port_and_id(&r.data).expect("an inner UDP frame");
            assert_eq!(port, 7777);
            id
        })
        .collect();
    assert_eq!(ids, (0..SENT).collect::<Vec<_>>());
}
