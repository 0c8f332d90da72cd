//! `cargo xtask demo`: the main job on an embedded default. Makes a client and a server
//! namespace joined by a veth pair, serves a small JSON API with nginx, attaches rf-tap to the
//! server's interface with `--port 80-443`, drives real traffic (curl, then wrk), shows
//! what was captured, and replays the client's side of it at 2x.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context as _};
use rf_tap_tests::{nginx, NetPair, RfTap, TempDir};

fn write_api(dir: &TempDir) -> anyhow::Result<Vec<String>> {
    let www = dir.path("www");
    let mut paths = Vec::new();
    std::fs::create_dir_all(www.join("api/users"))?;
    for id in 1..=20 {
        let body = format!(
            "{{\"id\":\"u_{id}\",\"name\":\"user {id}\",\"plan\":\"{}\",\"active\":true}}\n",
            if id % 3 == 0 { "pro" } else { "free" }
        );
        std::fs::write(www.join(format!("api/users/u_{id}")), body)?;
        paths.push(format!("/api/users/u_{id}"));
    }
    std::fs::write(www.join("health"), "ok\n")?;
    std::fs::write(www.join("index.html"), "<h1>rf-tap demo</h1>\n")?;
    paths.push("/health".into());
    paths.push("/index.html".into());
    Ok(paths)
}

