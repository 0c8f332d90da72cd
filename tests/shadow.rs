//! `rf-tap mirror` end to end: a production server and shadow servers in network namespaces,
//! curl as the client, the mirror started in the background as a user would, and what each
//! shadow received counted by the shadow itself.
#![allow(clippy::unwrap_used)]

use std::{
    collections::HashMap,
    path::Path,
    process::{Command, Stdio},
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use rf_tap_tests::{http_server::*, *};

/// `rf-tap ARGS` inside `ns`, with the mirror state kept under `state`.
fn mirror_cmd(ns: &str, state: &Path, args: &[&str]) -> Finished {
    let out = Command::new("ip")
        .args(["netns", "exec", ns])
        .arg(rf_tap_bin())
        .args(args)
        .env("RF_TAP_STATE_DIR", state)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    Finished {
        status: out.status,
        stdout: out.stdout,
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// Stops a mirror when the test ends, even when it fails (a mirror left running would
/// outlive its namespace).
struct StopOnDrop {
    ns: String,
    state: std::path::PathBuf,
    name: &'static str,
}

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        let _ = mirror_cmd(&self.ns, &self.state, &["mirror", "stop", self.name]);
    }
}

fn guard(ns: &str, state: &Path, name: &'static str) -> StopOnDrop {
    StopOnDrop {
        ns: ns.to_string(),
        state: state.to_path_buf(),
        name,
    }
}

fn stats(ns: &str, state: &Path, name: &str) -> serde_json::Value {
    let f = mirror_cmd(ns, state, &["mirror", "stats", name, "--json"]);
    assert!(f.status.success(), "{}", f.stderr);
    f.json()
}

/// Polls until `pred` holds (bounded).
fn eventually(limit: Duration, mut pred: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if pred() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    pred()
}

fn uuid(n: u64) -> String {
    format!(
        "{:08x}-{:04x}-4{:03x}-8{:03x}-{:012x}",
        n,
        n & 0xffff,
        n & 0xfff,
        (n >> 3) & 0xfff,
        n * 7919
    )
}

/// A JSON API: `/api/users/ID` answers the user, with a request id and a timestamp that
/// differ on every answer. `bob_for_u2`: the v2 behaviour, a changed name for u2.
fn api(bob_for_u2: bool, counter: Arc<AtomicU64>) -> impl Fn(&Seen) -> Reply + Send + Sync {
    move |s: &Seen| {
        let n = counter.fetch_add(1, Ordering::SeqCst) + if bob_for_u2 { 1_000_000 } else { 0 };
        let path = s.target.split('?').next().unwrap_or("");
        let id = path.rsplit('/').next().unwrap_or("").to_string();
        if s.method != "GET" {
            return Reply::json(201, "{\"created\":true}");
        }
        let name = if bob_for_u2 && id == "u2" {
            "bob"
        } else {
            "alice"
        };
        Reply::json(
            200,
            &format!(
                "{{\"id\":\"{id}\",\"name\":\"{name}\",\"request_id\":\"{}\",\"served_at\":\"2026-12-01T10:{:02}:{:02}Z\"}}",
                uuid(n),
                (n / 60) % 60,
                n % 60
            ),
        )
    }
}

struct Setup {
    pair: NetPair,
    state: TempDir,
    _prod: TestServer,
    prod_port: u16,
}

fn setup(tag: &str) -> Setup {
    setup_with(tag, api(false, Arc::default()))
}

/// A production server answering with `handler`, on port 8080 of the server namespace.
fn setup_with(tag: &str, handler: impl Fn(&Seen) -> Reply + Send + Sync + 'static) -> Setup {
    let pair = NetPair::new();
    let state = TempDir::new(tag);
    let addr = format!("{}:8080", pair.server_ip);
    let prod = in_netns(&pair.server_ns, move || {
        TestServer::start_on(&addr, handler)
    });
    Setup {
        pair,
        state,
        _prod: prod,
        prod_port: 8080,
    }
}

impl Setup {
    /// `mirror start NAME --iface <server veth> --port 8080 ARGS...`, which must succeed;
    /// the guard stops the mirror when the test ends.
    fn start(&self, name: &'static str, args: &[&str]) -> (Finished, StopOnDrop) {
        let port = self.prod_port.to_string();
        let mut all = vec![
            "mirror",
            "start",
            name,
            "--iface",
            &self.pair.server_if,
            "--port",
            &port,
        ];
        all.extend_from_slice(args);
        let f = mirror_cmd(&self.pair.server_ns, &self.state.0, &all);
        assert!(f.status.success(), "{}", f.stderr);
        (f, guard(&self.pair.server_ns, &self.state.0, name))
    }
}

/// curl from the client namespace: several URLs on one keep-alive connection.
fn curl_keepalive(pair: &NetPair, urls: &[String], extra: &[&str]) -> Vec<u32> {
    let mut args: Vec<String> = vec![
        "netns".into(),
        "exec".into(),
        pair.client_ns.clone(),
        "curl".into(),
        "-s".into(),
        "--max-time".into(),
        "10".into(),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    for u in urls {
        args.push("-o".into());
        args.push("/dev/null".into());
        args.push("-w".into());
        args.push("%{http_code}\\n".into());
        args.push(u.clone());
    }
    let out = Command::new("ip").args(&args).output().unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| l.trim().parse().unwrap_or(0))
        .collect()
}

#[test]
fn every_request_reaches_the_shadow_once_in_order_and_v2s_differences_are_found() {
    if !privileged("every_request_reaches_the_shadow_once_in_order_and_v2s_differences_are_found") {
        return;
    }
    let s = setup("shadow-main");
    let shadow = in_netns(&s.pair.server_ns, || {
        TestServer::start(api(true, Arc::default()))
    });
    let st = s.state.0.clone();
    let (start, _stop) = s.start(
        "api",
        &["--to", &shadow.url(), "-H", "X-Mirrored-From: production"],
    );
    let banner = String::from_utf8_lossy(&start.stdout);
    assert!(banner.contains("✓ Traffic mirroring active"), "{banner}");
    assert!(
        banner.contains("Stop with: rf-tap mirror stop api"),
        "{banner}"
    );
    let again = mirror_cmd(
        &s.pair.server_ns,
        &st,
        &[
            "mirror",
            "start",
            "api",
            "--iface",
            &s.pair.server_if,
            "--to",
            &shadow.url(),
        ],
    );
    assert_eq!(again.status.code(), Some(1));
    assert!(again.stderr.contains("already running"), "{}", again.stderr);

    // Three keep-alive connections of six GETs each, then writes (not mirrored).
    let base = format!("http://{}:{}", s.pair.server_ip, s.prod_port);
    let mut sent: Vec<Vec<String>> = Vec::new();
    for c in 0..3 {
        let paths: Vec<String> = (0..6)
            .map(|i| format!("/api/users/u{}?c={c}&i={i}", 1 + i % 2))
            .collect();
        let urls: Vec<String> = paths.iter().map(|p| format!("{base}{p}")).collect();
        assert_eq!(curl_keepalive(&s.pair, &urls, &[]), vec![200; 6]);
        sent.push(paths);
    }
    for _ in 0..3 {
        let codes = curl_keepalive(
            &s.pair,
            &[format!("{base}/api/orders")],
            &["-d", "{\"qty\":1}"],
        );
        assert_eq!(codes, [201]);
    }
    assert!(
        eventually(Duration::from_secs(10), || shadow.requests().len() >= 18),
        "the shadow got {} of 18 requests",
        shadow.requests().len()
    );
    assert!(
        eventually(Duration::from_secs(5), || stats(
            &s.pair.server_ns,
            &st,
            "api"
        )["production"]["requests"]
            == 21),
        "{}",
        stats(&s.pair.server_ns, &st, "api")
    );
    std::thread::sleep(Duration::from_millis(300));
    let got = shadow.requests();
    assert_eq!(got.len(), 18, "each GET exactly once, no write");
    assert!(got.iter().all(|r| r.method == "GET"));
    assert!(got
        .iter()
        .all(|r| r.header("x-mirrored-from") == Some("production")));
    // Order within a connection: each shadow connection carries one captured connection's
    // requests, in the order the client sent them.
    let mut by_conn: HashMap<u64, Vec<String>> = HashMap::new();
    for r in &got {
        by_conn.entry(r.conn).or_default().push(r.target.clone());
    }
    let mut seqs: Vec<Vec<String>> = by_conn.into_values().collect();
    seqs.sort();
    let mut want = sent.clone();
    want.sort();
    assert_eq!(
        seqs, want,
        "one shadow connection per captured connection, in order"
    );

    let v = stats(&s.pair.server_ns, &st, "api");
    assert_eq!(v["name"], "api");
    assert_eq!(v["production"]["requests"], 21, "{v}");
    assert_eq!(v["production"]["succeeded"], 21, "{v}");
    assert_eq!(v["shadow"]["requests"], 18, "{v}");
    assert_eq!(v["mirrored"], 18, "{v}");
    assert_eq!(v["skipped"]["write_method"], 3, "{v}");
    assert_eq!(v["dropped"]["queue_full"], 0, "{v}");
    // v2 answers "bob" for u2 (9 requests); request ids and timestamps differ on every
    // answer and are noise, not differences.
    assert_eq!(v["diffs"], 9, "{v}");
    assert!(v["noise_diffs"].as_u64().unwrap() >= 18, "{v}");
    assert!(
        v["production"]["latency_ms"]["p50"].as_f64().is_some(),
        "{v}"
    );
    assert!(v["window_s"].as_u64().unwrap() >= 60, "{v}");

    let text = mirror_cmd(
        &s.pair.server_ns,
        &st,
        &["mirror", "stats", "api", "--last", "1h"],
    );
    let t = String::from_utf8_lossy(&text.stdout);
    assert!(t.starts_with("TRAFFIC MIRROR STATS api (last 1h)"), "{t}");
    assert!(t.contains("Response diffs: 9"), "{t}");
    assert!(t.contains("Not mirrored:   3 writes"), "{t}");
    let diff = mirror_cmd(
        &s.pair.server_ns,
        &st,
        &["mirror", "diff", "api", "--show", "1"],
    );
    let d = String::from_utf8_lossy(&diff.stdout);
    assert!(d.contains("DIFF 1/9 — GET /api/users/u2"), "{d}");
    assert!(d.contains("$.name changed: \"alice\" → \"bob\""), "{d}");

    let list = mirror_cmd(&s.pair.server_ns, &st, &["mirror", "list", "--json"]);
    let l: serde_json::Value = serde_json::from_slice(&list.stdout).unwrap();
    assert_eq!(l[0]["name"], "api");
    assert_eq!(l[0]["status"], "running");
    assert_eq!(l[0]["production_requests"], 21);
    let stop = mirror_cmd(&s.pair.server_ns, &st, &["mirror", "stop", "api"]);
    assert!(stop.status.success(), "{}", stop.stderr);
    assert_eq!(tcx_program_count(&s.pair.server_ns, &s.pair.server_if), 0);
    let list = mirror_cmd(&s.pair.server_ns, &st, &["mirror", "list", "--json"]);
    assert_eq!(String::from_utf8_lossy(&list.stdout).trim(), "[]");
}

#[test]
fn writes_are_mirrored_whole_with_allow_writes_even_50_mb() {
    if !privileged("writes_are_mirrored_whole_with_allow_writes_even_50_mb") {
        return;
    }
    let s = setup("shadow-writes");
    let shadow = in_netns(&s.pair.server_ns, || {
        TestServer::start(api(false, Arc::default()))
    });
    let st = s.state.0.clone();
    let (_, _stop) = s.start("w", &["--to", &shadow.url(), "--allow-writes"]);
    let body = s.state.path("upload.bin");
    let big: Vec<u8> = (0..50u32 << 20).map(|i| (i % 251) as u8).collect();
    std::fs::write(&body, &big).unwrap();
    let base = format!("http://{}:8080", s.pair.server_ip);
    let codes = curl_keepalive(
        &s.pair,
        &[format!("{base}/api/upload")],
        &[
            "--data-binary",
            &format!("@{}", body.display()),
            "-H",
            "Expect:",
        ],
    );
    assert_eq!(codes, [201]);
    assert!(
        eventually(Duration::from_secs(20), || !shadow.requests().is_empty()),
        "the upload reached the shadow"
    );
    let got = shadow.requests();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].method, "POST");
    assert!(
        got[0].body == big,
        "the shadow got {} of {} bytes",
        got[0].body.len(),
        big.len()
    );
    let stop = mirror_cmd(&s.pair.server_ns, &st, &["mirror", "stop", "w"]);
    assert!(stop.status.success(), "{}", stop.stderr);
}

