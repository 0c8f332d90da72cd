//! `rf-tap attach` end to end: real kernel programs on a veth pair between two network
//! namespaces, nginx as the server, curl as the client, and the resulting pcap checked with
//! pcap-file and tshark. Each test makes its own namespaces and removes them.
#![allow(clippy::unwrap_used)]

use std::{collections::HashMap, time::Duration};

use rf_tap_tests::*;

/// Serves `count` small files named p0..pN, plus a large one.
fn www(dir: &TempDir, count: usize) {
    let root = dir.path("www");
    std::fs::create_dir_all(&root).unwrap();
    for i in 0..count {
        std::fs::write(root.join(format!("p{i}")), format!("page {i}\n")).unwrap();
    }
    std::fs::write(root.join("big"), vec![b'x'; 2 << 20]).unwrap();
}

fn attach_json(pair: &NetPair, ns: &str, iface: &str, extra: &[&str], out: &str) -> RfTap {
    let mut args = vec!["attach", iface, "-w", out, "--json", "-q"];
    args.extend_from_slice(extra);
    let _ = pair;
    let mut t = RfTap::spawn(ns, &args);
    t.wait_attached();
    t
}

#[test]
fn every_request_is_in_the_pcap_and_counters_add_up() {
    if !privileged("every_request_is_in_the_pcap_and_counters_add_up") {
        return;
    }
    let pair = NetPair::new();
    let dir = TempDir::new("every");
    www(&dir, 20);
    let _srv = nginx(&pair.server_ns, &dir, &[format!("{}:80", pair.server_ip)]);
    let out = dir.path("cap.pcap");
    let tap = attach_json(
        &pair,
        &pair.client_ns,
        &pair.client_if,
        &["--port", "80-443"],
        out.to_str().unwrap(),
    );
    for i in 0..20 {
        assert_eq!(pair.curl(&format!("http://{}/p{i}", pair.server_ip)), 200);
    }
    let fin = tap.stop();
    assert!(fin.status.success(), "{}", fin.stderr);
    let summary = fin.json();
    check_accounting(&summary);
    assert_eq!(summary["dropped_kernel"], 0);
    assert_eq!(summary["dropped_user"], 0);

    let (records, torn) = read_pcap(&out);
    assert!(!torn);
    assert_eq!(records.len() as u64, summary["written"].as_u64().unwrap());
    let mut paths = get_paths(&records);
    paths.sort();
    let mut want: Vec<String> = (0..20).map(|i| format!("/p{i}")).collect();
    want.sort();
    assert_eq!(paths, want, "every request exactly once");
    // Both directions: the responses are there too.
    assert_eq!(tshark_count(&out, "http.request"), 20);
    assert_eq!(tshark_count(&out, "http.response.code == 200"), 20);
    // Timestamps are wall-clock and in order per direction.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    for r in &records {
        assert!(
            r.ts_ns <= now && now - r.ts_ns < 120_000_000_000,
            "timestamp {}",
            r.ts_ns
        );
    }
}

