//! Builds the eBPF programs (ebpf/rf-tap-ebpf) for bpfel-unknown-none with aya-build and
//! leaves the object in OUT_DIR, where `include_bytes_aligned!` embeds it in the binary.
//!
//! Works on the stable toolchain: `-Z build-std=core` is enabled for the nested build through
//! RUSTC_BOOTSTRAP=1, and the nested cargo runs under the same rustup toolchain as this one.
use anyhow::{anyhow, Context as _};
use aya_build::{Package, Toolchain};

fn main() -> anyhow::Result<()> {
    let metadata = cargo_metadata::MetadataCommand::new()
        .no_deps()
        .exec()
        .context("cargo metadata")?;
    let ebpf = metadata
        .packages
        .iter()
        .find(|p| p.name.as_str() == "rf-tap-ebpf")
        .ok_or_else(|| anyhow!("package rf-tap-ebpf not found in the workspace"))?;
    let root_dir = ebpf
        .manifest_path
        .parent()
        .ok_or_else(|| anyhow!("rf-tap-ebpf manifest has no parent directory"))?;
    // The shared records are part of the kernel program too.
    println!("cargo:rerun-if-changed={}/../rf-tap-common/src", root_dir);
    println!("cargo:rerun-if-env-changed=RUSTUP_TOOLCHAIN");

    if std::process::Command::new("bpf-linker")
        .arg("--version")
        .output()
        .is_err()
    {
        return Err(anyhow!(
            "bpf-linker is not installed: run `cargo xtask setup` (it builds bpf-linker against rustc's LLVM)"
        ));
    }
    // SAFETY: build scripts are single-threaded at this point.
    unsafe { std::env::set_var("RUSTC_BOOTSTRAP", "1") };
    let toolchain = std::env::var("RUSTUP_TOOLCHAIN").unwrap_or_else(|_| "stable".to_string());
    aya_build::build_ebpf(
        [Package {
            name: "rf-tap-ebpf",
            root_dir: root_dir.as_str(),
            ..Default::default()
        }],
        Toolchain::Custom(&toolchain),
    )
}