#[test]
fn a_hanging_or_dead_shadow_costs_production_nothing_and_is_counted() {
    if !privileged("a_hanging_or_dead_shadow_costs_production_nothing_and_is_counted") {
        return;
    }
    let s = setup("shadow-slow");
    let hang = in_netns(&s.pair.server_ns, || {
        TestServer::start(|_: &Seen| Reply::Hang)
    });
    // A port nothing listens on.
    let dead = "http://127.0.0.1:9";
    let st = s.state.0.clone();
    let (_, _stop) = s.start(
        "slow",
        &[
            "--to",
            &hang.url(),
            "--to",
            dead,
            "--timeout",
            "1s",
            "--queue",
            "5",
        ],
    );
    let base = format!("http://{}:8080", s.pair.server_ip);
    let started = Instant::now();
    for c in 0..4 {
        let urls: Vec<String> = (0..10)
            .map(|i| format!("{base}/api/users/u{c}?i={i}"))
            .collect();
        assert_eq!(curl_keepalive(&s.pair, &urls, &[]), vec![200; 10]);
    }
    let took = started.elapsed();
    // Production answers at once: 40 requests take nowhere near the shadow's 1 s timeout.
    assert!(took < Duration::from_secs(3), "production took {took:?}");
    assert!(
        eventually(Duration::from_secs(10), || {
            let v = stats(&s.pair.server_ns, &st, "slow");
            v["production"]["requests"] == 40
                && v["shadows"][dead]["errors"].as_u64().unwrap_or(0) >= 1
        }),
        "{}",
        stats(&s.pair.server_ns, &st, "slow")
    );
    let v = stats(&s.pair.server_ns, &st, "slow");
    assert_eq!(v["production"]["succeeded"], 40, "{v}");
    assert!(
        v["dropped"]["queue_full"].as_u64().unwrap() > 0,
        "the hanging shadow's queue filled: {v}"
    );
    assert!(
        v["shadow_failures"]["connection_refused"].as_u64().unwrap() >= 1,
        "{v}"
    );
    let stop = mirror_cmd(&s.pair.server_ns, &st, &["mirror", "stop", "slow"]);
    assert!(stop.status.success(), "{}", stop.stderr);
    assert_eq!(tcx_program_count(&s.pair.server_ns, &s.pair.server_if), 0);
    let v = stats(&s.pair.server_ns, &st, "slow");
    assert!(
        v["shadow_failures"]["timeout"].as_u64().unwrap() >= 1,
        "timeouts are shadow errors: {v}"
    );
}

