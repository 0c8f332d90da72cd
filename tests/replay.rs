//! `rf-tap replay` end to end: rewrites checked byte by byte and by tshark, schedules read
//! back from the pcap backend, real-time pacing, bad input, and (as root) a round trip over
//! a veth pair captured by `rf-tap attach` and compared packet for packet.
#![allow(clippy::unwrap_used)]

use std::{
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use rf_tap_tests::*;

fn committed() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../pcaps/http-keepalive-get-post.pcap")
}

fn replay(args: &[&str]) -> Finished {
    let mut a = vec!["replay"];
    a.extend_from_slice(args);
    rf_tap_run(None, &a)
}

/// tshark's count of packets matching `filter`, with IP and TCP checksum validation on.
fn tshark_checked(path: &Path, filter: &str) -> usize {
    let out = sh(&[
        "tshark",
        "-o",
        "tcp.check_checksum:TRUE",
        "-o",
        "ip.check_checksum:TRUE",
        "-r",
        path.to_str().unwrap(),
        "-Y",
        filter,
        "-T",
        "fields",
        "-e",
        "frame.number",
    ]);
    out.lines().count()
}

fn ok_json(f: &Finished) -> serde_json::Value {
    assert!(f.status.success(), "replay failed: {}", f.stderr);
    f.json()
}

/// Relative timestamps (ns) of a pcap's records.
fn offsets(path: &Path) -> Vec<u64> {
    let (recs, torn) = read_pcap(path);
    assert!(!torn);
    let t0 = recs[0].ts_ns;
    recs.iter().map(|r| r.ts_ns - t0).collect()
}

const MS: u64 = 1_000_000;
const T0: u64 = 1_700_000_000 * 1_000_000_000;

/// UDP frames at the given offsets (ms), 100-byte payloads.
fn timed_capture(path: &Path, at_ms: &[u64]) {
    let recs: Vec<_> = at_ms
        .iter()
        .enumerate()
        .map(|(i, ms)| {
            let f = udp_frame([10, 1, 0, 1], [10, 1, 0, 2], 5000, 6000, i as u32, 100);
            let len = f.len() as u32;
            (T0 + ms * MS, f, len)
        })
        .collect();
    write_pcap(path, 1, &recs);
}

#[test]
fn rewrites_are_exact_and_checksums_verify_in_tshark() {
    let dir = TempDir::new("replay-rw");
    let out = dir.path("out.pcap");
    let f = replay(&[
        committed().to_str().unwrap(),
        "-w",
        out.to_str().unwrap(),
        "--topspeed",
        "--srcipmap",
        "10.9.0.0/24:192.168.50.0/24",
        "--dstipmap",
        "10.9.0.0/24:192.168.60.0/24",
        "--portmap",
        "80:8080",
        "--enet-dmac",
        "02:aa:bb:cc:dd:ee",
        "--json",
    ]);
    let j = ok_json(&f);
    let (orig, _) = read_pcap(&committed());
    let (new, _) = read_pcap(&out);
    assert_eq!(j["packets"], orig.len() as u64);
    assert_eq!(new.len(), orig.len());
    for (o, n) in orig.iter().zip(&new) {
        let po = etherparse::SlicedPacket::from_ethernet(&o.data).unwrap();
        let pn = etherparse::SlicedPacket::from_ethernet(&n.data).unwrap();
        assert_eq!(&n.data[..6], &[2, 0xaa, 0xbb, 0xcc, 0xdd, 0xee]);
        assert_eq!(&n.data[6..12], &o.data[6..12]);
        let (Some(etherparse::NetSlice::Ipv4(io)), Some(etherparse::NetSlice::Ipv4(inn))) =
            (po.net, pn.net)
        else {
            panic!("not IPv4")
        };
        let (so, sn) = (io.header().source(), inn.header().source());
        let (d_o, dn) = (io.header().destination(), inn.header().destination());
        assert_eq!(sn, [192, 168, 50, so[3]]);
        assert_eq!(dn, [192, 168, 60, d_o[3]]);
        let (Some(etherparse::TransportSlice::Tcp(to)), Some(etherparse::TransportSlice::Tcp(tn))) =
            (po.transport, pn.transport)
        else {
            panic!("not TCP")
        };
        let map = |p: u16| if p == 80 { 8080 } else { p };
        assert_eq!(tn.source_port(), map(to.source_port()));
        assert_eq!(tn.destination_port(), map(to.destination_port()));
        assert_eq!(tn.payload(), to.payload());
        assert_eq!(tn.sequence_number(), to.sequence_number());
        assert_eq!(n.data.len(), o.data.len());
    }
    // The original capture was taken on the sending host: its TCP checksums are the
    // unfinished ones of checksum offload. After rewriting, every checksum is right.
    assert_ne!(
        tshark_checked(&committed(), "tcp.checksum.status == 0"),
        0,
        "the fixture should carry offloaded checksums"
    );
    assert_eq!(
        tshark_checked(&out, "tcp.checksum.status == 1 && ip.checksum.status == 1"),
        orig.len()
    );
}

