//! The live exchange pipeline in network namespaces: request events before their responses,
//! idle flows timed out without new packets, a full disk under `--rfcap`, and the same
//! records through the live sinks (`--jsonl`, `--har`, `--rfcap`) as through `extract` of the
//! pcap captured alongside.
#![allow(clippy::unwrap_used)]

use std::{
    io::{Read, Write},
    net::{TcpListener, TcpStream},
    path::Path,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use rf_tap_tests::*;

/// The JSON lines of a file that is still being written (only whole lines).
fn json_lines(path: &Path) -> Vec<serde_json::Value> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let whole = match text.rfind('\n') {
        Some(i) => &text[..=i],
        None => "",
    };
    whole
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// Polls `path` until a line satisfies `pred`, or `limit` passes.
fn wait_line(
    path: &Path,
    limit: Duration,
    pred: impl Fn(&serde_json::Value) -> bool,
) -> Option<(Instant, serde_json::Value)> {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if let Some(v) = json_lines(path).into_iter().find(&pred) {
            return Some((Instant::now(), v));
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    None
}

/// A server in `ns` on `addr`: `/slow` is answered after 2 s, `/never` is never answered;
/// records when each request had arrived and when its response went out.
type Times = Arc<Mutex<Vec<(String, Instant, Option<Instant>)>>>;

fn slow_server(ns: &str, addr: String) -> (Times, std::thread::JoinHandle<()>) {
    let times: Times = Arc::default();
    let t = Arc::clone(&times);
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let h = spawn_in_netns(ns, move || {
        let l = TcpListener::bind(&addr).unwrap();
        l.set_nonblocking(true).unwrap();
        ready_tx.send(()).unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut served = 0;
        while served < 2 && Instant::now() < deadline {
            let Ok((mut s, _)) = l.accept() else {
                std::thread::sleep(Duration::from_millis(5));
                continue;
            };
            served += 1;
            let t = Arc::clone(&t);
            std::thread::spawn(move || {
                s.set_nonblocking(false).unwrap();
                s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut chunk) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
                let arrived = Instant::now();
                let path = String::from_utf8_lossy(&buf)
                    .split(' ')
                    .nth(1)
                    .unwrap_or("")
                    .to_string();
                let i = {
                    let mut g = t.lock().unwrap();
                    g.push((path.clone(), arrived, None));
                    g.len() - 1
                };
                if path == "/slow" {
                    std::thread::sleep(Duration::from_secs(2));
                    let _ = s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nslow");
                    t.lock().unwrap()[i].2 = Some(Instant::now());
                    std::thread::sleep(Duration::from_millis(200));
                } else {
                    // Never answers; holds the connection until the client closes it.
                    let _ = s.read(&mut chunk);
                }
            });
        }
    });
    ready_rx.recv_timeout(Duration::from_secs(5)).unwrap();
    (times, h)
}

#[test]
fn a_request_comes_out_before_its_response_and_idle_flows_time_out() {
    if !privileged("a_request_comes_out_before_its_response_and_idle_flows_time_out") {
        return;
    }
    let pair = NetPair::new();
    let dir = TempDir::new("pipe-events");
    let events = dir.path("events.jsonl");
    let addr = format!("{}:8080", pair.server_ip);
    let (times, server) = slow_server(&pair.server_ns, addr.clone());
    let mut tap = RfTap::spawn(
        &pair.server_ns,
        &[
            "attach",
            &pair.server_if,
            "--port",
            "8080",
            "--jsonl",
            events.to_str().unwrap(),
            "--events",
            "--flow-timeout",
            "3s",
            "-q",
        ],
    );
    tap.wait_attached();

    // A request the server answers after 2 s.
    let client_addr = addr.clone();
    let slow = spawn_in_netns(&pair.client_ns, move || {
        let mut s = TcpStream::connect(&client_addr).unwrap();
        s.write_all(b"GET /slow HTTP/1.1\r\nHost: api\r\n\r\n")
            .unwrap();
        let mut v = Vec::new();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut b = [0u8; 256];
        while !v.ends_with(b"slow") {
            match s.read(&mut b) {
                Ok(0) | Err(_) => break,
                Ok(n) => v.extend_from_slice(&b[..n]),
            }
        }
        v
    });
    let (seen, req) = wait_line(&events, Duration::from_secs(5), |v| {
        v["event"] == "request" && v["uri"] == "/slow"
    })
    .expect("a request event for /slow");
    // rf-tap sees the request on the wire, possibly before the server has read it.
    let deadline = Instant::now() + Duration::from_secs(2);
    while times.lock().unwrap().is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(1));
    }
    let arrived = times.lock().unwrap()[0].1;
    let lag = seen.saturating_duration_since(arrived);
    assert!(
        lag < Duration::from_millis(100),
        "the request event came {lag:?} after the server had the request"
    );
    assert!(
        times.lock().unwrap()[0].2.is_none(),
        "the request event came before the response was sent"
    );
    assert_eq!(req["method"], "GET");
    assert_eq!(req["host"], "api");
    let (_, x) = wait_line(&events, Duration::from_secs(5), |v| {
        v["event"] == "exchange" && v["uri"] == "/slow"
    })
    .expect("the exchange once answered");
    assert_eq!(x["status"], 200);
    assert!(x["latency_ms"].as_f64().unwrap() >= 1900.0, "{x}");
    assert!(slow.join().unwrap().ends_with(b"slow"));

    // A request never answered, on a connection that then stays silent: the flow times
    // out and the request comes out unanswered while the client still holds it open.
    let client_addr = addr.clone();
    let (sent_tx, sent_rx) = std::sync::mpsc::channel();
    let idle = spawn_in_netns(&pair.client_ns, move || {
        let mut s = TcpStream::connect(&client_addr).unwrap();
        s.write_all(b"GET /never HTTP/1.1\r\nHost: api\r\n\r\n")
            .unwrap();
        sent_tx.send(Instant::now()).unwrap();
        std::thread::sleep(Duration::from_secs(7));
        drop(s);
    });
    let sent = sent_rx.recv_timeout(Duration::from_secs(5)).unwrap();
    let (seen, x) = wait_line(&events, Duration::from_secs(6), |v| {
        v["event"] == "exchange" && v["uri"] == "/never"
    })
    .expect("the unanswered request once its flow timed out");
    let after = seen.duration_since(sent);
    assert!(
        after >= Duration::from_millis(2900) && after < Duration::from_millis(5500),
        "timed out {after:?} after its last packet (--flow-timeout 3s)"
    );
    assert!(
        x["flags"]
            .as_array()
            .unwrap()
            .iter()
            .any(|f| f == "no_response"),
        "{x}"
    );
    idle.join().unwrap();
    let fin = tap.stop();
    assert!(fin.status.success(), "{}", fin.stderr);
    server.join().unwrap();
}