#[test]
fn a_killed_mirror_leaves_nothing_attached_and_its_stats_survive() {
    if !privileged("a_killed_mirror_leaves_nothing_attached_and_its_stats_survive") {
        return;
    }
    let s = setup("shadow-kill");
    let shadow = in_netns(&s.pair.server_ns, || {
        TestServer::start(api(false, Arc::default()))
    });
    let st = s.state.0.clone();
    let metrics = "127.0.0.1:9464";
    let (_, _stop) = s.start(
        "k",
        &[
            "--to",
            &shadow.url(),
            "--metrics",
            metrics,
            "--sample-rate",
            "50",
        ],
    );
    let base = format!("http://{}:8080", s.pair.server_ip);
    // 40 connections of 3 requests: about half the connections are mirrored, whole.
    for c in 0..40 {
        let urls: Vec<String> = (0..3)
            .map(|i| format!("{base}/api/users/u1?c={c}&i={i}"))
            .collect();
        assert_eq!(curl_keepalive(&s.pair, &urls, &[]), vec![200; 3]);
    }
    assert!(eventually(Duration::from_secs(10), || {
        let v = stats(&s.pair.server_ns, &st, "k");
        v["production"]["requests"] == 120
            && v["mirrored"].as_u64() == Some(shadow.requests().len() as u64)
    }));
    let got = shadow.requests();
    let mut per_conn: HashMap<String, usize> = HashMap::new();
    for r in &got {
        let c = r
            .target
            .split("c=")
            .nth(1)
            .unwrap()
            .split('&')
            .next()
            .unwrap()
            .to_string();
        *per_conn.entry(c).or_default() += 1;
    }
    assert!(
        per_conn.values().all(|n| *n == 3),
        "whole connections: {per_conn:?}"
    );
    let kept = per_conn.len();
    assert!(
        (8..=32).contains(&kept),
        "about half of 40 connections: {kept}"
    );
    let v = stats(&s.pair.server_ns, &st, "k");
    assert_eq!(
        v["skipped"]["sampled_out"].as_u64().unwrap() as usize,
        (40 - kept) * 3,
        "{v}"
    );

    // The metrics pass promtool, and carry the capture's own counters.
    let scrape = || {
        Command::new("ip")
            .args([
                "netns",
                "exec",
                &s.pair.server_ns,
                "curl",
                "-s",
                "--max-time",
                "5",
            ])
            .arg(format!("http://{metrics}/metrics"))
            .output()
            .unwrap()
            .stdout
    };
    let copied = |body: &[u8]| -> u64 {
        String::from_utf8_lossy(body)
            .lines()
            .find_map(|l| {
                l.strip_prefix(
                    "rf_tap_mirror_capture_packets_total{mirror=\"k\",stage=\"copied\"} ",
                )
            })
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0)
    };
    let mut body = scrape();
    // The capture counters are refreshed once a second.
    assert!(
        eventually(Duration::from_secs(5), || {
            body = scrape();
            copied(&body) > 0
        }),
        "packets copied by the capture: {}",
        String::from_utf8_lossy(&body)
    );
    let text = String::from_utf8_lossy(&body).into_owned();
    assert!(
        text.contains("rf_tap_mirror_requests_total{mirror=\"k\""),
        "{text}"
    );
    let mut check = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool (cargo xtask setup installs prometheus)");
    std::io::Write::write_all(check.stdin.as_mut().unwrap(), &body).unwrap();
    let out = check.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    // SIGKILL: nothing stays attached, `list` says it died, the stats are kept.
    let state: serde_json::Value =
        serde_json::from_slice(&std::fs::read(st.join("run/k.json")).unwrap()).unwrap();
    let pid = state["pid"].as_u64().unwrap() as i32;
    // The mirror gave up root once attached: it has run as nobody, with no capabilities,
    // through everything above (mirroring, stats on disk, /metrics).
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .unwrap()
            .to_string()
    };
    assert_eq!(field("Uid:"), "65534", "{status}");
    assert_eq!(field("CapEff:"), "0000000000000000", "{status}");
    // SAFETY: the PID the mirror recorded for itself, a child of this test's command.
    unsafe { libc::kill(pid, libc::SIGKILL) };
    assert!(eventually(Duration::from_secs(5), || {
        tcx_program_count(&s.pair.server_ns, &s.pair.server_if) == 0
    }));
    let list = mirror_cmd(&s.pair.server_ns, &st, &["mirror", "list", "--json"]);
    let l: serde_json::Value = serde_json::from_slice(&list.stdout).unwrap();
    assert_eq!(l[0]["status"], "died", "{l}");
    let v = stats(&s.pair.server_ns, &st, "k");
    assert_eq!(
        v["production"]["requests"], 120,
        "kept across the kill: {v}"
    );
    // A restart appends to the same stats.
    let (_, _again) = s.start("k", &["--to", &shadow.url()]);
    assert_eq!(
        curl_keepalive(&s.pair, &[format!("{base}/api/users/u9")], &[]),
        [200]
    );
    assert!(eventually(Duration::from_secs(5), || {
        stats(&s.pair.server_ns, &st, "k")["production"]["requests"] == 121
    }));
    let stop = mirror_cmd(&s.pair.server_ns, &st, &["mirror", "stop", "k"]);
    assert!(stop.status.success(), "{}", stop.stderr);
}