#[test]
fn truncation_keeps_the_original_length_and_gso_packets_are_whole() {
    if !privileged("truncation_keeps_the_original_length_and_gso_packets_are_whole") {
        return;
    }
    let pair = NetPair::new();
    let dir = TempDir::new("trunc");
    www(&dir, 1);
    let _srv = nginx(&pair.server_ns, &dir, &[format!("{}:80", pair.server_ip)]);

    // Full copies on the server side: GSO super-packets (> MTU) arrive whole.
    let full = dir.path("full.pcap");
    let tap = attach_json(
        &pair,
        &pair.server_ns,
        &pair.server_if,
        &["--port", "80"],
        full.to_str().unwrap(),
    );
    assert_eq!(pair.curl(&format!("http://{}/big", pair.server_ip)), 200);
    let fin = tap.stop();
    check_accounting(&fin.json());
    let (records, _) = read_pcap(&full);
    let biggest = records.iter().map(|r| r.orig_len).max().unwrap();
    assert!(
        biggest > 1514,
        "expected GSO super-packets, largest was {biggest}"
    );
    for r in &records {
        assert_eq!(
            r.data.len() as u32,
            r.orig_len,
            "full copy unless truncated"
        );
        // The IPv4 total length agrees with the record (no silent cut).
        let ip_total = u16::from_be_bytes([r.data[16], r.data[17]]) as u32;
        assert_eq!(ip_total + 14, r.orig_len);
    }

    // Truncated copies keep the original length.
    let cut = dir.path("cut.pcap");
    let tap = attach_json(
        &pair,
        &pair.server_ns,
        &pair.server_if,
        &["--port", "80", "-s", "96"],
        cut.to_str().unwrap(),
    );
    assert_eq!(pair.curl(&format!("http://{}/big", pair.server_ip)), 200);
    let fin = tap.stop();
    let summary = fin.json();
    check_accounting(&summary);
    let (records, _) = read_pcap(&cut);
    assert!(records.iter().all(|r| r.data.len() <= 96));
    let truncated = records
        .iter()
        .filter(|r| (r.orig_len as usize) > r.data.len())
        .count();
    assert!(truncated > 0);
    assert_eq!(summary["truncated"].as_u64().unwrap(), truncated as u64);
    let total_orig: u64 = records.iter().map(|r| r.orig_len as u64).sum();
    assert!(
        total_orig > 2 << 20,
        "original lengths cover the 2 MiB body: {total_orig}"
    );
    // tshark sees the captured length and the wire length.
    assert!(tshark_count(&cut, "frame.cap_len == 96 && frame.len > 96") > 0);
}

#[test]
fn rules_select_by_port_direction_cidr_and_reject_comes_first() {
    if !privileged("rules_select_by_port_direction_cidr_and_reject_comes_first") {
        return;
    }
    let pair = NetPair::new();
    let dir = TempDir::new("rules");
    www(&dir, 1);
    let _srv = nginx(
        &pair.server_ns,
        &dir,
        &[
            format!("{}:80", pair.server_ip),
            format!("{}:8080", pair.server_ip),
            format!("[{}]:80", pair.server_ip6),
        ],
    );
    let run = |extra: &[&str], name: &str| {
        let out = dir.path(name);
        let tap = attach_json(
            &pair,
            &pair.client_ns,
            &pair.client_if,
            extra,
            out.to_str().unwrap(),
        );
        assert_eq!(pair.curl(&format!("http://{}:80/p0", pair.server_ip)), 200);
        assert_eq!(
            pair.curl(&format!("http://{}:8080/p0", pair.server_ip)),
            200
        );
        assert_eq!(
            pair.curl(&format!("http://[{}]:80/p0", pair.server_ip6)),
            200
        );
        let fin = tap.stop();
        assert!(fin.status.success(), "{}", fin.stderr);
        check_accounting(&fin.json());
        let (records, _) = read_pcap(&out);
        let mut seen: HashMap<(u16, u16), usize> = HashMap::new();
        let mut v6 = 0;
        for r in &records {
            if u16::from_be_bytes([r.data[12], r.data[13]]) == 0x86dd {
                v6 += 1;
            }
            if let Some((s, d, _, _)) = tcp_of(&r.data) {
                let key = (if s < 10000 { s } else { 0 }, if d < 10000 { d } else { 0 });
                *seen.entry(key).or_default() += 1;
            }
        }
        (seen, v6, fin.json())
    };

    // --port 80: both directions of port 80 (v4 and v6), nothing of 8080.
    let (seen, v6, _) = run(&["--port", "80"], "port.pcap");
    assert!(seen.get(&(0, 80)).copied().unwrap_or(0) > 0);
    assert!(seen.get(&(80, 0)).copied().unwrap_or(0) > 0);
    assert!(
        !seen.contains_key(&(0, 8080)) && !seen.contains_key(&(8080, 0)),
        "{seen:?}"
    );
    assert!(v6 > 0, "--port matches IPv6 too");

    // Direction: egress on the client is client -> server only.
    let (seen, _, _) = run(
        &["--rule", "num=1,dir=egress,action=accept,proto=tcp"],
        "egress.pcap",
    );
    assert!(
        seen.keys().all(|(s, _)| *s == 0),
        "only packets to the server: {seen:?}"
    );
    assert!(seen.contains_key(&(0, 8080)));

    // Reject before accept: 8080 towards the server is refused, its replies are not.
    let (seen, _, summary) = run(
        &[
            "--rule",
            "num=20,action=accept",
            "--rule",
            "num=10,dir=egress,action=reject,proto=tcp,dst-port=8080",
        ],
        "reject.pcap",
    );
    assert!(!seen.contains_key(&(0, 8080)), "{seen:?}");
    assert!(seen.contains_key(&(8080, 0)));
    assert!(summary["rejected"].as_u64().unwrap() > 0);

    // CIDR: IPv6 only, by destination prefix (replies come from the server prefix).
    let (seen, v6, summary) = run(
        &[
            "--rule",
            &format!("num=1,action=accept,dst-cidr={}/128", pair.server_ip6),
            "--rule",
            &format!("num=2,action=accept,src-cidr={}/64", pair.server_ip6),
        ],
        "cidr.pcap",
    );
    let total: usize = seen.values().sum();
    assert_eq!(v6, total, "only IPv6 packets");
    assert!(v6 > 0);
    assert!(summary["unmatched"].as_u64().unwrap() > 0);
}

