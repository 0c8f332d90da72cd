//! Rebuild the eBPF object when the linker changes (it is a separately installed binary).
fn main() {
    if let Ok(linker) = which::which("bpf-linker") {
        println!("cargo:rerun-if-changed={}", linker.display());
    }
}
