//! HTTP/2 in the clear, captured for real in network namespaces: nginx's `http2` port with
//! nghttp (concurrent streams on one connection) and h2load (a long keep-alive connection),
//! cross-checked with tshark's HTTP/2 dissector; the same capture with its first packets
//! cut (a pickup mid-connection); and `Upgrade: h2c` with `curl --http2` against an h2
//! (Python) server.
#![allow(clippy::unwrap_used)]

use std::{collections::BTreeMap, path::Path, process::Command, time::Duration};

use rf_tap_tests::*;

fn lines(out: &str) -> Vec<serde_json::Value> {
    out.lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn extract(pcap: &Path) -> (Vec<serde_json::Value>, serde_json::Value) {
    let ex = rf_tap_run(None, &["extract", "-q", "--stats", pcap.to_str().unwrap()]);
    assert!(ex.status.success(), "{}", ex.stderr);
    let stats = ex
        .stderr
        .lines()
        .find_map(|l| serde_json::from_str(l).ok())
        .unwrap_or_else(|| panic!("no stats in {}", ex.stderr));
    (lines(&String::from_utf8_lossy(&ex.stdout)), stats)
}

fn in_ns(ns: &str, args: &[&str]) -> String {
    let out = Command::new("ip")
        .args(["netns", "exec", ns])
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The status of every response tshark's HTTP/2 dissector finds.
fn tshark_streams(pcap: &Path, port: u16) -> Vec<String> {
    let out = Command::new("tshark")
        .arg("-r")
        .arg(pcap)
        .args([
            "-d",
            &format!("tcp.port=={port},http2"),
            "-Y",
            "http2.headers.status",
        ])
        .args(["-T", "fields", "-e", "http2.headers.status"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .flat_map(|l| {
            let status = l.split('\t').next().unwrap_or("");
            status
                .split(',')
                .filter(|s| !s.is_empty())
                .map(str::to_string)
                .collect::<Vec<_>>()
        })
        .collect()
}

#[test]
fn nginx_h2c_streams_match_tshark_and_a_capture_joined_mid_connection() {
    if !privileged("nginx_h2c_streams_match_tshark_and_a_capture_joined_mid_connection") {
        return;
    }
    let pair = NetPair::new();
    let dir = TempDir::new("h2");
    let www = dir.path("www");
    std::fs::create_dir_all(&www).unwrap();
    let files: BTreeMap<&str, Vec<u8>> = [
        ("p0", b"tiny\n".to_vec()),
        ("p1", vec![b'y'; 5000]),
        ("p2", vec![b'z'; 70_000]),
        ("big", (0..400_000u32).map(|i| (i % 251) as u8).collect()),
        ("t.txt", "lorem ipsum dolor ".repeat(2000).into_bytes()),
    ]
    .into_iter()
    .collect();
    for (name, body) in &files {
        std::fs::write(www.join(name), body).unwrap();
    }
    let _srv = nginx_with(
        &pair.server_ns,
        &dir,
        &[
            format!("{}:80", pair.server_ip),
            format!("{}:8080 http2", pair.server_ip),
        ],
        "gzip on; gzip_types text/plain; gzip_min_length 100;",
    );
    let pcap = dir.path("h2.pcap");
    let mut tap = RfTap::spawn(
        &pair.client_ns,
        &[
            "attach",
            &pair.client_if,
            "--port",
            "8080",
            "-w",
            pcap.to_str().unwrap(),
            "-q",
            "--json",
        ],
    );
    tap.wait_attached();
    let base = format!("http://{}:8080", pair.server_ip);
    // One connection, every stream at once (nghttp fetches its URIs concurrently), with
    // gzip asked for: the text file comes compressed.
    let mut uris: Vec<String> = Vec::new();
    for round in 0..3 {
        for name in files.keys() {
            uris.push(format!("{base}/{name}?r={round}"));
        }
        uris.push(format!("{base}/missing?r={round}"));
    }
    let mut args = vec![
        "nghttp",
        "-n",
        "--stat",
        "-H",
        "accept-encoding: gzip",
        "-H",
        "authorization: Bearer h2-secret-token-4711",
    ];
    args.extend(uris.iter().map(String::as_str));
    let stat = in_ns(&pair.client_ns, &args);
    // A HEAD on its own connection.
    let head_uri = format!("{base}/p2");
    in_ns(
        &pair.client_ns,
        &["nghttp", "-n", "-H", ":method: HEAD", &head_uri],
    );
    // A long keep-alive connection, one stream at a time (h2load -m1), for the cut below.
    let h2load_uris: Vec<String> = ["p0", "p1", "t.txt", "missing"]
        .iter()
        .map(|n| format!("{base}/{n}"))
        .collect();
    let mut args = vec!["h2load", "-n", "120", "-c", "1", "-m", "1"];
    args.extend(h2load_uris.iter().map(String::as_str));
    let h2 = in_ns(&pair.client_ns, &args);
    assert!(h2.contains("120 done") && h2.contains("90 2xx"), "{h2}");
    std::thread::sleep(Duration::from_millis(200));
    let fin = tap.stop();
    assert!(fin.status.success());
    let sum = fin.json();
    assert_eq!(
        json_u64(&sum, "dropped_kernel") + json_u64(&sum, "dropped_user"),
        0,
        "{sum}"
    );

    // nghttp's own account: status and path of each request.
    let nghttp_truth: Vec<(String, u16)> = stat
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.len() == 7 && f[6].starts_with('/'))
                .then(|| (f[6].to_string(), f[4].parse().ok()))
                .and_then(|(p, c)| Some((p, c?)))
        })
        .collect();
    assert_eq!(nghttp_truth.len(), uris.len(), "{stat}");

    let (xs, stats) = extract(&pcap);
    assert_eq!(stats["protocols"]["http2"]["connections"], 3, "{stats}");
    assert_eq!(stats["flow_anomalies"], serde_json::json!({}), "{stats}");
    let body_of = |uri: &str| {
        let name = uri.trim_start_matches('/').split('?').next().unwrap();
        files.get(name).map(|b| b.len() as u64)
    };
    let mut got: Vec<(String, u16)> = Vec::new();
    for x in &xs {
        assert_eq!(x["version"], "2", "{x}");
        assert_eq!(x["flags"], serde_json::json!([]), "{x}");
        assert_eq!(x["host"], format!("{}:8080", pair.server_ip), "{x}");
        let uri = x["uri"].as_str().unwrap();
        let status = x["status"].as_u64().unwrap() as u16;
        if status == 200 && x["method"] == "GET" {
            assert_eq!(
                x["response_body_len"].as_u64(),
                body_of(uri),
                "body decoded whole: {x}"
            );
        }
        if x["method"] == "HEAD" {
            assert_eq!((status, x["response_body_len"].as_u64()), (200, Some(0)));
        }
        if uri.contains("?r=") {
            got.push((uri.to_string(), status));
        }
    }
    let (mut got_sorted, mut want) = (got.clone(), nghttp_truth.clone());
    got_sorted.sort();
    want.sort();
    assert_eq!(
        got_sorted, want,
        "every concurrent stream, as nghttp saw it"
    );
    // HAR: HTTP/2, the gzip answer's headers, and the credential masked.
    let har = rf_tap_run(
        None,
        &["extract", "-q", "--format", "har", pcap.to_str().unwrap()],
    );
    assert!(har.status.success(), "{}", har.stderr);
    let har_text = String::from_utf8_lossy(&har.stdout).into_owned();
    assert!(
        !har_text.contains("h2-secret-token-4711"),
        "credential leaked into HAR"
    );
    let har: serde_json::Value = serde_json::from_str(&har_text).unwrap();
    let entry = har["log"]["entries"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| {
            e["request"]["url"]
                .as_str()
                .unwrap()
                .ends_with("/t.txt?r=0")
        })
        .unwrap();
    assert_eq!(entry["request"]["httpVersion"], "HTTP/2");
    assert_eq!(entry["response"]["httpVersion"], "HTTP/2");
    let header = |side: &str, name: &str| {
        entry[side]["headers"]
            .as_array()
            .unwrap()
            .iter()
            .find(|h| h["name"] == name)
            .map(|h| h["value"].as_str().unwrap().to_string())
    };
    assert_eq!(
        header("response", "content-encoding").as_deref(),
        Some("gzip")
    );
    assert!(
        header("request", "authorization").is_some_and(|v| !v.contains("4711")),
        "{entry}"
    );
    // The same captured streams as tshark's HTTP/2 dissector finds.
    let mut ours: Vec<String> = xs.iter().map(|x| x["status"].to_string()).collect();
    let mut theirs = tshark_streams(&pcap, 8080);
    ours.sort();
    theirs.sort();
    assert_eq!(ours, theirs, "statuses: rf-tap vs tshark");
    assert_eq!(xs.len(), uris.len() + 1 + 120);

    // Joined mid-connection: the h2load connection's first 40 packets cut (its handshake,
    // preface, SETTINGS and first streams, which filled the HPACK tables).
    let (records, _) = read_pcap(&pcap);
    let h2load_port = {
        let last = records.iter().rev().find_map(|r| tcp_of(&r.data)).unwrap();
        if last.0 == 8080 {
            last.1
        } else {
            last.0
        }
    };
    let mine = |r: &Record| {
        tcp_of(&r.data).is_some_and(|(s, d, _, _)| s == h2load_port || d == h2load_port)
    };
    let mut skipped = 0;
    let cut: Vec<(u64, Vec<u8>, u32)> = records
        .iter()
        .filter(|r| {
            if mine(r) && skipped < 40 {
                skipped += 1;
                return false;
            }
            mine(r)
        })
        .map(|r| (r.ts_ns, r.data.clone(), r.orig_len))
        .collect();
    let cut_pcap = dir.path("cut.pcap");
    write_pcap(&cut_pcap, 1, &cut);
    let (xs, stats) = extract(&cut_pcap);
    assert_eq!(stats["protocols"]["http2"]["connections"], 1, "{stats}");
    assert_eq!(
        stats["flow_anomalies"]["frame_resync"], 2,
        "each direction found its frames once: {stats}"
    );
    assert!(
        xs.len() >= 100,
        "most of the 120 streams come out after the cut: {}",
        xs.len()
    );
    let real: Vec<String> = h2load_uris
        .iter()
        .map(|u| u.trim_start_matches(&base).to_string())
        .collect();
    let mut flagged = 0;
    let mut whole = 0;
    for x in &xs {
        let uri = x["uri"].as_str().unwrap_or("");
        assert!(uri.is_empty() || real.contains(&uri.to_string()), "{x}");
        assert!(
            x["host"].is_null() || x["host"] == format!("{}:8080", pair.server_ip),
            "nothing invented: {x}"
        );
        let unknown = x["anomalies"]
            .as_array()
            .unwrap()
            .iter()
            .any(|a| a == "hpack_unknown");
        flagged += usize::from(unknown);
        if !uri.is_empty() {
            let status = x["status"].as_u64().unwrap();
            let want = if uri == "/missing" { 404 } else { 200 };
            assert_eq!(status, want, "{x}");
            if status == 200 {
                assert_eq!(x["response_body_len"].as_u64(), body_of(uri), "{x}");
                whole += 1;
            }
        }
    }
    assert!(
        flagged > 0,
        "h2load's requests refer to table entries sent before the cut"
    );
    eprintln!(
        "mid-connection: {} exchanges, {flagged} flagged hpack_unknown, {whole} with path and body",
        xs.len()
    );

    // The h2load connection captured with a 200-byte snap length, as `attach --snaplen`
    // would: frames past the cut are gaps, found again at the next packet; no exchange is
    // invented and every one that comes out is marked.
    let snapped: Vec<(u64, Vec<u8>, u32)> = records
        .iter()
        .filter(|r| mine(r))
        .map(|r| {
            (
                r.ts_ns,
                r.data[..r.data.len().min(200)].to_vec(),
                r.orig_len,
            )
        })
        .collect();
    let snap_pcap = dir.path("snap.pcap");
    write_pcap(&snap_pcap, 1, &snapped);
    let (xs, stats) = extract(&snap_pcap);
    assert_eq!(stats["protocols"]["http2"]["connections"], 1, "{stats}");
    assert!(xs.len() <= 120, "{}", xs.len());
    let statuses = xs.iter().filter(|x| x["status"].is_u64()).count();
    assert!(
        statuses >= 60,
        "most answers' HEADERS fit in 200 bytes: {statuses}"
    );
    for x in &xs {
        let uri = x["uri"].as_str().unwrap_or("");
        assert!(uri.is_empty() || real.contains(&uri.to_string()), "{x}");
        if x["status"] == 200 && x["response_body_len"].as_u64() != body_of(uri) {
            assert!(
                x["flags"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|f| f == "truncated" || f == "gap_response" || f == "incomplete"),
                "a cut body is marked: {x}"
            );
        }
    }
}

#[test]
fn upgrade_h2c_with_curl_is_followed_onto_http2() {
    if !privileged("upgrade_h2c_with_curl_is_followed_onto_http2") {
        return;
    }
    let Some(python) = pyenv_python("upgrade_h2c_with_curl_is_followed_onto_http2") else {
        return;
    };
    let pair = NetPair::new();
    let dir = TempDir::new("h2c");
    let _srv = python_peer(
        &pair.server_ns,
        &python,
        "h2c_server.py",
        &[&pair.server_ip, "8081"],
    );
    let pcap = dir.path("h2c.pcap");
    let mut tap = RfTap::spawn(
        &pair.client_ns,
        &[
            "attach",
            &pair.client_if,
            "--port",
            "8081",
            "-w",
            pcap.to_str().unwrap(),
            "-q",
        ],
    );
    tap.wait_attached();
    // curl asks to upgrade on its first request and reuses the HTTP/2 connection after.
    let urls: Vec<String> = ["/size/100000", "/size/7", "/nope"]
        .iter()
        .map(|p| format!("http://{}:8081{p}", pair.server_ip))
        .collect();
    let mut args = vec![
        "curl",
        "-s",
        "--http2",
        "--max-time",
        "10",
        "-w",
        "%{http_version} %{http_code} %{size_download} %{num_connects}\\n",
    ];
    for u in &urls {
        args.extend(["-o", "/dev/null", u.as_str()]);
    }
    let said = in_ns(&pair.client_ns, &args);
    let truth: Vec<Vec<&str>> = said.lines().map(|l| l.split(' ').collect()).collect();
    assert_eq!(truth.len(), 3, "{said}");
    assert!(truth.iter().all(|t| t[0] == "2"), "{said}");
    assert_eq!(
        truth.iter().map(|t| t[3]).collect::<Vec<_>>(),
        ["1", "0", "0"],
        "one connection: {said}"
    );
    std::thread::sleep(Duration::from_millis(200));
    assert!(tap.stop().status.success());

    let (xs, stats) = extract(&pcap);
    assert_eq!(stats["protocols"]["http1"]["connections"], 1, "{stats}");
    assert_eq!(stats["protocols"]["http2"]["connections"], 1, "{stats}");
    let got: Vec<String> = xs
        .iter()
        .map(|x| {
            format!(
                "{} {} {} {}",
                x["uri"].as_str().unwrap(),
                x["status"],
                x["response_body_len"],
                x["version"].as_str().unwrap()
            )
        })
        .collect();
    assert_eq!(
        got,
        [
            // The upgraded request was sent as HTTP/1.1 (its version); its answer is HTTP/2.
            format!("/size/100000 {} {} 1.1", truth[0][1], truth[0][2]),
            format!("/size/7 {} {} 2", truth[1][1], truth[1][2]),
            format!("/nope {} {} 2", truth[2][1], truth[2][2]),
        ],
        "the upgraded request is stream 1, answered in HTTP/2: {xs:?}"
    );
    assert_eq!(xs[0]["flags"], serde_json::json!([]), "{}", xs[0]);
    assert_eq!(
        xs[0]["info_code"], 101,
        "the 101 that switched it: {}",
        xs[0]
    );
}

#[test]
fn tls_connections_are_counted_and_named_as_what_packets_cannot_show() {
    if !privileged("tls_connections_are_counted_and_named_as_what_packets_cannot_show") {
        return;
    }
    let pair = NetPair::new();
    let dir = TempDir::new("h2tls");
    std::fs::create_dir_all(dir.path("www")).unwrap();
    std::fs::write(dir.path("www/index.html"), "plain\n").unwrap();
    let (cert, key) = (dir.path("cert.pem"), dir.path("key.pem"));
    sh(&[
        "openssl",
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-subj",
        "/CN=rf-tap.test",
        "-days",
        "1",
        "-keyout",
        key.to_str().unwrap(),
        "-out",
        cert.to_str().unwrap(),
    ]);
    let _srv = nginx_with(
        &pair.server_ns,
        &dir,
        &[
            format!("{}:80", pair.server_ip),
            format!("{}:8443 ssl http2", pair.server_ip),
        ],
        &format!(
            "ssl_certificate {}; ssl_certificate_key {};",
            cert.display(),
            key.display()
        ),
    );
    let pcap = dir.path("tls.pcap");
    let mut tap = RfTap::spawn(
        &pair.client_ns,
        &[
            "attach",
            &pair.client_if,
            "-w",
            pcap.to_str().unwrap(),
            "-q",
        ],
    );
    tap.wait_attached();
    for _ in 0..2 {
        let said = in_ns(
            &pair.client_ns,
            &[
                "curl",
                "-sk",
                "--http2",
                "-o",
                "/dev/null",
                "-w",
                "%{http_version}",
                &format!("https://{}:8443/", pair.server_ip),
            ],
        );
        assert_eq!(said, "2", "curl spoke HTTP/2 over TLS");
    }
    assert_eq!(pair.curl(&format!("http://{}/", pair.server_ip)), 200);
    std::thread::sleep(Duration::from_millis(200));
    assert!(tap.stop().status.success());
    let ex = rf_tap_run(None, &["extract", "--stats", pcap.to_str().unwrap()]);
    assert!(ex.status.success(), "{}", ex.stderr);
    let xs = lines(&String::from_utf8_lossy(&ex.stdout));
    assert_eq!(
        xs.len(),
        1,
        "only the cleartext request is an exchange: {xs:?}"
    );
    assert!(
        ex.stderr.contains(
            "connections not decoded (counted only): 2 tls (encrypted: HTTPS and HTTP/2 over TLS cannot be read from packets)"
        ),
        "{}",
        ex.stderr
    );
    let stats = ex
        .stderr
        .lines()
        .find_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .unwrap();
    assert_eq!(stats["protocols"]["tls"]["connections"], 2, "{stats}");
}

/// A grpcio server (version `v`) in the server namespace.
fn grpc_server(pair: &NetPair, python: &Path, port: &str, v: &str) -> Proc {
    python_peer(
        &pair.server_ns,
        python,
        "grpc_peer.py",
        &["serve", &pair.server_ip, port, v],
    )
}

/// The grpcio client's calls, one JSON object per call (what it got).
fn grpc_calls(pair: &NetPair, python: &Path, port: &str) -> Vec<serde_json::Value> {
    let peer = Path::new(env!("CARGO_MANIFEST_DIR")).join("peers/grpc_peer.py");
    let out = in_ns(
        &pair.client_ns,
        &[
            python.to_str().unwrap(),
            peer.to_str().unwrap(),
            "call",
            &pair.server_ip,
            port,
        ],
    );
    lines(&out)
}

#[test]
fn grpc_calls_are_exchanges_with_service_method_status_and_messages() {
    if !privileged("grpc_calls_are_exchanges_with_service_method_status_and_messages") {
        return;
    }
    let Some(python) =
        pyenv_python("grpc_calls_are_exchanges_with_service_method_status_and_messages")
    else {
        return;
    };
    let pair = NetPair::new();
    let dir = TempDir::new("grpc");
    let _srv = grpc_server(&pair, &python, "50051", "1");
    let pcap = dir.path("grpc.pcap");
    let mut tap = RfTap::spawn(
        &pair.client_ns,
        &[
            "attach",
            &pair.client_if,
            "--port",
            "50051",
            "-w",
            pcap.to_str().unwrap(),
            "-q",
        ],
    );
    tap.wait_attached();
    let truth = grpc_calls(&pair, &python, "50051");
    assert_eq!(truth.len(), 5, "{truth:?}");
    std::thread::sleep(Duration::from_millis(200));
    assert!(tap.stop().status.success());

    let (xs, _) = extract(&pcap);
    let got: Vec<(String, u64, Option<&str>)> = xs
        .iter()
        .map(|x| {
            let g = &x["grpc"];
            assert_eq!(g["service"], "shop.Users", "{x}");
            assert_eq!(x["version"], "2", "{x}");
            (
                g["method"].as_str().unwrap().to_string(),
                g["status"].as_u64().unwrap(),
                g["message"].as_str(),
            )
        })
        .collect();
    let want: Vec<(String, u64, Option<&str>)> = truth
        .iter()
        .map(|t| {
            (
                t["method"].as_str().unwrap().to_string(),
                t["code"].as_u64().unwrap(),
                t["details"].as_str().filter(|d| !d.is_empty()),
            )
        })
        .collect();
    assert_eq!(got, want, "each call with its grpc-status and grpc-message");
    // tshark's HTTP/2 dissector sees the same calls.
    let out = Command::new("tshark")
        .arg("-r")
        .arg(&pcap)
        .args(["-d", "tcp.port==50051,http2", "-Y", "http2.headers.path"])
        .args(["-T", "fields", "-e", "http2.headers.path"])
        .output()
        .unwrap();
    let mut theirs: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .flat_map(|l| l.split(',').map(str::to_string).collect::<Vec<_>>())
        .collect();
    let mut ours: Vec<String> = xs
        .iter()
        .map(|x| x["uri"].as_str().unwrap().into())
        .collect();
    theirs.sort();
    ours.sort();
    assert_eq!(ours, theirs);

    // `requests` names the calls and their status; `requests show` decodes the messages.
    let table = rf_tap_run(None, &["requests", pcap.to_str().unwrap()]);
    assert!(table.status.success(), "{}", table.stderr);
    let rows = String::from_utf8_lossy(&table.stdout).into_owned();
    let missing = rows
        .lines()
        .find(|l| l.contains("/shop.Users/Missing"))
        .unwrap();
    assert!(
        missing.contains("gRPC") && missing.contains("NOT_FOUND"),
        "{rows}"
    );
    let id =
        |method: &str| xs.iter().find(|x| x["grpc"]["method"] == method).unwrap()["id"].to_string();
    let show = |method: &str| {
        let s = rf_tap_run(
            None,
            &["requests", "show", &id(method), pcap.to_str().unwrap()],
        );
        assert!(s.status.success(), "{}", s.stderr);
        String::from_utf8_lossy(&s.stdout).into_owned()
    };
    let get = show("Get");
    assert!(get.contains("gRPC shop.Users/Get: OK (0)"), "{get}");
    assert!(get.contains("request message 1: 1: \"alice\""), "{get}");
    assert!(
        get.contains("response message 1: 1: \"alice\", 2: {1: 42}"),
        "{get}"
    );
    // Server streaming, gzip-compressed by the server.
    let list = show("List");
    assert!(list.contains("grpc-encoding: gzip"), "{list}");
    for i in 0..3 {
        assert!(
            list.contains(&format!(
                "response message {}: (compressed) 1: {i}, 2: \"item-{i}-xxx",
                i + 1
            )),
            "{list}"
        );
    }
    let upload = show("Upload");
    assert!(upload.contains("request message 3: 1: 9"), "{upload}");
    assert!(
        upload.contains("response message 1: 1: 3, 2: 21"),
        "{upload}"
    );
    let missing = show("Missing");
    assert!(
        missing.contains("NOT_FOUND (5): no such user: zoe"),
        "{missing}"
    );

    // Replayed against v2 over h2c: the calls of the captured connection go as streams
    // of one connection (captured again here to count them), and v2's changes are found.
    let _v2 = grpc_server(&pair, &python, "50052", "2");
    let again = dir.path("replayed.pcap");
    let mut tap = RfTap::spawn(
        &pair.client_ns,
        &[
            "attach",
            &pair.client_if,
            "--port",
            "50052",
            "-w",
            again.to_str().unwrap(),
            "-q",
        ],
    );
    tap.wait_attached();
    let target = format!("h2c://{}:50052", pair.server_ip);
    let run = rf_tap_run(
        Some(&pair.client_ns),
        &[
            "replay",
            pcap.to_str().unwrap(),
            "--target",
            &target,
            "--allow-writes",
            "--json",
        ],
    );
    std::thread::sleep(Duration::from_millis(200));
    assert!(tap.stop().status.success());
    let summary: serde_json::Value = serde_json::from_slice(&run.stdout)
        .unwrap_or_else(|_| panic!("{}{}", String::from_utf8_lossy(&run.stdout), run.stderr));
    assert_eq!(json_u64(&summary, "requests"), 5, "{summary}");
    assert_eq!(json_u64(&summary, "failed"), 0, "{summary}");
    assert_eq!(
        json_u64(&summary, "diffs"),
        3,
        "Get twice and Upload: {summary}"
    );
    let (replayed, stats) = extract(&again);
    assert_eq!(stats["protocols"]["http2"]["connections"], 1, "{stats}");
    assert_eq!(replayed.len(), 5, "{replayed:?}");
    let diff = rf_tap_run(
        None,
        &["replay", "diff", pcap.to_str().unwrap(), "--show", "10"],
    );
    assert!(diff.status.success(), "{}", diff.stderr);
    let text = String::from_utf8_lossy(&diff.stdout).into_owned();
    assert_eq!(
        text.matches("field 2.1 changed: 42 → 43").count(),
        2,
        "{text}"
    );
    assert!(
        text.contains("gRPC status OK (0) → INTERNAL (13)"),
        "{text}"
    );
    assert!(
        text.contains("1: \"alice\", 2: {1: 43}"),
        "bodies as field trees: {text}"
    );
    assert!(
        !text.contains("/shop.Users/List"),
        "identical answers: {text}"
    );
}

#[test]
fn grpc_is_mirrored_live_to_an_h2c_shadow_and_its_changes_found() {
    if !privileged("grpc_is_mirrored_live_to_an_h2c_shadow_and_its_changes_found") {
        return;
    }
    let Some(python) = pyenv_python("grpc_is_mirrored_live_to_an_h2c_shadow_and_its_changes_found")
    else {
        return;
    };
    let pair = NetPair::new();
    let state = TempDir::new("grpc-mirror");
    let _prod = grpc_server(&pair, &python, "50051", "1");
    let _shadow = grpc_server(&pair, &python, "50052", "2");
    let mirror = |args: &[&str]| {
        let out = Command::new("ip")
            .args(["netns", "exec", &pair.server_ns])
            .arg(rf_tap_bin())
            .args(args)
            .env("RF_TAP_STATE_DIR", &state.0)
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    type Run<'a> = &'a dyn Fn(&[&str]) -> (bool, String, String);
    struct Stop<'a>(Run<'a>);
    impl Drop for Stop<'_> {
        fn drop(&mut self) {
            let _ = (self.0)(&["mirror", "stop", "grpc"]);
        }
    }
    let shadow = format!("h2c://{}:50052", pair.server_ip);
    let (ok, out, err) = mirror(&[
        "mirror",
        "start",
        "grpc",
        "--iface",
        &pair.server_if,
        "--port",
        "50051",
        "--to",
        &shadow,
        "--allow-writes",
    ]);
    assert!(ok, "{out}{err}");
    let _stop = Stop(&mirror);
    let truth = grpc_calls(&pair, &python, "50051");
    assert_eq!(truth.len(), 5, "{truth:?}");
    let stats = || {
        let (ok, out, err) = mirror(&["mirror", "stats", "grpc", "--json"]);
        assert!(ok, "{err}");
        serde_json::from_str::<serde_json::Value>(&out).unwrap()
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    let mut v = stats();
    while std::time::Instant::now() < deadline && v["shadow"]["requests"] != 5 {
        std::thread::sleep(Duration::from_millis(100));
        v = stats();
    }
    assert_eq!(v["production"]["requests"], 5, "{v}");
    assert_eq!(v["shadow"]["requests"], 5, "{v}");
    assert_eq!(v["mirrored"], 5, "{v}");
    assert_eq!(v["diffs"], 3, "Get twice and Upload: {v}");
    let (ok, d, err) = mirror(&["mirror", "diff", "grpc", "--show", "5"]);
    assert!(ok, "{err}");
    assert_eq!(d.matches("field 2.1 changed: 42 → 43").count(), 2, "{d}");
    assert!(d.contains("gRPC status OK (0) → INTERNAL (13)"), "{d}");
}