#[test]
fn sampling_keeps_whole_connections_at_about_the_rate() {
    if !privileged("sampling_keeps_whole_connections_at_about_the_rate") {
        return;
    }
    let pair = NetPair::new();
    let dir = TempDir::new("sample");
    www(&dir, 60);
    let _srv = nginx(&pair.server_ns, &dir, &[format!("{}:80", pair.server_ip)]);
    let out = dir.path("s.pcap");
    let tap = attach_json(
        &pair,
        &pair.client_ns,
        &pair.client_if,
        &["--port", "80", "--sample-rate", "50"],
        out.to_str().unwrap(),
    );
    for i in 0..60 {
        assert_eq!(pair.curl(&format!("http://{}/p{i}", pair.server_ip)), 200);
    }
    let fin = tap.stop();
    let summary = fin.json();
    check_accounting(&summary);
    assert!(summary["sampled_out"].as_u64().unwrap() > 0);
    let (records, _) = read_pcap(&out);
    // Per client port: packets each way, SYN each way, and the request.
    let mut conns: HashMap<u16, (usize, usize, bool)> = HashMap::new();
    for r in &records {
        let (s, d, payload, _) = tcp_of(&r.data).unwrap();
        let e = if d == 80 {
            conns.entry(s).or_default()
        } else {
            conns.entry(d).or_default()
        };
        if d == 80 {
            e.0 += 1
        } else {
            e.1 += 1
        }
        if payload.starts_with(b"GET ") {
            e.2 = true;
        }
    }
    // 60 connections at 50%: mean 30, sd ~3.9; 12..=48 is beyond 4.5 sd.
    assert!(
        (12..=48).contains(&conns.len()),
        "{} connections kept",
        conns.len()
    );
    for (port, (to, from, req)) in &conns {
        assert!(
            *to >= 4 && *from >= 3 && *req,
            "connection {port} not whole: {to}/{from}/{req}"
        );
    }
    assert_eq!(get_paths(&records).len(), conns.len());
}