/// Mounts a small tmpfs at `dir` for the life of the guard.
struct Tmpfs(std::path::PathBuf);

impl Tmpfs {
    fn new(dir: std::path::PathBuf, size: &str) -> Self {
        std::fs::create_dir_all(&dir).unwrap();
        sh(&[
            "mount",
            "-t",
            "tmpfs",
            "-o",
            &format!("size={size}"),
            "tmpfs",
            dir.to_str().unwrap(),
        ]);
        Self(dir)
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(&self.0).status();
    }
}

#[test]
fn a_full_disk_stops_the_live_archive_at_once_with_one_line() {
    if !privileged("a_full_disk_stops_the_live_archive_at_once_with_one_line") {
        return;
    }
    let pair = NetPair::new();
    let dir = TempDir::new("pipe-full");
    let www = dir.path("www");
    std::fs::create_dir_all(&www).unwrap();
    // Bodies that do not compress: 64 KiB of each is kept in the archive.
    let mut noise = Vec::with_capacity(200_000);
    let mut x = 0x2545_f491_4f6c_dd1du64;
    while noise.len() < 200_000 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        noise.extend_from_slice(&x.to_le_bytes());
    }
    std::fs::write(www.join("noise"), &noise).unwrap();
    let _srv = nginx(&pair.server_ns, &dir, &[format!("{}:80", pair.server_ip)]);
    let small = Tmpfs::new(dir.path("small"), "256k");
    let archive = small.0.join("live.rfcap");
    let mut tap = RfTap::spawn(
        &pair.client_ns,
        &[
            "attach",
            &pair.client_if,
            "--port",
            "80",
            "--rfcap",
            archive.to_str().unwrap(),
            "-q",
        ],
    );
    tap.wait_attached();
    let started = Instant::now();
    let url = format!("http://{}/noise", pair.server_ip);
    // Bounded: at most 60 requests (about 4 MiB of archive), or until rf-tap stops.
    let mut exited = None;
    for _ in 0..60 {
        assert_eq!(pair.curl(&url), 200);
        std::thread::sleep(Duration::from_millis(50));
        if started.elapsed() > Duration::from_secs(2) {
            // Give the pipeline a moment, then see whether it stopped by itself.
            let fin_check = std::fs::read_to_string(format!("/proc/{}/status", tap.pid()));
            if fin_check.is_err() || fin_check.unwrap().contains("State:\tZ") {
                exited = Some(started.elapsed());
                break;
            }
        }
    }
    let fin = tap.wait(Duration::from_secs(10));
    let took = exited.unwrap_or(started.elapsed());
    assert!(
        took < Duration::from_secs(8),
        "rf-tap kept capturing for {took:?} onto a full disk"
    );
    assert!(
        !fin.status.success(),
        "a full disk is an error: {}",
        fin.stderr
    );
    let errors: Vec<&str> = fin
        .stderr
        .lines()
        .filter(|l| l.starts_with("rf-tap:") && l.contains("No space left"))
        .collect();
    assert_eq!(errors.len(), 1, "one line naming the file: {}", fin.stderr);
    assert!(errors[0].contains("live.rfcap"), "{}", errors[0]);
    assert_eq!(
        tcx_program_count(&pair.client_ns, &pair.client_if),
        0,
        "nothing left attached"
    );
    drop(small);
}

