//! `rf-tap mock` end to end: a service under test in one namespace calls its dependency in
//! another; rf-tap captures both directions on the service's interface; then, with the real
//! dependency stopped, `rf-tap mock` answers the service's calls from the capture, and the
//! service gives the answers it gave in production. A second version of the service calls
//! a new endpoint: the misses are counted and saved as stubs the mock then loads.
#![allow(clippy::unwrap_used)]

use std::{
    io::{BufRead, BufReader, Read, Write},
    net::TcpStream,
    sync::{Arc, Mutex},
    time::Duration,
};

use rf_tap_tests::{http_server::*, *};

/// A blocking HTTP/1.1 call (one connection, closed after), returning status and body.
fn call(addr: &str, method: &str, target: &str, body: &str) -> (u16, String) {
    let mut c = TcpStream::connect(addr).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let req = format!(
        "{method} {target} HTTP/1.1\r\nHost: payment-api\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    c.write_all(req.as_bytes()).unwrap();
    // Read one response by its Content-Length (servers may keep the connection open).
    let mut got = Vec::new();
    let mut chunk = [0u8; 16384];
    loop {
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut res = httparse::Response::new(&mut headers);
        if let Ok(httparse::Status::Complete(n)) = res.parse(&got) {
            let len: usize = res
                .headers
                .iter()
                .find(|h| h.name.eq_ignore_ascii_case("content-length"))
                .and_then(|h| std::str::from_utf8(h.value).ok()?.trim().parse().ok())
                .unwrap_or(0);
            if got.len() >= n + len {
                let status = res.code.unwrap_or(0);
                return (
                    status,
                    String::from_utf8_lossy(&got[n..n + len]).into_owned(),
                );
            }
        }
        match c.read(&mut chunk) {
            Ok(0) | Err(_) => return (0, String::from_utf8_lossy(&got).into_owned()),
            Ok(k) => got.extend_from_slice(&chunk[..k]),
        }
    }
}

/// A value that changes on every call, as request ids and timestamps do.
fn fresh_id() -> String {
    let n = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("{:08x}-1c2d-4e5f-8a9b-{:012x}", n as u32, n % (1 << 48))
}

/// The service under test: `GET /checkout?user=U&amount=N` calls the dependency twice (a
/// rate, then a charge whose body carries a fresh request id), `v2` a fraud check first, and
/// answers with its own data combined with theirs.
fn service(dependency: Arc<Mutex<String>>, v2: bool) -> impl Fn(&Seen) -> Reply + Send + Sync {
    move |q| {
        if q.target == "/healthz" {
            return Reply::json(200, r#"{"ok":true}"#);
        }
        let dep = dependency.lock().unwrap().clone();
        let query = q.target.split_once('?').map(|(_, s)| s).unwrap_or("");
        let get = |k: &str| {
            query
                .split('&')
                .find_map(|p| p.strip_prefix(&format!("{k}=")))
                .unwrap_or("")
                .to_string()
        };
        let (user, amount) = (get("user"), get("amount"));
        if v2 {
            let (s, _) = call(&dep, "GET", &format!("/fraud-check?user={user}"), "");
            if s != 200 {
                return Reply::json(502, r#"{"error":"fraud check failed"}"#);
            }
        }
        let (s1, rate) = call(&dep, "GET", "/rates?cur=EUR", "");
        let charge = format!(
            r#"{{"request_id": "{}", "user": "{user}", "amount": {amount}}}"#,
            fresh_id()
        );
        let (s2, charged) = call(&dep, "POST", "/charge", &charge);
        if s1 != 200 || s2 != 201 {
            return Reply::json(502, &format!(r#"{{"error":"dependency said {s1}/{s2}"}}"#));
        }
        Reply::json(
            200,
            &format!(
                r#"{{"service":"checkout","user":"{user}","rate":{rate},"charge":{charged}}}"#
            ),
        )
    }
}

fn dependency() -> impl Fn(&Seen) -> Reply + Send + Sync {
    |q| {
        if q.target.starts_with("/rates") {
            return Reply::json(200, r#"{"cur":"EUR","rate":1.08}"#);
        }
        if q.method == "POST" && q.target == "/charge" {
            let v: serde_json::Value = serde_json::from_slice(&q.body).unwrap();
            return Reply::json(
                201,
                &format!(
                    r#"{{"charged":{},"user":{},"id":"ch_{}"}}"#,
                    v["amount"], v["user"], v["amount"]
                ),
            );
        }
        if q.target.starts_with("/fraud-check") {
            return Reply::json(200, r#"{"risk":"low"}"#);
        }
        Reply::json(404, r#"{"error":"no such endpoint"}"#)
    }
}

/// `rf-tap mock ARGS` run by `cmd`, up once it says it listens.
fn spawn_mock(mut cmd: std::process::Command, args: &[&str]) -> Proc {
    let mut child = cmd
        .arg("mock")
        .args(args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let err = child.stderr.take().unwrap();
    let mut lines = BufReader::new(err).lines();
    let first = lines.next().unwrap().unwrap();
    assert!(first.contains("listening on"), "{first}");
    std::thread::spawn(move || for _ in lines {});
    Proc {
        child: Some(child),
        name: "rf-tap mock".into(),
    }
}

/// `rf-tap mock` in `ns`, up once it says it listens.
fn start_mock(ns: &str, args: &[&str]) -> Proc {
    let mut cmd = std::process::Command::new("ip");
    cmd.args(["netns", "exec", ns]).arg(rf_tap_bin());
    spawn_mock(cmd, args)
}

/// Stops the mock as a user would (SIGTERM) and returns its JSON summary.
fn stop_mock(mut p: Proc) -> serde_json::Value {
    // SAFETY: signalling our own child.
    unsafe { libc::kill(p.pid(), libc::SIGTERM) };
    let out = p.child.take().unwrap().wait_with_output().unwrap();
    assert!(out.status.success(), "exit 0 on SIGTERM: {:?}", out.status);
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|_| panic!("{}", String::from_utf8_lossy(&out.stdout)))
}

#[test]
fn a_mock_from_captured_outbound_traffic_stands_in_for_the_dependency() {
    if !privileged("a_mock_from_captured_outbound_traffic_stands_in_for_the_dependency") {
        return;
    }
    let pair = NetPair::new();
    let dir = TempDir::new("mock");
    // The service on the client side of the pair, its dependency on the other.
    let dep_addr = format!("{}:8081", pair.server_ip);
    let svc_addr = format!("{}:8080", pair.client_ip);
    let real = in_netns(&pair.server_ns, {
        let a = dep_addr.clone();
        move || TestServer::start_on(&a, dependency())
    });
    let target = Arc::new(Mutex::new(dep_addr.clone()));
    let svc = in_netns(&pair.client_ns, {
        let (a, t) = (svc_addr.clone(), Arc::clone(&target));
        move || TestServer::start_on(&a, service(t, false))
    });
    let (archive, pcapng) = (dir.path("prod.rfcap"), dir.path("prod.pcapng"));
    let mut tap = RfTap::spawn(
        &pair.client_ns,
        &[
            "attach",
            &pair.client_if,
            "--port",
            "8080-8081",
            "--rfcap",
            archive.to_str().unwrap(),
            "-w",
            pcapng.to_str().unwrap(),
            "--pcapng",
            "-q",
        ],
    );
    tap.wait_attached();
    let checkouts: Vec<String> = (0..6)
        .map(|i| format!("/checkout?user=u{}&amount={}", i % 3, 10 + i))
        .collect();
    let drive = |checkouts: Vec<String>| {
        let a = svc_addr.clone();
        in_netns(&pair.server_ns, move || {
            checkouts
                .iter()
                .map(|c| call(&a, "GET", c, ""))
                .collect::<Vec<_>>()
        })
    };
    let production = drive(checkouts.clone());
    assert!(production.iter().all(|(s, _)| *s == 200), "{production:?}");
    std::thread::sleep(Duration::from_millis(300));
    assert!(tap.stop().status.success());
    assert_eq!(real.requests().len(), 12);

    // The service's calls, with the dependency they went to.
    let listed = rf_tap_run(None, &["requests", archive.to_str().unwrap(), "--outbound"]);
    assert!(listed.status.success(), "{}", listed.stderr);
    let table = String::from_utf8_lossy(&listed.stdout).into_owned();
    let rows: Vec<&str> = table.lines().skip(1).collect();
    assert_eq!(rows.len(), 12, "{table}");
    assert!(
        rows.iter().all(|r| r.starts_with("payment-api ")),
        "{table}"
    );
    assert!(
        !table.contains("/checkout"),
        "inbound exchanges are not listed: {table}"
    );
    let extracted = rf_tap_run(
        None,
        &[
            "extract",
            "-q",
            "--outbound",
            "--dependency",
            &dep_addr,
            pcapng.to_str().unwrap(),
        ],
    );
    let lines: Vec<serde_json::Value> = String::from_utf8_lossy(&extracted.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 12);
    assert!(lines
        .iter()
        .all(|x| x["direction"] == "outbound" && x["server"] == dep_addr.as_str()));

    // The real dependency is gone; the mock answers in its place.
    drop(real);
    let mock_addr = "127.0.0.1:18081";
    *target.lock().unwrap() = mock_addr.to_string();
    let mock = start_mock(
        &pair.client_ns,
        &[
            archive.to_str().unwrap(),
            "--dependency",
            "payment-api",
            "--listen",
            mock_addr,
            "--json",
        ],
    );
    let mocked = drive(checkouts.clone());
    assert_eq!(
        mocked, production,
        "every answer the service gave in production"
    );
    let s = stop_mock(mock);
    assert_eq!(s["requests"], 12, "{s}");
    assert_eq!(s["exact"], 12, "{s}");
    assert_eq!(s["missed"], 0, "{s}");
    assert_eq!(s["match_rate"], 1.0, "{s}");

    // The same through a replay plan: the mock started by rf-tap, the service waited for,
    // the inbound traffic replayed, gates checked.
    let plan_mock = format!("{}:18082", pair.server_ip);
    *target.lock().unwrap() = plan_mock.clone();
    let plan = dir.path("replay.yaml");
    let write_plan = |gate: &str| {
        std::fs::write(
            &plan,
            format!(
                "replay:\n  target: http://{svc_addr}\n  traffic: [./prod.rfcap]\n  speed: 10x\n  concurrency: 4\n\
                 mocks:\n  - dependency: payment-api\n    listen: {plan_mock}\n    traffic: ./prod.rfcap\n\
                 ready:\n  url: http://{svc_addr}/healthz\n  timeout: 10s\n\
                 quality_gates:\n  status_pass_rate: \">= 0.99\"\n  body_match_rate: \">= 0.95\"\n  {gate}\n"
            ),
        )
        .unwrap();
    };
    write_plan("mock_match_rate: \">= 0.98\"");
    let planned = rf_tap_run(
        Some(&pair.server_ns),
        &[
            "replay",
            "--plan",
            plan.to_str().unwrap(),
            "--json",
            "--no-save",
        ],
    );
    assert!(planned.status.success(), "{}", planned.stderr);
    let v: serde_json::Value = serde_json::from_slice(&planned.stdout).unwrap();
    assert_eq!(v["requests"], 6, "inbound only: {v}");
    assert_eq!(v["outbound_left_to_mocks"], 12, "{v}");
    assert_eq!(v["diffs"], 0, "every answer equals production's: {v}");
    assert_eq!(v["mocks"]["payment-api"]["exact"], 12, "{v}");
    assert!(
        v["quality_gates"]
            .as_array()
            .unwrap()
            .iter()
            .all(|g| g["passed"] == true),
        "{v}"
    );

    // Version 2 calls a fraud check nobody recorded.
    drop(svc);
    let _svc2 = in_netns(&pair.client_ns, {
        let (a, t) = (svc_addr.clone(), Arc::clone(&target));
        move || TestServer::start_on(&a, service(t, true))
    });
    // Through the plan, the mock's misses fail its gate.
    write_plan("unmatched_requests: \"== 0\"");
    let planned = rf_tap_run(
        Some(&pair.server_ns),
        &["replay", "--plan", plan.to_str().unwrap()],
    );
    assert_eq!(planned.status.code(), Some(1), "{}", planned.stderr);
    // The artifacts stay: the results, and the misses as stubs.
    let kept = dir.path("prod.rfcap.replay/misses-payment-api");
    assert_eq!(
        std::fs::read_dir(&kept).map(|d| d.count()).unwrap_or(0),
        6,
        "{}",
        kept.display()
    );
    assert!(
        planned
            .stderr
            .contains("gate failed: unmatched_requests == 0"),
        "{}",
        planned.stderr
    );
    let table = String::from_utf8_lossy(&planned.stdout);
    assert!(
        table.contains("MOCKS") && table.contains("GET /fraud-check"),
        "{table}"
    );
    *target.lock().unwrap() = mock_addr.to_string();
    let misses = dir.path("misses");
    let mock = start_mock(
        &pair.client_ns,
        &[
            archive.to_str().unwrap(),
            "--listen",
            mock_addr,
            "--save-misses",
            misses.to_str().unwrap(),
            "--json",
        ],
    );
    let v2 = drive(checkouts[..3].to_vec());
    assert!(v2.iter().all(|(s, _)| *s == 502), "{v2:?}");
    let s = stop_mock(mock);
    assert_eq!(s["missed"], 3, "{s}");
    assert_eq!(s["misses"]["GET /fraud-check"], 3, "{s}");
    assert!(s["match_rate"].as_f64().unwrap() < 0.5, "{s}");
    let mut stubs: Vec<_> = std::fs::read_dir(&misses)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    stubs.sort();
    assert_eq!(stubs.len(), 3);

    // Filled in (status 200), the stubs answer the fraud checks.
    for stub in &stubs {
        let mut x: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(stub).unwrap()).unwrap();
        x["response"]["status"] = 200.into();
        std::fs::write(stub, x.to_string()).unwrap();
    }
    let mut args: Vec<String> = vec![archive.to_str().unwrap().into()];
    args.extend(stubs.iter().map(|p| p.to_str().unwrap().to_string()));
    args.extend(["--listen", mock_addr, "--json"].map(String::from));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mock = start_mock(&pair.client_ns, &args);
    let v2 = drive(checkouts[..3].to_vec());
    assert_eq!(
        v2,
        production[..3].to_vec(),
        "the same answers, fraud-checked"
    );
    let s = stop_mock(mock);
    assert_eq!(
        (s["requests"].as_u64(), s["missed"].as_u64()),
        (Some(9), Some(0)),
        "{s}"
    );
}

#[test]
fn mock_mistakes_are_one_line_and_a_non_zero_exit() {
    let dir = TempDir::new("mock-bad");
    let empty = dir.path("empty.pcap");
    write_pcap(&empty, 1, &[]);
    let garbage = dir.path("garbage.rfcap");
    std::fs::write(&garbage, b"not an archive at all").unwrap();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let busy = taken.local_addr().unwrap().to_string();
    let pcaps = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../pcaps/http-keepalive-get-post.pcap");
    for (args, says) in [
        (
            vec![empty.to_str().unwrap(), "--listen", "127.0.0.1:0"],
            "no exchange",
        ),
        (
            vec![garbage.to_str().unwrap(), "--listen", "127.0.0.1:0"],
            "neither",
        ),
        (
            vec!["/no/such/file.rfcap", "--listen", "127.0.0.1:0"],
            "/no/such/file.rfcap",
        ),
        (
            vec![pcaps.to_str().unwrap(), "--listen", &busy],
            "cannot listen",
        ),
        (
            vec![
                pcaps.to_str().unwrap(),
                "--listen",
                "127.0.0.1:0",
                "--dependency",
                "nobody",
            ],
            "of dependency nobody",
        ),
    ] {
        let mut full = vec!["mock"];
        full.extend(args.iter());
        let out = rf_tap_run(None, &full);
        assert!(!out.status.success(), "{args:?}");
        let lines: Vec<&str> = out.stderr.lines().collect();
        assert_eq!(lines.len(), 1, "{args:?}: {}", out.stderr);
        assert!(lines[0].contains(says), "{args:?}: {}", out.stderr);
    }

    // Plans.
    let pcap = pcaps.to_str().unwrap();
    let plan = dir.path("plan.yaml");
    for (text, says) in [
        (
            format!("replay: {{target: 'http://127.0.0.1:9', traffic: {pcap}, sped: 2x}}"),
            "unknown field `sped`",
        ),
        (
            format!("replay: {{target: 'http://127.0.0.1:9', traffic: {pcap}}}\nquality_gates: {{mock_rate: '>= 1'}}"),
            "unknown quality gate `mock_rate`",
        ),
        (
            format!("replay: {{target: 'http://127.0.0.1:9', traffic: {pcap}}}\nquality_gates: {{requests: 'lots'}}"),
            "needs a comparison",
        ),
        (
            "replay: {target: 'http://127.0.0.1:9', traffic: /no/such.rfcap}".to_string(),
            "/no/such.rfcap: no such file",
        ),
        (
            format!("replay: {{target: 'http://127.0.0.1:9', traffic: {pcap}}}\nmocks: [{{dependency: 10.9.0.2, listen: '{busy}', traffic: {pcap}}}]"),
            "cannot listen",
        ),
        (
            format!("replay: {{target: 'http://127.0.0.1:9', traffic: {pcap}}}\nready: {{url: 'http://127.0.0.1:9/healthz', timeout: 1s}}"),
            "never became ready",
        ),
    ] {
        std::fs::write(&plan, &text).unwrap();
        let out = rf_tap_run(None, &["replay", "--plan", plan.to_str().unwrap()]);
        assert_eq!(out.status.code(), Some(1), "{text}: {}", out.stderr);
        let lines: Vec<&str> = out.stderr.lines().filter(|l| !l.contains("listening on")).collect();
        assert_eq!(lines.len(), 1, "{text}: {}", out.stderr);
        assert!(lines[0].contains(says), "{text}: {}", out.stderr);
    }
}

/// `rf-tap mock` in this namespace on a free loopback port.
fn local_mock(args: &[&str]) -> (Proc, String) {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let addr = format!("127.0.0.1:{port}");
    let mut full: Vec<&str> = args.to_vec();
    full.extend(["--listen", addr.as_str(), "--json"]);
    (
        spawn_mock(std::process::Command::new(rf_tap_bin()), &full),
        addr,
    )
}

#[test]
fn mock_speaks_http_1_1_pipelined_chunked_and_with_recorded_latency() {
    use rf_tap_engine::pcap::synth::SynthWriter;
    let dir = TempDir::new("mock-wire");
    let pcap = dir.path("rec.pcap");
    let mut w = SynthWriter::new(std::fs::File::create(&pcap).unwrap()).unwrap();
    let t0 = Duration::from_secs(1_764_000_000);
    let mut c = w
        .open(
            t0,
            "10.0.0.1:40000".parse().unwrap(),
            "10.0.0.2:8081".parse().unwrap(),
        )
        .unwrap();
    let ok = |body: &str| {
        format!(
            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
    };
    let at = |ms| t0 + Duration::from_millis(ms);
    w.exchange(
        &mut c,
        at(1),
        b"GET /a HTTP/1.1\r\nHost: d\r\n\r\n",
        Duration::from_millis(400),
        ok("\"a\"").as_bytes(),
    )
    .unwrap();
    w.exchange(
        &mut c,
        at(500),
        b"GET /b HTTP/1.1\r\nHost: d\r\n\r\n",
        Duration::from_millis(1),
        ok("\"b\"").as_bytes(),
    )
    .unwrap();
    let body = r#"{"q":"shoes","n":2}"#;
    w.exchange(
        &mut c,
        at(600),
        format!(
            "POST /find HTTP/1.1\r\nHost: d\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .as_bytes(),
        Duration::from_millis(1),
        ok("[1,2]").as_bytes(),
    )
    .unwrap();
    w.close(&mut c, at(700)).unwrap();
    w.finish().unwrap();

    let read_responses = |conn: &mut TcpStream, n: usize| -> Vec<String> {
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        let mut bodies = Vec::new();
        while bodies.len() < n {
            let k = conn.read(&mut buf).unwrap();
            assert!(k > 0, "closed early");
            got.extend_from_slice(&buf[..k]);
            bodies.clear();
            let mut rest = &got[..];
            loop {
                let mut headers = [httparse::EMPTY_HEADER; 16];
                let mut r = httparse::Response::new(&mut headers);
                let Ok(httparse::Status::Complete(h)) = r.parse(rest) else {
                    break;
                };
                let len: usize = r
                    .headers
                    .iter()
                    .find(|x| x.name.eq_ignore_ascii_case("content-length"))
                    .map(|x| std::str::from_utf8(x.value).unwrap().parse().unwrap())
                    .unwrap_or(0);
                if rest.len() < h + len {
                    break;
                }
                bodies.push(String::from_utf8_lossy(&rest[h..h + len]).into_owned());
                rest = &rest[h + len..];
            }
        }
        bodies
    };

    let (mock, addr) = local_mock(&[pcap.to_str().unwrap()]);
    let mut conn = TcpStream::connect(&addr).unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    // Pipelined: three requests in one write, the last with a chunked JSON body whose keys
    // come in another order; the answers come back in order on the one connection.
    conn.write_all(
        b"GET /b HTTP/1.1\r\nHost: m\r\n\r\nGET /a HTTP/1.1\r\nHost: m\r\n\r\n\
          POST /find HTTP/1.1\r\nHost: m\r\nTransfer-Encoding: chunked\r\n\r\n\
          8\r\n{\"n\":2, \r\nB\r\n\"q\":\"shoes\"\r\n1\r\n}\r\n0\r\n\r\n",
    )
    .unwrap();
    let started = std::time::Instant::now();
    assert_eq!(read_responses(&mut conn, 3), ["\"b\"", "\"a\"", "[1,2]"]);
    assert!(
        started.elapsed() < Duration::from_millis(300),
        "no recorded latency by default"
    );
    let s = stop_mock(mock);
    assert_eq!(
        (s["exact"].as_u64(), s["missed"].as_u64()),
        (Some(3), Some(0)),
        "{s}"
    );

    // --latency recorded: /a took 400 ms in production.
    let (mock, addr) = local_mock(&[pcap.to_str().unwrap(), "--latency", "recorded"]);
    let mut conn = TcpStream::connect(&addr).unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let started = std::time::Instant::now();
    conn.write_all(b"GET /a HTTP/1.1\r\nHost: m\r\n\r\n")
        .unwrap();
    assert_eq!(read_responses(&mut conn, 1), ["\"a\""]);
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(390) && took < Duration::from_secs(3),
        "{took:?}"
    );
    stop_mock(mock);
}