#[test]
fn mistakes_are_one_line_and_nothing_starts() {
    if !privileged("mistakes_are_one_line_and_nothing_starts") {
        return;
    }
    let pair = NetPair::new();
    let state = TempDir::new("shadow-err");
    let st = state.0.clone();
    let cases: &[(&[&str], &str)] = &[
        (
            &[
                "mirror",
                "start",
                "a",
                "--iface",
                "nope0",
                "--to",
                "http://127.0.0.1:1",
            ],
            "no such interface",
        ),
        (
            &["mirror", "start", "a", "--iface", "rfs0", "--to", "htp://x"],
            "--to htp://x",
        ),
        (
            &[
                "mirror",
                "start",
                "a",
                "--iface",
                "rfs0",
                "--to",
                "http://no-such-host.invalid",
            ],
            "cannot resolve",
        ),
        (
            &[
                "mirror",
                "start",
                "a b",
                "--iface",
                "rfs0",
                "--to",
                "http://127.0.0.1:1",
            ],
            "mirror name",
        ),
        (&["mirror", "stats", "never"], "never ran"),
        (&["mirror", "stop", "never"], "no mirror never is running"),
    ];
    for (args, want) in cases {
        let f = mirror_cmd(&pair.server_ns, &st, args);
        assert_eq!(f.status.code(), Some(1), "{args:?}: {}", f.stderr);
        let lines: Vec<&str> = f.stderr.lines().collect();
        assert_eq!(lines.len(), 1, "{args:?}: {}", f.stderr);
        assert!(lines[0].contains(want), "{args:?}: {}", f.stderr);
    }
    assert_eq!(tcx_program_count(&pair.server_ns, &pair.server_if), 0);
}