#[test]
fn live_sinks_give_the_records_extract_gives_for_the_same_packets() {
    if !privileged("live_sinks_give_the_records_extract_gives_for_the_same_packets") {
        return;
    }
    let pair = NetPair::new();
    let dir = TempDir::new("pipe-same");
    let www = dir.path("www");
    std::fs::create_dir_all(&www).unwrap();
    for i in 0..8 {
        std::fs::write(
            www.join(format!("p{i}")),
            format!("page {i}\n").repeat(i + 1),
        )
        .unwrap();
    }
    let _srv = nginx(&pair.server_ns, &dir, &[format!("{}:80", pair.server_ip)]);
    let (pcap, jsonl, har, rfcap) = (
        dir.path("l.pcapng"),
        dir.path("l.jsonl"),
        dir.path("l.har"),
        dir.path("l.rfcap"),
    );
    let mut tap = RfTap::spawn(
        &pair.client_ns,
        &[
            "attach",
            &pair.client_if,
            "--port",
            "80",
            "-w",
            pcap.to_str().unwrap(),
            "--pcapng",
            "--jsonl",
            jsonl.to_str().unwrap(),
            "--har",
            har.to_str().unwrap(),
            "--rfcap",
            rfcap.to_str().unwrap(),
            "--workers",
            "2",
            "-q",
        ],
    );
    tap.wait_attached();
    for i in 0..8 {
        assert_eq!(pair.curl(&format!("http://{}/p{i}", pair.server_ip)), 200);
    }
    assert_eq!(pair.curl(&format!("http://{}/none", pair.server_ip)), 404);
    let fin = tap.stop();
    assert!(fin.status.success(), "{}", fin.stderr);

    // Ids and connection numbers depend on the sharding; everything else must agree.
    let norm = |mut v: serde_json::Value| {
        let o = v.as_object_mut().unwrap();
        o.remove("id");
        o.remove("conn");
        v.to_string()
    };
    let sorted = |mut v: Vec<String>| {
        v.sort();
        v
    };
    let file_jsonl = rf_tap_run(None, &["extract", "-q", pcap.to_str().unwrap()]);
    let file_jsonl: Vec<String> = sorted(
        String::from_utf8_lossy(&file_jsonl.stdout)
            .lines()
            .map(|l| norm(serde_json::from_str(l).unwrap()))
            .collect(),
    );
    assert_eq!(file_jsonl.len(), 9);
    let live = json_lines(&jsonl);
    // Captured on the client's interface: every request left the host (egress), and the
    // pcapng file keeps each packet's direction for the file pipeline too.
    for x in &live {
        assert_eq!(x["direction"], "outbound", "{x}");
        assert_eq!(x["client_by"], "syn", "{x}");
    }
    let live_jsonl = sorted(live.into_iter().map(norm).collect());
    assert!(
        live_jsonl == file_jsonl,
        "JSONL: live and file pipelines agree:\n{live_jsonl:?}\n{file_jsonl:?}"
    );

    let entries = |doc: &[u8]| -> Vec<String> {
        let v: serde_json::Value = serde_json::from_slice(doc).unwrap();
        let mut e: Vec<String> = v["log"]["entries"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| {
                // The connection number depends on the sharding, as in JSONL.
                let mut e = e.clone();
                e.as_object_mut().unwrap().remove("connection");
                e.to_string()
            })
            .collect();
        e.sort();
        e
    };
    let file_har = rf_tap_run(
        None,
        &["extract", "-q", "--format", "har", pcap.to_str().unwrap()],
    );
    let file_har = entries(&file_har.stdout);
    assert_eq!(file_har.len(), 9);
    let live_har = entries(&std::fs::read(&har).unwrap());
    assert!(live_har == file_har, "HAR: live and file pipelines agree");

    let summaries = |path: &Path| -> Vec<String> {
        let out = rf_tap_run(None, &["requests", path.to_str().unwrap(), "--json"]);
        assert!(out.status.success(), "{}", out.stderr);
        sorted(
            String::from_utf8_lossy(&out.stdout)
                .lines()
                .map(|l| norm(serde_json::from_str(l).unwrap()))
                .collect(),
        )
    };
    let offline = dir.path("o.rfcap");
    extract_archive(&pcap, &offline);
    assert_eq!(
        summaries(&rfcap),
        summaries(&offline),
        "rfcap: live and file pipelines agree"
    );
}

