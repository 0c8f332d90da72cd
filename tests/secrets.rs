//! Credentials in what rf-tap writes: a capture of real curl requests carrying Bearer and Basic
//! Authorization, a Cookie, an X-Api-Key, `?api_key=` and a JSON `password`, answered with a
//! Set-Cookie and an `access_token`. None of the secret values appears by default in HAR,
//! JSONL, `requests show`, replay results or `replay diff`; every one appears with
//! `--no-redact`; `--redact-header/--redact-param/--redact-field` mask what they name.
#![allow(clippy::unwrap_used)]

use std::{
    process::Command,
    sync::atomic::{AtomicU64, Ordering},
};

use rf_tap_tests::{http_server::*, *};

const BEARER: &str = "BEARER-SECRET-1";
const COOKIE: &str = "COOKIE-SECRET-2";
const API_KEY: &str = "APIKEY-SECRET-3";
const QUERY_KEY: &str = "QUERY-SECRET-4";
const PASSWORD: &str = "PASSWORD-SECRET-5";
const SET_COOKIE: &str = "SETCOOKIE-SECRET-6";
const TOKEN: &str = "TOKEN-SECRET-7";
const BASIC_PASS: &str = "BASICPASS-11";
/// Not secrets by default: the custom rules name them.
const CUSTOM_HEADER: &str = "CUSTOM-8";
const CUSTOM_PARAM: &str = "PARAM-9";
const EMAIL: &str = "EMAIL-10";

