//! The offline pipeline end to end, without root: a capture made here, `rf-tap extract`
//! (JSONL, HAR, rfcap), `rf-tap requests` with filters, `requests show` with masking, a torn
//! archive, and bad input.
#![allow(clippy::unwrap_used)]

use std::{path::Path, time::Duration};

use rf_tap_tests::{extract_archive, rf_tap_run, TempDir};

/// Writes a pcap of one TCP connection carrying `client` then `server` bytes per exchange,
/// with handshake, data segments of at most `mss` bytes, and FINs.
fn conversation(path: &Path, exchanges: &[(&[u8], &[u8])], mss: usize) {
    use rf_tap_engine::{
        packet::CapturedPacket,
        pcap::{CaptureFormat, FrameEncoder, InterfaceInfo},
    };
    let enc = FrameEncoder::new(
        CaptureFormat::Pcap,
        InterfaceInfo {
            name: "t".into(),
            linktype: pcap_file::DataLink::ETHERNET,
            snaplen: 65535,
        },
    );
    let mut buf = Vec::new();
    enc.file_header(&mut buf).unwrap();
    let (c, s) = ([10, 1, 1, 1], [10, 1, 1, 2]);
    let (mut cseq, mut sseq) = (1000u32, 5000u32);
    let mut t = Duration::from_secs(1_763_700_000);
    let mut frame =
        |from_client: bool, flags: &str, seq: u32, ack: u32, payload: &[u8], t: &mut Duration| {
            *t += Duration::from_millis(1);
            let (src, dst, sp, dp) = if from_client {
                (c, s, 40000, 80)
            } else {
                (s, c, 80, 40000)
            };
            let mut b = etherparse::PacketBuilder::ethernet2([1; 6], [2; 6])
                .ipv4(src, dst, 64)
                .tcp(sp, dp, seq, 65535);
            if flags.contains('S') {
                b = b.syn();
            }
            if flags.contains('A') {
                b = b.ack(ack);
            }
            if flags.contains('F') {
                b = b.fin();
            }
            let mut data = Vec::new();
            b.write(&mut data, payload).unwrap();
            enc.encode(
                &CapturedPacket {
                    ts: *t,
                    ifindex: 1,
                    direction: None,
                    orig_len: data.len() as u32,
                    data: &data,
                },
                &mut buf,
            )
            .unwrap();
        };
    frame(true, "S", cseq, 0, b"", &mut t);
    frame(false, "SA", sseq, cseq + 1, b"", &mut t);
    cseq += 1;
    sseq += 1;
    frame(true, "A", cseq, sseq, b"", &mut t);
    for (q, r) in exchanges {
        for part in q.chunks(mss) {
            frame(true, "A", cseq, sseq, part, &mut t);
            cseq += part.len() as u32;
        }
        for part in r.chunks(mss) {
            frame(false, "A", sseq, cseq, part, &mut t);
            sseq += part.len() as u32;
        }
    }
    frame(true, "AF", cseq, sseq, b"", &mut t);
    frame(false, "AF", sseq, cseq + 1, b"", &mut t);
    frame(true, "A", cseq + 1, sseq + 1, b"", &mut t);
    std::fs::write(path, buf).unwrap();
}