#[test]
fn a_snap_length_loses_bodies_not_exchanges() {
    if !privileged("a_snap_length_loses_bodies_not_exchanges") {
        return;
    }
    let pair = NetPair::new();
    let dir = TempDir::new("pipe-snap");
    let www = dir.path("www");
    std::fs::create_dir_all(&www).unwrap();
    std::fs::write(www.join("page"), "x".repeat(5000)).unwrap();
    let _srv = nginx(&pair.server_ns, &dir, &[format!("{}:80", pair.server_ip)]);
    for snap in ["96", "200", "400"] {
        let pcap = dir.path(&format!("s{snap}.pcap"));
        let mut tap = RfTap::spawn(
            &pair.client_ns,
            &[
                "attach",
                &pair.client_if,
                "--port",
                "80",
                "-s",
                snap,
                "-w",
                pcap.to_str().unwrap(),
                "-q",
            ],
        );
        tap.wait_attached();
        for _ in 0..5 {
            assert_eq!(pair.curl(&format!("http://{}/page", pair.server_ip)), 200);
        }
        assert!(tap.stop().status.success());
        let out = rf_tap_run(None, &["extract", "-q", pcap.to_str().unwrap()]);
        assert!(out.status.success(), "{}", out.stderr);
        let xs: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(xs.len(), 5, "-s {snap}: every exchange");
        for x in &xs {
            assert_eq!(x["method"], "GET", "-s {snap}: {x}");
            assert_eq!(
                x["status"], 200,
                "-s {snap}: the status line was captured: {x}"
            );
            assert!(x["latency_ms"].as_f64().is_some(), "-s {snap}: {x}");
            let flags = x["flags"].as_array().unwrap();
            assert!(flags.iter().any(|f| f == "truncated"), "-s {snap}: {x}");
        }
    }
}