#[test]
fn fixcsum_alone_repairs_offloaded_checksums_and_nothing_else() {
    let dir = TempDir::new("replay-csum");
    let out = dir.path("out.pcap");
    ok_json(&replay(&[
        committed().to_str().unwrap(),
        "-w",
        out.to_str().unwrap(),
        "--topspeed",
        "--fixcsum",
        "--json",
    ]));
    let (orig, _) = read_pcap(&committed());
    let (new, _) = read_pcap(&out);
    for (o, n) in orig.iter().zip(&new) {
        // Only the TCP checksum (bytes 50..52 after Ethernet+IPv4 without options) may move.
        let mut masked = n.data.clone();
        masked[50..52].copy_from_slice(&o.data[50..52]);
        assert_eq!(masked, o.data);
    }
    assert_eq!(tshark_checked(&out, "tcp.checksum.status == 1"), orig.len());
}

#[test]
fn timestamps_follow_each_timing_mode() {
    let dir = TempDir::new("replay-timing");
    let input = dir.path("in.pcap");
    // A gap, a burst, an out-of-order timestamp, a long idle gap.
    timed_capture(&input, &[0, 20, 20, 30, 25, 60, 460]);
    let run = |extra: &[&str]| -> Vec<u64> {
        let out = dir.path("out.pcap");
        let mut a = vec![
            input.to_str().unwrap(),
            "-w",
            out.to_str().unwrap(),
            "--json",
        ];
        a.extend_from_slice(extra);
        ok_json(&replay(&a));
        offsets(&out)
    };
    assert_eq!(
        run(&["--speed", "4x"]),
        vec![0, 5 * MS, 5 * MS, 7_500_000, 7_500_000, 15 * MS, 115 * MS]
    );
    assert_eq!(
        run(&["--multiplier", "2", "--max-sleep", "50ms"]),
        vec![0, 10 * MS, 10 * MS, 15 * MS, 15 * MS, 30 * MS, 80 * MS]
    );
    assert_eq!(
        run(&["--pps", "1000"]),
        (0..7).map(|i| i * MS).collect::<Vec<_>>()
    );
    // 142-byte frames at 1.136 Mbps: one per ms.
    assert_eq!(
        run(&["--mbps", "1.136"]),
        (0..7).map(|i| i * MS).collect::<Vec<_>>()
    );
    let top = run(&["--topspeed"]);
    assert!(top.iter().all(|t| *t == 0), "{top:?}");
    assert_eq!(
        run(&[
            "--pps",
            "1000",
            "--loop",
            "3",
            "--loop-delay",
            "10ms",
            "--limit",
            "16"
        ]),
        (0..16u64)
            .map(|i| i * MS + (i / 7) * 10 * MS)
            .collect::<Vec<_>>()
    );
}

#[test]
fn real_time_pacing_within_generous_bounds() {
    let dir = TempDir::new("replay-rt");
    let input = dir.path("in.pcap");
    let at: Vec<u64> = (0..21).map(|i| i * 25).collect(); // 500 ms of traffic
    timed_capture(&input, &at);
    let out = dir.path("out.pcap");
    let started = Instant::now();
    let j = ok_json(&replay(&[
        input.to_str().unwrap(),
        "-w",
        out.to_str().unwrap(),
        "--json",
    ]));
    let wall = started.elapsed();
    let elapsed = j["elapsed_s"].as_f64().unwrap();
    assert!((0.499..1.5).contains(&elapsed), "elapsed {elapsed}");
    assert!(wall >= Duration::from_millis(499), "{wall:?}");
    assert_eq!(j["packets"], 21);
    // Generous: a loaded CI machine may wake late, but not by a whole gap.
    assert!(j["max_late_us"].as_u64().unwrap() < 25_000, "{j}");
    for k in [
        "packets",
        "bytes",
        "elapsed_s",
        "pps",
        "mbps",
        "max_late_us",
        "errors",
    ] {
        assert!(j.get(k).is_some(), "report lacks {k}: {j}");
    }
}