fn base64(s: &str) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let b = s.as_bytes();
    let mut o = String::new();
    for c in b.chunks(3) {
        let n = (c[0] as u32) << 16
            | (*c.get(1).unwrap_or(&0) as u32) << 8
            | *c.get(2).unwrap_or(&0) as u32;
        for i in 0..4 {
            if i <= c.len() {
                o.push(T[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                o.push('=');
            }
        }
    }
    o
}

fn secrets() -> Vec<String> {
    let mut v: Vec<String> = [
        BEARER, COOKIE, API_KEY, QUERY_KEY, PASSWORD, SET_COOKIE, TOKEN, BASIC_PASS,
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    v.push(base64(&format!("ann:{BASIC_PASS}")));
    v
}

/// `rf-tap attach` on the client's veth, port 8080, into `file` (and `extra`), attached.
fn capture(pair: &NetPair, file: &std::path::Path, extra: &[&str]) -> RfTap {
    let mut args = vec![
        "attach",
        &pair.client_if,
        "--port",
        "8080",
        "-w",
        file.to_str().unwrap(),
        "-q",
    ];
    args.extend_from_slice(extra);
    let mut tap = RfTap::spawn(&pair.client_ns, &args);
    tap.wait_attached();
    tap
}

fn curl(pair: &NetPair, args: &[&str]) {
    let out = Command::new("ip")
        .args([
            "netns",
            "exec",
            &pair.client_ns,
            "curl",
            "-s",
            "-g",
            "-o",
            "/dev/null",
        ])
        .args(["--max-time", "5", "-w", "%{http_code}"])
        .args(args)
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "200", "curl {args:?}");
}

fn run_ok(ns: Option<&str>, args: &[&str]) -> String {
    let f = rf_tap_run(ns, args);
    assert!(f.status.success(), "rf-tap {args:?}: {}", f.stderr);
    String::from_utf8_lossy(&f.stdout).into_owned()
}

/// The fields HAR 1.2 requires of a log and its entries.
fn check_har(doc: &str) {
    let v: serde_json::Value = serde_json::from_str(doc).expect("HAR is JSON");
    let log = &v["log"];
    assert_eq!(log["version"], "1.2");
    assert!(log["creator"]["name"].is_string() && log["creator"]["version"].is_string());
    let entries = log["entries"].as_array().expect("entries");
    assert_eq!(entries.len(), 2);
    for e in entries {
        assert!(
            e["startedDateTime"].is_string() && e["time"].is_number(),
            "{e}"
        );
        let q = &e["request"];
        for k in ["method", "url", "httpVersion"] {
            assert!(q[k].is_string(), "request.{k}: {e}");
        }
        for k in ["cookies", "headers", "queryString"] {
            assert!(q[k].is_array(), "request.{k}: {e}");
        }
        assert!(
            q["headersSize"].is_number() && q["bodySize"].is_number(),
            "{e}"
        );
        let r = &e["response"];
        assert!(
            r["status"].is_number() && r["statusText"].is_string(),
            "{e}"
        );
        assert!(r["cookies"].is_array() && r["headers"].is_array(), "{e}");
        assert!(r["content"]["size"].is_number() && r["content"]["mimeType"].is_string());
        assert!(r["redirectURL"].is_string(), "{e}");
        assert!(e["cache"].is_object(), "{e}");
        for k in ["send", "wait", "receive"] {
            assert!(e["timings"][k].is_number(), "timings.{k}: {e}");
        }
        for c in q["cookies"]
            .as_array()
            .unwrap()
            .iter()
            .chain(r["cookies"].as_array().unwrap())
        {
            assert!(c["name"].is_string() && c["value"].is_string(), "{c}");
        }
    }
}

#[test]
fn credentials_never_leave_rf_tap_unless_asked() {
    if !privileged("credentials_never_leave_rf_tap_unless_asked") {
        return;
    }
    let pair = NetPair::new();
    let dir = TempDir::new("secrets");
    let addr = format!("{}:8080", pair.server_ip);
    let n = AtomicU64::new(0);
    let srv = in_netns(&pair.server_ns, move || {
        TestServer::start_on(&addr, move |_s: &Seen| {
            Reply::Respond {
            status: 200,
            headers: vec![
                ("Content-Type".into(), "application/json".into()),
                (
                    "Set-Cookie".into(),
                    format!("session={SET_COOKIE}; Path=/; HttpOnly"),
                ),
            ],
            // `n` differs on every answer, so that the replay records its responses as diffs.
            body: format!(
                "{{\"ok\":true,\"n\":{},\"access_token\":\"{TOKEN}\",\"profile\":{{\"email\":\"{EMAIL}\"}}}}",
                n.fetch_add(1, Ordering::SeqCst)
            )
            .into_bytes(),
            delay: std::time::Duration::ZERO,
        }
        })
    });
    let pcap = dir.path("cap.pcap");
    let tap = capture(&pair, &pcap, &[]);
    let base = format!("http://{}:8080", pair.server_ip);
    let bearer = format!("Authorization: Bearer {BEARER}");
    let cookie = format!("Cookie: sid={COOKIE}; theme=dark");
    let key = format!("X-Api-Key: {API_KEY}");
    let custom = format!("X-Custom: {CUSTOM_HEADER}");
    curl(
        &pair,
        &[
            "-H",
            &bearer,
            "-H",
            &cookie,
            "-H",
            &key,
            "-H",
            &custom,
            &format!("{base}/api/items?q={CUSTOM_PARAM}&api_key={QUERY_KEY}"),
        ],
    );
    let basic = format!("ann:{BASIC_PASS}");
    let body = format!(
        "{{\"user\":\"ann\",\"password\":\"{PASSWORD}\",\"profile\":{{\"email\":\"{EMAIL}\"}}}}"
    );
    curl(
        &pair,
        &[
            "-u",
            &basic,
            "-H",
            "Content-Type: application/json",
            "-d",
            &body,
            &format!("{base}/api/login"),
        ],
    );
    let fin = tap.stop();
    assert!(fin.status.success(), "{}", fin.stderr);
    let p = pcap.to_str().unwrap();

    // What rf-tap writes, by default and with --no-redact.
    let outputs = |extra: &[&str]| -> Vec<(&'static str, String)> {
        let with = |args: &[&str]| -> Vec<String> {
            let mut v: Vec<String> = args.iter().map(|s| s.to_string()).collect();
            v.extend(extra.iter().map(|s| s.to_string()));
            v
        };
        let call = |ns: Option<&str>, args: Vec<String>| {
            let a: Vec<&str> = args.iter().map(String::as_str).collect();
            run_ok(ns, &a)
        };
        let har = call(None, with(&["extract", "-q", "--format", "har", p]));
        check_har(&har);
        let jsonl = call(None, with(&["extract", "-q", p]));
        let show = call(None, with(&["requests", "show", "1", p]))
            + &call(None, with(&["requests", "show", "2", p]));
        let _ = std::fs::remove_dir_all(dir.path("cap.pcap.replay"));
        let replay = call(
            Some(&pair.client_ns),
            with(&[
                "replay",
                p,
                "--target",
                &base,
                "--allow-writes",
                "-q",
                "--topspeed",
            ]),
        );
        let mut results = String::new();
        for e in std::fs::read_dir(dir.path("cap.pcap.replay")).unwrap() {
            results += &std::fs::read_to_string(e.unwrap().path()).unwrap();
        }
        let diff = call(
            None,
            vec![
                "replay".into(),
                "diff".into(),
                p.into(),
                "--show".into(),
                "10".into(),
            ],
        );
        let diff_json = call(
            None,
            vec!["replay".into(), "diff".into(), p.into(), "--json".into()],
        );
        assert!(
            results.contains("\"type\":\"diff\""),
            "the replay recorded diffs: {results}"
        );
        vec![
            ("HAR", har),
            ("JSONL", jsonl),
            ("requests show", show),
            ("replay", replay),
            ("replay results", results),
            ("replay diff", diff + &diff_json),
        ]
    };

    let masked = outputs(&[]);
    for (what, text) in &masked {
        for s in secrets() {
            assert!(!text.contains(&s), "{what} leaks {s}:\n{text}");
        }
    }
    let find = |what: &str| masked.iter().find(|(w, _)| *w == what).unwrap().1.clone();
    let show = find("requests show");
    assert!(show.contains("Authorization: Bearer ****"), "{show}");
    assert!(show.contains("Authorization: Basic ****"), "{show}");
    assert!(show.contains("Cookie: sid=****; theme=****"), "{show}");
    assert!(
        show.contains("Set-Cookie: session=****; Path=/; HttpOnly"),
        "{show}"
    );
    assert!(
        show.contains("api_key=****") && show.contains(&format!("q={CUSTOM_PARAM}")),
        "{show}"
    );
    // What is not a secret by default stays.
    for (what, text) in [("HAR", find("HAR")), ("requests show", show.clone())] {
        for s in [CUSTOM_HEADER, CUSTOM_PARAM, EMAIL] {
            assert!(text.contains(s), "{what} keeps {s}");
        }
    }
    assert!(find("replay results").contains(EMAIL));

    // --no-redact: every one of them, on purpose.
    let clear = outputs(&["--no-redact"]);
    let find = |what: &str| clear.iter().find(|(w, _)| *w == what).unwrap().1.clone();
    for what in ["HAR", "requests show"] {
        let text = find(what);
        for s in secrets() {
            if s == BASIC_PASS {
                continue; // on the wire only as base64
            }
            assert!(text.contains(&s), "{what} with --no-redact lacks {s}");
        }
    }
    assert!(find("JSONL").contains(QUERY_KEY));
    for s in [QUERY_KEY, SET_COOKIE, TOKEN] {
        assert!(
            find("replay results").contains(s),
            "replay results with --no-redact lack {s}"
        );
        assert!(
            find("replay diff").contains(s) || s == QUERY_KEY,
            "replay diff lacks {s}"
        );
    }

    // What is sent to a target is the captured request, credentials included (a staging
    // service may need them), unless --strip-header / --scrub-field say otherwise.
    let sent = |extra: &[&str]| {
        let before = srv.requests().len();
        let mut args = vec![
            "replay",
            p,
            "--target",
            &base,
            "--allow-writes",
            "-q",
            "--no-save",
        ];
        args.extend(extra);
        run_ok(Some(&pair.client_ns), &args);
        srv.requests()[before..].to_vec()
    };
    let plain = sent(&[]);
    assert_eq!(plain.len(), 2);
    assert!(plain
        .iter()
        .any(|r| r.header("authorization") == Some(&format!("Bearer {BEARER}"))));
    assert!(plain
        .iter()
        .any(|r| String::from_utf8_lossy(&r.body).contains(PASSWORD)));
    let scrubbed = sent(&[
        "--strip-header",
        "Authorization",
        "--strip-header",
        "Cookie",
        "--scrub-field",
        "$.password",
    ]);
    assert_eq!(scrubbed.len(), 2);
    for r in &scrubbed {
        assert_eq!(r.header("authorization"), None, "{r:?}");
        assert_eq!(r.header("cookie"), None, "{r:?}");
        assert!(
            !String::from_utf8_lossy(&r.body).contains(PASSWORD),
            "{r:?}"
        );
    }
    let login = scrubbed.iter().find(|r| r.method == "POST").unwrap();
    let body: serde_json::Value = serde_json::from_slice(&login.body).unwrap();
    assert_eq!(body["password"], "****");
    assert_eq!(body["user"], "ann");
    assert_eq!(
        login.header("content-length"),
        Some(login.body.len().to_string().as_str())
    );

    // Custom rules mask what they name, in HAR and in `requests show`.
    let custom_args = [
        "--redact-header",
        "X-Custom",
        "--redact-param",
        "q",
        "--redact-field",
        "$.profile.email",
    ];
    let mut args = vec!["extract", "-q", "--format", "har", p];
    args.extend(custom_args);
    let har = run_ok(None, &args);
    check_har(&har);
    let mut args = vec!["requests", "show", "2", p];
    args.extend(custom_args);
    let show2 = run_ok(None, &args);
    let mut args = vec!["requests", "show", "1", p];
    args.extend(custom_args);
    let show1 = run_ok(None, &args);
    for (what, text) in [("HAR", &har), ("requests show", &(show1 + &show2))] {
        for s in [CUSTOM_HEADER, CUSTOM_PARAM, EMAIL] {
            assert!(
                !text.contains(s),
                "{what} with custom rules leaks {s}:\n{text}"
            );
        }
        for s in secrets() {
            assert!(!text.contains(&s), "{what} with custom rules leaks {s}");
        }
    }
}

#[test]
fn without_rights_privileged_commands_say_what_to_run_them_with() {
    if !privileged("without_rights_privileged_commands_say_what_to_run_them_with") {
        return;
    }
    for args in [
        vec!["session", "list"],
        vec!["attach", "lo", "-c", "1"],
        vec![
            "mirror",
            "start",
            "m",
            "--iface",
            "lo",
            "--to",
            "http://127.0.0.1:9",
        ],
    ] {
        let out = Command::new("setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
            .arg(rf_tap_bin())
            .args(&args)
            .env(
                "RF_TAP_STATE_DIR",
                std::env::temp_dir().join("rf-tap-norights"),
            )
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {err}");
        assert_eq!(err.trim().lines().count(), 1, "{args:?}: {err}");
        assert!(err.contains("sudo"), "{args:?}: {err}");
    }
}

/// The `Uid:` and `CapEff:` lines of a process.
fn uid_and_caps(pid: i32) -> (u32, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .unwrap()
            .split_whitespace()
            .next()
            .unwrap()
            .to_string()
    };
    (
        field("Uid:").parse().unwrap(),
        u64::from_str_radix(&field("CapEff:"), 16).unwrap(),
    )
}

#[test]
fn attach_gives_up_root_once_attached_and_still_captures_everything() {
    if !privileged("attach_gives_up_root_once_attached_and_still_captures_everything") {
        return;
    }
    let pair = NetPair::new();
    let dir = TempDir::new("privs");
    let _srv = in_netns(&pair.server_ns, {
        let addr = format!("{}:8080", pair.server_ip);
        move || TestServer::start_on(&addr, |_| Reply::json(200, "{}"))
    });
    let nobody = 65534;
    // A plain capture: no capabilities left at all.
    let pcap = dir.path("p.pcap");
    let tap = capture(&pair, &pcap, &["--json"]);
    assert_eq!(uid_and_caps(tap.pid()), (nobody, 0), "as nobody, CapEff 0");
    for i in 0..5 {
        curl(&pair, &[&format!("http://{}:8080/p{i}", pair.server_ip)]);
    }
    let fin = tap.stop();
    assert!(fin.status.success(), "{}", fin.stderr);
    assert_eq!(
        tcx_program_count(&pair.client_ns, &pair.client_if),
        0,
        "detached at exit"
    );
    let summary = fin.json();
    let written = summary["written"].as_u64().unwrap();
    assert!(written >= 5 * 8, "{summary}");
    let (records, torn) = read_pcap(&pcap);
    assert!(!torn);
    assert_eq!(records.len() as u64, written, "every packet written");
    assert_eq!(get_paths(&records).len(), 5);
    // The kernel counters were read after root was gone.
    assert_eq!(summary["captured"].as_u64(), Some(written), "{summary}");
    assert!(summary["seen"].as_u64().unwrap() >= written, "{summary}");

    // Rotation into a directory only root can write keeps exactly CAP_DAC_OVERRIDE.
    let private = dir.path("root-only");
    std::fs::create_dir(&private).unwrap();
    std::fs::set_permissions(
        &private,
        std::os::unix::fs::PermissionsExt::from_mode(0o700),
    )
    .unwrap();
    let rot = private.join("r.pcap");
    let tap = capture(&pair, &rot, &["--rotate-size", "1KiB"]);
    assert_eq!(
        uid_and_caps(tap.pid()),
        (nobody, 1 << 1),
        "CAP_DAC_OVERRIDE only"
    );
    for i in 0..5 {
        curl(&pair, &[&format!("http://{}:8080/r{i}", pair.server_ip)]);
    }
    let fin = tap.stop();
    assert!(fin.status.success(), "{}", fin.stderr);
    let files = std::fs::read_dir(&private).unwrap().count();
    assert!(files >= 2, "rotated into {files} files");

    // -Z root keeps root, as asked.
    let tap = capture(&pair, &dir.path("k.pcap"), &["-Z", "root"]);
    assert_eq!(uid_and_caps(tap.pid()).0, 0);
    assert!(tap.stop().status.success());
}