#[test]
fn sample_by_header_keeps_each_user_always_in_or_always_out() {
    if !privileged("sample_by_header_keeps_each_user_always_in_or_always_out") {
        return;
    }
    let s = setup("shadow-sampleby");
    let shadow = in_netns(&s.pair.server_ns, || {
        TestServer::start(api(false, Arc::default()))
    });
    let st = s.state.0.clone();
    let (_, _stop) = s.start(
        "u",
        &[
            "--to",
            &shadow.url(),
            "--sample-rate",
            "50",
            "--sample-by",
            "header:X-User-Id",
        ],
    );
    let base = format!("http://{}:8080", s.pair.server_ip);
    // 30 users, each on 3 connections of their own: a user is in or out on all of them.
    for round in 0..3 {
        for user in 0..30 {
            let h = format!("X-User-Id: user-{user}");
            let url = format!("{base}/api/users/u1?user={user}&round={round}");
            assert_eq!(curl_keepalive(&s.pair, &[url], &["-H", &h]), [200]);
        }
    }
    assert!(eventually(Duration::from_secs(10), || {
        let v = stats(&s.pair.server_ns, &st, "u");
        v["production"]["requests"] == 90
            && v["mirrored"].as_u64() == Some(shadow.requests().len() as u64)
    }));
    let mut per_user: HashMap<String, usize> = HashMap::new();
    for r in shadow.requests() {
        *per_user
            .entry(r.header("x-user-id").unwrap().to_string())
            .or_default() += 1;
    }
    assert!(
        per_user.values().all(|n| *n == 3),
        "each sampled user on every connection: {per_user:?}"
    );
    assert!(
        (5..=25).contains(&per_user.len()),
        "about half of 30 users: {}",
        per_user.len()
    );
}

