//! Support for rf-tap's end-to-end tests: network namespaces that clean up after themselves,
//! real servers (nginx) and clients (curl) inside them, the rf-tap binary as a child process,
//! and pcap reading.
//!
//! Every namespace, process and file a test makes is owned by a guard whose `Drop` removes
//! it, so a failing assertion still leaves the machine clean. Traffic only ever goes to
//! addresses inside namespaces the test made.
#![allow(clippy::unwrap_used)] // test support: a failed unwrap is a failed test

use std::{
    fs,
    io::{BufRead, BufReader, Read},
    os::fd::AsRawFd,
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
    sync::{
        atomic::{AtomicU32, Ordering},
        mpsc,
    },
    time::{Duration, Instant},
};

static NEXT_ID: AtomicU32 = AtomicU32::new(0);

/// True when the test may run (root). Outside CI a non-root run skips with a message; under
/// `CI=true` it is a failure, because CI is where privileged tests must run.
pub fn privileged(test: &str) -> bool {
    // SAFETY: trivial libc call.
    if unsafe { libc::geteuid() } == 0 {
        return true;
    }
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("{test}: needs root, and CI=true: privileged tests must run in CI");
    }
    eprintln!("skipped: {test} needs root (netns, veth, eBPF)");
    false
}

/// The rf-tap binary under test: `RF_TAP_BIN`, else the workspace's release or debug build
/// (whichever is newer).
pub fn rf_tap_bin() -> PathBuf {
    if let Ok(p) = std::env::var("RF_TAP_BIN") {
        return PathBuf::from(p);
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let target = std::env::var("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| root.join("target"));
    let candidates = [target.join("debug/rf-tap"), target.join("release/rf-tap")];
    candidates
        .iter()
        .filter_map(|p| Some((fs::metadata(p).ok()?.modified().ok()?, p.clone())))
        .max()
        .map(|(_, p)| p)
        .expect("no rf-tap binary: run `cargo build -p rf-tap` (cargo xtask test does)")
}

/// Runs a command, panicking with its output if it fails.
pub fn sh(args: &[&str]) -> String {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .unwrap_or_else(|e| panic!("cannot run {args:?}: {e}"));
    assert!(
        out.status.success(),
        "{args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A scratch directory removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> Self {
        let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
        let p = std::env::temp_dir().join(format!("rf-tap-{tag}-{}-{id}", std::process::id()));
        let _ = fs::remove_dir_all(&p);
        fs::create_dir_all(&p).unwrap();
        Self(p)
    }
    pub fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// Two namespaces, client and server, joined by a veth pair with IPv4 and IPv6 addresses.
/// Both are deleted on drop (which also removes the veth pair and anything attached to it).
pub struct NetPair {
    pub client_ns: String,
    pub server_ns: String,
    pub client_if: String,
    pub server_if: String,
    pub client_ip: String,
    pub server_ip: String,
    pub client_ip6: String,
    pub server_ip6: String,
}

impl NetPair {
    pub fn new() -> Self {
        let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
        let pid = std::process::id();
        let tag = format!("{:x}{:02x}", pid % 0xfffff, id % 0xff);
        let (a, b) = ((pid % 200) as u8 + 20, id as u8);
        let pair = Self {
            client_ns: format!("rftc-{tag}"),
            server_ns: format!("rfts-{tag}"),
            client_if: "rfc0".into(),
            server_if: "rfs0".into(),
            client_ip: format!("10.{a}.{b}.1"),
            server_ip: format!("10.{a}.{b}.2"),
            client_ip6: format!("fd00:{a}:{b}::1"),
            server_ip6: format!("fd00:{a}:{b}::2"),
        };
        sh(&["ip", "netns", "add", &pair.client_ns]);
        sh(&["ip", "netns", "add", &pair.server_ns]);
        sh(&[
            "ip",
            "-n",
            &pair.client_ns,
            "link",
            "add",
            &pair.client_if,
            "type",
            "veth",
            "peer",
            "name",
            &pair.server_if,
            "netns",
            &pair.server_ns,
        ]);
        for (ns, ifname, ip, ip6) in [
            (
                &pair.client_ns,
                &pair.client_if,
                &pair.client_ip,
                &pair.client_ip6,
            ),
            (
                &pair.server_ns,
                &pair.server_if,
                &pair.server_ip,
                &pair.server_ip6,
            ),
        ] {
            for (addr, extra) in [
                (format!("{ip}/24"), None),
                (format!("{ip6}/64"), Some("nodad")),
            ] {
                let mut cmd = vec!["ip", "-n", ns, "addr", "add", &addr, "dev", ifname];
                cmd.extend(extra);
                sh(&cmd);
            }
            sh(&["ip", "-n", ns, "link", "set", ifname, "up"]);
            sh(&["ip", "-n", ns, "link", "set", "lo", "up"]);
        }
        pair
    }

    /// `curl` from the client namespace; returns the HTTP status (0 when it failed).
    pub fn curl(&self, url: &str) -> u32 {
        let out = Command::new("ip")
            .args([
                "netns",
                "exec",
                &self.client_ns,
                "curl",
                "-s",
                "-g",
                "-o",
                "/dev/null",
            ])
            .args(["--max-time", "5", "-w", "%{http_code}", url])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .unwrap_or(0)
    }
}

impl Default for NetPair {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for NetPair {
    fn drop(&mut self) {
        for ns in [&self.client_ns, &self.server_ns] {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}

/// The interpreter of the project's Python environment (`target/pyenv`, made by `cargo
/// xtask setup`) with the tests' peers' packages. Missing: the test skips with a message,
/// or fails under `CI=true`.
pub fn pyenv_python(test: &str) -> Option<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let target = std::env::var("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| root.join("target"));
    let py = target.join("pyenv/bin/python");
    if py.exists() {
        return Some(py);
    }
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!(
            "{test}: {} missing under CI=true: run `cargo xtask setup`",
            py.display()
        );
    }
    eprintln!(
        "skipped: {test} needs {} (`cargo xtask setup`)",
        py.display()
    );
    None
}

/// A test peer in `tests/peers/` run by `python` inside `ns`, up once it prints `ready`.
pub fn python_peer(ns: &str, python: &Path, script: &str, args: &[&str]) -> Proc {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("peers")
        .join(script);
    let mut child = Command::new("ip")
        .args(["netns", "exec", ns])
        .arg(python)
        .arg(&path)
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let out = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut lines = BufReader::new(out).lines();
        let first = lines.next().and_then(Result::ok).unwrap_or_default();
        let _ = tx.send(first);
        for _ in lines {}
    });
    let proc = Proc {
        child: Some(child),
        name: script.into(),
    };
    let first = rx.recv_timeout(Duration::from_secs(20)).unwrap_or_default();
    assert_eq!(first, "ready", "{script} did not start");
    proc
}

/// A child process killed (by its own PID) on drop.
pub struct Proc {
    pub child: Option<Child>,
    pub name: String,
}

impl Proc {
    pub fn pid(&self) -> i32 {
        self.child.as_ref().map(|c| c.id() as i32).unwrap_or(0)
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// nginx serving `root` on the given addresses and ports inside `ns`, as a single process
/// (`master_process off`): the PID the guard kills is the whole server, so no worker can be
/// left behind.
pub fn nginx(ns: &str, dir: &TempDir, listen: &[String]) -> Proc {
    nginx_with(ns, dir, listen, "")
}

/// [`nginx`] with more directives in its `http` block (`gzip on;`, say).
pub fn nginx_with(ns: &str, dir: &TempDir, listen: &[String], http: &str) -> Proc {
    let root = dir.path("www");
    fs::create_dir_all(&root).unwrap();
    let listens: String = listen.iter().map(|l| format!("listen {l};\n")).collect();
    let d = dir.0.display();
    let conf = format!(
        "master_process off;\ndaemon off;\nuser root;\npid {d}/nginx.pid;\nerror_log {d}/error.log;\n\
         events {{ worker_connections 1024; }}\n\
         http {{ access_log off; keepalive_requests 100000; {http}\n\
         client_body_temp_path {d}/body; proxy_temp_path {d}/proxy; fastcgi_temp_path {d}/fcgi;\n\
         uwsgi_temp_path {d}/uwsgi; scgi_temp_path {d}/scgi;\n\
         server {{ {listens} root {}; location / {{ }} }} }}\n",
        root.display()
    );
    let conf_path = dir.path("nginx.conf");
    fs::write(&conf_path, conf).unwrap();
    let child = Command::new("ip")
        .args(["netns", "exec", ns, "nginx", "-c"])
        .arg(&conf_path)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("nginx not installed: run `cargo xtask setup`");
    // Wait until it answers locally.
    let proc = Proc {
        child: Some(child),
        name: "nginx".into(),
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    let probe = listen[0].clone();
    let url = if probe.starts_with('[') || probe.contains(':') {
        format!("http://{probe}/")
    } else {
        format!("http://{probe}:80/")
    };
    while Instant::now() < deadline {
        let st = Command::new("ip")
            .args([
                "netns",
                "exec",
                ns,
                "curl",
                "-s",
                "-g",
                "-o",
                "/dev/null",
                "--max-time",
                "1",
                &url,
            ])
            .status()
            .unwrap();
        if st.success() {
            return proc;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("nginx in {ns} did not come up on {url}");
}

/// A running `rf-tap attach` (or any rf-tap command) in a namespace.
pub struct RfTap {
    proc: Proc,
    stderr_lines: mpsc::Receiver<String>,
    stderr_seen: Vec<String>,
    stdout: Option<std::thread::JoinHandle<Vec<u8>>>,
}

/// What an rf-tap run ended with.
#[derive(Debug)]
pub struct Finished {
    pub status: ExitStatus,
    pub stdout: Vec<u8>,
    pub stderr: String,
}

impl Finished {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.stdout).unwrap_or_else(|e| {
            panic!(
                "stdout is not one JSON object ({e}): {}\nstderr: {}",
                String::from_utf8_lossy(&self.stdout),
                self.stderr
            )
        })
    }
}

impl RfTap {
    pub fn spawn(ns: &str, args: &[&str]) -> Self {
        let mut child = Command::new("ip")
            .args(["netns", "exec", ns])
            .arg(rf_tap_bin())
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .stdin(Stdio::null())
            .spawn()
            .unwrap();
        let (tx, rx) = mpsc::channel();
        let err = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(err).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut out = child.stdout.take().unwrap();
        let stdout = std::thread::spawn(move || {
            let mut v = Vec::new();
            let _ = out.read_to_end(&mut v);
            v
        });
        Self {
            proc: Proc {
                child: Some(child),
                name: "rf-tap".into(),
            },
            stderr_lines: rx,
            stderr_seen: Vec::new(),
            stdout: Some(stdout),
        }
    }

    /// Waits for the "attached" line (panics with stderr if the process ends first).
    pub fn wait_attached(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            match self.stderr_lines.recv_timeout(Duration::from_millis(100)) {
                Ok(line) => {
                    let done = line.contains("attached to");
                    self.stderr_seen.push(line);
                    if done {
                        return;
                    }
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
            }
        }
        panic!("rf-tap did not attach: {}", self.stderr_seen.join("\n"));
    }

    pub fn pid(&self) -> i32 {
        self.proc.pid()
    }

    /// Sends `signal` to rf-tap itself (not to `ip netns exec`, which execs into it).
    pub fn signal(&self, signal: i32) {
        // SAFETY: signalling our own child by PID.
        unsafe { libc::kill(self.pid(), signal) };
    }

    /// Waits (bounded) for the process to end and collects its output.
    pub fn wait(mut self, limit: Duration) -> Finished {
        let mut child = self.proc.child.take().unwrap();
        let deadline = Instant::now() + limit;
        let status = loop {
            if let Some(st) = child.try_wait().unwrap() {
                break st;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("rf-tap did not finish within {limit:?}");
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let stdout = self.stdout.take().unwrap().join().unwrap();
        let mut stderr = self.stderr_seen.join("\n");
        while let Ok(l) = self.stderr_lines.recv_timeout(Duration::from_millis(200)) {
            stderr.push('\n');
            stderr.push_str(&l);
        }
        Finished {
            status,
            stdout,
            stderr,
        }
    }

    pub fn stop(self) -> Finished {
        self.signal(libc::SIGINT);
        self.wait(Duration::from_secs(20))
    }
}

/// Runs rf-tap to completion (for commands that end by themselves).
pub fn rf_tap_run(ns: Option<&str>, args: &[&str]) -> Finished {
    let mut cmd = match ns {
        Some(ns) => {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", ns]).arg(rf_tap_bin());
            c
        }
        None => Command::new(rf_tap_bin()),
    };
    let out = cmd.args(args).stdin(Stdio::null()).output().unwrap();
    Finished {
        status: out.status,
        stdout: out.stdout,
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// Starts `f` on a thread that has entered network namespace `ns`.
pub fn spawn_in_netns<T: Send + 'static>(
    ns: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> std::thread::JoinHandle<T> {
    let path = format!("/run/netns/{ns}");
    std::thread::spawn(move || {
        let file = fs::File::open(&path).unwrap();
        // SAFETY: setns on this thread only (CLONE_NEWNET is per thread).
        let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(rc, 0, "setns {path}");
        f()
    })
}

/// Runs `f` on a thread that has entered network namespace `ns`.
pub fn in_netns<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    spawn_in_netns(ns, f).join().unwrap()
}

/// The unsigned integer `v[k]` of a JSON summary (panics, naming it, when it is missing).
pub fn json_u64(v: &serde_json::Value, k: &str) -> u64 {
    v[k].as_u64()
        .unwrap_or_else(|| panic!("summary lacks `{k}`: {v}"))
}

/// Programs attached through TCX (ingress + egress) to `iface` in `ns`.
pub fn tcx_program_count(ns: &str, iface: &str) -> usize {
    let iface = iface.to_string();
    in_netns(ns, move || {
        use aya::programs::{SchedClassifier, TcAttachType};
        [TcAttachType::Ingress, TcAttachType::Egress]
            .into_iter()
            .map(|t| {
                SchedClassifier::query_tcx(&iface, t)
                    .map(|(_, p)| p.len())
                    .unwrap_or(0)
            })
            .sum()
    })
}

/// Whether an XDP program is attached to `iface` in `ns` (as `ip link` reports it).
pub fn xdp_attached(ns: &str, iface: &str) -> bool {
    let out = sh(&["ip", "-n", ns, "-d", "link", "show", "dev", iface]);
    out.contains("xdp")
}

/// Sends raw link-layer frames out of `iface` in `ns` through an AF_PACKET socket.
pub fn send_raw_frames(ns: &str, iface: &str, frames: Vec<Vec<u8>>) {
    let iface = iface.to_string();
    in_netns(ns, move || {
        let c = std::ffi::CString::new(iface).unwrap();
        // SAFETY: plain socket calls with valid arguments.
        unsafe {
            let ifindex = libc::if_nametoindex(c.as_ptr());
            assert!(ifindex > 0);
            let fd = libc::socket(libc::AF_PACKET, libc::SOCK_RAW, 0);
            assert!(fd >= 0, "AF_PACKET socket");
            let mut addr: libc::sockaddr_ll = std::mem::zeroed();
            addr.sll_family = libc::AF_PACKET as u16;
            addr.sll_ifindex = ifindex as i32;
            addr.sll_halen = 6;
            for f in &frames {
                let n = libc::sendto(
                    fd,
                    f.as_ptr().cast(),
                    f.len(),
                    0,
                    (&addr as *const libc::sockaddr_ll).cast(),
                    std::mem::size_of::<libc::sockaddr_ll>() as u32,
                );
                assert_eq!(n, f.len() as isize, "sendto");
            }
            libc::close(fd);
        }
    })
}

/// One record of a pcap file.
#[derive(Clone, Debug)]
pub struct Record {
    pub orig_len: u32,
    pub data: Vec<u8>,
    pub ts_ns: u64,
}

/// Reads every whole record of a pcap file (raw: pcap-file's validating reader refuses
/// truncated packets). Returns the records and whether the file ended in a torn record.
pub fn read_pcap(path: &Path) -> (Vec<Record>, bool) {
    let bytes = fs::read(path).unwrap();
    let mut r = pcap_file::pcap::PcapReader::new(&bytes[..]).unwrap();
    let nanos = r.header().ts_resolution == pcap_file::TsResolution::NanoSecond;
    let mut out = Vec::new();
    let mut torn = false;
    while let Some(p) = r.next_raw_packet() {
        match p {
            Ok(p) => out.push(Record {
                orig_len: p.orig_len,
                data: p.data.to_vec(),
                ts_ns: p.ts_sec as u64 * 1_000_000_000
                    + if nanos {
                        p.ts_frac as u64
                    } else {
                        p.ts_frac as u64 * 1000
                    },
            }),
            Err(_) => {
                torn = true;
                break;
            }
        }
    }
    (out, torn)
}

/// Transport ports and payload of an Ethernet frame, if it is TCP.
pub fn tcp_of(frame: &[u8]) -> Option<(u16, u16, Vec<u8>, bool)> {
    let s = etherparse::SlicedPacket::from_ethernet(frame).ok()?;
    match s.transport? {
        etherparse::TransportSlice::Tcp(t) => Some((
            t.source_port(),
            t.destination_port(),
            t.payload().to_vec(),
            t.syn(),
        )),
        _ => None,
    }
}

/// The request paths of every `GET` seen in TCP payloads.
pub fn get_paths(records: &[Record]) -> Vec<String> {
    records
        .iter()
        .filter_map(|r| tcp_of(&r.data))
        .filter_map(|(_, _, payload, _)| {
            let text = String::from_utf8_lossy(&payload).into_owned();
            let line = text.strip_prefix("GET ")?;
            Some(line.split(' ').next()?.to_string())
        })
        .collect()
}

/// tshark's count of packets matching a display filter (panics if tshark cannot read it).
pub fn tshark_count(path: &Path, display_filter: &str) -> usize {
    let out = Command::new("tshark")
        .arg("-r")
        .arg(path)
        .args(["-Y", display_filter, "-T", "fields", "-e", "frame.number"])
        .output()
        .expect("tshark not installed: run `cargo xtask setup`");
    assert!(
        out.status.success(),
        "tshark cannot read {}: {}",
        path.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).lines().count()
}

/// Checks the accounting identities of an `attach --json` summary and returns it.
pub fn check_accounting(summary: &serde_json::Value) {
    let n = |k: &str| json_u64(summary, k);
    assert_eq!(
        n("seen"),
        n("matched") + n("rejected") + n("unmatched"),
        "seen = matched + rejected + unmatched: {summary}"
    );
    assert_eq!(
        n("matched"),
        n("sampled_out") + n("captured") + n("dropped_kernel") + n("copy_failed"),
        "matched = sampled_out + captured + dropped_kernel + copy_failed: {summary}"
    );
    assert_eq!(
        n("captured"),
        n("written") + n("dropped_user") + n("over_limit") + n("left_out"),
        "captured = written + dropped_user + over_limit + left_out: {summary}"
    );
}

pub mod conformance;
pub mod http_server;

/// Writes a nanosecond pcap of `(ts_ns, frame, orig_len)` records with link type `linktype`.
pub fn write_pcap(path: &Path, linktype: u32, records: &[(u64, Vec<u8>, u32)]) {
    let mut out = Vec::new();
    out.extend_from_slice(&0xa1b2_3c4du32.to_le_bytes());
    out.extend_from_slice(&2u16.to_le_bytes());
    out.extend_from_slice(&4u16.to_le_bytes());
    out.extend_from_slice(&[0; 8]);
    out.extend_from_slice(&262_144u32.to_le_bytes());
    out.extend_from_slice(&linktype.to_le_bytes());
    for (ts, data, orig) in records {
        out.extend_from_slice(&((ts / 1_000_000_000) as u32).to_le_bytes());
        out.extend_from_slice(&((ts % 1_000_000_000) as u32).to_le_bytes());
        out.extend_from_slice(&(data.len() as u32).to_le_bytes());
        out.extend_from_slice(&orig.to_le_bytes());
        out.extend_from_slice(data);
    }
    fs::write(path, out).unwrap();
}

/// Writes a pcap of `count` 60-byte UDP/IPv4 frames (10.9.0.1 -> 10.9.0.2), frame `i` with
/// id `i` in its payload, source port `1000 + i % flows` (so senders spread them over
/// queues), destination port `dport(i)`, 1 us apart.
pub fn write_udp_flood(path: &Path, count: u32, flows: u32, dport: impl Fn(u32) -> u16) {
    let records: Vec<(u64, Vec<u8>, u32)> = (0..count)
        .map(|i| {
            let f = udp_frame(
                [10, 9, 0, 1],
                [10, 9, 0, 2],
                1000 + (i % flows.max(1)) as u16,
                dport(i),
                i,
                18,
            );
            let len = f.len() as u32;
            (u64::from(i) * 1000, f, len)
        })
        .collect();
    write_pcap(path, 1, &records);
}

/// A UDP/IPv4 Ethernet frame with `len` bytes of payload (`id` in its first bytes).
pub fn udp_frame(
    src: [u8; 4],
    dst: [u8; 4],
    sport: u16,
    dport: u16,
    id: u32,
    len: usize,
) -> Vec<u8> {
    let mut payload = vec![0u8; len.max(4)];
    payload[..4].copy_from_slice(&id.to_be_bytes());
    let b = etherparse::PacketBuilder::ethernet2([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2])
        .ipv4(src, dst, 64)
        .udp(sport, dport);
    let mut v = Vec::new();
    b.write(&mut v, &payload).unwrap();
    v
}

/// `rf-tap extract -q PCAP -o ARCHIVE`, which must succeed.
pub fn extract_archive(pcap: &Path, archive: &Path) {
    let done = rf_tap_run(
        None,
        &[
            "extract",
            "-q",
            pcap.to_str().unwrap(),
            "-o",
            archive.to_str().unwrap(),
        ],
    );
    assert!(done.status.success(), "{}", done.stderr);
}

/// tcpdump writing `iface` in `ns` to `path`, started (it has said "listening").
pub fn tcpdump(ns: &str, iface: &str, path: &std::path::Path, filter: &[&str]) -> Proc {
    let mut child = std::process::Command::new("ip")
        .args([
            "netns",
            "exec",
            ns,
            "tcpdump",
            "--immediate-mode",
            "-i",
            iface,
            "-U",
            "-s",
            "0",
            "-w",
        ])
        .arg(path)
        .args(filter)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("tcpdump not installed: run `cargo xtask setup`");
    let err = child.stderr.take().unwrap();
    // Owned by the guard from here on: it is killed and waited for on every path.
    let mut guard = Proc {
        child: Some(child),
        name: "tcpdump".into(),
    };
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufRead::lines(std::io::BufReader::new(err)).map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while std::time::Instant::now() < deadline {
        if let Ok(l) = rx.recv_timeout(std::time::Duration::from_millis(100)) {
            if l.contains("listening on") {
                return std::mem::replace(
                    &mut guard,
                    Proc {
                        child: None,
                        name: String::new(),
                    },
                );
            }
        }
    }
    panic!("tcpdump on {iface} in {ns} did not start");
}

/// Stops a tcpdump by PID with SIGINT (it flushes and exits) and waits for it.
pub fn stop_tcpdump(mut p: Proc) {
    std::thread::sleep(std::time::Duration::from_millis(300));
    // SAFETY: signalling our own child.
    unsafe { libc::kill(p.pid(), libc::SIGINT) };
    if let Some(mut c) = p.child.take() {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while std::time::Instant::now() < deadline {
            if c.try_wait().unwrap().is_some() {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        let _ = c.kill();
        let _ = c.wait();
    }
}

/// One TCP/IPv4-in-Ethernet frame taken apart: where its payload starts, its flow and
/// direction, sequence number.
struct TcpFrame {
    payload_at: usize,
    key: (u32, u16, u32, u16),
    seq: u32,
}

fn tcp_frame(frame: &[u8]) -> Option<TcpFrame> {
    let s = etherparse::SlicedPacket::from_ethernet(frame).ok()?;
    let Some(etherparse::NetSlice::Ipv4(ip)) = &s.net else {
        return None;
    };
    let Some(etherparse::TransportSlice::Tcp(t)) = &s.transport else {
        return None;
    };
    let h = ip.header();
    Some(TcpFrame {
        payload_at: frame.len() - t.payload().len(),
        key: (
            u32::from(h.source_addr()),
            t.source_port(),
            u32::from(h.destination_addr()),
            t.destination_port(),
        ),
        seq: t.sequence_number(),
    })
}

/// `frame` (TCP/IPv4 in Ethernet) with payload `payload` at sequence number `seq`, lengths
/// and both checksums recomputed.
fn with_payload(frame: &[u8], at: usize, seq: u32, payload: &[u8]) -> Vec<u8> {
    let mut f = frame[..at].to_vec();
    f.extend_from_slice(payload);
    let ip = 14;
    let ihl = usize::from(f[ip] & 0x0f) * 4;
    let tcp = ip + ihl;
    let total = (f.len() - ip) as u16;
    f[ip + 2..ip + 4].copy_from_slice(&total.to_be_bytes());
    f[tcp + 4..tcp + 8].copy_from_slice(&seq.to_be_bytes());
    let sum = |bytes: &[u8], mut acc: u32| {
        for c in bytes.chunks(2) {
            acc += u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]));
        }
        acc
    };
    let fold = |mut acc: u32| {
        while acc > 0xffff {
            acc = (acc & 0xffff) + (acc >> 16);
        }
        !(acc as u16)
    };
    f[ip + 10..ip + 12].copy_from_slice(&[0, 0]);
    let c = fold(sum(&f[ip..tcp], 0));
    f[ip + 10..ip + 12].copy_from_slice(&c.to_be_bytes());
    f[tcp + 16..tcp + 18].copy_from_slice(&[0, 0]);
    let tcp_len = (f.len() - tcp) as u32;
    let mut pseudo = Vec::with_capacity(12);
    pseudo.extend_from_slice(&f[ip + 12..ip + 20]);
    pseudo.extend_from_slice(&[0, 6]);
    pseudo.extend_from_slice(&(tcp_len as u16).to_be_bytes());
    let c = fold(sum(&f[tcp..], sum(&pseudo, 0)));
    f[tcp + 16..tcp + 18].copy_from_slice(&c.to_be_bytes());
    f
}

/// What [`impair`] did to a capture.
#[derive(Debug, Default)]
pub struct Impaired {
    pub records: Vec<Record>,
    /// Data segments that ended up after a later segment of their own direction.
    pub reordered: usize,
    pub duplicated: usize,
    pub overlapping: usize,
}

/// A mirror copy's disorder applied to a capture of TCP/IPv4 in Ethernet, deterministically:
/// data is cut into segments of at most `mss` bytes (what the wire carried before the
/// capture point's offloads joined them), the data segments of each direction of each
/// connection are shuffled inside windows of 2 to 4 segments while every other packet (the
/// peer's ACKs among them) keeps its place, so ACKs often come before the data they
/// acknowledge; every 7th data segment comes again later (a duplicate), and every 5th is
/// followed by a copy of its second half joined to the next segment's first half (a
/// retransmission overlapping two segments). Timestamps stay with positions, as a copy
/// arriving out of order is stamped when it arrives.
pub fn impair(records: &[Record], mss: usize) -> Impaired {
    // Cut into segments.
    let mut cut: Vec<Record> = Vec::new();
    for r in records {
        let Some(t) = tcp_frame(&r.data) else {
            cut.push(r.clone());
            continue;
        };
        let payload = &r.data[t.payload_at..];
        if payload.len() <= mss || r.orig_len as usize != r.data.len() {
            cut.push(r.clone());
            continue;
        }
        for (i, piece) in payload.chunks(mss).enumerate() {
            let seq = t.seq.wrapping_add((i * mss) as u32);
            let data = with_payload(&r.data, t.payload_at, seq, piece);
            cut.push(Record {
                orig_len: data.len() as u32,
                data,
                ts_ns: r.ts_ns,
            });
        }
    }
    // Positions of each direction's data segments, in runs: a run ends where the other
    // direction sends data (a request is never moved past its answer).
    let mut last_dir: std::collections::BTreeMap<(u32, u16, u32, u16), (u32, u16)> =
        Default::default();
    let mut runs: Vec<Vec<usize>> = Vec::new();
    let mut open_run: std::collections::BTreeMap<(u32, u16, u32, u16), usize> = Default::default();
    for (i, r) in cut.iter().enumerate() {
        if let Some(t) = tcp_frame(&r.data) {
            if r.data.len() > t.payload_at {
                let (a, b) = ((t.key.0, t.key.1), (t.key.2, t.key.3));
                let conn = if a < b {
                    (a.0, a.1, b.0, b.1)
                } else {
                    (b.0, b.1, a.0, a.1)
                };
                let same = last_dir.get(&conn) == Some(&a);
                last_dir.insert(conn, a);
                match open_run.get(&conn) {
                    Some(&k) if same => runs[k].push(i),
                    _ => {
                        open_run.insert(conn, runs.len());
                        runs.push(vec![i]);
                    }
                }
            }
        }
    }
    let mut out = Impaired::default();
    let mut placed: Vec<Option<Record>> = cut.iter().cloned().map(Some).collect();
    let mut extra: Vec<(usize, Record)> = Vec::new();
    let mut rng = 0x2545_f491_u32;
    let mut next = move || {
        rng ^= rng << 13;
        rng ^= rng >> 17;
        rng ^= rng << 5;
        rng
    };
    for positions in &runs {
        let mut order: Vec<usize> = positions.clone();
        let mut i = 0;
        while i + 1 < order.len() {
            let w = (2 + next() as usize % 3).min(order.len() - i);
            // A rotation or a swap inside the window, so it is never left as it was.
            let win = &mut order[i..i + w];
            if next() % 2 == 0 {
                win.rotate_left(1);
            } else {
                win.swap(0, w - 1);
            }
            i += w;
        }
        for (k, (&at, &from)) in positions.iter().zip(&order).enumerate() {
            let r = cut[from].clone();
            if order[..k].iter().any(|&o| o > from) {
                out.reordered += 1;
            }
            placed[at] = Some(Record {
                ts_ns: cut[at].ts_ns,
                ..r
            });
        }
        for (k, &from) in positions.iter().enumerate() {
            if k % 7 == 3 {
                // The duplicate comes a few data segments later.
                let at = positions[(k + 3).min(positions.len() - 1)];
                extra.push((at, cut[from].clone()));
                out.duplicated += 1;
            }
            if k % 5 == 2 && k + 1 < positions.len() {
                let (a, b) = (&cut[from], &cut[positions[k + 1]]);
                let (ta, tb) = (tcp_frame(&a.data), tcp_frame(&b.data));
                if let (Some(ta), Some(tb)) = (ta, tb) {
                    let pa = &a.data[ta.payload_at..];
                    let pb = &b.data[tb.payload_at..];
                    if pa.len() >= 2
                        && tb.seq == ta.seq.wrapping_add(pa.len() as u32)
                        && a.orig_len as usize == a.data.len()
                        && b.orig_len as usize == b.data.len()
                    {
                        let half = pa.len() / 2;
                        let mut joined = pa[half..].to_vec();
                        joined.extend_from_slice(&pb[..pb.len().div_ceil(2)]);
                        let seq = ta.seq.wrapping_add(half as u32);
                        let data = with_payload(&a.data, ta.payload_at, seq, &joined);
                        let at = positions[(k + 2).min(positions.len() - 1)];
                        extra.push((
                            at,
                            Record {
                                orig_len: data.len() as u32,
                                data,
                                ts_ns: 0,
                            },
                        ));
                        out.overlapping += 1;
                    }
                }
            }
        }
    }
    extra.sort_by_key(|(at, _)| *at);
    let mut extra = extra.into_iter().peekable();
    for (i, r) in placed.into_iter().enumerate() {
        let r = r.expect("every position is filled");
        let ts = r.ts_ns;
        out.records.push(r);
        while let Some((_, x)) = extra.next_if(|(at, _)| *at == i) {
            out.records.push(Record { ts_ns: ts, ..x });
        }
    }
    out
}

/// `stress-ng --cpu N`: other processes keeping the cores busy, for at most `limit`, stopped
/// by its own PID on drop (SIGTERM, so that it stops its workers, then SIGKILL).
pub struct CpuHogs(Option<Child>);

impl CpuHogs {
    pub fn start(workers: usize, limit: Duration) -> Self {
        let child = Command::new("stress-ng")
            .args(["--cpu", &workers.to_string(), "--quiet"])
            .arg("--timeout")
            .arg(format!("{}s", limit.as_secs().max(1)))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("stress-ng not installed: run `cargo xtask setup`");
        // Let its workers start.
        std::thread::sleep(Duration::from_millis(500));
        Self(Some(child))
    }
}

impl Drop for CpuHogs {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take() {
            // SAFETY: signalling our own child.
            unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
            let deadline = std::time::Instant::now() + Duration::from_secs(5);
            while std::time::Instant::now() < deadline {
                if matches!(c.try_wait(), Ok(Some(_))) {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