#[test]
fn one_side_or_ruled_flows_only() {
    let dir = TempDir::new("replay-sel");
    let out = dir.path("out.pcap");
    let input = committed();
    let src_ports = |extra: &[&str]| -> Vec<u16> {
        let mut a = vec![
            input.to_str().unwrap(),
            "-w",
            out.to_str().unwrap(),
            "--topspeed",
            "--json",
        ];
        a.extend_from_slice(extra);
        let j = ok_json(&replay(&a));
        let (recs, _) = read_pcap(&out);
        assert_eq!(j["packets"], recs.len() as u64);
        recs.iter().map(|r| tcp_of(&r.data).unwrap().0).collect()
    };
    let (all, _) = read_pcap(&committed());
    let from_server = all
        .iter()
        .filter(|r| tcp_of(&r.data).unwrap().0 == 80)
        .count();
    let client = src_ports(&["--direction", "client"]);
    assert!(!client.is_empty() && client.iter().all(|p| *p != 80));
    assert_eq!(client.len(), all.len() - from_server);
    let server = src_ports(&["--direction", "server"]);
    assert_eq!(server.len(), from_server);
    assert!(server.iter().all(|p| *p == 80));
    // Rules: client-to-server packets are ingress.
    let ingress = src_ports(&[
        "--rule",
        "num=10,dir=ingress,action=accept,proto=tcp,dst-port=80",
    ]);
    assert_eq!(ingress.len(), all.len() - from_server);
    let rejected = replay(&[
        committed().to_str().unwrap(),
        "-w",
        out.to_str().unwrap(),
        "--topspeed",
        "--rule",
        "num=10,action=reject",
    ]);
    assert!(!rejected.status.success(), "nothing sent must fail");
    assert!(
        rejected.stderr.contains("nothing was sent"),
        "{}",
        rejected.stderr
    );
}

#[test]
fn bad_input_gets_a_clear_message() {
    let dir = TempDir::new("replay-bad");
    let out = dir.path("out.pcap");
    let o = out.to_str().unwrap();
    // A capture cut mid-record: what is whole is replayed, and the report says where it
    // stopped.
    let bytes = std::fs::read(committed()).unwrap();
    let cut = dir.path("cut.pcap");
    std::fs::write(&cut, &bytes[..bytes.len() - 10]).unwrap();
    let f = replay(&[cut.to_str().unwrap(), "-w", o, "--topspeed", "--json"]);
    // Everything whole is replayed, and the exit status says the input was damaged (the one
    // rule extract, requests and replay share).
    assert_eq!(f.status.code(), Some(1), "{}", f.stderr);
    let j = f.json();
    let (all, _) = read_pcap(&committed());
    assert_eq!(j["packets"], all.len() as u64 - 1);
    assert!(
        j["file_error"].as_str().unwrap().contains("truncated"),
        "{j}"
    );
    assert!(f.stderr.contains("reading stopped early"), "{}", f.stderr);

    let garbage = dir.path("garbage.pcap");
    std::fs::write(&garbage, b"this is not a capture at all").unwrap();
    let nolink = dir.path("link147.pcap");
    write_pcap(&nolink, 147, &[(T0, vec![1, 2, 3, 4], 4)]);
    let empty = dir.path("empty.pcap");
    write_pcap(&empty, 1, &[]);
    let input = committed();
    let input = input.to_str().unwrap();
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec![garbage.to_str().unwrap(), "-w", o], "not a pcap"),
        (vec![nolink.to_str().unwrap(), "-w", o], "link type 147"),
        (vec![empty.to_str().unwrap(), "-w", o], "no packets"),
        (vec!["/nonexistent/x.pcap", "-w", o], "cannot open"),
        (vec![input, "-i", "rftap-nonexist0"], "no such interface"),
        (vec![input], "--iface"),
        (vec![input, "-w", o, "--speed", "0"], "speed"),
        (vec![input, "-w", o, "--pps", "0"], "--pps must be"),
        (vec![input, "-w", o, "--portmap", "80"], "FROM:TO"),
        (vec![input, "-w", o, "--enet-smac", "zz:1"], "MAC"),
        (
            vec![input, "-w", o, "--srcipmap", "10.0.0.0/8:fd00::/8"],
            "IPv4 and IPv6",
        ),
        (vec![input, "-w", o, "--vlan-add", "5000"], "1..=4094"),
        (
            vec![input, "-w", o, "--topspeed", "--pps", "5"],
            "cannot be used",
        ),
        (
            vec![input, "-w", "/nonexistent/dir/out.pcap"],
            "cannot write",
        ),
    ];
    for (args, want) in cases {
        let f = replay(&args);
        assert!(!f.status.success(), "{args:?} should fail");
        assert!(
            f.stderr.contains(want),
            "{args:?}: stderr lacks `{want}`: {}",
            f.stderr
        );
        assert!(!f.stderr.contains("panicked"), "{args:?}: {}", f.stderr);
    }
}

