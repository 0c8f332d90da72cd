//! HTTP replay end to end: the rf-tap binary replays synthetic captures (written by the
//! engine's synth writer, read back by the real pipeline) against real servers started
//! here: an in-process server with a v1 and a v2 behaviour, fault servers, a TLS server,
//! and nginx.
#![allow(clippy::unwrap_used)]

use std::{
    net::SocketAddrV4,
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use rf_tap_engine::pcap::synth::SynthWriter;
use rf_tap_tests::{
    http_server::{Reply, Seen, TestServer},
    rf_tap_run, TempDir,
};
use serde_json::Value;

/// One captured request: when (ms from the capture start), the request, production's
/// response, and production's latency (ms).
struct Cap {
    at_ms: u64,
    request: String,
    response: String,
    latency_ms: u64,
}

fn get(at_ms: u64, path: &str, status: u16, body: &str) -> Cap {
    Cap {
        at_ms,
        request: format!("GET {path} HTTP/1.1\r\nHost: prod.example\r\nCookie: session=prod\r\n\r\n"),
        response: format!(
            "HTTP/1.1 {status} OK\r\nContent-Type: application/json\r\nDate: Mon, 01 Jan 2025 00:00:00 GMT\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        ),
        latency_ms: 2,
    }
}

fn post(at_ms: u64, path: &str, body: &str) -> Cap {
    Cap {
        at_ms,
        request: format!(
            "POST {path} HTTP/1.1\r\nHost: prod.example\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        ),
        response: "HTTP/1.1 201 Created\r\nContent-Length: 2\r\nContent-Type: application/json\r\n\r\n{}".into(),
        latency_ms: 2,
    }
}

/// Writes a capture: each inner list is one connection's requests, in order.
fn capture(path: &Path, conns: &[Vec<Cap>]) {
    let file = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
    let mut w = SynthWriter::new(file).unwrap();
    let t0 = Duration::from_secs(1_763_719_200);
    let server: SocketAddrV4 = "10.0.0.2:80".parse().unwrap();
    for (i, reqs) in conns.iter().enumerate() {
        let client = SocketAddrV4::new([10, 0, 0, 1].into(), 20_000 + i as u16);
        let start = reqs.first().map_or(0, |c| c.at_ms);
        let mut c = w
            .open(
                t0 + Duration::from_millis(start) - Duration::from_micros(100),
                client,
                server,
            )
            .unwrap();
        let mut end = 0;
        for r in reqs {
            w.exchange(
                &mut c,
                t0 + Duration::from_millis(r.at_ms),
                r.request.as_bytes(),
                Duration::from_millis(r.latency_ms),
                r.response.as_bytes(),
            )
            .unwrap();
            end = r.at_ms + r.latency_ms + 1;
        }
        w.close(&mut c, t0 + Duration::from_millis(end)).unwrap();
    }
    w.finish().unwrap();
}

fn replay(args: &[&str]) -> (i32, Value, String) {
    let f = rf_tap_run(None, args);
    let out = String::from_utf8_lossy(&f.stdout).into_owned();
    let v = if args.contains(&"--json") {
        serde_json::from_str(out.trim())
            .unwrap_or_else(|e| panic!("not JSON ({e}): {out}\n{}", f.stderr))
    } else {
        Value::String(out)
    };
    (f.status.code().unwrap_or(-1), v, f.stderr)
}

/// `rf-tap replay CAPTURE --target URL EXTRA...`.
fn http(capture: &Path, url: &str, extra: &[&str]) -> (i32, Value, String) {
    let mut args = vec!["replay", capture.to_str().unwrap(), "--target", url];
    args.extend_from_slice(extra);
    replay(&args)
}

use rf_tap_tests::json_u64 as n;

fn v2_server() -> TestServer {
    TestServer::start(|r: &Seen| {
        let path = r.target.split('?').next().unwrap_or("");
        if let Some(id) = path.strip_prefix("/api/users/") {
            Reply::json(
                200,
                &format!(r#"{{"id":"{id}","name":"Ann","avatar":"a.png"}}"#),
            )
        } else if path == "/api/orders" {
            Reply::json(500, r#"{"error":"column orders.discount does not exist"}"#)
        } else {
            Reply::json(200, r#"{"ok":true}"#)
        }
    })
}

#[test]
fn diffs_against_a_new_version_are_counted_saved_and_shown() {
    let dir = TempDir::new("http-diff");
    let pcap = dir.path("capture.pcap");
    capture(
        &pcap,
        &[
            vec![
                get(0, "/api/users/u_123", 200, r#"{"id":"u_123","name":"Ann"}"#),
                get(5, "/api/orders", 200, r#"{"orders":[]}"#),
            ],
            vec![
                get(2, "/api/status", 200, r#"{"ok":true}"#),
                get(8, "/api/users/u_456", 200, r#"{"id":"u_456","name":"Ann"}"#),
            ],
        ],
    );
    let server = v2_server();
    let (code, v, err) = http(&pcap, &server.url(), &["--topspeed", "--json"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        (
            n(&v, "requests"),
            n(&v, "succeeded"),
            n(&v, "failed"),
            n(&v, "diffs"),
            n(&v, "compared")
        ),
        (4, 3, 1, 3, 4),
        "{v}"
    );
    assert_eq!(v["errors"]["server_error_5xx"], 1);
    for k in ["p50", "p95", "p99"] {
        assert!(v["latency_ms"]["target"][k].as_f64().is_some(), "{v}");
        assert!(
            v["latency_ms"]["production"][k].as_f64().unwrap() > 1.0,
            "{v}"
        );
    }
    let saved = PathBuf::from(v["results_file"].as_str().unwrap());
    assert!(
        saved.starts_with(dir.path("capture.pcap.replay")),
        "{saved:?}"
    );

    // The human report names the count and the command to see them.
    let (code, text, _) = http(&pcap, &server.url(), &["--topspeed"]);
    assert_eq!(code, 0);
    let text = text.as_str().unwrap().to_string();
    assert!(
        text.contains("Response diff: 3 responses differed from production"),
        "{text}"
    );
    assert!(
        text.contains(&format!(
            "View diffs: rf-tap replay diff {}",
            pcap.display()
        )),
        "{text}"
    );
    assert!(text.contains("RESULTS") && text.contains("p95"), "{text}");

    let (code, shown, err) = replay(&["replay", "diff", pcap.to_str().unwrap(), "--show", "5"]);
    assert_eq!(code, 0, "{err}");
    let shown = shown.as_str().unwrap().to_string();
    assert!(shown.contains("DIFF 1/3 — GET /api/"), "{shown}");
    assert!(shown.contains("— GET /api/users/u_123\n"), "{shown}");
    assert!(
        shown.contains("New field \"avatar\" in target response"),
        "{shown}"
    );
    assert!(shown.contains("200 → 500"), "{shown}");
    assert!(
        shown.contains("Schema mismatch — staging migration may be missing")
            || shown.contains("Schema mismatch"),
        "{shown}"
    );
    assert!(shown.contains("endpoint GET /api/users/{id}"), "{shown}");
    let (_, one, _) = replay(&["replay", "diff", pcap.to_str().unwrap(), "--show", "1"]);
    assert!(one
        .as_str()
        .unwrap()
        .contains("2 more; --show 3 lists them all"));
}

#[test]
fn each_connection_keeps_its_order_on_one_connection_within_the_concurrency_limit() {
    let dir = TempDir::new("http-order");
    let pcap = dir.path("c.pcap");
    let conns: Vec<Vec<Cap>> = (0..12)
        .map(|c| {
            (0..5)
                .map(|i| get(i * 3 + c, &format!("/c{c}/r{i}"), 200, "{}"))
                .collect()
        })
        .collect();
    capture(&pcap, &conns);
    let server = TestServer::start(|_: &Seen| Reply::Respond {
        status: 200,
        headers: vec![("Content-Type".into(), "application/json".into())],
        body: b"{}".to_vec(),
        delay: Duration::from_millis(5),
    });
    let check_order = |seen: &[Seen], one_connection: bool| {
        for c in 0..12 {
            let mine: Vec<&Seen> = seen
                .iter()
                .filter(|s| s.target.starts_with(&format!("/c{c}/")))
                .collect();
            let order: Vec<&str> = mine.iter().map(|s| s.target.as_str()).collect();
            let want: Vec<String> = (0..5).map(|i| format!("/c{c}/r{i}")).collect();
            assert_eq!(order, want, "connection {c} out of order");
            if one_connection {
                assert!(
                    mine.iter().all(|s| s.conn == mine[0].conn),
                    "connection {c} spread over several connections"
                );
            }
        }
    };
    // Room for every captured connection: each is replayed on one connection.
    let (code, v, err) = http(
        &pcap,
        &server.url(),
        &["--topspeed", "--concurrency", "12", "--json", "--no-save"],
    );
    assert_eq!(code, 0, "{err}");
    assert_eq!((n(&v, "requests"), n(&v, "diffs")), (60, 0), "{v}");
    check_order(&server.requests(), true);
    let conns: std::collections::BTreeSet<u64> = server.requests().iter().map(|s| s.conn).collect();
    assert_eq!(conns.len(), 12);

    // Three connections for twelve: never more than three requests at once, and each
    // captured connection's requests still in order, never two at a time.
    let server = TestServer::start(|_: &Seen| Reply::Respond {
        status: 200,
        headers: vec![("Content-Type".into(), "application/json".into())],
        body: b"{}".to_vec(),
        delay: Duration::from_millis(5),
    });
    let (code, v, err) = http(
        &pcap,
        &server.url(),
        &["--topspeed", "--concurrency", "3", "--json", "--no-save"],
    );
    assert_eq!(code, 0, "{err}");
    assert_eq!(n(&v, "requests"), 60, "{v}");
    check_order(&server.requests(), false);
    let busy = server.max_busy.load(Ordering::SeqCst);
    assert!(
        (2..=3).contains(&busy),
        "{busy} requests in flight at once with --concurrency 3"
    );
}

#[test]
fn speed_scales_the_captured_gaps() {
    let dir = TempDir::new("http-speed");
    let pcap = dir.path("s.pcap");
    capture(
        &pcap,
        &[
            vec![get(0, "/a", 200, "{}")],
            vec![get(800, "/b", 200, "{}")],
            vec![get(1600, "/c", 200, "{}")],
        ],
    );
    let server = TestServer::start(|_: &Seen| Reply::json(200, "{}"));
    let (code, v, err) = http(
        &pcap,
        &server.url(),
        &["--speed", "4x", "--json", "--no-save"],
    );
    assert_eq!(code, 0, "{err}");
    let seen = server.requests();
    assert_eq!(seen.len(), 3);
    for w in seen.windows(2) {
        let gap = w[1].at - w[0].at;
        // 800 ms at 4x is 200 ms; generous bounds on a shared machine, but 1x (800) or
        // top speed (~0) fail.
        assert!(
            gap > Duration::from_millis(120) && gap < Duration::from_millis(450),
            "gap {gap:?}"
        );
    }
    assert!(v["behind_schedule_ms"]["p99"].as_f64().is_some(), "{v}");
}

#[test]
fn transforms_and_the_write_guard() {
    let dir = TempDir::new("http-transform");
    let pcap = dir.path("t.pcap");
    capture(
        &pcap,
        &[vec![
            get(0, "/health", 200, "{}"),
            get(1, "/api/items?page=2", 200, "{}"),
            post(2, "/api/items", r#"{"name":"x"}"#),
        ]],
    );
    let server = TestServer::start(|r: &Seen| {
        if r.method == "POST" {
            Reply::json(201, "{}")
        } else {
            Reply::json(200, "{}")
        }
    });
    let url = server.url();
    let common = [
        "replay",
        pcap.to_str().unwrap(),
        "--target",
        &url,
        "--topspeed",
        "--json",
        "--no-save",
        "--exclude",
        "GET /health*",
        "-H",
        "X-Replay-Id: {{uuid}}",
        "-H",
        "X-Replayed-At: {{now}} {{now_epoch}}",
        "--remove-header",
        "cookie",
        "--rewrite-url",
        "^/api/(.*):/v2/$1",
    ];
    let (code, v, err) = replay(&common);
    assert_eq!(code, 0, "{err}");
    assert_eq!((n(&v, "requests"), n(&v, "skipped")), (1, 2), "{v}");
    assert_eq!(v["skipped_by_reason"]["write_method"], 1, "{v}");
    assert_eq!(v["skipped_by_reason"]["excluded"], 1, "{v}");
    let seen = server.requests();
    assert_eq!(seen.len(), 1);
    let r = &seen[0];
    assert_eq!(
        (r.method.as_str(), r.target.as_str()),
        ("GET", "/v2/items?page=2")
    );
    assert_eq!(r.header("host"), Some(server.addr.to_string().as_str()));
    assert_eq!(r.header("cookie"), None);
    let id = r.header("x-replay-id").unwrap();
    assert_eq!((id.len(), &id[14..15]), (36, "4"), "{id}");
    let at = r.header("x-replayed-at").unwrap();
    assert!(
        at.starts_with("20") && at.contains('T') && at.contains("Z 1"),
        "{at}"
    );

    let mut writes = common.to_vec();
    writes.push("--allow-writes");
    let (code, v, err) = replay(&writes);
    assert_eq!(code, 0, "{err}");
    assert_eq!((n(&v, "requests"), n(&v, "diffs")), (2, 0), "{v}");
    let post = server
        .requests()
        .into_iter()
        .find(|s| s.method == "POST")
        .unwrap();
    assert_eq!(
        (post.target.as_str(), post.body.as_slice()),
        ("/v2/items", br#"{"name":"x"}"#.as_slice())
    );
    assert_ne!(
        post.header("x-replay-id"),
        Some(id),
        "a fresh uuid per request"
    );
}

#[test]
fn noise_runs_ignore_what_varies_between_the_targets_own_answers() {
    let dir = TempDir::new("http-noise");
    let pcap = dir.path("n.pcap");
    let caps: Vec<Cap> = (0..6)
        .map(|i| {
            get(
                i,
                &format!("/api/orders/{i}"),
                200,
                r#"{"request_id":"r-prod","ts":1,"name":"same"}"#,
            )
        })
        .collect();
    capture(&pcap, &[caps]);
    let counter = Arc::new(AtomicU64::new(0));
    let c2 = Arc::clone(&counter);
    let server = TestServer::start(move |r: &Seen| {
        let k = c2.fetch_add(1, Ordering::SeqCst);
        let name = if r.target.ends_with("/5") {
            "changed"
        } else {
            "same"
        };
        Reply::json(
            200,
            &format!(
                r#"{{"request_id":"r-{k}","ts":{},"name":"{name}"}}"#,
                1000 + k
            ),
        )
    });
    let url = server.url();
    let (_, plain, err) = http(&pcap, &url, &["--topspeed", "--json", "--no-save"]);
    assert_eq!(n(&plain, "diffs"), 6, "{plain} {err}");
    let (code, noisy, err) = http(&pcap, &url, &["--topspeed", "--json", "--noise-runs", "2"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        n(&noisy, "diffs"),
        1,
        "only the real change is left: {noisy}"
    );
    let (_, shown, _) = replay(&["replay", "diff", pcap.to_str().unwrap()]);
    let shown = shown.as_str().unwrap().to_string();
    assert!(
        shown.contains("$.name changed: \"same\" → \"changed\""),
        "{shown}"
    );
    assert!(
        !shown
            .lines()
            .any(|l| l.trim_start().starts_with("$.request_id")
                || l.trim_start().starts_with("$.ts")),
        "{shown}"
    );
    // --ignore does the same by hand.
    let (_, ignored, _) = http(
        &pcap,
        &url,
        &[
            "--topspeed",
            "--json",
            "--no-save",
            "--ignore",
            "$.request_id",
            "--ignore",
            "$.ts",
        ],
    );
    assert_eq!(n(&ignored, "diffs"), 1, "{ignored}");
}

#[test]
fn gates_exit_codes_and_junit() {
    let dir = TempDir::new("http-gates");
    let pcap = dir.path("g.pcap");
    capture(
        &pcap,
        &[vec![
            get(0, "/api/users/u_1", 200, r#"{"id":"u_1","name":"Ann"}"#),
            get(1, "/api/users/u_2", 200, r#"{"id":"u_2","name":"Ann"}"#),
            get(2, "/api/orders", 200, "{}"),
            get(3, "/api/status", 200, r#"{"ok":true}"#),
        ]],
    );
    let server = v2_server();
    let url = server.url();
    let junit = dir.path("report.xml");
    let f = rf_tap_run(
        None,
        &[
            "replay",
            pcap.to_str().unwrap(),
            "--target",
            &url,
            "--topspeed",
            "--no-save",
            "--fail-if",
            "diff_rate>1%",
            "--fail-if",
            "success_rate<50%",
            "--fail-if",
            "p95_latency_delta>100000%",
            "--junit",
            junit.to_str().unwrap(),
        ],
    );
    assert_eq!(f.status.code(), Some(1), "{}", f.stderr);
    assert!(
        f.stderr.contains("gate failed: diff_rate>1%"),
        "{}",
        f.stderr
    );
    assert!(!f.stderr.contains("success_rate<50%"), "{}", f.stderr);
    let out = String::from_utf8_lossy(&f.stdout);
    assert!(
        out.contains("FAIL  diff_rate>1%") && out.contains("ok    success_rate<50%"),
        "{out}"
    );

    let suites = junit_parser::from_reader(std::io::BufReader::new(
        std::fs::File::open(&junit).unwrap(),
    ))
    .unwrap();
    // What stricter consumers require of a suite: when it ran, and where.
    for s in &suites.suites {
        assert!(s.timestamp.is_some(), "timestamp");
        assert!(
            s.hostname.as_deref().is_some_and(|h| !h.is_empty()),
            "hostname"
        );
    }
    let cases: Vec<_> = suites.suites.iter().flat_map(|s| s.cases.iter()).collect();
    let names: Vec<&str> = cases.iter().map(|c| c.original_name.as_str()).collect();
    assert_eq!(names.len(), 3, "{names:?}");
    assert!(names.contains(&"GET /api/users/{id}"), "{names:?}");
    let failed: Vec<&str> = cases
        .iter()
        .filter(|c| c.status.is_failure())
        .map(|c| c.original_name.as_str())
        .collect();
    assert_eq!(failed.len(), 2, "{failed:?}");
    assert!(!failed.contains(&"GET /api/status"));

    let f = rf_tap_run(
        None,
        &[
            "replay",
            pcap.to_str().unwrap(),
            "--target",
            &url,
            "--topspeed",
            "--no-save",
            "--fail-if",
            "success_rate<50%",
            "--fail-if",
            "failed>1",
        ],
    );
    assert_eq!(f.status.code(), Some(0), "{}", f.stderr);
    let f = rf_tap_run(
        None,
        &[
            "replay",
            pcap.to_str().unwrap(),
            "--target",
            &url,
            "--fail-if",
            "speed>1",
        ],
    );
    assert_eq!(f.status.code(), Some(2), "{}", f.stderr);
    assert!(f.stderr.contains("unknown metric"), "{}", f.stderr);
}

#[test]
fn faults_are_counted_with_clear_messages_and_no_hang() {
    let dir = TempDir::new("http-faults");
    let pcap = dir.path("f.pcap");
    capture(
        &pcap,
        &[
            vec![get(0, "/a", 200, "{}"), get(1, "/b", 200, "{}")],
            vec![get(2, "/c", 200, "{}")],
        ],
    );
    let p = pcap.to_str().unwrap();

    // Nothing listens.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead = format!("http://{}", closed.local_addr().unwrap());
    drop(closed);
    let (code, v, err) = replay(&[
        "replay",
        p,
        "--target",
        &dead,
        "--topspeed",
        "--json",
        "--no-save",
    ]);
    assert_eq!(code, 1);
    assert_eq!(v["errors"]["connection_refused"], 3, "{v}");
    assert!(err.contains("answered none of 3 requests"), "{err}");

    for (name, reply, key) in [
        ("hang", 0, "timeout"),
        ("reset", 1, "connection_reset"),
        ("garbage", 2, "invalid_response"),
    ] {
        let server = TestServer::start(move |_: &Seen| match reply {
            0 => Reply::Hang,
            1 => Reply::Reset,
            _ => Reply::Garbage(b"SSH-2.0-OpenSSH_9.6\r\nnot http at all\r\n".to_vec()),
        });
        let started = Instant::now();
        let (code, v, err) = replay(&[
            "replay",
            p,
            "--target",
            &server.url(),
            "--topspeed",
            "--timeout",
            "300ms",
            "--json",
            "--no-save",
        ]);
        assert_eq!(code, 1, "{name}: {err}");
        assert_eq!(v["errors"][key], 3, "{name}: {v}");
        assert_eq!(n(&v, "failed"), 3, "{name}: {v}");
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "{name} took {:?}",
            started.elapsed()
        );
    }

    // Bad captures and flags.
    let corrupt = dir.path("corrupt.rfcap");
    std::fs::write(&corrupt, b"not a capture at all").unwrap();
    for (args, words) in [
        (
            vec![
                "replay",
                corrupt.to_str().unwrap(),
                "--target",
                "http://127.0.0.1:9",
            ],
            "neither an rfcap archive nor a capture",
        ),
        (
            vec![
                "replay",
                "/nonexistent.pcap",
                "--target",
                "http://127.0.0.1:9",
            ],
            "cannot open /nonexistent.pcap",
        ),
        (
            vec!["replay", p, "--target", "staging:8080"],
            "use http://HOST",
        ),
        (
            vec![
                "replay",
                p,
                "--target",
                "http://127.0.0.1:9",
                "--portmap",
                "80:8080",
            ],
            "--portmap applies to packet replay",
        ),
        (
            vec!["replay", "diff", "/nonexistent.pcap"],
            "no saved replay results",
        ),
    ] {
        let f = rf_tap_run(None, &args);
        assert!(!f.status.success(), "{args:?}");
        assert!(f.stderr.contains(words), "{args:?}: {}", f.stderr);
        assert!(!f.stderr.contains("panicked"), "{}", f.stderr);
    }
}

#[test]
fn an_rfcap_archive_replays_like_its_pcap() {
    let dir = TempDir::new("http-rfcap");
    let pcap = dir.path("a.pcap");
    capture(
        &pcap,
        &[vec![
            get(0, "/api/users/u_9", 200, r#"{"id":"u_9","name":"Ann"}"#),
            get(3, "/x", 200, r#"{"ok":true}"#),
        ]],
    );
    let rfcap = dir.path("a.rfcap");
    let f = rf_tap_run(
        None,
        &[
            "extract",
            pcap.to_str().unwrap(),
            "-o",
            rfcap.to_str().unwrap(),
        ],
    );
    assert!(f.status.success(), "{}", f.stderr);
    let server = v2_server();
    let (code, v, err) = http(&rfcap, &server.url(), &["--speed", "10x", "--json"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!((n(&v, "requests"), n(&v, "diffs")), (2, 1), "{v}");
    let (_, shown, _) = replay(&["replay", "diff", rfcap.to_str().unwrap()]);
    assert!(
        shown
            .as_str()
            .unwrap()
            .contains("DIFF 1/1 — GET /api/users/u_9"),
        "{shown}"
    );
}

/// An HTTPS server on loopback with a fresh self-signed certificate for `localhost`,
/// answering every request with `{"ok":true}`; returns its port and the certificate PEM.
fn tls_server(
    stop: Arc<std::sync::atomic::AtomicBool>,
) -> (u16, String, std::thread::JoinHandle<u64>) {
    use std::io::{Read, Write};
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let pem = ck.cert.pem();
    let cert = rustls::pki_types::CertificateDer::from(ck.cert.der().to_vec());
    let key = rustls::pki_types::PrivateKeyDer::try_from(ck.signing_key.serialize_der()).unwrap();
    let config = Arc::new(
        rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![cert], key)
        .unwrap(),
    );
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let port = listener.local_addr().unwrap().port();
    let handle = std::thread::spawn(move || {
        let mut answered = 0;
        let deadline = Instant::now() + Duration::from_secs(30);
        while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
            let Ok((sock, _)) = listener.accept() else {
                std::thread::sleep(Duration::from_millis(5));
                continue;
            };
            sock.set_nonblocking(false).unwrap();
            sock.set_read_timeout(Some(Duration::from_millis(500)))
                .unwrap();
            let conn = rustls::ServerConnection::new(Arc::clone(&config)).unwrap();
            let mut tls = rustls::StreamOwned::new(conn, sock);
            let mut buf = Vec::new();
            let mut chunk = [0u8; 4096];
            loop {
                match tls.read(&mut chunk) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => buf.extend_from_slice(&chunk[..n]),
                }
                while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                    buf.drain(..end + 4);
                    let body = r#"{"ok":true}"#;
                    let r = format!("HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}", body.len());
                    if tls.write_all(r.as_bytes()).is_err() {
                        break;
                    }
                    answered += 1;
                }
            }
        }
        answered
    });
    (port, pem, handle)
}

#[test]
fn https_targets_through_rustls() {
    let dir = TempDir::new("http-tls");
    let pcap = dir.path("t.pcap");
    capture(
        &pcap,
        &[vec![
            get(0, "/a", 200, r#"{"ok":true}"#),
            get(1, "/b", 200, r#"{"ok":true}"#),
        ]],
    );
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (port, pem, server) = tls_server(Arc::clone(&stop));
    let ca = dir.path("ca.pem");
    std::fs::write(&ca, pem).unwrap();
    let url = format!("https://localhost:{port}");
    let p = pcap.to_str().unwrap();
    let base = [
        "replay",
        p,
        "--target",
        url.as_str(),
        "--topspeed",
        "--json",
        "--no-save",
        "--timeout",
        "2s",
    ];

    // Self-signed and not trusted: every request fails its handshake.
    let (code, v, _) = replay(&base);
    assert_eq!(code, 1);
    assert_eq!(v["errors"]["tls_failed"], 2, "{v}");

    let mut trusted = base.to_vec();
    trusted.extend(["--ca-file", ca.to_str().unwrap()]);
    let (code, v, err) = replay(&trusted);
    assert_eq!(code, 0, "{err}");
    assert_eq!((n(&v, "succeeded"), n(&v, "diffs")), (2, 0), "{v}");

    let mut insecure = base.to_vec();
    insecure.push("--insecure");
    let (code, v, err) = replay(&insecure);
    assert_eq!(code, 0, "{err}");
    assert_eq!(n(&v, "succeeded"), 2, "{v}");

    stop.store(true, Ordering::Relaxed);
    assert_eq!(server.join().unwrap(), 4);
}

#[test]
fn replay_against_nginx_matches_production() {
    if !rf_tap_tests::privileged("replay_against_nginx_matches_production") {
        return;
    }
    let dir = TempDir::new("http-nginx");
    let ns = rf_tap_tests::NetPair::new();
    let www = dir.path("www");
    std::fs::create_dir_all(www.join("api")).unwrap();
    let pages: Vec<(String, String)> = (0..20)
        .map(|i| {
            (
                format!("/api/item{i}.json"),
                format!(r#"{{"item":{i},"name":"n{i}"}}"#),
            )
        })
        .collect();
    for (path, body) in &pages {
        std::fs::write(www.join(path.trim_start_matches('/')), body).unwrap();
    }
    let _nginx = rf_tap_tests::nginx(&ns.server_ns, &dir, &[format!("{}:80", ns.server_ip)]);
    // Production's responses are what this nginx really answers.
    let server_ip = ns.server_ip.clone();
    let paths: Vec<String> = pages
        .iter()
        .map(|(p, _)| p.clone())
        .chain(["/api/missing.json".to_string()])
        .collect();
    let answers: Vec<String> = rf_tap_tests::in_netns(&ns.server_ns, move || {
        use std::io::{Read, Write};
        paths
            .iter()
            .map(|p| {
                let mut s = std::net::TcpStream::connect((server_ip.as_str(), 80)).unwrap();
                s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
                write!(
                    s,
                    "GET {p} HTTP/1.1\r\nHost: prod.example\r\nConnection: close\r\n\r\n"
                )
                .unwrap();
                let mut out = String::new();
                s.read_to_string(&mut out).unwrap();
                out
            })
            .collect()
    });
    let caps: Vec<Vec<Cap>> = answers
        .chunks(5)
        .enumerate()
        .map(|(c, chunk)| {
            chunk
                .iter()
                .enumerate()
                .map(|(i, answer)| {
                    let k = c * 5 + i;
                    let path = pages
                        .get(k)
                        .map_or("/api/missing.json", |(p, _)| p.as_str());
                    let mut cap = get(k as u64, path, 200, "");
                    cap.response = answer.clone();
                    cap
                })
                .collect()
        })
        .collect();
    let pcap = dir.path("prod.pcap");
    capture(&pcap, &caps);
    // The candidate changed one document.
    std::fs::write(
        www.join("api/item7.json"),
        r#"{"item":7,"name":"n7","price":10}"#,
    )
    .unwrap();
    let url = format!("http://{}:80", ns.server_ip);
    let f = rf_tap_run(
        Some(&ns.server_ns),
        &[
            "replay",
            pcap.to_str().unwrap(),
            "--target",
            &url,
            "--speed",
            "10x",
            "--json",
            "--no-save",
        ],
    );
    assert_eq!(f.status.code(), Some(0), "{}", f.stderr);
    let v: Value = serde_json::from_slice(&f.stdout).unwrap();
    assert_eq!(
        (n(&v, "requests"), n(&v, "succeeded"), n(&v, "diffs")),
        (21, 21, 1),
        "{v}"
    );
    let changed = v["endpoints"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["diffs"] == 1)
        .unwrap();
    assert_eq!(changed["endpoint"], "GET /api/item7.json", "{v}");
    assert!(
        changed["first_problem"]
            .as_str()
            .unwrap()
            .contains("New field \"price\""),
        "{v}"
    );
    let f = rf_tap_run(None, &["replay", "diff", pcap.to_str().unwrap()]);
    assert!(
        f.stderr.contains("no saved replay results"),
        "--no-save saved nothing: {}",
        f.stderr
    );
}

const OLD_JWT: &str = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiJhbGljZSIsImlhdCI6MTc2MzcxOTIwMCwiZXhwIjoxNzYzNzIyODAwfQ.c2lnbmF0dXJl";

#[test]
fn shift_time_moves_timestamps_by_the_captures_age_and_signs_jwts_again() {
    use base64::Engine as _;
    let dir = TempDir::new("shift-time");
    let pcap = dir.path("old.pcap");
    // Captured 2025-11-21T10:00:00Z, asking for the day before.
    let mut q = get(
        0,
        "/report?from=2025-11-20T10%3A00%3A00Z&ts=1763719200",
        200,
        "{}",
    );
    q.request = q.request.replace(
        "Cookie: session=prod\r\n",
        &format!("Authorization: Bearer {OLD_JWT}\r\nX-Sent-At: 2025-11-21T10:00:00Z\r\n"),
    );
    let p = post(
        5,
        "/search",
        r#"{"since":"2025-11-20T10:00:00Z","at":1763719200}"#,
    );
    capture(&pcap, &[vec![q, p]]);
    let srv = TestServer::start(|_| Reply::json(200, "{}"));
    let secret = dir.path("jwt.key");
    std::fs::write(&secret, "s3cret\n").unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let (code, v, err) = http(
        &pcap,
        &srv.url(),
        &[
            "--shift-time",
            "--jwt-key",
            secret.to_str().unwrap(),
            "--allow-writes",
            "--json",
            "--no-save",
        ],
    );
    assert_eq!(code, 0, "{err}");
    assert_eq!(v["shift_time"]["jwts_resigned"], 1, "{v}");
    assert_eq!(v["shift_time"]["timestamps"], 5, "{v}");
    let seen = srv.requests();
    // The day before the replay, within the minute the test took.
    let day_before = |text: &str| -> i64 {
        let t = text.replace("%3A", ":");
        let i = t.find("20").unwrap();
        let s = &t[i..i + 19];
        let out = std::process::Command::new("date")
            .args(["-u", "-d", s, "+%s"])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
    };
    let from = seen[0]
        .target
        .split("from=")
        .nth(1)
        .unwrap()
        .split('&')
        .next()
        .unwrap();
    assert!(
        (day_before(from) - (now - 86_400)).abs() < 60,
        "{}",
        seen[0].target
    );
    let ts: i64 = seen[0].target.split("ts=").nth(1).unwrap().parse().unwrap();
    assert!((ts - now).abs() < 60, "{}", seen[0].target);
    assert!((day_before(seen[0].header("x-sent-at").unwrap()) - now).abs() < 60);
    let body: Value = serde_json::from_slice(&seen[1].body).unwrap();
    assert!(
        (day_before(body["since"].as_str().unwrap()) - (now - 86_400)).abs() < 60,
        "{body}"
    );
    // The JWT: fresh times, the same lifetime, a valid HS256 signature.
    let token = seen[0]
        .header("authorization")
        .unwrap()
        .strip_prefix("Bearer ")
        .unwrap();
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let claims: Value =
        serde_json::from_slice(&b64.decode(token.split('.').nth(1).unwrap()).unwrap()).unwrap();
    let (iat, exp) = (
        claims["iat"].as_i64().unwrap(),
        claims["exp"].as_i64().unwrap(),
    );
    assert!((iat - now).abs() < 60 && exp - iat == 3600, "{claims}");
    let (signing, sig) = token.rsplit_once('.').unwrap();
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, b"s3cret");
    assert!(ring::hmac::verify(&key, signing.as_bytes(), &b64.decode(sig).unwrap()).is_ok());

    // Without a key the token goes as captured, counted as expired.
    let (code, v, err) = http(
        &pcap,
        &srv.url(),
        &["--shift-time", "--allow-writes", "--json", "--no-save"],
    );
    assert_eq!(code, 0, "{err}");
    assert_eq!(v["shift_time"]["jwts_expired"], 1, "{v}");
    assert_eq!(v["shift_time"]["jwts_resigned"], 0, "{v}");
    let last = srv.requests();
    assert!(last[last.len() - 2]
        .header("authorization")
        .unwrap()
        .ends_with(OLD_JWT));
}