#[test]
fn vlan_and_qinq_frames_are_matched_on_inner_headers() {
    if !privileged("vlan_and_qinq_frames_are_matched_on_inner_headers") {
        return;
    }
    let pair = NetPair::new();
    let dir = TempDir::new("vlan");
    let out = dir.path("v.pcap");
    let tap = attach_json(
        &pair,
        &pair.server_ns,
        &pair.server_if,
        &["--port", "80"],
        out.to_str().unwrap(),
    );
    let frame = |tags: &[u16], dport: u16| {
        let mut buf = Vec::new();
        let mac = [2, 0, 0, 0, 0, 1];
        let b = etherparse::PacketBuilder::ethernet2(mac, [2, 0, 0, 0, 0, 2]);
        let b = match tags {
            [] => b.ipv4([10, 9, 9, 1], [10, 9, 9, 2], 64),
            [one] => b
                .single_vlan(etherparse::VlanId::try_new(*one).unwrap())
                .ipv4([10, 9, 9, 1], [10, 9, 9, 2], 64),
            [outer, inner, ..] => b
                .double_vlan(
                    etherparse::VlanId::try_new(*outer).unwrap(),
                    etherparse::VlanId::try_new(*inner).unwrap(),
                )
                .ipv4([10, 9, 9, 1], [10, 9, 9, 2], 64),
        };
        b.tcp(40000, dport, 1, 1000)
            .write(&mut buf, b"GET /vlan HTTP/1.1\r\n\r\n")
            .unwrap();
        buf
    };
    send_raw_frames(
        &pair.client_ns,
        &pair.client_if,
        vec![
            frame(&[100], 80),
            frame(&[100], 22),
            frame(&[200, 300], 80),
            frame(&[], 80),
        ],
    );
    std::thread::sleep(Duration::from_millis(300));
    let fin = tap.stop();
    check_accounting(&fin.json());
    let (records, _) = read_pcap(&out);
    let tagged: Vec<_> = records
        .iter()
        .filter(|r| r.data.len() > 14 && r.data[6..12] == [2, 0, 0, 0, 0, 1])
        .collect();
    assert_eq!(
        tagged.len(),
        3,
        "802.1Q:80, QinQ:80 and untagged:80, not 802.1Q:22"
    );
    // The kernel moves the outer tag into metadata before TC; rf-tap puts it back.
    let mut ethertypes: Vec<u16> = tagged
        .iter()
        .map(|r| u16::from_be_bytes([r.data[12], r.data[13]]))
        .collect();
    ethertypes.sort();
    assert_eq!(ethertypes, vec![0x0800, 0x8100, 0x88a8], "{ethertypes:x?}");
    for r in &tagged {
        assert_eq!(r.data.len() as u32, r.orig_len);
    }
    assert_eq!(tshark_count(&out, "vlan && tcp.dstport == 80"), 2);
}

#[test]
fn xdp_mode_captures_ingress_only() {
    if !privileged("xdp_mode_captures_ingress_only") {
        return;
    }
    let pair = NetPair::new();
    let dir = TempDir::new("xdp");
    www(&dir, 5);
    let _srv = nginx(&pair.server_ns, &dir, &[format!("{}:80", pair.server_ip)]);
    let out = dir.path("x.pcap");
    let tap = attach_json(
        &pair,
        &pair.server_ns,
        &pair.server_if,
        &["--mode", "xdp", "--port", "80"],
        out.to_str().unwrap(),
    );
    assert!(xdp_attached(&pair.server_ns, &pair.server_if));
    for i in 0..5 {
        assert_eq!(pair.curl(&format!("http://{}/p{i}", pair.server_ip)), 200);
    }
    let fin = tap.stop();
    assert!(fin.status.success(), "{}", fin.stderr);
    check_accounting(&fin.json());
    let (records, _) = read_pcap(&out);
    assert_eq!(get_paths(&records).len(), 5);
    assert!(
        records.iter().all(|r| tcp_of(&r.data).unwrap().1 == 80),
        "ingress only: to the server"
    );
    assert!(
        !xdp_attached(&pair.server_ns, &pair.server_if),
        "detached at exit"
    );
}

#[test]
fn pcapng_and_stdout_pipe_into_tshark() {
    if !privileged("pcapng_and_stdout_pipe_into_tshark") {
        return;
    }
    let pair = NetPair::new();
    let dir = TempDir::new("ng");
    www(&dir, 3);
    let _srv = nginx(&pair.server_ns, &dir, &[format!("{}:80", pair.server_ip)]);
    let out = dir.path("c.pcapng");
    let tap = attach_json(
        &pair,
        &pair.client_ns,
        &pair.client_if,
        &["--port", "80", "--pcapng"],
        out.to_str().unwrap(),
    );
    for i in 0..3 {
        pair.curl(&format!("http://{}/p{i}", pair.server_ip));
    }
    tap.stop();
    assert_eq!(tshark_count(&out, "http.request"), 3);
    // epb_flags: requests leave (outbound), responses arrive (inbound).
    assert_eq!(tshark_count(&out, "http.request && frame.p2p_dir == 0"), 3);
    assert_eq!(tshark_count(&out, "http.response && frame.p2p_dir == 1"), 3);

    // `-w - | tshark -r -`, the way the README shows it.
    let pipe = dir.path("pipe.txt");
    let script = format!(
        "ip netns exec {ns} {bin} attach {ifc} --port 80 -w - --duration 3 2>{err} | tshark -r - -Y http.request -T fields -e http.request.uri > {out}",
        ns = pair.client_ns,
        bin = rf_tap_bin().display(),
        ifc = pair.client_if,
        err = dir.path("pipe.err").display(),
        out = pipe.display()
    );
    let child = std::process::Command::new("sh")
        .args(["-c", &script])
        .spawn()
        .unwrap();
    let _guard = Proc {
        child: Some(child),
        name: "pipe".into(),
    };
    std::thread::sleep(Duration::from_millis(1500));
    for i in 0..3 {
        pair.curl(&format!("http://{}/p{i}", pair.server_ip));
    }
    let mut guard = _guard;
    let status = guard.child.as_mut().unwrap().wait().unwrap();
    assert!(status.success());
    let uris = std::fs::read_to_string(&pipe).unwrap();
    assert_eq!(uris.lines().collect::<Vec<_>>(), vec!["/p0", "/p1", "/p2"]);
}