pub fn demo(root: &Path, rf_tap: &Path) -> anyhow::Result<()> {
    let out_dir = root.join("target/demo");
    std::fs::create_dir_all(&out_dir)?;
    let pcap: PathBuf = out_dir.join("demo.pcap");
    std::env::set_var("RF_TAP_BIN", rf_tap);

    println!("demo: creating namespaces (client, server) joined by a veth pair");
    let pair = NetPair::new();
    let scratch = TempDir::new("demo");
    let paths = write_api(&scratch)?;
    let _server = nginx(
        &pair.server_ns,
        &scratch,
        &[format!("{}:80", pair.server_ip)],
    );
    println!(
        "demo: nginx serves a JSON API at http://{}/ in namespace {}",
        pair.server_ip, pair.server_ns
    );

    let pcap_arg = pcap.to_str().context("output path is not UTF-8")?;
    let args = [
        "attach",
        pair.server_if.as_str(),
        "--port",
        "80-443",
        "-w",
        pcap_arg,
    ];
    println!(
        "demo: sudo rf-tap {}   (in namespace {})",
        args.join(" "),
        pair.server_ns
    );
    let mut tap = RfTap::spawn(&pair.server_ns, &args);
    tap.wait_attached();

    let rounds = 5;
    let total = rounds * paths.len();
    let mut ok = 0;
    for round in 0..rounds {
        for p in &paths {
            if pair.curl(&format!("http://{}{p}", pair.server_ip)) == 200 {
                ok += 1;
            }
        }
        println!(
            "demo: curl {}/{} requests answered 200",
            ok,
            (round + 1) * paths.len()
        );
    }
    println!("demo: wrk -t1 -c8 -d2s (bounded load)");
    let wrk = Command::new("ip")
        .args([
            "netns",
            "exec",
            &pair.client_ns,
            "wrk",
            "-t1",
            "-c8",
            "-d2s",
            "--timeout",
            "2s",
        ])
        .arg(format!("http://{}/api/users/u_1", pair.server_ip))
        .output()
        .context("cannot run wrk (cargo xtask setup installs it)")?;
    let wrk_text = String::from_utf8_lossy(&wrk.stdout);
    let wrk_requests = wrk_text
        .lines()
        .find_map(|l| l.trim().split_once(" requests in "))
        .and_then(|(n, _)| n.trim().parse::<u64>().ok())
        .unwrap_or(0);
    println!("demo: wrk sent {wrk_requests} requests");

    let fin = tap.stop();
    println!("{}", fin.stderr.trim_end());
    if !fin.status.success() {
        bail!("rf-tap attach failed");
    }

    let listing = Command::new("tshark")
        .arg("-r")
        .arg(&pcap)
        .args(["-Y", "http.request", "-T", "fields", "-E", "separator=  "])
        .args([
            "-e",
            "frame.number",
            "-e",
            "ip.src",
            "-e",
            "http.request.method",
        ])
        .args(["-e", "http.request.uri"])
        .output()
        .context("cannot run tshark")?;
    let lines: Vec<String> = String::from_utf8_lossy(&listing.stdout)
        .lines()
        .map(str::to_string)
        .collect();
    println!(
        "\ndemo: the first HTTP requests in {} (tshark):",
        pcap.display()
    );
    for l in lines.iter().take(8) {
        println!("  {l}");
    }
    let expected = ok as u64 + wrk_requests;
    println!(
        "\ndemo: {} HTTP requests in the capture; {} were answered ({} curl + {} wrk){}",
        lines.len(),
        expected,
        ok,
        wrk_requests,
        if lines.len() as u64 >= expected {
            ": nothing lost"
        } else {
            ""
        }
    );
    println!(
        "demo: open it with `wireshark {}` or `tshark -r {}`",
        pcap.display(),
        pcap.display()
    );
    if total != ok {
        bail!("only {ok} of {total} curl requests succeeded");
    }

    // Offline pcap replay: the client's side of the capture, back onto the client's veth at
    // twice the recorded speed (the first 20,000 packets).
    println!(
        "\ndemo: rf-tap replay {} --iface {} --direction client --speed 2x --limit 20000",
        pcap.display(),
        pair.client_if
    );
    let replay = rf_tap_tests::rf_tap_run(
        Some(&pair.client_ns),
        &[
            "replay",
            pcap.to_str().context("path")?,
            "--iface",
            &pair.client_if,
            "--direction",
            "client",
            "--speed",
            "2x",
            "--limit",
            "20000",
            "-q",
        ],
    );
    print!("{}", String::from_utf8_lossy(&replay.stdout));
    if !replay.status.success() {
        bail!("rf-tap replay failed: {}", replay.stderr);
    }

    // HTTP replay against a "new version": the same nginx with one user document changed,
    // then the saved difference shown.
    std::fs::write(
        scratch.path("www/api/users/u_3"),
        r#"{"id":"u_3","name":"user 3","avatar":"/img/u_3.png"}"#,
    )?;
    let target = format!("http://{}", pair.server_ip);
    println!(
        "\ndemo: (u_3 changed on the server) rf-tap replay {} --target {target} --speed 10x --limit 2000",
        pcap.display()
    );
    let http = rf_tap_tests::rf_tap_run(
        Some(&pair.client_ns),
        &[
            "replay",
            pcap.to_str().context("path")?,
            "--target",
            &target,
            "--speed",
            "10x",
            "--limit",
            "2000",
            "-q",
        ],
    );
    print!("{}", String::from_utf8_lossy(&http.stdout));
    if http.status.code() != Some(0) {
        bail!("rf-tap replay --target failed: {}", http.stderr);
    }
    println!("\ndemo: rf-tap replay diff {} --show 1", pcap.display());
    let diff = rf_tap_tests::rf_tap_run(
        None,
        &[
            "replay",
            "diff",
            pcap.to_str().context("path")?,
            "--show",
            "1",
        ],
    );
    print!("{}", String::from_utf8_lossy(&diff.stdout));
    if !diff.status.success() {
        bail!("rf-tap replay diff failed: {}", diff.stderr);
    }
    live_mirror(&pair, &paths, &out_dir, rf_tap)?;
    http2(&pair, &paths, &out_dir)
}

/// Cleartext HTTP/2: nginx's `http2` port, curl with prior knowledge, the capture's streams
/// as exchanges.
fn http2(pair: &NetPair, paths: &[String], out_dir: &Path) -> anyhow::Result<()> {
    let dir = TempDir::new("demo-h2");
    write_api(&dir)?;
    let _srv = nginx(
        &pair.server_ns,
        &dir,
        &[
            "127.0.0.1:80".to_string(),
            format!("{}:8080 http2", pair.server_ip),
        ],
    );
    let pcap = out_dir.join("demo-h2.pcap");
    let pcap_arg = pcap.to_str().context("output path is not UTF-8")?;
    println!(
        "\ndemo: HTTP/2 in the clear: rf-tap attach {} --port 8080 -w {pcap_arg}, then curl --http2-prior-knowledge",
        pair.server_if
    );
    let mut tap = RfTap::spawn(
        &pair.server_ns,
        &[
            "attach",
            &pair.server_if,
            "--port",
            "8080",
            "-w",
            pcap_arg,
            "-q",
        ],
    );
    tap.wait_attached();
    for p in paths.iter().take(4) {
        let st = Command::new("ip")
            .args([
                "netns",
                "exec",
                &pair.client_ns,
                "curl",
                "-s",
                "-o",
                "/dev/null",
            ])
            .args(["--http2-prior-knowledge", "--max-time", "5"])
            .arg(format!("http://{}:8080{p}", pair.server_ip))
            .status()?;
        if !st.success() {
            bail!("curl --http2-prior-knowledge failed");
        }
    }
    std::thread::sleep(std::time::Duration::from_millis(200));
    let fin = tap.stop();
    if !fin.status.success() {
        bail!("rf-tap attach failed: {}", fin.stderr);
    }
    println!("demo: rf-tap requests {pcap_arg}");
    let table = rf_tap_tests::rf_tap_run(None, &["requests", pcap_arg]);
    print!("{}", String::from_utf8_lossy(&table.stdout));
    if !table.status.success() {
        bail!("rf-tap requests failed: {}", table.stderr);
    }
    Ok(())
}