/// A counter endpoint: `{"page": PATH, "visits": N}`, N counting this server's answers from
/// `first`. Production's own answers to the same request differ in `visits`.
fn counter(first: u64) -> impl Fn(&Seen) -> Reply + Send + Sync {
    let n = AtomicU64::new(first);
    move |s: &Seen| {
        let visits = n.fetch_add(1, Ordering::SeqCst);
        Reply::json(
            200,
            &format!("{{\"page\":\"{}\",\"visits\":{visits}}}", s.target),
        )
    }
}

#[test]
fn fields_production_itself_varies_are_learned_as_noise_not_differences() {
    if !privileged("fields_production_itself_varies_are_learned_as_noise_not_differences") {
        return;
    }
    let s = setup_with("shadow-learn", counter(1));
    // The same code as production, but its own counter: `visits` always differs, and it
    // looks like nothing generated (a small number), so only learning can call it noise.
    let shadow = in_netns(&s.pair.server_ns, || TestServer::start(counter(500)));
    let st = s.state.0.clone();
    let (_, _stop) = s.start("learn", &["--to", &shadow.url()]);
    let url = format!("http://{}:8080/api/counter", s.pair.server_ip);
    let urls = vec![url; 8];
    assert_eq!(curl_keepalive(&s.pair, &urls, &[]), vec![200; 8]);
    assert!(
        eventually(Duration::from_secs(10), || {
            let v = stats(&s.pair.server_ns, &st, "learn");
            v["production"]["requests"] == 8 && v["shadow"]["requests"] == 8
        }),
        "{}",
        stats(&s.pair.server_ns, &st, "learn")
    );
    std::thread::sleep(Duration::from_millis(1200));
    let v = stats(&s.pair.server_ns, &st, "learn");
    // Production's second answer to the same request teaches that `visits` varies: at most
    // the first pair, judged before that, can count as a difference.
    assert!(v["diffs"].as_u64().unwrap() <= 1, "{v}");
    assert!(v["noise_fields"].as_u64().unwrap() >= 1, "{v}");
    assert!(v["noise_diffs"].as_u64().unwrap() >= 6, "{v}");
}