/// What a client sent and got back on one keep-alive connection: `(path, status, body
/// length)` per request, read with httparse (the truth for a capture of it, never rf-tap).
fn keep_alive_client(server: String, batches: &[Vec<String>]) -> Vec<(String, u16, usize)> {
    let mut conn = TcpStream::connect(server).unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut got = Vec::new();
    let mut buf: Vec<u8> = Vec::new();
    for batch in batches {
        // A batch is pipelined: all its requests written before any answer is read.
        let mut out = String::new();
        for p in batch {
            out.push_str(&format!("GET {p} HTTP/1.1\r\nHost: test\r\n\r\n"));
        }
        conn.write_all(out.as_bytes()).unwrap();
        for p in batch {
            loop {
                let mut headers = [httparse::EMPTY_HEADER; 32];
                let mut res = httparse::Response::new(&mut headers);
                if let Ok(httparse::Status::Complete(n)) = res.parse(&buf) {
                    let len: usize = res
                        .headers
                        .iter()
                        .find(|h| h.name.eq_ignore_ascii_case("content-length"))
                        .map(|h| std::str::from_utf8(h.value).unwrap().parse().unwrap())
                        .unwrap();
                    if buf.len() >= n + len {
                        got.push((p.clone(), res.code.unwrap(), len));
                        buf.drain(..n + len);
                        break;
                    }
                }
                let mut chunk = [0u8; 65536];
                let k = conn.read(&mut chunk).unwrap();
                assert!(k > 0, "the server closed early");
                buf.extend_from_slice(&chunk[..k]);
            }
        }
    }
    got
}