/// A live mirror: production's requests copied in real time to a shadow (a second nginx
/// with one document changed), and the shadow's answers compared with production's.
fn live_mirror(
    pair: &NetPair,
    paths: &[String],
    out_dir: &Path,
    rf_tap: &Path,
) -> anyhow::Result<()> {
    let shadow_dir = TempDir::new("demo-shadow");
    write_api(&shadow_dir)?;
    // The shadow runs what production runs now (u_3 as changed above), but for u_5.
    std::fs::write(
        shadow_dir.path("www/api/users/u_3"),
        r#"{"id":"u_3","name":"user 3","avatar":"/img/u_3.png"}"#,
    )?;
    std::fs::write(
        shadow_dir.path("www/api/users/u_5"),
        r#"{"id":"u_5","name":"user 5","plan":"team","active":true}"#,
    )?;
    let _shadow = nginx(
        &pair.server_ns,
        &shadow_dir,
        &["127.0.0.1:8081".to_string()],
    );
    let state = out_dir.join("mirror-state");
    let _ = std::fs::remove_dir_all(&state);
    let mirror = |args: &[&str]| -> anyhow::Result<std::process::Output> {
        Ok(std::process::Command::new("ip")
            .args(["netns", "exec", &pair.server_ns])
            .arg(rf_tap)
            .args(args)
            .env("RF_TAP_STATE_DIR", &state)
            .stdin(std::process::Stdio::null())
            .output()?)
    };
    println!(
        "\ndemo: a shadow (v2: u_5's plan changed) on 127.0.0.1:8081; \
         rf-tap mirror start demo --iface {} --port 80 --to http://127.0.0.1:8081",
        pair.server_if
    );
    let start = mirror(&[
        "mirror",
        "start",
        "demo",
        "--iface",
        &pair.server_if,
        "--port",
        "80",
        "--to",
        "http://127.0.0.1:8081",
    ])?;
    print!("{}", String::from_utf8_lossy(&start.stdout));
    if !start.status.success() {
        bail!(
            "rf-tap mirror start failed: {}",
            String::from_utf8_lossy(&start.stderr)
        );
    }
    let result = (|| -> anyhow::Result<()> {
        println!(
            "demo: curl sends {} requests to production",
            paths.len() * 2
        );
        for _ in 0..2 {
            for p in paths {
                pair.curl(&format!("http://{}{p}", pair.server_ip));
            }
        }
        std::thread::sleep(std::time::Duration::from_millis(1500));
        for args in [
            &["mirror", "list"][..],
            &["mirror", "stats", "demo"][..],
            &["mirror", "diff", "demo", "--show", "1"][..],
        ] {
            println!("\ndemo: rf-tap {}", args.join(" "));
            let out = mirror(args)?;
            print!("{}", String::from_utf8_lossy(&out.stdout));
            if !out.status.success() {
                bail!(
                    "rf-tap {} failed: {}",
                    args.join(" "),
                    String::from_utf8_lossy(&out.stderr)
                );
            }
        }
        Ok(())
    })();
    println!("\ndemo: rf-tap mirror stop demo");
    let stop = mirror(&["mirror", "stop", "demo"])?;
    if !stop.status.success() {
        bail!(
            "rf-tap mirror stop failed: {}",
            String::from_utf8_lossy(&stop.stderr)
        );
    }
    result
}
