//! `cargo xtask setup`: installs what a fresh machine lacks, idempotently.
//!
//! - Debian packages used by the build, tests, demo and benchmarks (only when one is missing);
//! - the `rust-src` component (for `-Z build-std=core` in the eBPF build);
//! - bpf-linker 0.13.0, built against rustc's own LLVM through a directory of symlinks that
//!   is kept next to cargo's binaries (the linker finds LLVM through it at run time);
//! - a project-local Python environment (`target/pyenv`) with the packages of the tests'
//!   peers (grpcio, h2).

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
    // h2load and nghttp make multiplexed HTTP/2 traffic (tests and `bench extract --h2`).
    ("h2load", "nghttp2-client"),
    ("nghttp", "nghttp2-client"),
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

/// Python packages the tests' peers use (a gRPC server and client, an `Upgrade: h2c`
/// server), pinned, installed into `target/pyenv`.
const PY_PACKAGES: &[&str] = &["grpcio==1.85.3", "h2==4.4.1"];

/// The project-local Python environment (tests find its interpreter here).
pub fn pyenv_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join("target/pyenv")
}

fn python_env() -> anyhow::Result<()> {
    let dir = pyenv_dir();
    let python = dir.join("bin/python");
    let stamp = dir.join(".packages");
    let want = PY_PACKAGES.join("\n");
    if std::fs::read_to_string(&stamp).is_ok_and(|s| s == want) && python.exists() {
        println!("setup: python test peers present ({})", dir.display());
        return Ok(());
    }
    println!("setup: python test peers into {}", dir.display());
    let venv = |_: ()| {
        Command::new("python3")
            .args(["-m", "venv", "--clear"])
            .arg(&dir)
            .status()
            .map(|s| s.success())
            .unwrap_or(false)
    };
    if !venv(()) {
        // Debian's python3 keeps venv in its own package.
        if !is_root() {
            bail!("python3 -m venv failed: run `sudo apt-get install python3-venv`");
        }
        run(Command::new("apt-get")
            .env("DEBIAN_FRONTEND", "noninteractive")
            .args([
                "install",
                "-y",
                "-qq",
                "--no-install-recommends",
                "python3-venv",
            ]))?;
        if !venv(()) {
            bail!("python3 -m venv {} failed", dir.display());
        }
    }
    run(Command::new(&python)
        .args(["-m", "pip", "install", "-q", "--disable-pip-version-check"])
        .args(PY_PACKAGES))?;
    std::fs::write(&stamp, want).with_context(|| format!("cannot write {}", stamp.display()))?;
    Ok(())
}

pub fn setup() -> anyhow::Result<()> {
    apt_packages()?;
    rust_src()?;
    bpf_linker()?;
    python_env()?;
    Ok(())
}