#[test]
fn reordered_duplicated_copies_of_pipelined_traffic_lose_nothing() {
    if !privileged("reordered_duplicated_copies_of_pipelined_traffic_lose_nothing") {
        return;
    }
    let pair = NetPair::new();
    let dir = TempDir::new("pipe-reorder");
    let www = dir.path("www");
    std::fs::create_dir_all(&www).unwrap();
    let sizes = [1usize, 300, 3000, 9000, 20000, 45000];
    for (i, n) in sizes.iter().enumerate() {
        std::fs::write(www.join(format!("p{i}")), "y".repeat(*n)).unwrap();
    }
    let _srv = nginx(&pair.server_ns, &dir, &[format!("{}:80", pair.server_ip)]);
    let pcap = dir.path("clean.pcap");
    // rf-tap's own capture: it counts what it could not copy, so a loaded machine shows as
    // drops (asserted to be none) rather than as bytes missing from the input.
    let mut tap = RfTap::spawn(
        &pair.client_ns,
        &[
            "attach",
            &pair.client_if,
            "--port",
            "80",
            "-w",
            pcap.to_str().unwrap(),
            "--json",
            "-q",
        ],
    );
    tap.wait_attached();
    let server = format!("{}:80", pair.server_ip);
    let mut truth = Vec::new();
    for c in 0..3 {
        let pipelined: Vec<String> = (0..sizes.len())
            .map(|i| format!("/p{}", (i + c) % sizes.len()))
            .chain(["/none".to_string()])
            .collect();
        let one_by_one: Vec<Vec<String>> = (0..4)
            .map(|i| vec![format!("/p{}", (i * 2 + c) % sizes.len())])
            .collect();
        let batches: Vec<Vec<String>> = std::iter::once(pipelined)
            .chain(one_by_one)
            .chain(std::iter::once(vec!["/p5".into(), "/p1".into()]))
            .collect();
        let server = server.clone();
        truth.extend(in_netns(&pair.client_ns, move || {
            keep_alive_client(server, &batches)
        }));
    }
    std::thread::sleep(Duration::from_millis(200));
    let fin = tap.stop();
    assert!(fin.status.success(), "{}", fin.stderr);
    let summary = fin.json();
    assert_eq!(
        json_u64(&summary, "dropped_kernel") + json_u64(&summary, "dropped_user"),
        0,
        "{summary}"
    );
    assert_eq!(truth.len(), 3 * 13);

    let (records, torn) = read_pcap(&pcap);
    assert!(!torn);
    let bad = impair(&records, 1448);
    assert!(
        bad.reordered > 30 && bad.duplicated > 10 && bad.overlapping > 10,
        "the copy is disordered: {} reordered, {} duplicated, {} overlapping",
        bad.reordered,
        bad.duplicated,
        bad.overlapping
    );
    let messy = dir.path("messy.pcap");
    write_pcap(
        &messy,
        1,
        &bad.records
            .iter()
            .map(|r| (r.ts_ns, r.data.clone(), r.orig_len))
            .collect::<Vec<_>>(),
    );

    let mut want: Vec<String> = truth
        .iter()
        .map(|(p, s, n)| format!("{p} {s} {n}"))
        .collect();
    want.sort();
    for (name, file) in [("clean", &pcap), ("reordered", &messy)] {
        let out = rf_tap_run(None, &["extract", "-q", file.to_str().unwrap()]);
        assert!(out.status.success(), "{}", out.stderr);
        let xs: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        let mut seen: Vec<String> = xs
            .iter()
            .map(|x| format!("{} {} {}", x["uri"], x["status"], x["response_body_len"]))
            .map(|s| s.replace('"', ""))
            .collect();
        seen.sort();
        assert_eq!(seen, want, "{name}: every exchange the clients saw");
        for x in &xs {
            assert_eq!(x["flags"], serde_json::json!([]), "{name}: {x}");
            assert!(x["latency_ms"].as_f64().is_some(), "{name}: {x}");
        }
        let stats = rf_tap_run(None, &["extract", "--stats", file.to_str().unwrap()]);
        let v: serde_json::Value = stats
            .stderr
            .lines()
            .find_map(|l| serde_json::from_str(l).ok())
            .unwrap_or_else(|| panic!("{}", stats.stderr));
        assert_eq!(v["reassembly"]["gaps"], 0, "{name}: no false gap: {v}");
        if name == "reordered" {
            assert!(
                json_u64(&v["reassembly"], "after_ack_segments") > 0,
                "{name}: data came after its ACK: {v}"
            );
        }
    }
}

#[test]
fn cruft_after_a_request_is_an_anomaly_of_the_connection_not_an_exchange() {
    if !privileged("cruft_after_a_request_is_an_anomaly_of_the_connection_not_an_exchange") {
        return;
    }
    let pair = NetPair::new();
    let dir = TempDir::new("pipe-cruft");
    let www = dir.path("www");
    std::fs::create_dir_all(&www).unwrap();
    std::fs::write(www.join("p"), "page").unwrap();
    let _srv = nginx(&pair.server_ns, &dir, &[format!("{}:80", pair.server_ip)]);
    let pcap = dir.path("cruft.pcap");
    let dump = tcpdump(
        &pair.client_ns,
        &pair.client_if,
        &pcap,
        &["tcp", "port", "80"],
    );
    let server = format!("{}:80", pair.server_ip);
    // The truth: what the client read back, a 200 and then nginx's 400 to the cruft.
    let statuses = in_netns(&pair.client_ns, move || {
        let mut conn = TcpStream::connect(server).unwrap();
        conn.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        conn.write_all(b"GET /p HTTP/1.1\r\nHost: t\r\n\r\n")
            .unwrap();
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        let n = conn.read(&mut buf).unwrap();
        got.push(String::from_utf8_lossy(&buf[..n]).into_owned());
        conn.write_all(b"\x16\x03 not a request at all\r\n\r\n")
            .unwrap();
        let mut rest = Vec::new();
        let _ = conn.read_to_end(&mut rest);
        got.push(String::from_utf8_lossy(&rest).into_owned());
        got.iter()
            .map(|r| r.split(' ').nth(1).unwrap_or("").to_string())
            .collect::<Vec<_>>()
    });
    stop_tcpdump(dump);
    assert_eq!(statuses, ["200", "400"], "what nginx answered");

    let out = rf_tap_run(None, &["extract", "--stats", pcap.to_str().unwrap()]);
    assert!(out.status.success(), "{}", out.stderr);
    let xs: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(xs.len(), 1, "the request is the only exchange: {xs:?}");
    assert_eq!(
        (xs[0]["uri"].as_str(), xs[0]["status"].as_u64()),
        (Some("/p"), Some(200))
    );
    assert_eq!(xs[0]["anomalies"], serde_json::json!([]));
    let stats: serde_json::Value = out
        .stderr
        .lines()
        .find_map(|l| serde_json::from_str(l).ok())
        .unwrap();
    assert_eq!(
        stats["flow_anomalies"],
        serde_json::json!({"cruft": 1, "cruft_answered": 1}),
        "{stats}"
    );
    assert!(
        out.stderr
            .contains("anomalies of connections, not exchanges: cruft 1, cruft_answered 1"),
        "{}",
        out.stderr
    );
}

