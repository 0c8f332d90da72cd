//! `cargo xtask setup`: installs what a fresh machine lacks, idempotently.
//!
//! - Debian packages used by the build, tests, demo and benchmarks (only when one is missing);
//! - the `rust-src` component (for `-Z build-std=core` in the eBPF build);
//! - bpf-linker 0.13.0, built against rustc's own LLVM through a directory of symlinks that
//!   is kept next to cargo's binaries (the linker finds LLVM through it at run time).

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context as _};

/// Commands the project needs, and the Debian package that provides each.
const TOOLS: &[(&str, &str)] = &[
    ("tshark", "tshark"),
    ("capinfos", "tshark"),
    ("tcpdump", "tcpdump"),
    ("curl", "curl"),
    ("nginx", "nginx-light"),
    ("wrk", "wrk"),
    ("netsniff-ng", "netsniff-ng"),
    ("ip", "iproute2"),
    ("setpriv", "util-linux"),
    ("tcpflow", "tcpflow"),
    ("httpry", "httpry"),
    ("tcpreplay", "tcpreplay"),
    ("stress-ng", "stress-ng"),
    ("bpftool", "bpftool"),
    // promtool checks the live mirror's /metrics (Debian ships it with prometheus).
    ("promtool", "prometheus"),
];

const BPF_LINKER_VERSION: &str = "0.13.0";

pub fn have(cmd: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {cmd} >/dev/null 2>&1")])
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

fn run(cmd: &mut Command) -> anyhow::Result<()> {
    let st = cmd
        .status()
        .with_context(|| format!("cannot run {cmd:?}"))?;
    if !st.success() {
        bail!("{cmd:?} failed ({st})");
    }
    Ok(())
}

fn capture(cmd: &mut Command) -> anyhow::Result<String> {
    let out = cmd
        .output()
        .with_context(|| format!("cannot run {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn is_root() -> bool {
    capture(Command::new("id").arg("-u"))
        .map(|s| s.trim() == "0")
        .unwrap_or(false)
}

fn apt_packages() -> anyhow::Result<()> {
    let mut missing: Vec<&str> = TOOLS
        .iter()
        .filter(|(cmd, _)| !have(cmd))
        .map(|(_, pkg)| *pkg)
        .collect();
    missing.sort();
    missing.dedup();
    if missing.is_empty() {
        println!("setup: system packages present");
        return Ok(());
    }
    if !is_root() {
        bail!(
            "missing packages {}: run `sudo cargo xtask setup` or `sudo apt-get install {}`",
            missing.join(" "),
            missing.join(" ")
        );
    }
    println!("setup: installing {}", missing.join(" "));
    run(Command::new("apt-get").args(["update", "-qq"]))?;
    run(Command::new("apt-get")
        .env("DEBIAN_FRONTEND", "noninteractive")
        .args(["install", "-y", "-qq", "--no-install-recommends"])
        .args(&missing))?;
    Ok(())
}

fn rust_src() -> anyhow::Result<()> {
    let installed = capture(Command::new("rustup").args(["component", "list", "--installed"]))?;
    if installed.lines().any(|l| l.starts_with("rust-src")) {
        println!("setup: rust-src present");
        return Ok(());
    }
    println!("setup: adding rust-src");
    run(Command::new("rustup").args(["component", "add", "rust-src"]))
}

fn cargo_home() -> PathBuf {
    std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))
        .unwrap_or_else(|| PathBuf::from("/root/.cargo"))
}

fn bpf_linker_ok() -> bool {
    Command::new("bpf-linker")
        .arg("--version")
        .output()
        .map(|o| {
            o.status.success() && String::from_utf8_lossy(&o.stdout).contains(BPF_LINKER_VERSION)
        })
        .unwrap_or(false)
}

/// Makes `<dir>/lib/libLLVM.so` and `<dir>/lib/<rustc's libLLVM name>` point at rustc's LLVM;
/// returns the directory and LLVM's major version.
fn llvm_prefix() -> anyhow::Result<(PathBuf, u32)> {
    let sysroot = capture(Command::new("rustc").args(["--print", "sysroot"]))?;
    let lib = Path::new(sysroot.trim()).join("lib");
    let so = std::fs::read_dir(&lib)
        .with_context(|| format!("cannot list {}", lib.display()))?
        .filter_map(Result::ok)
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .find(|n| n.starts_with("libLLVM.so."))
        .with_context(|| format!("rustc ships no libLLVM.so.* in {}", lib.display()))?;
    let major: u32 = so
        .trim_start_matches("libLLVM.so.")
        .split('.')
        .next()
        .and_then(|m| m.parse().ok())
        .with_context(|| format!("cannot read the LLVM version from {so}"))?;
    let dir = cargo_home().join("rf-tap-llvm");
    let dir_lib = dir.join("lib");
    std::fs::create_dir_all(&dir_lib)?;
    for name in ["libLLVM.so".to_string(), so.clone()] {
        let link = dir_lib.join(&name);
        // Replace whatever is there (a stale link from another toolchain, say).
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(lib.join(&so), &link)
            .with_context(|| format!("cannot link {}", link.display()))?;
    }
    Ok((dir, major))
}

fn bpf_linker() -> anyhow::Result<()> {
    if bpf_linker_ok() {
        println!("setup: bpf-linker {BPF_LINKER_VERSION} present");
        return Ok(());
    }
    let (prefix, major) = llvm_prefix()?;
    println!(
        "setup: building bpf-linker {BPF_LINKER_VERSION} against rustc's LLVM {major} (about a minute)"
    );
    run(Command::new("cargo")
        .env("LLVM_PREFIX", &prefix)
        .args(["install", "bpf-linker", "--force"])
        .args(["--version", BPF_LINKER_VERSION, "--no-default-features"])
        .args(["--features", &format!("llvm-{major}")]))?;
    if !bpf_linker_ok() {
        bail!(
            "bpf-linker was installed but does not run; check {}",
            prefix.display()
        );
    }
    Ok(())
}

pub fn setup() -> anyhow::Result<()> {
    apt_packages()?;
    rust_src()?;
    bpf_linker()?;
    Ok(())
}