/// Replays onto one end of a veth pair and captures the other end with `rf-tap attach`.
fn round_trip(
    pair: &NetPair,
    dir: &TempDir,
    input: &Path,
    extra: &[&str],
) -> (Vec<Record>, serde_json::Value) {
    let cap = dir.path("cap.pcap");
    let mut tap = RfTap::spawn(
        &pair.server_ns,
        &[
            "attach",
            &pair.server_if,
            "-w",
            cap.to_str().unwrap(),
            "--rule",
            "num=1,dir=ingress,action=accept,proto=udp",
            "--rule",
            "num=2,dir=ingress,action=accept,proto=tcp",
            "--json",
            "-q",
        ],
    );
    tap.wait_attached();
    let mut args = vec![
        "replay",
        input.to_str().unwrap(),
        "--iface",
        &pair.client_if,
        "--json",
    ];
    args.extend_from_slice(extra);
    let f = rf_tap_run(Some(&pair.client_ns), &args);
    let j = ok_json(&f);
    std::thread::sleep(Duration::from_millis(300));
    let fin = tap.stop();
    assert!(fin.status.success(), "{}", fin.stderr);
    let (recs, _) = read_pcap(&cap);
    (recs, j)
}

#[test]
fn round_trip_on_a_veth_pair_packet_for_packet() {
    if !privileged("round_trip_on_a_veth_pair_packet_for_packet") {
        return;
    }
    let pair = NetPair::new();
    let dir = TempDir::new("replay-veth");
    let (orig, _) = read_pcap(&committed());
    for backend in ["af-packet", "af-xdp"] {
        // Byte for byte, as captured: the capture's checksums were left to the NIC, which
        // replay fixes by default; --keep-checksums sends the bytes untouched.
        let (got, j) = round_trip(
            &pair,
            &dir,
            &committed(),
            &["--topspeed", "--backend", backend, "--keep-checksums"],
        );
        assert_eq!(j["packets"], orig.len() as u64, "{backend}");
        assert_eq!(j["errors"], 0, "{backend}");
        assert_eq!(
            got.len(),
            orig.len(),
            "{backend}: every packet arrives once"
        );
        for (i, (o, g)) in orig.iter().zip(&got).enumerate() {
            assert_eq!(g.data, o.data, "{backend}: packet {} differs", i + 1);
        }
    }

    // Paced, rewritten: the captured gaps follow --pps.
    let input = dir.path("timed.pcap");
    timed_capture(&input, &(0..50).map(|i| i * 3).collect::<Vec<_>>());
    let (got, j) = round_trip(
        &pair,
        &dir,
        &input,
        &["--pps", "200", "--portmap", "6000:7000"],
    );
    assert_eq!(j["packets"], 50);
    assert_eq!(got.len(), 50);
    let (inrecs, _) = read_pcap(&input);
    for (g, o) in got.iter().zip(&inrecs) {
        let p = etherparse::SlicedPacket::from_ethernet(&g.data).unwrap();
        let Some(etherparse::TransportSlice::Udp(u)) = p.transport else {
            panic!("not UDP")
        };
        assert_eq!(u.destination_port(), 7000);
        assert_eq!(&g.data[42..], &o.data[42..]);
    }
    let span = (got[49].ts_ns - got[0].ts_ns) as f64 / 1e9;
    assert!(
        (0.24..0.35).contains(&span),
        "50 packets at 200 pps took {span} s"
    );
}