#[test]
fn sigterm_and_sigkill_leave_nothing_attached_and_a_readable_file() {
    if !privileged("sigterm_and_sigkill_leave_nothing_attached_and_a_readable_file") {
        return;
    }
    let pair = NetPair::new();
    let dir = TempDir::new("kill");
    www(&dir, 50);
    let _srv = nginx(&pair.server_ns, &dir, &[format!("{}:80", pair.server_ip)]);
    for (sig, name) in [(libc::SIGTERM, "term.pcap"), (libc::SIGKILL, "kill.pcap")] {
        let out = dir.path(name);
        let mut tap = RfTap::spawn(
            &pair.client_ns,
            &["attach", &pair.client_if, "-w", out.to_str().unwrap(), "-q"],
        );
        tap.wait_attached();
        assert_eq!(tcx_program_count(&pair.client_ns, &pair.client_if), 2);
        for i in 0..50 {
            pair.curl(&format!("http://{}/p{i}", pair.server_ip));
        }
        // Let at least one flush happen, then signal while the file is open.
        std::thread::sleep(Duration::from_millis(300));
        tap.signal(sig);
        let fin = tap.wait(Duration::from_secs(20));
        if sig == libc::SIGTERM {
            assert!(fin.status.success(), "{}", fin.stderr);
            assert!(fin.stderr.contains("stopped by signal"), "{}", fin.stderr);
        }
        assert_eq!(
            tcx_program_count(&pair.client_ns, &pair.client_if),
            0,
            "after {name}"
        );
        let (records, torn) = read_pcap(&out);
        assert!(!torn || sig == libc::SIGKILL);
        assert!(
            get_paths(&records).len() >= 40,
            "{name}: {} requests",
            get_paths(&records).len()
        );
    }
}

#[test]
fn user_errors_exit_nonzero_with_one_clear_line_and_attach_nothing() {
    if !privileged("user_errors_exit_nonzero_with_one_clear_line_and_attach_nothing") {
        return;
    }
    let pair = NetPair::new();
    let ns = Some(pair.client_ns.as_str());
    let ifc = pair.client_if.as_str();
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (
            vec!["attach", "rf-nope0", "-w", "/tmp/x.pcap"],
            "no such interface `rf-nope0`",
        ),
        (
            vec!["attach", ifc, "-w", "/nonexistent-dir/x.pcap"],
            "cannot write /nonexistent-dir/x.pcap",
        ),
        (
            vec!["attach", ifc, "--rule", "num=1,action=allow"],
            "expected accept or reject",
        ),
        (
            vec!["attach", ifc, "--rule", "dir=ingress,action=accept"],
            "missing `num`",
        ),
        (vec!["attach", ifc, "--port", "90-80"], "bad --port"),
        (
            vec!["attach", ifc, "--filter", "/nonexistent.yaml"],
            "cannot read filter file",
        ),
        (vec!["attach", ifc, "--sample-rate", "0"], "--sample-rate"),
        (vec!["attach", ifc, "-s", "0"], "--packet-length"),
        (vec!["attach", ifc, "-w", "-", "--json"], "--json"),
        (
            vec!["attach", ifc, "--force"],
            "--force only applies to --mode afxdp",
        ),
        (
            vec!["attach", ifc, "--mode", "afxdp"],
            "has addresses of its own",
        ),
    ];
    for (args, want) in cases {
        let fin = rf_tap_run(ns, &args);
        assert_eq!(fin.status.code(), Some(1), "{args:?}: {}", fin.stderr);
        let lines: Vec<_> = fin
            .stderr
            .lines()
            .filter(|l| !l.trim().is_empty())
            .collect();
        assert_eq!(lines.len(), 1, "{args:?}: one line, got {lines:?}");
        assert!(
            lines[0].starts_with("rf-tap: ") && lines[0].contains(want),
            "{args:?}: {lines:?}"
        );
        assert_eq!(tcx_program_count(&pair.client_ns, ifc), 0);
    }
    // Missing capability: the same command as an unprivileged user.
    let out = std::process::Command::new("ip")
        .args([
            "netns",
            "exec",
            &pair.client_ns,
            "setpriv",
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
        ])
        .arg(rf_tap_bin())
        .args(["attach", ifc, "-w", "/dev/null"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("needs root") && err.contains("sudo"), "{err}");
    assert_eq!(tcx_program_count(&pair.client_ns, ifc), 0);
    // Clap usage errors exit 2 with a message too.
    let fin = rf_tap_run(ns, &["attach", ifc, "--mode", "warp"]);
    assert_eq!(fin.status.code(), Some(2));
    assert!(fin.stderr.contains("invalid value 'warp'"));
}