fn sample(dir: &TempDir) -> std::path::PathBuf {
    let p = dir.path("s.pcap");
    conversation(
        &p,
        &[
            (
                b"GET /api/users/u_1 HTTP/1.1\r\nHost: api.example\r\nAuthorization: Bearer s3cr3t-token\r\nCookie: sid=abc; theme=dark\r\n\r\n",
                b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nSet-Cookie: sid=xyz; Path=/\r\nContent-Length: 18\r\n\r\n{\"id\":\"u_1\",\"a\":1}",
            ),
            (
                b"POST /api/orders HTTP/1.1\r\nHost: api.example\r\nContent-Type: application/json\r\nContent-Length: 11\r\n\r\n{\"qty\": 2 }",
                b"HTTP/1.1 500 Internal Server Error\r\nContent-Type: text/plain\r\nTransfer-Encoding: chunked\r\n\r\n6\r\ncolumn\r\n9\r\n missing\n\r\n0\r\n\r\n",
            ),
            (b"GET /health HTTP/1.1\r\nHost: api.example\r\n\r\n", b"HTTP/1.1 204 No Content\r\n\r\n"),
        ],
        40,
    );
    p
}

fn lines(out: &[u8]) -> Vec<serde_json::Value> {
    String::from_utf8_lossy(out)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn extract_jsonl_follows_the_contract() {
    let dir = TempDir::new("off-jsonl");
    let pcap = sample(&dir);
    let fin = rf_tap_run(None, &["extract", pcap.to_str().unwrap()]);
    assert!(fin.status.success(), "{}", fin.stderr);
    let xs = lines(&fin.stdout);
    assert_eq!(xs.len(), 3);
    for k in [
        "id",
        "conn",
        "client",
        "server",
        "ts",
        "method",
        "uri",
        "version",
        "host",
        "status",
        "request_body_len",
        "response_body_len",
        "latency_ms",
        "flags",
    ] {
        assert!(xs.iter().all(|x| x.get(k).is_some()), "key {k} missing");
    }
    assert_eq!(xs[0]["client"], "10.1.1.1:40000");
    assert_eq!(xs[0]["server"], "10.1.1.2:80");
    assert_eq!(xs[0]["host"], "api.example");
    assert_eq!(xs[0]["response_body_len"], 18);
    assert_eq!(xs[1]["method"], "POST");
    assert_eq!(xs[1]["request_body_len"], 11);
    assert_eq!(xs[1]["status"], 500);
    assert_eq!(
        xs[1]["response_body_len"], 15,
        "chunked body, decoded length"
    );
    assert_eq!(xs[2]["status"], 204);
    assert!(xs[0]["ts"].as_f64().unwrap() > 1_763_700_000.0);
    assert!(xs[0]["latency_ms"].as_f64().unwrap() > 0.0);
    // One connection, one id (1 with one worker; with several, ids are per worker).
    assert!(xs.iter().all(|x| x["conn"] == xs[0]["conn"]));
    let one = rf_tap_run(None, &["extract", pcap.to_str().unwrap(), "--threads", "1"]);
    assert!(lines(&one.stdout).iter().all(|x| x["conn"] == 1));
}

#[test]
fn rfcap_requests_filters_and_show_with_masking() {
    let dir = TempDir::new("off-rfcap");
    let pcap = sample(&dir);
    let archive = dir.path("s.rfcap");
    let fin = rf_tap_run(
        None,
        &[
            "extract",
            pcap.to_str().unwrap(),
            "-o",
            archive.to_str().unwrap(),
        ],
    );
    assert!(fin.status.success(), "{}", fin.stderr);
    let a = archive.to_str().unwrap();

    let table = rf_tap_run(None, &["requests", a]);
    let text = String::from_utf8_lossy(&table.stdout);
    let header = text.lines().next().unwrap();
    for col in ["ID", "TIME", "METHOD", "PATH", "STATUS", "DURATION", "SIZE"] {
        assert!(header.contains(col), "{header}");
    }
    assert_eq!(text.lines().count(), 4);

    // The same filters on the archive and on the pcap read on the fly.
    for file in [a, pcap.to_str().unwrap()] {
        let only = |args: &[&str]| -> Vec<serde_json::Value> {
            let mut v = vec!["requests", file, "--json"];
            v.extend_from_slice(args);
            lines(&rf_tap_run(None, &v).stdout)
        };
        assert_eq!(only(&["--status", "500"]).len(), 1);
        assert_eq!(only(&["--status", "5xx"])[0]["path"], "/api/orders");
        assert_eq!(only(&["--method", "post"]).len(), 1);
        assert_eq!(only(&["--path", "/api/*"]).len(), 2);
        assert_eq!(only(&["--path", "/health"]).len(), 1);
        assert_eq!(only(&["--last", "1ms"]).len(), 1, "only the newest");
        assert_eq!(only(&["--since", "2030-01-01T00:00:00Z"]).len(), 0);
        assert_eq!(only(&["--until", "2030-01-01"]).len(), 3);
    }

    let show = rf_tap_run(None, &["requests", "show", "1", a]);
    let text = String::from_utf8_lossy(&show.stdout);
    assert!(show.status.success(), "{}", show.stderr);
    assert!(text.contains("> GET /api/users/u_1 HTTP/1.1"));
    assert!(text.contains("Authorization: Bearer ****"), "{text}");
    assert!(text.contains("Cookie: sid=****; theme=****"));
    assert!(text.contains("Set-Cookie: sid=****; Path=/"));
    assert!(!text.contains("s3cr3t"));
    assert!(
        text.contains("{\"id\":\"u_1\",\"a\":1}"),
        "response body shown"
    );
    let raw = rf_tap_run(None, &["requests", "show", "1", a, "--no-redact"]);
    assert!(String::from_utf8_lossy(&raw.stdout).contains("Bearer s3cr3t-token"));
    let show500 = rf_tap_run(None, &["requests", "show", "2", a]);
    let t = String::from_utf8_lossy(&show500.stdout);
    assert!(
        t.contains("< HTTP/1.1 500 Internal Server Error") && t.contains("column missing"),
        "{t}"
    );

    let missing = rf_tap_run(None, &["requests", "show", "99", a]);
    assert_eq!(missing.status.code(), Some(1));
    assert!(missing.stderr.contains("no exchange 99"));
}

#[test]
fn a_torn_archive_still_reads_up_to_the_tear() {
    let dir = TempDir::new("off-torn");
    let pcap = sample(&dir);
    let archive = dir.path("s.rfcap");
    rf_tap_run(
        None,
        &[
            "extract",
            pcap.to_str().unwrap(),
            "-o",
            archive.to_str().unwrap(),
        ],
    );
    let mut bytes = std::fs::read(&archive).unwrap();
    // Append a second, torn frame: the first one must still read. (The file is the 32-byte
    // header, one block, and the 32-byte end frame of version 2.)
    let whole = bytes.clone();
    bytes.extend_from_slice(&whole[32..whole.len() - 32 - 5]);
    std::fs::write(&archive, &bytes).unwrap();
    let fin = rf_tap_run(None, &["requests", archive.to_str().unwrap(), "--json"]);
    assert_eq!(lines(&fin.stdout).len(), 3);
    assert!(fin.stderr.contains("torn frame"), "{}", fin.stderr);
}

#[test]
fn har_export_is_one_valid_document() {
    let dir = TempDir::new("off-har");
    let pcap = sample(&dir);
    let fin = rf_tap_run(
        None,
        &["extract", pcap.to_str().unwrap(), "--format", "har"],
    );
    assert!(fin.status.success());
    let v: serde_json::Value = serde_json::from_slice(&fin.stdout).unwrap();
    let es = v["log"]["entries"].as_array().unwrap();
    assert_eq!(es.len(), 3);
    assert_eq!(es[1]["request"]["postData"]["text"], "{\"qty\": 2 }");
    assert_eq!(es[1]["response"]["content"]["text"], "column missing\n");
    assert_eq!(es[0]["request"]["url"], "http://api.example/api/users/u_1");
}

#[test]
fn bad_input_is_one_clear_line_and_a_nonzero_exit() {
    let dir = TempDir::new("off-bad");
    let junk = dir.path("junk.pcap");
    std::fs::write(&junk, b"this is not a capture at all").unwrap();
    let fin = rf_tap_run(None, &["extract", junk.to_str().unwrap()]);
    assert_eq!(fin.status.code(), Some(1));
    assert!(
        fin.stderr.contains("not a pcap or pcapng file"),
        "{}",
        fin.stderr
    );
    let fin = rf_tap_run(None, &["requests", "/nonexistent.rfcap"]);
    assert_eq!(fin.status.code(), Some(1));
    assert!(fin.stderr.contains("cannot open /nonexistent.rfcap"));
    // A truncated capture: everything whole is extracted, the tear is reported, exit 1.
    let pcap = sample(&dir);
    let bytes = std::fs::read(&pcap).unwrap();
    let cut = dir.path("cut.pcap");
    std::fs::write(&cut, &bytes[..bytes.len() - 30]).unwrap();
    let fin = rf_tap_run(None, &["extract", cut.to_str().unwrap()]);
    assert_eq!(fin.status.code(), Some(1));
    assert!(
        fin.stderr.contains("truncated record at byte"),
        "{}",
        fin.stderr
    );
    assert_eq!(
        lines(&fin.stdout).len(),
        3,
        "the exchanges before the tear are there"
    );
}

#[test]
fn threads_give_the_same_exchanges() {
    // 120 connections whose exchanges interleave, so every worker has some and their
    // exchanges complete in between each other's.
    let dir = TempDir::new("threads");
    let path = dir.path("many.pcap");
    let file = std::io::BufWriter::new(std::fs::File::create(&path).unwrap());
    let mut w = rf_tap_engine::pcap::synth::SynthWriter::new(file).unwrap();
    let server = "10.7.0.2:80".parse().unwrap();
    let mut t = Duration::from_secs(1_700_000_000);
    let mut convs: Vec<_> = (0..120u16)
        .map(|i| {
            t += Duration::from_micros(50);
            let client = format!("10.7.{}.{}:{}", 1 + i / 200, 1 + i % 200, 40000 + i)
                .parse()
                .unwrap();
            w.open(t, client, server).unwrap()
        })
        .collect();
    for round in 0..3 {
        for (i, c) in convs.iter_mut().enumerate() {
            t += Duration::from_micros(30);
            let req = format!("GET /r{round}/c{i} HTTP/1.1\r\nHost: x\r\n\r\n");
            let body = "y".repeat(i * 37 % 3000);
            let resp = format!(
                "HTTP/1.1 {} OK\r\nContent-Length: {}\r\n\r\n{body}",
                200 + (i % 3),
                body.len()
            );
            w.exchange(
                c,
                t,
                req.as_bytes(),
                Duration::from_micros(200),
                resp.as_bytes(),
            )
            .unwrap();
        }
    }
    // Closed in reverse, the last exchanges of some end at end of input.
    for c in convs.iter_mut().rev().skip(10) {
        t += Duration::from_micros(10);
        w.close(c, t).unwrap();
    }
    w.finish().unwrap();

    let run = |threads: &str| {
        let p = path.to_str().unwrap();
        let out = rf_tap_run(None, &["extract", p, "--threads", threads, "-q"]);
        assert!(out.status.success(), "{}", out.stderr);
        lines(&out.stdout)
    };
    let key = |x: &serde_json::Value| {
        format!(
            "{} {} {} {} {} {} {}",
            x["client"],
            x["method"],
            x["uri"],
            x["status"],
            x["response_body_len"],
            x["ts"],
            x["flags"]
        )
    };
    let one = run("1");
    assert_eq!(one.len(), 360);
    let mut want: Vec<String> = one.iter().map(key).collect();
    want.sort();
    for threads in ["2", "4"] {
        let many = run(threads);
        let mut got: Vec<String> = many.iter().map(key).collect();
        got.sort();
        assert_eq!(got, want, "--threads {threads}");
        // Ids count in output order; connection ids are unique, one per connection.
        let ids: Vec<u64> = many.iter().map(|x| x["id"].as_u64().unwrap()).collect();
        assert_eq!(ids, (1..=360).collect::<Vec<u64>>());
        let conns: std::collections::BTreeMap<String, std::collections::BTreeSet<u64>> =
            many.iter().fold(Default::default(), |mut m, x| {
                m.entry(x["client"].to_string())
                    .or_default()
                    .insert(x["conn"].as_u64().unwrap());
                m
            });
        assert_eq!(conns.len(), 120);
        assert!(conns.values().all(|c| c.len() == 1));
        let distinct: std::collections::BTreeSet<u64> = conns.values().flatten().copied().collect();
        assert_eq!(distinct.len(), 120, "connection ids are unique");
    }
}

/// A capture of `n` keep-alive connections of `per` exchanges each (the engine's synthetic
/// writer: handshake, data with ACKs, FINs).
fn synthetic(path: &Path, connections: u32, per: u32) {
    use rf_tap_engine::pcap::synth::SynthWriter;
    let file = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
    let mut w = SynthWriter::new(file).unwrap();
    let body = "x".repeat(900);
    let response = format!(
        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let mut t = Duration::from_secs(1_763_700_000);
    for c in 0..connections {
        let client = std::net::SocketAddrV4::new([10, 2, (c >> 8) as u8, c as u8].into(), 40_000);
        let server = std::net::SocketAddrV4::new([10, 3, 0, 1].into(), 80);
        let mut conv = w.open(t, client, server).unwrap();
        for i in 0..per {
            t += Duration::from_millis(1);
            let request = format!("GET /items/{c}/{i} HTTP/1.1\r\nHost: api\r\n\r\n");
            w.exchange(
                &mut conv,
                t,
                request.as_bytes(),
                Duration::from_micros(300),
                response.as_bytes(),
            )
            .unwrap();
        }
        w.close(&mut conv, t + Duration::from_millis(1)).unwrap();
    }
    w.finish().unwrap();
}

#[test]
fn a_killed_extract_leaves_the_old_archive_intact() {
    let dir = TempDir::new("off-kill");
    let pcap = sample(&dir);
    let archive = dir.path("out.rfcap");
    let a = archive.to_str().unwrap();
    let first = rf_tap_run(None, &["extract", pcap.to_str().unwrap(), "-o", a]);
    assert!(first.status.success(), "{}", first.stderr);
    let old = std::fs::read(&archive).unwrap();
    // A capture large enough that extracting it takes a while.
    let big = dir.path("big.pcap");
    synthetic(&big, 200, 400);
    let mut child = std::process::Command::new(rf_tap_tests::rf_tap_bin())
        .args(["extract", big.to_str().unwrap(), "-o", a, "-q"])
        .stdin(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let tmp = dir.path(&format!(".out.rfcap.rf-tap-{}.tmp", child.id()));
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while !tmp.exists() && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(1));
    }
    assert!(tmp.exists(), "extract writes beside the destination first");
    // Let it write a block or two, then kill it.
    std::thread::sleep(Duration::from_millis(100));
    child.kill().unwrap();
    let status = child.wait().unwrap();
    assert!(
        !status.success(),
        "killed before it finished: make the capture larger"
    );
    assert_eq!(
        std::fs::read(&archive).unwrap(),
        old,
        "the old archive is untouched"
    );
    let fin = rf_tap_run(None, &["requests", a, "--json"]);
    assert!(fin.status.success(), "{}", fin.stderr);
    assert_eq!(lines(&fin.stdout).len(), 3);
    // Run to completion, the new archive replaces the old one whole.
    let done = rf_tap_run(None, &["extract", big.to_str().unwrap(), "-o", a, "-q"]);
    assert!(done.status.success(), "{}", done.stderr);
    let fin = rf_tap_run(None, &["requests", a, "--json"]);
    assert!(fin.status.success(), "{}", fin.stderr);
    assert_eq!(lines(&fin.stdout).len(), 200 * 400);
    assert!(!fin.stderr.contains("no end frame"), "{}", fin.stderr);
}

#[test]
fn a_flipped_byte_in_a_middle_frame_loses_that_frame_only() {
    let dir = TempDir::new("off-flip");
    let big = dir.path("big.pcap");
    // About 4 MB of exchanges: several 1 MiB blocks.
    synthetic(&big, 8, 500);
    let archive = dir.path("a.rfcap");
    let a = archive.to_str().unwrap();
    let done = rf_tap_run(None, &["extract", big.to_str().unwrap(), "-o", a, "-q"]);
    assert!(done.status.success(), "{}", done.stderr);
    let all = lines(&rf_tap_run(None, &["requests", a, "--json"]).stdout);
    assert_eq!(all.len(), 4000);
    // Frame offsets, from the file itself.
    let mut bytes = std::fs::read(&archive).unwrap();
    let offsets: Vec<usize> = rf_tap_engine::archive::ArchiveReader::new(&bytes)
        .unwrap()
        .map(|b| b.offset)
        .collect();
    assert!(offsets.len() >= 3, "{offsets:?}");
    let flip = offsets[1] + 100;
    bytes[flip] ^= 0x20;
    std::fs::write(&archive, &bytes).unwrap();
    let fin = rf_tap_run(None, &["requests", a, "--json"]);
    assert_eq!(fin.status.code(), Some(1), "damage is in the exit status");
    assert!(
        fin.stderr
            .contains(&format!("corrupt frame at byte {}", offsets[1])),
        "{}",
        fin.stderr
    );
    let got = lines(&fin.stdout);
    let lost = all.len() - got.len();
    assert!(lost > 0 && got.len() > all.len() / 2, "lost {lost}");
    // The frames after the damaged one still read: the last exchange is there.
    assert_eq!(got.last().unwrap()["id"], all.last().unwrap()["id"]);
}

#[test]
fn protocols_that_are_not_http_are_counted_not_parsed() {
    use rf_tap_engine::pcap::synth::SynthWriter;
    let dir = TempDir::new("off-proto");
    let path = dir.path("mixed.pcap");
    let mut w = SynthWriter::new(std::fs::File::create(&path).unwrap()).unwrap();
    let t = Duration::from_secs(1_763_700_000);
    let (c, s) = (
        std::net::SocketAddrV4::new([10, 9, 0, 1].into(), 40_000),
        std::net::SocketAddrV4::new([10, 9, 0, 2].into(), 8080),
    );
    let mut h2 = w.open(t, c, s).unwrap();
    w.send(
        &mut h2,
        t + Duration::from_millis(1),
        true,
        b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0",
    )
    .unwrap();
    w.close(&mut h2, t + Duration::from_millis(2)).unwrap();
    let mut smtp = w
        .open(
            t + Duration::from_millis(3),
            std::net::SocketAddrV4::new([10, 9, 0, 1].into(), 40_001),
            std::net::SocketAddrV4::new([10, 9, 0, 3].into(), 25),
        )
        .unwrap();
    let at = |ms| t + Duration::from_millis(ms);
    w.send(&mut smtp, at(4), false, b"220 mx ESMTP\r\n")
        .unwrap();
    w.exchange(
        &mut smtp,
        at(5),
        b"HELO me\r\n",
        Duration::from_millis(1),
        b"250 ok\r\n",
    )
    .unwrap();
    w.close(&mut smtp, at(7)).unwrap();
    w.finish().unwrap();
    let fin = rf_tap_run(None, &["extract", path.to_str().unwrap(), "--stats"]);
    assert!(fin.status.success(), "{}", fin.stderr);
    assert!(
        lines(&fin.stdout).is_empty(),
        "no `PRI *` or `HELO` exchange"
    );
    let stats: serde_json::Value = fin
        .stderr
        .lines()
        .find_map(|l| serde_json::from_str(l).ok())
        .unwrap();
    assert_eq!(stats["protocols"]["http2"]["connections"], 1, "{stats}");
    assert_eq!(stats["protocols"]["opaque"]["connections"], 1, "{stats}");
    assert_eq!(stats["protocols"]["http1"]["connections"], 0, "{stats}");
    // HTTP/2 is decoded (its preface alone gives no exchange); the SMTP session is named.
    assert!(
        fin.stderr
            .contains("connections not decoded (counted only): 1 opaque"),
        "{}",
        fin.stderr
    );
}

#[test]
fn outputs_are_private_and_never_written_through_a_link() {
    use std::os::unix::fs::PermissionsExt;
    let dir = TempDir::new("private");
    let pcap = sample(&dir);
    let p = pcap.to_str().unwrap();
    let mode = |path: &Path| std::fs::metadata(path).unwrap().permissions().mode() & 0o777;

    let archive = dir.path("x.rfcap");
    let done = rf_tap_run(None, &["extract", "-q", p, "-o", archive.to_str().unwrap()]);
    assert!(done.status.success(), "{}", done.stderr);
    assert_eq!(mode(&archive), 0o600, "archives are private to their owner");
    let replayed = dir.path("r.pcap");
    let done = rf_tap_run(None, &["replay", p, "-w", replayed.to_str().unwrap(), "-q"]);
    assert!(done.status.success(), "{}", done.stderr);
    assert_eq!(mode(&replayed), 0o600, "captures too");
    let shared = dir.path("shared.rfcap");
    let done = rf_tap_run(
        None,
        &[
            "extract",
            "-q",
            p,
            "-o",
            shared.to_str().unwrap(),
            "--file-mode",
            "0640",
        ],
    );
    assert!(done.status.success(), "{}", done.stderr);
    assert_eq!(mode(&shared), 0o640, "--file-mode");

    // A symlink at the output path: refused in one line, its target untouched.
    let precious = dir.path("precious");
    std::fs::write(&precious, b"keep me").unwrap();
    for (i, args) in [
        vec!["extract", "-q", p, "-o"],
        vec!["replay", p, "-q", "-w"],
    ]
    .into_iter()
    .enumerate()
    {
        let link = dir.path(&format!("link{i}.out"));
        std::os::unix::fs::symlink(&precious, &link).unwrap();
        let mut args = args;
        args.push(link.to_str().unwrap());
        let f = rf_tap_run(None, &args);
        assert!(!f.status.success(), "{args:?}");
        assert!(f.stderr.contains("symbolic link"), "{args:?}: {}", f.stderr);
        assert_eq!(f.stderr.trim().lines().count(), 1, "{}", f.stderr);
        assert_eq!(std::fs::read(&precious).unwrap(), b"keep me", "{args:?}");
        assert!(std::fs::symlink_metadata(&link)
            .unwrap()
            .file_type()
            .is_symlink());
    }
}

/// The sample capture and its archive, whole, and each cut: the capture inside its last
/// record, the archive inside its last frame. `(pcap, archive, cut pcap, cut archive)`.
fn damaged_inputs(
    dir: &TempDir,
) -> (
    std::path::PathBuf,
    std::path::PathBuf,
    std::path::PathBuf,
    std::path::PathBuf,
) {
    let pcap = sample(dir);
    let whole = std::fs::read(&pcap).unwrap();
    let cut = dir.path("cut.pcap");
    std::fs::write(&cut, &whole[..whole.len() - 20]).unwrap();
    let archive = dir.path("a.rfcap");
    extract_archive(&pcap, &archive);
    let bytes = std::fs::read(&archive).unwrap();
    let cut_archive = dir.path("cut.rfcap");
    std::fs::write(&cut_archive, &bytes[..bytes.len() - 40]).unwrap();
    (pcap, archive, cut, cut_archive)
}

#[test]
fn damaged_input_is_used_warned_about_and_exits_1_in_every_command() {
    use rf_tap_tests::http_server::{Reply, TestServer};
    let dir = TempDir::new("damaged");
    let (pcap, _, cut, cut_archive) = damaged_inputs(&dir);
    let server = TestServer::start(|_| Reply::json(200, "{}"));
    let url = server.url();
    let (c, a) = (cut.to_str().unwrap(), cut_archive.to_str().unwrap());
    let replayed = dir.path("r.pcap");
    for args in [
        vec!["extract", "-q", c],
        vec!["requests", c],
        vec!["requests", a],
        vec!["replay", c, "-q", "-w", replayed.to_str().unwrap()],
    ]
    .into_iter()
    .chain([c, a].map(|f| {
        vec![
            "replay",
            f,
            "-q",
            "--target",
            &url,
            "--allow-writes",
            "--no-save",
        ]
    })) {
        let f = rf_tap_run(None, &args);
        assert_eq!(f.status.code(), Some(1), "{args:?}: {}", f.stderr);
        // The warning says where.
        assert!(f.stderr.contains("byte"), "{args:?}: {}", f.stderr);
        // What was readable was used.
        let used = !f.stdout.is_empty() || replayed.exists();
        assert!(used, "{args:?}");
    }
    assert!(
        server.requests().len() >= 2,
        "the readable exchanges were replayed"
    );
    // The same commands on whole input exit 0.
    let p = pcap.to_str().unwrap();
    for args in [vec!["extract", "-q", p], vec!["requests", p]] {
        let f = rf_tap_run(None, &args);
        assert!(f.status.success(), "{args:?}: {}", f.stderr);
    }
}

#[test]
fn argument_mistakes_are_one_line_and_exit_2() {
    for (args, words) in [
        (
            vec!["attach", "lo", "--duration", "xyz"],
            "`xyz` is not a duration",
        ),
        (
            vec!["attach", "lo", "--mode", "bogus"],
            "possible values: tc, xdp, afxdp",
        ),
        (
            vec![
                "replay",
                "x.pcap",
                "--target",
                "http://127.0.0.1:9",
                "--fail-if",
                "bogus>1",
            ],
            "unknown metric `bogus`",
        ),
        (vec!["extract"], "<INPUT>"),
        (vec!["requests", "show"], "<ID> <FILE>"),
        (
            vec!["attach", "lo", "--bogus"],
            "unexpected argument '--bogus'",
        ),
    ] {
        let f = rf_tap_run(None, &args);
        assert_eq!(f.status.code(), Some(2), "{args:?}: {}", f.stderr);
        assert_eq!(f.stderr.trim().lines().count(), 1, "{args:?}: {}", f.stderr);
        assert!(f.stderr.contains(words), "{args:?}: {}", f.stderr);
        assert!(f.stdout.is_empty());
    }
    // Help is not a mistake.
    let f = rf_tap_run(None, &["extract", "--help"]);
    assert!(f.status.success());
    assert!(String::from_utf8_lossy(&f.stdout).contains("Usage: rf-tap extract"));
}

#[test]
fn requests_json_and_extract_give_the_same_exchange_records() {
    let dir = TempDir::new("one-shape");
    let pcap = sample(&dir);
    let p = pcap.to_str().unwrap();
    let archive = dir.path("s.rfcap");
    extract_archive(&pcap, &archive);
    let extract = lines(&rf_tap_run(None, &["extract", "-q", p]).stdout);
    assert_eq!(extract.len(), 3);
    for file in [p, archive.to_str().unwrap()] {
        let requests = lines(&rf_tap_run(None, &["requests", file, "--json"]).stdout);
        assert_eq!(
            requests, extract,
            "requests --json on {file}: the extract records"
        );
    }
    // `path` is `uri` without its query, in both.
    assert!(extract
        .iter()
        .all(|x| x["path"] == x["uri"].as_str().unwrap().split('?').next().unwrap()));
}

#[test]
fn runtime_mistakes_are_one_line_naming_the_thing_once() {
    let dir = TempDir::new("mistakes");
    let pcap = sample(&dir);
    let p = pcap.to_str().unwrap();
    let d = dir.path("");
    let dir_arg = d.to_str().unwrap();
    let missing = dir.path("no/such/dir/out.rfcap");
    for (args, words) in [
        (vec!["extract", dir_arg], "is a directory"),
        (vec!["requests", dir_arg], "is a directory"),
        (vec!["requests", "/dev/null"], "not a regular file"),
        (
            vec!["extract", "/nonexistent.pcap"],
            "cannot open /nonexistent.pcap",
        ),
        (
            vec!["extract", "-q", p, "-o", missing.to_str().unwrap()],
            "cannot write",
        ),
    ] {
        let f = rf_tap_run(None, &args);
        assert_eq!(f.status.code(), Some(1), "{args:?}: {}", f.stderr);
        let err = f.stderr.trim();
        assert_eq!(err.lines().count(), 1, "{args:?}: {err}");
        assert!(err.contains(words), "{args:?}: {err}");
        // The cause is said once.
        for cause in ["No such file or directory", "os error"] {
            assert!(err.matches(cause).count() <= 1, "{args:?}: {err}");
        }
    }
    // -o names the file asked for, not the temporary name beside it.
    let f = rf_tap_run(None, &["extract", "-q", p, "-o", missing.to_str().unwrap()]);
    assert!(f.stderr.contains(missing.to_str().unwrap()), "{}", f.stderr);
    assert!(!f.stderr.contains(".tmp"), "{}", f.stderr);
}

#[test]
fn wifi_ppp_and_hdlc_captures_give_the_ethernet_exchanges_and_unknown_links_are_named() {
    use rf_tap_tests::{read_pcap, write_pcap};
    let dir = TempDir::new("links");
    let pcap = sample(&dir);
    let (records, _) = read_pcap(&pcap);
    let want: Vec<serde_json::Value> =
        lines(&rf_tap_run(None, &["extract", "-q", pcap.to_str().unwrap()]).stdout);
    assert_eq!(want.len(), 3);
    let dot11 = {
        let mut h = vec![0x88, 0x02];
        h.extend_from_slice(&[0; 22]);
        h.extend_from_slice(&[0, 0]);
        h.extend_from_slice(&[0xaa, 0xaa, 0x03, 0, 0, 0, 0x08, 0x00]);
        h
    };
    for (linktype, head) in [
        (
            127u32,
            [vec![0, 0, 8, 0, 0, 0, 0, 0], dot11.clone()].concat(),
        ), // radiotap
        (105, dot11.clone()), // 802.11
        (
            192,
            [vec![0, 0, 8, 0, 105, 0, 0, 0], dot11.clone()].concat(),
        ), // PPI
        (104, vec![0x0f, 0x00, 0x08, 0x00]), // Cisco HDLC
        (9, vec![0xff, 0x03, 0x21]), // PPP, compressed
    ] {
        let converted: Vec<(u64, Vec<u8>, u32)> = records
            .iter()
            .map(|r| {
                let frame = [head.clone(), r.data[14..].to_vec()].concat();
                let len = frame.len() as u32;
                (r.ts_ns, frame, len)
            })
            .collect();
        let path = dir.path(&format!("l{linktype}.pcap"));
        write_pcap(&path, linktype, &converted);
        let got = lines(&rf_tap_run(None, &["extract", "-q", path.to_str().unwrap()]).stdout);
        let key = |x: &serde_json::Value| {
            (
                x["method"].clone(),
                x["uri"].clone(),
                x["status"].clone(),
                x["response_body_len"].clone(),
            )
        };
        assert_eq!(
            got.iter().map(key).collect::<Vec<_>>(),
            want.iter().map(key).collect::<Vec<_>>(),
            "link type {linktype}"
        );
    }
    // A link type rf-tap does not decode: named, with its count, never a silent zero.
    let converted: Vec<(u64, Vec<u8>, u32)> = records
        .iter()
        .map(|r| (r.ts_ns, r.data.clone(), r.data.len() as u32))
        .collect();
    let odd = dir.path("odd.pcap");
    write_pcap(&odd, 147, &converted);
    let f = rf_tap_run(None, &["extract", odd.to_str().unwrap()]);
    assert!(
        f.stderr.contains(&format!(
            "{} frames of link types rf-tap does not decode, left out: 147 ({} frames)",
            records.len(),
            records.len()
        )),
        "{}",
        f.stderr
    );
}

#[test]
fn strict_refuses_damaged_input_before_doing_anything() {
    use rf_tap_tests::http_server::{Reply, TestServer};
    let dir = TempDir::new("strict");
    let (_, archive, cut, cut_archive) = damaged_inputs(&dir);
    let server = TestServer::start(|_| Reply::json(200, "{}"));
    let url = server.url();
    let (c, a) = (cut.to_str().unwrap(), cut_archive.to_str().unwrap());
    let out = dir.path("never.rfcap");
    let replayed = dir.path("never.pcap");
    for args in [
        vec!["extract", "-q", "--strict", c, "-o", out.to_str().unwrap()],
        vec!["extract", "--strict", c],
        vec!["requests", "--strict", a],
        vec![
            "replay",
            c,
            "--strict",
            "-q",
            "-w",
            replayed.to_str().unwrap(),
        ],
        vec![
            "replay",
            a,
            "--strict",
            "-q",
            "--target",
            &url,
            "--allow-writes",
            "--no-save",
        ],
    ] {
        let f = rf_tap_run(None, &args);
        assert_eq!(f.status.code(), Some(1), "{args:?}: {}", f.stderr);
        assert!(
            f.stderr.contains("--strict: nothing was done"),
            "{args:?}: {}",
            f.stderr
        );
        assert!(f.stdout.is_empty(), "{args:?}");
    }
    assert!(!out.exists() && !replayed.exists(), "nothing written");
    assert!(server.requests().is_empty(), "nothing sent");
    // Whole input passes --strict.
    let f = rf_tap_run(None, &["requests", "--strict", archive.to_str().unwrap()]);
    assert!(f.status.success(), "{}", f.stderr);
}