#[test]
fn http2_prior_knowledge_streams_are_exchanges() {
    if !privileged("http2_prior_knowledge_streams_are_exchanges") {
        return;
    }
    let pair = NetPair::new();
    let dir = TempDir::new("pipe-h2");
    let www = dir.path("www");
    std::fs::create_dir_all(&www).unwrap();
    for (i, n) in [10usize, 5000, 40000].iter().enumerate() {
        std::fs::write(www.join(format!("p{i}")), "z".repeat(*n)).unwrap();
    }
    let _srv = nginx(
        &pair.server_ns,
        &dir,
        &[
            format!("{}:80", pair.server_ip),
            format!("{}:8080 http2", pair.server_ip),
        ],
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
        ],
    );
    tap.wait_attached();
    // The truth is what curl got. (curl 7.88 cannot reuse a prior-knowledge connection
    // for a second URL: one connection per request.)
    let mut truth = Vec::new();
    let mut said = String::new();
    for p in ["p0", "p1", "p2", "none", "p1"] {
        let out = std::process::Command::new("ip")
            .args([
                "netns",
                "exec",
                &pair.client_ns,
                "curl",
                "-s",
                "--http2-prior-knowledge",
            ])
            .args([
                "-o",
                "/dev/null",
                "-w",
                "%{http_version} %{http_code} %{size_download}",
            ])
            .args(["--max-time", "5"])
            .arg(format!("http://{}:8080/{p}", pair.server_ip))
            .output()
            .unwrap();
        let line = String::from_utf8_lossy(&out.stdout).into_owned();
        let f: Vec<&str> = line.split(' ').collect();
        assert_eq!(f[0], "2", "curl spoke HTTP/2: {line}");
        truth.push(format!("/{p} {} {}", f[1], f[2]));
        said.push_str(&line);
    }
    assert_eq!(truth.len(), 5, "{said}");
    std::thread::sleep(Duration::from_millis(200));
    assert!(tap.stop().status.success());

    let ex = rf_tap_run(None, &["extract", "-q", pcap.to_str().unwrap()]);
    assert!(ex.status.success(), "{}", ex.stderr);
    let xs: Vec<serde_json::Value> = String::from_utf8_lossy(&ex.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let mut got: Vec<String> = xs
        .iter()
        .map(|x| {
            format!(
                "{} {} {}",
                x["uri"].as_str().unwrap_or("-"),
                x["status"],
                x["response_body_len"]
            )
        })
        .collect();
    let mut want = truth.clone();
    got.sort();
    want.sort();
    assert_eq!(
        got, want,
        "every stream an exchange with its status and body"
    );
    for x in &xs {
        assert_eq!(x["version"], "2", "{x}");
        assert_eq!(x["method"], "GET", "{x}");
        assert_eq!(x["host"], format!("{}:8080", pair.server_ip), "{x}");
        assert_eq!(x["flags"], serde_json::json!([]), "{x}");
        assert!(x["latency_ms"].as_f64().is_some(), "{x}");
    }
}