#[test]
fn mtu_and_link_state_on_a_real_interface() {
    if !privileged("mtu_and_link_state_on_a_real_interface") {
        return;
    }
    let pair = NetPair::new();
    let dir = TempDir::new("replay-mtu");
    let input = dir.path("sizes.pcap");
    let recs: Vec<_> = (0..10u32)
        .map(|i| {
            let f = udp_frame(
                [10, 1, 0, 1],
                [10, 1, 0, 2],
                1,
                2,
                i,
                if i % 2 == 0 { 100 } else { 1000 },
            );
            let l = f.len() as u32;
            (T0 + i as u64 * MS, f, l)
        })
        .collect();
    write_pcap(&input, 1, &recs);
    sh(&[
        "ip",
        "-n",
        &pair.client_ns,
        "link",
        "set",
        &pair.client_if,
        "mtu",
        "576",
    ]);
    for backend in ["af-packet", "af-xdp"] {
        let f = rf_tap_run(
            Some(&pair.client_ns),
            &[
                "replay",
                input.to_str().unwrap(),
                "-i",
                &pair.client_if,
                "--topspeed",
                "--json",
                "--backend",
                backend,
            ],
        );
        let j = ok_json(&f);
        assert_eq!(j["packets"], 5, "{backend}");
        assert_eq!(j["errors"], 5, "{backend}");
        assert!(
            j["error_kinds"].to_string().contains("MTU (576)"),
            "{backend}: {j}"
        );
    }
    sh(&[
        "ip",
        "-n",
        &pair.client_ns,
        "link",
        "set",
        &pair.client_if,
        "down",
    ]);
    let f = rf_tap_run(
        Some(&pair.client_ns),
        &["replay", input.to_str().unwrap(), "-i", &pair.client_if],
    );
    assert!(!f.status.success());
    assert!(f.stderr.contains("is down"), "{}", f.stderr);
}

/// `InCsumErrors` of the Tcp line of /proc/net/snmp in a namespace.
fn tcp_csum_errors(ns: &str) -> u64 {
    let text = sh(&["ip", "netns", "exec", ns, "cat", "/proc/net/snmp"]);
    let tcp: Vec<&str> = text.lines().filter(|l| l.starts_with("Tcp:")).collect();
    let names: Vec<&str> = tcp[0].split_whitespace().collect();
    let values: Vec<&str> = tcp[1].split_whitespace().collect();
    let at = names.iter().position(|n| *n == "InCsumErrors").unwrap();
    values[at].parse().unwrap()
}

#[test]
fn offloaded_checksums_are_fixed_when_sending_onto_an_interface() {
    if !privileged("offloaded_checksums_are_fixed_when_sending_onto_an_interface") {
        return;
    }
    // The committed capture was made on a veth: the TCP checksums were left to the NIC.
    // The receiver takes the capture's server address and MAC, so its TCP checks them.
    let pair = NetPair::new();
    sh(&[
        "ip",
        "-n",
        &pair.server_ns,
        "link",
        "set",
        &pair.server_if,
        "address",
        "02:00:00:00:00:02",
    ]);
    sh(&[
        "ip",
        "-n",
        &pair.server_ns,
        "addr",
        "add",
        "10.9.0.2/24",
        "dev",
        &pair.server_if,
    ]);
    let input = committed();
    let send = |extra: &[&str]| -> (Finished, u64) {
        let before = tcp_csum_errors(&pair.server_ns);
        let mut args = vec![
            "replay",
            input.to_str().unwrap(),
            "--iface",
            &pair.client_if,
            "--direction",
            "client",
            "--topspeed",
        ];
        args.extend_from_slice(extra);
        let f = rf_tap_run(Some(&pair.client_ns), &args);
        assert!(f.status.success(), "{args:?}: {}", f.stderr);
        std::thread::sleep(std::time::Duration::from_millis(300));
        (f, tcp_csum_errors(&pair.server_ns) - before)
    };
    let (f, errors) = send(&[]);
    assert!(f.stderr.contains("left to the NIC"), "{}", f.stderr);
    assert_eq!(
        errors, 0,
        "fixed by default: the receiver counts no checksum errors"
    );
    let (f, errors) = send(&["--keep-checksums"]);
    assert!(!f.stderr.contains("left to the NIC"), "{}", f.stderr);
    assert!(errors > 0, "as captured, the receiver drops them");
}