#[test]
fn filter_file_count_and_rotation() {
    if !privileged("filter_file_count_and_rotation") {
        return;
    }
    let pair = NetPair::new();
    let dir = TempDir::new("file");
    www(&dir, 30);
    let _srv = nginx(&pair.server_ns, &dir, &[format!("{}:80", pair.server_ip)]);
    let yaml = dir.path("rules.yaml");
    std::fs::write(
        &yaml,
        "rules:\n  - number: 100\n    direction: egress\n    action: accept\n    protocol: tcp\n    destination_port: 80\n",
    )
    .unwrap();
    let base = dir.path("rot.pcap");
    let tap = attach_json(
        &pair,
        &pair.client_ns,
        &pair.client_if,
        &["--filter", yaml.to_str().unwrap(), "--rotate-size", "2K"],
        base.to_str().unwrap(),
    );
    for i in 0..30 {
        pair.curl(&format!("http://{}/p{i}", pair.server_ip));
    }
    let fin = tap.stop();
    let summary = fin.json();
    check_accounting(&summary);
    let files: Vec<String> = summary["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f.as_str().unwrap().to_string())
        .collect();
    assert!(files.len() > 3, "{files:?}");
    assert!(files[0].ends_with("rot-000.pcap"));
    let mut total = 0;
    let mut paths = Vec::new();
    for f in &files {
        let (r, torn) = read_pcap(std::path::Path::new(f));
        assert!(!torn);
        total += r.len();
        paths.extend(get_paths(&r));
    }
    assert_eq!(total as u64, summary["written"].as_u64().unwrap());
    assert_eq!(paths.len(), 30);

    // --count stops after N packets, and the rest are accounted for.
    let out = dir.path("count.pcap");
    let tap = RfTap::spawn(
        &pair.client_ns,
        &[
            "attach",
            &pair.client_if,
            "--port",
            "80",
            "-c",
            "7",
            "-w",
            out.to_str().unwrap(),
            "--json",
        ],
    );
    let mut tap = tap;
    tap.wait_attached();
    for i in 0..3 {
        pair.curl(&format!("http://{}/p{i}", pair.server_ip));
    }
    let fin = tap.wait(Duration::from_secs(10));
    assert!(fin.status.success());
    let summary = fin.json();
    assert_eq!(summary["written"], 7);
    assert_eq!(summary["stop_reason"], "count");
    check_accounting(&summary);
    assert_eq!(read_pcap(&out).0.len(), 7);
}

#[test]
fn without_w_it_prints_one_line_per_packet() {
    if !privileged("without_w_it_prints_one_line_per_packet") {
        return;
    }
    let pair = NetPair::new();
    let dir = TempDir::new("text");
    www(&dir, 1);
    let _srv = nginx(&pair.server_ns, &dir, &[format!("{}:80", pair.server_ip)]);
    // The product card's verbatim use, on this namespace's interface.
    let mut tap = RfTap::spawn(
        &pair.client_ns,
        &["attach", &pair.client_if, "--port", "80-443"],
    );
    tap.wait_attached();
    assert_eq!(pair.curl(&format!("http://{}/p0", pair.server_ip)), 200);
    let fin = tap.stop();
    assert!(fin.status.success(), "{}", fin.stderr);
    let text = String::from_utf8_lossy(&fin.stdout);
    let syn = format!("Out IP {}.", pair.client_ip);
    let first = text.lines().next().unwrap_or_default();
    assert!(
        first.contains(&syn) && first.contains(&format!("> {}.80: Flags [S]", pair.server_ip)),
        "{text}"
    );
    assert!(
        text.lines()
            .any(|l| l.starts_with(|c: char| c.is_ascii_digit())
                && l.contains(&format!("In  IP {}.80 >", pair.server_ip))),
        "{text}"
    );
    assert!(
        fin.stderr.contains("written"),
        "summary on stderr: {}",
        fin.stderr
    );
}

#[test]
fn live_rfcap_holds_the_same_exchanges_as_the_pcap() {
    if !privileged("live_rfcap_holds_the_same_exchanges_as_the_pcap") {
        return;
    }
    let pair = NetPair::new();
    let dir = TempDir::new("live");
    www(&dir, 10);
    let _srv = nginx(&pair.server_ns, &dir, &[format!("{}:80", pair.server_ip)]);
    let pcap = dir.path("live.pcap");
    let archive = dir.path("live.rfcap");
    let tap = attach_json(
        &pair,
        &pair.client_ns,
        &pair.client_if,
        &[
            "--port",
            "80",
            "--rfcap",
            archive.to_str().unwrap(),
            "--workers",
            "2",
        ],
        pcap.to_str().unwrap(),
    );
    for i in 0..10 {
        assert_eq!(pair.curl(&format!("http://{}/p{i}", pair.server_ip)), 200);
    }
    assert_eq!(pair.curl(&format!("http://{}/nope", pair.server_ip)), 404);
    let fin = tap.stop();
    assert!(fin.status.success(), "{}", fin.stderr);
    let summary = fin.json();
    check_accounting(&summary);
    assert_eq!(summary["exchanges"], 11);

    let key = |v: &serde_json::Value, path: &str| {
        (
            v["method"].as_str().unwrap_or("-").to_string(),
            v[path].as_str().unwrap_or("").to_string(),
            v["status"].as_u64().unwrap_or(0),
        )
    };
    let live = rf_tap_run(None, &["requests", archive.to_str().unwrap(), "--json"]);
    assert!(live.status.success(), "{}", live.stderr);
    let mut live: Vec<_> = String::from_utf8_lossy(&live.stdout)
        .lines()
        .map(|l| key(&serde_json::from_str(l).unwrap(), "path"))
        .collect();
    let offline = rf_tap_run(None, &["extract", "-q", pcap.to_str().unwrap()]);
    let mut offline: Vec<_> = String::from_utf8_lossy(&offline.stdout)
        .lines()
        .map(|l| key(&serde_json::from_str(l).unwrap(), "uri"))
        .collect();
    live.sort();
    offline.sort();
    assert_eq!(live.len(), 11);
    assert_eq!(live, offline, "live and offline extraction agree");
    assert!(live.contains(&("GET".into(), "/nope".into(), 404)));
}

#[test]
fn loopback_packets_are_captured_once_as_tcpdump_sees_them() {
    if !privileged("loopback_packets_are_captured_once_as_tcpdump_sees_them") {
        return;
    }
    let pair = NetPair::new();
    let dir = TempDir::new("lo");
    let ns = pair.server_ns.clone();
    let _srv = in_netns(&ns, || {
        http_server::TestServer::start_on("127.0.0.1:8099", |_| {
            http_server::Reply::json(200, "{\"ok\":true}")
        })
    });
    let (ours, theirs) = (dir.path("rf.pcap"), dir.path("td.pcap"));
    let td = tcpdump(&ns, "lo", &theirs, &["tcp", "port", "8099"]);
    let mut tap = RfTap::spawn(
        &ns,
        &[
            "attach",
            "lo",
            "--port",
            "8099",
            "-w",
            ours.to_str().unwrap(),
            "-q",
        ],
    );
    tap.wait_attached();
    for i in 0..5 {
        let out = std::process::Command::new("ip")
            .args([
                "netns",
                "exec",
                &ns,
                "curl",
                "-s",
                "-o",
                "/dev/null",
                "-w",
                "%{http_code}",
            ])
            .arg(format!("http://127.0.0.1:8099/r{i}"))
            .output()
            .unwrap();
        assert_eq!(String::from_utf8_lossy(&out.stdout), "200");
    }
    std::thread::sleep(Duration::from_millis(200));
    assert!(tap.stop().status.success());
    stop_tcpdump(td);
    let (a, _) = read_pcap(&ours);
    let (b, _) = read_pcap(&theirs);
    assert!(b.len() >= 5 * 8, "tcpdump saw {}", b.len());
    assert_eq!(
        a.len(),
        b.len(),
        "rf-tap and tcpdump -i lo record the same packets"
    );
    let data = |r: &[Record]| r.iter().map(|x| x.data.clone()).collect::<Vec<_>>();
    assert_eq!(data(&a), data(&b));
    assert_eq!(get_paths(&a).len(), 5, "each request once");
}

/// TCP segments a network namespace's stack received and sent, retransmissions included
/// (`/proc/net/snmp`): the truth for a namespace whose only traffic is one server's.
fn tcp_segments(ns: &str) -> u64 {
    let snmp = sh(&["ip", "netns", "exec", ns, "cat", "/proc/net/snmp"]);
    let mut tcp = snmp.lines().filter(|l| l.starts_with("Tcp:"));
    let (names, values) = (tcp.next().unwrap(), tcp.next().unwrap());
    names
        .split_whitespace()
        .zip(values.split_whitespace())
        .filter(|(n, _)| matches!(*n, "InSegs" | "OutSegs" | "RetransSegs"))
        .map(|(_, v)| v.parse::<u64>().unwrap())
        .sum()
}

#[test]
fn under_cpu_pressure_every_packet_is_counted_and_none_is_lost() {
    if !privileged("under_cpu_pressure_every_packet_is_counted_and_none_is_lost") {
        return;
    }
    let pair = NetPair::new();
    let dir = TempDir::new("contended");
    www(&dir, 1);
    let _srv = nginx(&pair.server_ns, &dir, &[format!("{}:80", pair.server_ip)]);
    // Other processes keep both cores busy for the whole test.
    let _hogs = CpuHogs::start(2, Duration::from_secs(60));
    let (ours, theirs) = (dir.path("rf.pcap"), dir.path("td.pcap"));
    let before = tcp_segments(&pair.server_ns);
    let td = tcpdump(
        &pair.server_ns,
        &pair.server_if,
        &theirs,
        &["tcp", "port", "80"],
    );
    let tap = attach_json(
        &pair,
        &pair.server_ns,
        &pair.server_if,
        &["--port", "80"],
        ours.to_str().unwrap(),
    );
    let wrk = std::process::Command::new("ip")
        .args([
            "netns",
            "exec",
            &pair.client_ns,
            "wrk",
            "-t1",
            "-c16",
            "-d3s",
        ])
        .args(["--timeout", "2s"])
        .arg(format!("http://{}/p0", pair.server_ip))
        .output()
        .unwrap();
    assert!(
        wrk.status.success(),
        "{}",
        String::from_utf8_lossy(&wrk.stderr)
    );
    let fin = tap.stop();
    assert!(fin.status.success(), "{}", fin.stderr);
    stop_tcpdump(td);
    let offered = tcp_segments(&pair.server_ns) - before;
    let summary = fin.json();
    check_accounting(&summary);
    let (records, torn) = read_pcap(&ours);
    assert!(!torn);
    let (reference, _) = read_pcap(&theirs);
    eprintln!(
        "offered {offered} TCP segments; rf-tap wrote {}, tcpdump {}",
        records.len(),
        reference.len()
    );
    assert!(offered > 20_000, "a real load: {offered} packets");
    // Counted exactly: every segment the server's stack received and sent (small pages:
    // no GSO, one packet each) matched, and every one of them is in the file.
    assert_eq!(json_u64(&summary, "matched"), offered, "{summary}");
    assert_eq!(json_u64(&summary, "dropped_kernel"), 0, "{summary}");
    assert_eq!(json_u64(&summary, "dropped_user"), 0, "{summary}");
    assert_eq!(json_u64(&summary, "written"), offered, "{summary}");
    assert_eq!(records.len() as u64, offered);
}