#[test]
fn max_rate_caps_what_the_shadow_gets_and_counts_the_rest() {
    if !privileged("max_rate_caps_what_the_shadow_gets_and_counts_the_rest") {
        return;
    }
    let s = setup("shadow-maxrate");
    let shadow = in_netns(&s.pair.server_ns, || {
        TestServer::start(api(false, Arc::default()))
    });
    let st = s.state.0.clone();
    let (_, _stop) = s.start("cap", &["--to", &shadow.url(), "--max-rate", "5"]);
    let base = format!("http://{}:8080", s.pair.server_ip);
    let urls: Vec<String> = (0..40)
        .map(|i| format!("{base}/api/users/u1?i={i}"))
        .collect();
    let started = Instant::now();
    assert_eq!(curl_keepalive(&s.pair, &urls, &[]), vec![200; 40]);
    let elapsed = started.elapsed().as_secs_f64();
    assert!(
        eventually(Duration::from_secs(10), || {
            let v = stats(&s.pair.server_ns, &st, "cap");
            v["production"]["requests"] == 40
                && v["mirrored"].as_u64().unwrap_or(0)
                    + v["dropped"]["rate_limited"].as_u64().unwrap_or(0)
                    == 40
        }),
        "{}",
        stats(&s.pair.server_ns, &st, "cap")
    );
    let v = stats(&s.pair.server_ns, &st, "cap");
    let mirrored = v["mirrored"].as_u64().unwrap();
    // A burst of one second's worth, then 5 a second while the requests came in.
    let most = 5 + (5.0 * elapsed).ceil() as u64 + 1;
    assert!(
        (5..=most).contains(&mirrored),
        "{mirrored} mirrored in {elapsed:.2} s at --max-rate 5: {v}"
    );
    assert!(
        v["dropped"]["rate_limited"].as_u64().unwrap() >= 40 - most,
        "{v}"
    );
    assert_eq!(shadow.requests().len() as u64, mirrored);
}
